"""Painting region predictions onto pixels, then the mIoU (confusion-matrix) update, 150 classes.

Ours: ``bench.metrics.paint_regions`` (pixels grouped by the set of regions covering them, one
mean per group) + ``SegmentationMetric.update`` (one bincount), on one thread
(``torch.set_num_threads(1)``), as an evaluation worker runs it.
Reference: ``reference_paint`` + ``reference_miou_update`` below, literally the released
evaluation (spec §6): the masks stacked as an (H*W, R) float32 matrix, (H*W, R) @ (R, C)
divided by the coverage, argmax; then the released ``mean_iou``'s per-image histograms of
intersection, prediction and label areas. Also on one thread.
Check: identical pixel predictions, and identical per-class intersection and union counts.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.metrics import NO_PREDICTION, SegmentationMetric, paint_regions
from benchmarks.inputs import Case

NUM_CLASSES = 150
IGNORE = 255


def inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs (R, 150) softmax of random logits, masks (R, H, W), target (H, W) uint8): the
    target gives each SLIC superpixel and then each SAM-like blob a random class, and marks
    pixels on label boundaries ignore (255), as ADE20K-style annotations do."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, NUM_CLASSES, case.slic.max() + 1)[case.slic]
    for blob in case.sam:
        target[blob] = rng.integers(0, NUM_CLASSES)
    edge = np.zeros(target.shape, dtype=bool)
    edge[1:] |= target[1:] != target[:-1]
    edge[:, 1:] |= target[:, 1:] != target[:, :-1]
    target[edge] = IGNORE
    logits = torch.from_numpy(rng.standard_normal((len(case.masks), NUM_CLASSES)).astype(np.float32) * 3)
    return logits.softmax(dim=1), torch.from_numpy(case.masks), torch.from_numpy(target.astype(np.uint8))


def reference_paint(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(R, C), (R, H, W) -> (H, W) int64: per-pixel mean of the covering regions' probabilities."""
    R, H, W = masks.shape
    stack = masks.permute(1, 2, 0).reshape(H * W, R).float()  # the released (H, W, R) float32 stack
    coverage = stack.sum(dim=1)
    mean = (stack @ probs) / coverage.clamp(min=1)[:, None]
    pred = mean.argmax(dim=1)
    pred[coverage == 0] = NO_PREDICTION
    return pred.reshape(H, W)


def reference_miou_update(totals: dict, pred: np.ndarray, target: np.ndarray, num_classes: int) -> None:
    """The released ``mean_iou`` accumulation: per-class histograms summed over images."""
    keep = target != IGNORE
    pred, target = pred[keep], target[keep]
    intersect = pred[pred == target]
    bins = {"bins": num_classes, "range": (0, num_classes)}
    area_intersect = np.histogram(intersect, **bins)[0]
    area_pred = np.histogram(pred, **bins)[0]  # NO_PREDICTION (-1) falls outside the range
    area_label = np.histogram(target, **bins)[0]
    totals["intersect"] += area_intersect
    totals["union"] += area_pred + area_label - area_intersect


def workloads(case: Case) -> dict:
    probs, masks, target = inputs(case)
    metric = SegmentationMetric(num_classes=NUM_CLASSES, ignore_index=IGNORE)
    target_np = target.numpy().astype(np.int64)

    def ours():
        metric.reset()
        pred, _ = paint_regions(probs, masks)
        metric.update(pred, target)
        return pred, metric.confmat.clone()

    def reference():
        totals = {"intersect": np.zeros(NUM_CLASSES, np.int64), "union": np.zeros(NUM_CLASSES, np.int64)}
        pred = reference_paint(probs, masks)
        reference_miou_update(totals, pred.numpy(), target_np, NUM_CLASSES)
        return pred, totals

    return {"ours": ours, "reference": reference}


def compare(ours: tuple, reference: tuple) -> dict:
    (pred, confmat), (ref_pred, totals) = ours, reference
    differ = int((pred != ref_pred).sum())
    C = confmat.shape[0]
    tp = confmat.diagonal().numpy()
    union = (confmat.sum(1) + confmat[:, :C].sum(0)).numpy() - tp
    counts_equal = bool((tp == totals["intersect"]).all() and (union == totals["union"]).all())
    ok = differ == 0 and counts_equal
    text = "identical predictions and IoU counts" if ok else \
        f"{differ} pixels differ; IoU counts {'equal' if counts_equal else 'DIFFER'}"
    return {"ok": ok, "pixels_differing": differ, "iou_counts_equal": counts_equal, "text": text}
