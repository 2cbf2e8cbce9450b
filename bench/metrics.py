"""Semantic-segmentation metrics: region predictions to pixels, confusion matrix, mIoU.

The math is in plain functions; ``SegmentationMetric`` is a thin torchmetrics wrapper
around one fixed-size state, so it accumulates exactly over any batch split and over
DDP ranks (sum reduction, also with unequal update counts per rank).

    paint_regions(probs (R,C), masks (R,H,W))   -> pred (H,W) in {-1, 0..C-1}, coverage (H,W)
    confusion_matrix(pred, target, C)           -> (C, C+1) int64; column C = "no prediction"
    iou_from_confusion(confmat, unscored)       -> dict of JSON-able numbers

Conventions (spec §6, "fixed" mode):
- Rows are ground-truth classes, columns predicted classes. The extra column C counts
  pixels that no region covered (``NO_PREDICTION`` in ``pred``). They are false negatives
  of their true class and never correct predictions.
- IoU_c = TP_c / (GT_c + Pred_c - TP_c) with GT_c the full row sum. Counts are summed over
  the whole dataset before dividing; classes with zero union are NaN and left out of the
  mean (the mmseg / HF ``mean_iou`` nanmean).
- Out-of-range labels raise instead of being mis-binned (torchmetrics bins them into the
  wrong cell, mmseg drops them; see pitfalls §2.1).

Compatibility with the released code: ``paint_regions(..., uncovered="background")`` gives
its VOC behaviour. Its 149-class ADE mIoU equals our per-class IoU with class 149 left out of
the mean (its histograms never count class 149, in GT or prediction), i.e.
``iou_from_confusion(confmat, unscored_classes=[149])`` (``model.unscored_classes``).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

NO_PREDICTION = -1  # value in a prediction map for a pixel that no region covers
UNCOVERED_POLICIES = ("miss", "nearest", "background")
_CHUNK_ELEMENTS = 1 << 22  # float elements per pixel chunk in paint_regions (16 MB in fp32)


def _check_integer(name: str, x: Tensor) -> None:
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {x.dtype}")


def _check_ignore_index(ignore_index: int, num_classes: int) -> None:
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class index (num_classes={num_classes}); "
            f"map ignored pixels to a value outside 0..{num_classes - 1}, e.g. 255"
        )


def _bad_values(x: Tensor, bad: Tensor, limit: int = 10) -> str:
    values = torch.unique(x[bad]).tolist()
    more = f" ... ({len(values)} distinct)" if len(values) > limit else ""
    return f"{values[:limit]}{more}"


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Pixel confusion matrix of one image or batch, by ``torch.bincount``.

    Args:
        pred: (N,), (H,W) or any shape; integer class indices 0..C-1, or ``NO_PREDICTION`` (-1)
            for pixels that no region covers.
        target: same shape as ``pred``; integer 0..C-1, or ``ignore_index`` (any integer dtype,
            e.g. uint8 label PNGs).
        num_classes: C.
        ignore_index: target value of pixels that are not scored. Must lie outside 0..C-1.

    Returns:
        (C, C+1) int64 on the input device: ``[t, p]`` counts pixels of true class t predicted
        as p; column C counts uncovered pixels. Pixels with target == ignore_index are dropped,
        whatever their prediction.

    Raises:
        ValueError: on shape mismatch, or any target outside 0..C-1 that is not ignore_index,
            or any pred outside -1..C-1. The message lists the offending values.
        TypeError: for non-integer inputs (floats would be truncated silently).

    Unlike torchmetrics' confusion matrix, this stays a single bincount under
    ``torch.use_deterministic_algorithms(True)`` (pitfalls §2.1).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    _check_integer("pred", pred)
    _check_integer("target", target)
    _check_ignore_index(ignore_index, num_classes)
    C = num_classes
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()

    bad = (pred < NO_PREDICTION) | (pred >= C)
    if bad.any():
        raise ValueError(
            f"pred has values {_bad_values(pred, bad)} outside 0..{C - 1}; a prediction must be a "
            f"class index or NO_PREDICTION={NO_PREDICTION} (check num_classes and the decoder's outputs)"
        )
    keep = target != ignore_index
    bad = keep & ((target < 0) | (target >= C))
    if bad.any():
        raise ValueError(
            f"target has values {_bad_values(target, bad)} outside 0..{C - 1} that are not "
            f"ignore_index={ignore_index} (check num_classes and the dataset's label mapping, "
            f"e.g. ADE20K 0->255, k->k-1)"
        )

    target, pred = target[keep], pred[keep]
    col = torch.where(pred == NO_PREDICTION, C, pred)
    counts = torch.bincount(target * (C + 1) + col, minlength=C * (C + 1))
    return counts.reshape(C, C + 1)


def _scored_classes(unscored: Sequence[int], num_classes: int) -> list[int]:
    """The class indices in the means: all but ``unscored`` (which must be valid class indices)."""
    bad = [c for c in unscored if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"unscored_classes lists {bad}, outside 0..{num_classes - 1}: "
                         "fix model.unscored_classes (the released code's ADE20K scoring: [149])")
    return [c for c in range(num_classes) if c not in set(unscored)]


def iou_from_confusion(confmat: Tensor, unscored_classes: Sequence[int] = ()) -> dict:
    """IoU, accuracies and coverage from a (C, C+1) confusion matrix (see ``confusion_matrix``).

    ``unscored_classes`` are left out of the means (miou, mean_class_acc) and of pixel_acc, but
    their pixels stay evaluated: a prediction of class c on them is a false positive of c, and a
    prediction of an unscored class on a pixel of c a false negative of c. With [149] on ADE20K
    this is the released code's 149-class mIoU (its histograms drop reduced class 149, "flag").

    Returns a dict of plain Python numbers and lists:
        miou            mean IoU over scored classes with non-zero union (NaN if there is none)
        iou_per_class   C floats; TP / (GT + Pred - TP), NaN where the union is zero
        absent_classes  class indices with zero union, i.e. excluded from ``miou``
        unscored_classes  the class indices left out of the means, as given
        pixel_acc       correct pixels / pixels of scored classes (uncovered pixels count as wrong)
        mean_class_acc  mean of acc_per_class over scored classes present in the ground truth
        acc_per_class   C floats; TP / GT, NaN where the class is absent from the GT
        num_pixels      evaluated (non-ignored) pixels, unscored classes included
        uncovered_pixels  evaluated pixels that no region covered (column C)

    NaNs survive ``json.dump`` as the token ``NaN`` (Python reads it back; strict JSON parsers
    do not).
    """
    if confmat.dim() != 2 or confmat.shape[1] != confmat.shape[0] + 1:
        raise ValueError(f"confmat must have shape (C, C+1), got {tuple(confmat.shape)}")
    cm = confmat.detach().to("cpu", torch.int64)
    C = cm.shape[0]
    unscored = sorted({int(c) for c in unscored_classes})
    scored = _scored_classes(unscored, C)
    tp = cm.diagonal()  # (C,) the diagonal of the square part
    gt = cm.sum(1)  # (C,) includes uncovered pixels, so they are false negatives
    pred = cm[:, :C].sum(0)  # (C,)
    union = gt + pred - tp

    def ratio(num: Tensor, den: Tensor) -> list[float]:
        return [n / d if d > 0 else math.nan for n, d in zip(num.tolist(), den.tolist())]

    iou, acc = ratio(tp, union), ratio(tp, gt)
    present_iou = [iou[c] for c in scored if not math.isnan(iou[c])]
    present_acc = [acc[c] for c in scored if not math.isnan(acc[c])]
    total = int(cm.sum())
    scored_total = int(gt[scored].sum())
    return {
        "miou": sum(present_iou) / len(present_iou) if present_iou else math.nan,
        "iou_per_class": iou,
        "absent_classes": [c for c, u in enumerate(union.tolist()) if u == 0],
        "unscored_classes": unscored,
        "pixel_acc": int(tp[scored].sum()) / scored_total if scored_total else math.nan,
        "mean_class_acc": sum(present_acc) / len(present_acc) if present_acc else math.nan,
        "acc_per_class": acc,
        "num_pixels": total,
        "uncovered_pixels": int(cm[:, C].sum()),
    }


class SegmentationMetric(Metric):
    """Dataset-level mIoU from a summed (C, C+1) int64 confusion matrix.

    ``update(pred, target)`` takes any same-shape pair accepted by ``confusion_matrix``
    (one image, a padded batch, flattened pixels). ``compute()`` syncs the matrix across
    ranks (sum) and returns the full ``iou_from_confusion`` dict, identical on every rank.

    compute() returns the dict rather than a scalar so that one call (one sync) gives both the
    logged number and the metrics.json content, with no reliance on when Lightning computes
    and resets logged Metric objects. In a LightningModule, one instance per stage:

        def validation_step(self, batch, i):
            self.val_metric.update(pred, target)         # not self.val_metric(...): no per-step compute

        def on_validation_epoch_end(self):
            results = self.val_metric.compute()          # collective: every rank must call it
            self.log("val/miou", results["miou"])  # already synced: same value on every rank
            self.val_metric.reset()                      # also drops the sanity-check batches

    and on test epoch end keep ``results`` for train.py to write to metrics.json (on rank 0).
    Do not pass the metric object itself to ``self.log``: its compute() is not a scalar.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, unscored_classes: Sequence[int] = (),
                 **kwargs) -> None:
        super().__init__(**kwargs)  # torchmetrics rejects unknown keyword arguments itself
        _check_ignore_index(ignore_index, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.unscored_classes = list(unscored_classes)  # left out of the means (see iou_from_confusion)
        _scored_classes(self.unscored_classes, num_classes)
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes + 1, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.confmat += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        """``iou_from_confusion`` of the synced matrix, plus the matrix itself as ``confusion``."""
        return {**iou_from_confusion(self.confmat, self.unscored_classes), "confusion": self.confmat.tolist()}


def _region_set_means(probs: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probs (R, C) float64, masks (R, H, W) bool -> (group (H, W) int64, means (G, C) float64,
    counts (G,) int64): pixels of one group are covered by the same set of regions, of size
    counts[g], whose mean probability vector is means[g]. Group 0 is the uncovered pixels.

    Partition refinement, one mask at a time and only inside its bounding box: the pixels of
    mask r in group g move to a new group "g plus r", whose sum is sum[g] + probs[r] (regions
    are added in ascending order, like a per-pixel sum). Groups emptied this way stay unused.
    """
    from bench.mask_crops import bounding_boxes

    (R, C), (H, W) = probs.shape, masks.shape[1:]
    group = np.zeros((H, W), dtype=np.int64)
    sums, counts = np.zeros((max(64, 4 * R), C)), np.zeros(max(64, 4 * R), dtype=np.int64)
    total = 1  # groups so far; group 0 = no region
    for r, (y0, y1, x0, x1) in enumerate(bounding_boxes(masks).tolist()):
        if y0 == y1:
            continue
        inside, window = masks[r, y0:y1, x0:x1], group[y0:y1, x0:x1]
        old = window[inside]  # (|M_r|,) current groups of the mask's pixels
        present = np.zeros(total, dtype=bool)
        present[old] = True
        parents = np.flatnonzero(present)  # (k,) groups that r splits
        new = total + np.arange(len(parents))
        if new[-1] >= len(sums):  # grow the buffers geometrically
            sums = np.concatenate([sums, np.zeros_like(sums)])
            counts = np.concatenate([counts, np.zeros_like(counts)])
        sums[new], counts[new] = sums[parents] + probs[r], counts[parents] + 1
        lookup = np.zeros(total, dtype=np.int64)
        lookup[parents] = new
        window[inside] = lookup[old]
        total += len(parents)
    means = sums[:total] / np.maximum(counts[:total], 1)[:, None]
    return group, means, counts[:total]


def paint_regions(
    probs: Tensor, masks: Tensor, uncovered: str = "miss", *, pixels_per_chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Pixel predictions from region class probabilities (the paper's avg-after-softmax).

    A pixel's class probabilities are the mean of the probability vectors of all regions
    containing it; its class is the argmax, ties going to the lower class index.

    With probs on the CPU, pixels are grouped by the set of regions covering them
    (``_region_set_means``): each distinct set's mean is computed once, in float64, and the
    pixels take their group's class — a few thousand groups instead of H*W pixels. On another
    device: (masks (R,HW)^T @ probs (R,C)) / coverage, in chunks of pixels.

    Args:
        probs: (R, C) float, one row per region (softmax outputs; any finite scores work).
        masks: (R, H, W) bool; regions may overlap and need not cover the image. R may be 0.
        uncovered: what a pixel covered by no region gets:
            "miss" (default): ``NO_PREDICTION`` (-1). ``confusion_matrix`` counts it as a false
                negative of the pixel's true class, never as a correct prediction.
            "nearest": the prediction of the nearest covered pixel (Euclidean distance, via
                ``scipy.ndimage.distance_transform_edt``; equidistant ties are broken by scipy).
                If no pixel is covered, every pixel stays ``NO_PREDICTION``.
            "background": class 0, as the released code does (its prediction map starts at 0).
                That is its VOC behaviour; for ADE in reduced labels (0 = wall) the released code
                behaves like "miss", because its 0 becomes 255 after label reduction.
        pixels_per_chunk: pixels per matmul on a non-CPU device; default keeps each chunk near
            4M float elements.

    Returns:
        pred: (H, W) int64 class indices (or NO_PREDICTION), on the device of ``probs``.
        coverage: (H, W) int64, the number of regions containing each pixel.
    """
    if uncovered not in UNCOVERED_POLICIES:
        raise ValueError(f"uncovered={uncovered!r}; valid policies: {', '.join(UNCOVERED_POLICIES)}")
    if probs.dim() != 2 or masks.dim() != 3 or probs.shape[0] != masks.shape[0]:
        raise ValueError(
            f"expected probs (R, C) and masks (R, H, W), got {tuple(probs.shape)} and {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}; threshold or cast them first (masks > 0)")
    if probs.shape[1] == 0:
        raise ValueError("probs has zero classes")
    if not torch.isfinite(probs).all():
        raise ValueError("probs contains NaN or Inf (an empty region's pooled feature is NaN)")
    R, C = probs.shape
    _, H, W = masks.shape
    if probs.device.type == "cpu":
        group, means, counts = _region_set_means(probs.detach().double().numpy(), masks.cpu().numpy())
        best = np.where(counts > 0, means.argmax(axis=1), NO_PREDICTION)  # np.argmax: first maximum
        pred, coverage = torch.from_numpy(best[group]), torch.from_numpy(counts[group])
    else:
        dtype = torch.promote_types(probs.dtype, torch.float32)  # never average in fp16/bf16
        probs = probs.to(dtype)
        flat = masks.reshape(R, H * W).to(probs.device)
        coverage = flat.sum(0)  # (HW,) int64
        pred = torch.full((H * W,), NO_PREDICTION, dtype=torch.int64, device=probs.device)
        step = pixels_per_chunk or max(1, _CHUNK_ELEMENTS // max(R, C))
        for start in range(0, H * W, step):
            cov = coverage[start : start + step]  # (P,)
            summed = flat[:, start : start + step].T.to(dtype) @ probs  # (P, C)
            mean = summed / cov.clamp(min=1).unsqueeze(1).to(dtype)
            pred[start : start + step] = torch.where(cov > 0, mean.argmax(1), NO_PREDICTION)
        pred, coverage = pred.reshape(H, W), coverage.reshape(H, W)

    missing = coverage == 0
    if uncovered == "background":
        pred[missing] = 0
    elif uncovered == "nearest" and missing.any() and not missing.all():
        from scipy import ndimage

        # For every uncovered (non-zero) pixel, the (row, col) of the nearest covered (zero) one.
        rows, cols = ndimage.distance_transform_edt(
            missing.cpu().numpy(), return_distances=False, return_indices=True
        )
        pred = pred[torch.from_numpy(rows).to(pred.device), torch.from_numpy(cols).to(pred.device)]
    return pred, coverage
