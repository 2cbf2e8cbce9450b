"""LightningModules for semantic segmentation from region shards.

``RegionSegmenter`` classifies region vectors (the paper's method); ``PatchSegmenter`` is the
patch-grid baseline. Both are scored the same way: pixel predictions accumulated into one
dataset-level confusion matrix (``bench.metrics.SegmentationMetric``), synced across ranks once
per epoch.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.aggregation import SumMetric

from bench.rle import decode_rles
from bench.labels import LABEL_DENOMINATORS, region_labels
from bench.metrics import NO_PREDICTION, SegmentationMetric, paint_regions
from models.decoders import build_decoder, decoder_class

LOSS_WEIGHTINGS = ("area", "none", "l2")


def weighted_cross_entropy(logits: Tensor, labels: Tensor, areas: Tensor, weighting: str) -> Tensor:
    """Cross-entropy over labelled regions (label >= 0).

    logits (N, C), labels (N,) with -1 = left out, areas (N,) pixel counts -> scalar.
    ``area``: sum_i a_i CE_i / sum_i a_i, each region weighted by its pixel count;
    ``none``: plain mean; ``l2``: the released code's mean_i (a_i / ||a||_2) CE_i.
    """
    keep = labels >= 0
    if not keep.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    a = areas[keep].to(ce.dtype)
    if weighting == "area":
        return (a * ce).sum() / a.sum()
    if weighting == "l2":
        return (a / a.norm() * ce).mean()
    return ce.mean()


def warmup_factor(step: int, per_epoch: int, warmup_epochs: float, t_max: int, cosine: bool) -> float:
    """The lr multiplier at optimizer step ``step``: a linear ramp (step + 1) / (warmup_epochs x
    per_epoch) up to 1, times the per-epoch cosine 0.5 (1 + cos(pi e / t_max)) of epoch e = step //
    per_epoch (capped at t_max) when ``cosine``."""
    ramp = min(1.0, (step + 1) / max(1.0, warmup_epochs * per_epoch))
    epoch = min(step // per_epoch, t_max)
    return ramp * (0.5 * (1 + math.cos(math.pi * epoch / t_max)) if cosine else 1.0)


class Segmenter(pl.LightningModule):
    """Shared optimisation, evaluation, prediction saving and the exactly-once check.

    A subclass defines ``predict_pixels(batch) -> list of (H, W) int64`` (NO_PREDICTION where no
    decision) and, if it has regions, ``oracle_pixels(batch)`` with the same output."""

    trainable = True  # False: nothing to fit (train.py only scores it)

    def __init__(self, in_dim: int, num_classes: int, decoder: str = "linear", decoder_params: dict | None = None,
                 label_threshold: float = 0.5, label_denominator: str = "labelled", loss_weighting: str = "area",
                 lr: float = 3e-3, weight_decay: float = 0.01, scheduler: str = "cosine",
                 cosine_t_max: int | None = None, warmup_epochs: float = 0.0, uncovered: str = "miss", unscored_classes: Sequence[int] = (),
                 report_oracle: bool = False, ignore_index: int = 255, preset: str | None = None,
                 compat: str | None = None):
        """Arguments are the ``model:`` config keys (bench/defaults.yaml documents each) plus the
        dataset's ``num_classes`` and ``ignore_index``. ``decoder_params`` maps a decoder name to its
        constructor arguments; only ``decoder_params[decoder]`` is used. ``preset`` and ``compat`` are
        recorded only: bench/presets.py already expanded them into the other values."""
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"model.loss_weighting={loss_weighting!r}; valid: {', '.join(LOSS_WEIGHTINGS)}")
        if label_denominator not in LABEL_DENOMINATORS:
            raise ValueError(f"model.label_denominator={label_denominator!r}; valid: {', '.join(LABEL_DENOMINATORS)}")
        if report_oracle and not hasattr(self, "oracle_pixels"):
            raise ValueError(f"{type(self).__name__} has no regions to score an oracle with: "
                             "set model.report_oracle=false")
        super().__init__()
        self.save_hyperparameters()  # plain values only: load_from_checkpoint rebuilds the module
        self.decoder = build_decoder(decoder, in_dim, num_classes, **(decoder_params or {}).get(decoder, {}))
        self.val_metric = SegmentationMetric(num_classes, ignore_index, unscored_classes)
        self.test_metric = SegmentationMetric(num_classes, ignore_index, unscored_classes)
        self.test_images = SumMetric()
        self.oracle_metric = SegmentationMetric(num_classes, ignore_index, unscored_classes) if report_oracle else None
        self.prediction_writer = None  # set by eval: (image id, (H, W) int64 numpy, -1 = undecided) -> PNG
        self.expected_test_images: int | None = None  # set by eval from the shard manifest
        self.test_results: dict | None = None

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup = float(self.hparams.get("warmup_epochs") or 0)  # get: checkpoints written before it existed
        if self.hparams.scheduler == "none" and not warmup:
            return opt
        # Stepped once per epoch; cosine_t_max > max_epochs stops before the minimum (the released recipe).
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        t_max = self.hparams.cosine_t_max or max_epochs
        if not warmup:
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)}
        # Warm-up (possibly a fraction of an epoch, e.g. the paper's 2.5): stepped per optimizer step,
        # a linear ramp over the first warmup_epochs, times the same per-epoch cosine as above.
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max_epochs)
        factor = functools.partial(warmup_factor, per_epoch=per_epoch, warmup_epochs=warmup, t_max=t_max,
                                   cosine=self.hparams.scheduler == "cosine")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor),
                                                   "interval": "step"}}

    def _score(self, batch: dict, metric: SegmentationMetric) -> list[Tensor]:
        preds = self.predict_pixels(batch)
        for pred, label in zip(preds, batch["labels"]):
            metric.update(pred, label.to(pred.device))
        return preds

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metric.compute()
        self.log("val/miou", results["miou"], prog_bar=True, sync_dist=False)  # already synced
        self.val_metric.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        preds = self._score(batch, self.test_metric)
        if self.oracle_metric is not None:
            for pred, label in zip(self.oracle_pixels(batch), batch["labels"]):
                self.oracle_metric.update(pred, label.to(pred.device))
        self.test_images.update(torch.tensor(float(len(preds))))
        if self.prediction_writer is not None:
            for key, pred in zip(batch["keys"], preds):
                self.prediction_writer(key, pred.cpu().numpy())

    def on_test_epoch_end(self) -> None:
        results = self.test_metric.compute()
        seen = int(self.test_images.compute())
        if self.expected_test_images is not None and seen != self.expected_test_images:
            raise RuntimeError(f"evaluation scored {seen} images but the shard manifest lists "
                               f"{self.expected_test_images}: samples were lost or read twice")
        results["num_images"] = seen
        if self.oracle_metric is not None:
            results["oracle_miou"] = self.oracle_metric.compute()["miou"]
            self.oracle_metric.reset()
        self.test_results = results
        self.log("test/miou", results["miou"], sync_dist=False)
        self.test_metric.reset()
        self.test_images.reset()


class RegionSegmenter(Segmenter):
    """Classifies each region's pooled feature; pixels take the mean of covering regions' probabilities."""

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """A batch of shuffled regions (``collate_region_rows``: no image_index, per-region decoders) or
        of whole images (``collate_regions``: image_index groups the regions, for the transformer)."""
        labels = region_labels(batch["hist"], self.hparams.label_threshold, self.hparams.label_denominator)
        logits = self.decoder(batch["feats"], batch.get("image_index"))
        loss = weighted_cross_entropy(logits, labels, batch["areas"], self.hparams.loss_weighting)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/labelled_regions", (labels >= 0).float().mean(), batch_size=len(labels))
        return loss

    def predict_pixels(self, batch: dict) -> list[Tensor]:
        return self.paint(self.decoder(batch["feats"], batch["image_index"]).softmax(dim=1), batch)

    def oracle_pixels(self, batch: dict) -> list[Tensor]:
        counts = batch["hist"][:, :-1].to(torch.float32)
        return self.paint(counts / counts.sum(dim=1, keepdim=True).clamp(min=1), batch)

    def paint(self, probs: Tensor, batch: dict) -> list[Tensor]:
        """Region probabilities (N, C) of a batch -> one (H, W) prediction per image."""
        preds = []
        for i, (rles, label) in enumerate(zip(batch["rles"], batch["labels"])):
            if not rles:
                preds.append(torch.full(label.shape, NO_PREDICTION, dtype=torch.int64, device=probs.device))
                continue
            masks = torch.from_numpy(decode_rles(rles)).to(probs.device)
            pred, _ = paint_regions(probs[batch["image_index"] == i], masks, self.hparams.uncovered)
            preds.append(pred)
        return preds


class PatchSegmenter(Segmenter):
    """Baseline: a decoder on every patch vector, logits bilinearly upsampled to pixels.

    Trained per pixel (cross-entropy over all non-ignored pixels); ``label_threshold`` and
    ``loss_weighting`` do not apply.
    """

    def pixel_logits(self, patches: Tensor, meta: dict) -> Tensor:
        """patches (d, h, w) -> (C, H, W) logits at image resolution (upsample, crop the padding)."""
        d, h, w = patches.shape
        p = meta["patch_size"]
        logits = self.decoder(patches.reshape(d, h * w).T).T.reshape(1, -1, h, w)
        logits = F.interpolate(logits, size=(h * p, w * p), mode="bilinear", align_corners=False)[0]
        top, left = meta["pad"]
        return logits[:, top:top + meta["height"], left:left + meta["width"]]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if "patches" not in batch:
            raise RuntimeError("model.kind=patch needs shards with the patch grid: extract with extract.patches=true")
        losses, pixels = [], 0
        for patches, meta, label in zip(batch["patches"], batch["metas"], batch["labels"]):
            logits = self.pixel_logits(patches, meta)
            losses.append(F.cross_entropy(logits[None], label[None].to(logits.device),
                                          ignore_index=self.hparams.ignore_index, reduction="sum"))
            pixels += int((label != self.hparams.ignore_index).sum())
        loss = torch.stack(losses).sum() / max(pixels, 1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["keys"]))
        return loss

    def predict_pixels(self, batch: dict) -> list[Tensor]:
        return [self.pixel_logits(patches, meta).argmax(0)
                for patches, meta in zip(batch["patches"], batch["metas"])]


class OracleSegmenter(RegionSegmenter):
    """The regions' upper bound: each region predicts its own ground-truth label distribution.

    A region's class probabilities are its pixel-label fractions (ignore pixels left out), painted
    to pixels like any model's and scored with the same mIoU — computed from the shards alone.
    A region of ignore pixels only predicts nothing useful (all zeros: argmax class 0).
    """

    trainable = False

    def predict_pixels(self, batch: dict) -> list[Tensor]:
        return self.oracle_pixels(batch)


MODELS = {"region": RegionSegmenter, "patch": PatchSegmenter, "oracle": OracleSegmenter}


def training_unit(kind: str, decoder: str) -> str:
    """What a training batch holds: ``"region"`` (shuffled regions of many images) or ``"image"``
    (whole images: patch models, and the transformer, whose regions attend to their image's)."""
    return decoder_class(decoder).train_unit if kind == "region" else "image"
