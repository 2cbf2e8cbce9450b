"""Region labels from ground truth: per-region class histograms and the labelling rule."""
from __future__ import annotations

import numpy as np
import torch

from bench.mask_crops import MaskCrops, ranks


def class_histogram(masks: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255,
                    crops: MaskCrops | None = None) -> np.ndarray:
    """Pixel counts of each class inside each region.

    masks (R, H, W) bool, label (H, W) int with values in [0, C) or ``ignore_index``
    -> (R, C + 1) int32; column C counts ignore pixels. Masks may overlap: each counts its own pixels.
    ``crops``: the masks' ``bench.mask_crops.MaskCrops``, if already made (shared with the RLEs).

    Counted on runs, not pixels: each mask's runs of pixels in column-major order (its COCO RLE
    runs) are cut where the label changes along that order, and every piece adds its length to
    one (mask, class) cell; a few pieces per column of a mask instead of every pixel, and never an
    H*W x (C+1) one-hot matrix (~210 MB, ~130 ms per image at ADE20K size).
    """
    if masks.shape[1:] != label.shape:
        raise ValueError(f"masks are {masks.shape[1:]} but the label map is {label.shape}")
    count, area = len(masks), label.size
    values = label.T.reshape(-1)  # (H*W,) column-major, as the runs
    # (K + 1,) where the value changes along that order, and a sentinel; each piece between two
    # changes is one value, and every value of the map begins one: the columns of those are checked
    change = np.append(np.flatnonzero(values[1:] != values[:-1]) + 1, area)
    column = _columns(values[np.append(0, change[:-1])] if area else values, num_classes, ignore_index)
    starts, ends = (crops or MaskCrops.of(masks)).runs  # (M,) r * H * W + x * H + y, ends inclusive
    if len(starts) == 0:
        return np.zeros((count, num_classes + 1), dtype=np.int32)
    mask, first = np.divmod(starts, area)
    stop = ends + 1 - mask * area
    lo, hi = np.searchsorted(change, first, side="right"), np.searchsorted(change, stop - 1, side="right")
    pieces = hi - lo + 1  # (M,) runs are cut at the changes inside them
    run, k = np.repeat(np.arange(len(starts)), pieces), ranks(pieces)  # (P,) each piece's run and rank in it
    piece = lo[run] + k  # the value piece it lies in (its index into column)
    begin = np.where(k == 0, first[run], change[piece - 1])  # index -1 (the sentinel) is never chosen
    end = np.where(k == pieces[run] - 1, stop[run], change[piece])
    cells = mask[run] * (num_classes + 1) + column[piece]
    counts = np.bincount(cells, weights=end - begin, minlength=count * (num_classes + 1))  # exact below 2**53
    return counts.reshape(count, num_classes + 1).astype(np.int32)


def _columns(label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """label values -> histogram columns of the same shape (the class, or C for ``ignore_index``);
    raises naming the values outside [0, C) that are not the ignore index. uint8 labels (every
    dataset's) go through a 256-entry uint8 table when C < 255 (255 marks a bad value), ~0.3 ms at
    ADE20K size instead of ~2 ms of per-pixel comparisons on an int64 copy."""
    if label.dtype == np.uint8 and num_classes < 255:
        table = np.where(np.arange(256) < num_classes, np.arange(256), 255).astype(np.uint8)
        if 0 <= ignore_index < 256:
            table[ignore_index] = num_classes
        column = np.take(table, label)
        if label.size == 0 or column.max() < 255:
            return column
    values = label.astype(np.int64)
    bad = (values != ignore_index) & ((values < 0) | (values >= num_classes))
    if bad.any():
        raise ValueError(f"label values {sorted(set(values[bad].tolist()))[:10]} are outside [0, {num_classes}) "
                         f"and not the ignore index {ignore_index}: check dataset.num_classes")
    return np.where(values == ignore_index, num_classes, values)


LABEL_DENOMINATORS = ("labelled", "all")


def region_labels(hist: torch.Tensor, threshold: float = 0.5, denominator: str = "labelled") -> torch.Tensor:
    """The training label of each region, or -1 for regions left out of the loss.

    hist (N, C + 1) pixel counts (last column: ignore pixels) -> (N,) int64.
    A region takes its majority class when that class covers strictly more than ``threshold``
    of the region's pixels, counted over ``denominator``:

    ``labelled`` (default): the region's labelled pixels only, so ignore pixels (VOC's void
        borders, ADE20K's "other") neither vote nor dilute the vote; a region with no labelled
        pixel gets -1.
    ``all``: every pixel of the region, ignore pixels included (the released code's rule,
        official-code-spec §4): a region half void and half "person" is left out at 0.5.

    Ties (possible below threshold 0.5) go to the lower class id.
    """
    if denominator not in LABEL_DENOMINATORS:
        raise ValueError(f"model.label_denominator={denominator!r}; valid: {', '.join(LABEL_DENOMINATORS)}")
    counts = hist[:, :-1]
    total = counts.sum(dim=1) if denominator == "labelled" else hist.sum(dim=1)
    count, cls = counts.max(dim=1)  # max returns the first maximum: lower id wins ties
    keep = (count.double() > threshold * total.double()) & (count > 0)
    return torch.where(keep, cls, torch.full_like(cls, -1))
