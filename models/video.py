"""Activity classification of clips (the paper's Table 9): region tokens over time, or averaged CLS tokens.

``RegionClipClassifier`` (``model.kind=region``): a clip's region vectors (at most
``video.max_tokens``, all of its frames) plus learned embeddings of each token's frame index and 2D
position (centroid and box), through a transformer whose tokens attend within their clip, then a
clip-level head on the mean of the clip's encoded tokens (``TransformerDecoder(output="group")``).
``ClsClipClassifier`` (``model.kind=cls``): the baseline of DINOv2's paper, a linear probe on the
average of the clip's frames' class tokens.

Both are scored by top-1 and top-5 accuracy and mean per-class accuracy (torchmetrics, synced across
ranks once per epoch); every clip is counted, and evaluation refuses to report if it scored another
number of clips than the shards hold.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from models.decoders import TransformerDecoder
from models.multiview import PositionEmbedding
from models.segmenter import warmup_factor


class ClipMetrics(nn.Module):
    """Top-1, top-5 and mean per-class accuracy over every clip of an epoch, and the clip count."""

    def __init__(self, num_classes: int):
        super().__init__()
        top5 = min(5, num_classes)
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.per_class = MulticlassAccuracy(num_classes, top_k=1, average="macro")
        self.clips = SumMetric()

    def update(self, logits: Tensor, labels: Tensor) -> None:
        for metric in (self.top1, self.top5, self.per_class):
            metric.update(logits, labels)
        self.clips.update(torch.tensor(float(len(labels))))

    def compute(self) -> dict:
        return {"top1": float(self.top1.compute()), "top5": float(self.top5.compute()),
                "mean_class_acc": float(self.per_class.compute()), "num_clips": int(self.clips.compute())}

    def reset(self) -> None:
        for metric in (self.top1, self.top5, self.per_class, self.clips):
            metric.reset()


class ClipClassifier(pl.LightningModule):
    """Shared optimisation (AdamW, optional warm-up and cosine) and scoring; a subclass defines
    ``logits(batch) -> (B, C)``. A batch holds whole clips (``collate_regions``: their labels in metas)."""

    trainable = True

    def __init__(self, in_dim: int, num_classes: int, lr: float = 1e-3, weight_decay: float = 0.0,
                 scheduler: str = "cosine", warmup_epochs: float = 0.0, cosine_t_max: int | None = None, **unused):
        super().__init__()
        self.save_hyperparameters()
        self.val_metrics, self.test_metrics = ClipMetrics(num_classes), ClipMetrics(num_classes)
        self.expected_test_images: int | None = None  # set by eval from the shard manifest
        self.test_results: dict | None = None
        self.prediction_writer = None  # clips have no prediction files

    @staticmethod
    def labels(batch: dict) -> Tensor:
        return torch.tensor([meta["label"] for meta in batch["metas"]], dtype=torch.long)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        labels = self.labels(batch).to(self.device)
        loss = F.cross_entropy(self.logits(batch), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.logits(batch), self.labels(batch).to(self.device))

    def on_validation_epoch_end(self) -> None:
        self.log("val/top1", self.val_metrics.compute()["top1"], prog_bar=True, sync_dist=False)  # synced
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.logits(batch), self.labels(batch).to(self.device))

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()
        if self.expected_test_images is not None and results["num_clips"] != self.expected_test_images:
            raise RuntimeError(f"evaluation scored {results['num_clips']} clips but the shard manifest lists "
                               f"{self.expected_test_images}: samples were lost or read twice")
        results["num_images"] = results["num_clips"]
        self.test_results = results
        self.log("test/top1", results["top1"], sync_dist=False)
        self.test_metrics.reset()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        if self.hparams.scheduler == "none" and not self.hparams.warmup_epochs:
            return opt
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max_epochs)
        t_max = self.hparams.cosine_t_max or max_epochs

        def factor(step: int) -> float:
            return warmup_factor(step, per_epoch, float(self.hparams.warmup_epochs), t_max,
                                 self.hparams.scheduler == "cosine")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor),
                                                   "interval": "step"}}


class RegionClipClassifier(ClipClassifier):
    """Region tokens of all frames + frame-index and 2D-position embeddings -> transformer -> clip logits."""

    def __init__(self, in_dim: int, num_classes: int, num_frames: int = 8, width: int | None = None,
                 layers: int = 3, heads: int = 16, dim_feedforward: int = 2048, dropout: float = 0.1,
                 fourier_bands: int = 4, **kwargs):
        super().__init__(in_dim, num_classes, **kwargs)
        self.frame_embedding = nn.Embedding(num_frames, in_dim)
        nn.init.zeros_(self.frame_embedding.weight)
        self.position_embedding = PositionEmbedding(6, in_dim, fourier_bands, 1.0)
        self.decoder = TransformerDecoder(in_dim, num_classes, width=width, layers=layers, heads=heads,
                                          dim_feedforward=dim_feedforward, dropout=dropout, output="group")

    def logits(self, batch: dict) -> Tensor:
        """Clips without a region (nothing in any frame) get the head's bias alone."""
        tokens = batch["feats"] + self.frame_embedding(batch["frame"].clamp(max=self.hparams.num_frames - 1)) \
            + self.position_embedding(batch["pos2d"])
        clips = len(batch["keys"])
        out = self.decoder.head.bias.expand(clips, -1).clone()
        present = torch.unique(batch["image_index"])
        if len(present):
            out[present] = self.decoder(tokens, batch["image_index"])  # one row per clip with tokens, in order
        return out


class ClsClipClassifier(ClipClassifier):
    """A linear probe on the mean of the clip's frames' class tokens (``cls`` (B, T, d))."""

    def __init__(self, in_dim: int, num_classes: int, **kwargs):
        super().__init__(in_dim, num_classes, **kwargs)
        self.linear = nn.Linear(in_dim, num_classes)

    def logits(self, batch: dict) -> Tensor:
        return self.linear(batch["cls"].mean(dim=1))


MODELS = {"region": RegionClipClassifier, "cls": ClsClipClassifier}
