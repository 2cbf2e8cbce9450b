"""Semantic-segmentation metrics: region predictions to pixels, confusion matrix, mIoU.

The math is in plain functions; ``SegmentationMetric`` is a thin torchmetrics wrapper
around one fixed-size state, so it accumulates exactly over any batch split and over
DDP ranks (sum reduction, also with unequal update counts per rank).

    paint_regions(probs (R,C), masks (R,H,W))   -> pred (H,W) in {-1, 0..C-1}, coverage (H,W)
    confusion_matrix(pred, target, C)           -> (C, C+1) int64; column C = "no prediction"
    iou_from_confusion(confmat)                 -> dict of JSON-able numbers

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
the mean (its histograms never count class 149, in GT or prediction).
"""
from __future__ import annotations

import math

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


def iou_from_confusion(confmat: Tensor) -> dict:
    """IoU, accuracies and coverage from a (C, C+1) confusion matrix (see ``confusion_matrix``).

    Returns a dict of plain Python numbers and lists:
        miou            mean IoU over classes with non-zero union (NaN if there is none)
        iou_per_class   C floats; TP / (GT + Pred - TP), NaN where the union is zero
        absent_classes  class indices with zero union, i.e. excluded from ``miou``
        pixel_acc       correct pixels / scored pixels (uncovered pixels count as wrong)
        mean_class_acc  mean of acc_per_class over classes present in the ground truth
        acc_per_class   C floats; TP / GT, NaN where the class is absent from the GT
        num_pixels      scored (non-ignored) pixels
        uncovered_pixels  scored pixels that no region covered (column C)

    NaNs survive ``json.dump`` as the token ``NaN`` (Python reads it back; strict JSON parsers
    do not).
    """
    if confmat.dim() != 2 or confmat.shape[1] != confmat.shape[0] + 1:
        raise ValueError(f"confmat must have shape (C, C+1), got {tuple(confmat.shape)}")
    cm = confmat.detach().to("cpu", torch.int64)
    C = cm.shape[0]
    tp = cm.diagonal()  # (C,) the diagonal of the square part
    gt = cm.sum(1)  # (C,) includes uncovered pixels, so they are false negatives
    pred = cm[:, :C].sum(0)  # (C,)
    union = gt + pred - tp

    def ratio(num: Tensor, den: Tensor) -> list[float]:
        return [n / d if d > 0 else math.nan for n, d in zip(num.tolist(), den.tolist())]

    iou, acc = ratio(tp, union), ratio(tp, gt)
    present_iou = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    total = int(cm.sum())
    return {
        "miou": sum(present_iou) / len(present_iou) if present_iou else math.nan,
        "iou_per_class": iou,
        "absent_classes": [c for c, u in enumerate(union.tolist()) if u == 0],
        "pixel_acc": int(tp.sum()) / total if total else math.nan,
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

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)  # torchmetrics rejects unknown keyword arguments itself
        _check_ignore_index(ignore_index, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes + 1, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.confmat += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        """``iou_from_confusion`` of the synced matrix, plus the matrix itself as ``confusion``."""
        return {**iou_from_confusion(self.confmat), "confusion": self.confmat.tolist()}


def paint_regions(
    probs: Tensor, masks: Tensor, uncovered: str = "miss", *, pixels_per_chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Pixel predictions from region class probabilities (the paper's avg-after-softmax).

    A pixel's class probabilities are the mean of the probability vectors of all regions
    containing it; its class is the argmax, ties going to the lower class index. Computed as
    (masks (R,HW)^T @ probs (R,C)) / coverage, in chunks of pixels.

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
        pixels_per_chunk: pixels per matmul; default keeps each chunk near 4M float elements.

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
