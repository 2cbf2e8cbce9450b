"""COCO run-length encoding of mask stacks, JSON-able.

``encode_rles`` produces pycocotools' ``mask.encode`` strings byte for byte without handing it the
stack: pycocotools wants (H, W, R) in Fortran order, and making that copy of a bool (R, H, W) stack
(two strided transposes) cost ~55 ms of its ~70 ms at ADE20K size (106 masks, 512x683). Here the
runs come from the masks' bounding-box crops, already in column-major order
(``bench.mask_crops.MaskCrops.runs``), ``run_counts`` turns them into COCO counts and
``rle_strings`` is pycocotools' ``rleToString`` in numpy.
``tests/test_rle.py`` checks them against pycocotools.
"""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from bench.mask_crops import MaskCrops, ranks


def mask_areas(masks: np.ndarray, crops: MaskCrops | None = None) -> np.ndarray:
    """(R, H, W) bool -> (R,) int64 pixel counts (``crops``: the masks' ``MaskCrops``, if made)."""
    return (crops or MaskCrops.of(masks)).areas


def run_counts(starts: np.ndarray, ends: np.ndarray, count: int, area: int) -> tuple[np.ndarray, np.ndarray]:
    """``MaskCrops.runs`` of ``count`` masks of ``area`` pixels -> (counts (K,) int64, lengths (count,)):
    each mask's COCO counts (alternating runs of zeros and ones, zeros first, possibly 0), concatenated.

    As pycocotools' ``rleEncode``: the last run is always written, so a mask ending in ones has no
    trailing zero count, an empty mask is ``[area]``, and a 0-pixel image ``[0]``."""
    mask = starts // max(area, 1)  # a 0-pixel image has no runs
    runs = np.bincount(mask, minlength=count)  # (count,) runs per mask
    lengths = 2 * runs + 1  # zeros, ones, zeros, ..., ones, zeros
    offset = np.cumsum(lengths) - lengths  # where each mask's counts begin
    rank = ranks(runs)  # a run's index within its mask
    previous_end = np.where(rank > 0, np.roll(ends, 1) + 1, mask * area)  # where the zeros before it begin
    counts = np.empty(lengths.sum(), dtype=np.int64)
    at = offset[mask] + 2 * rank
    counts[at] = starts - previous_end
    counts[at + 1] = ends - starts + 1
    last_end = np.zeros(count, dtype=np.int64)
    last_end[mask] = ends - mask * area + 1  # runs are sorted: the last write per mask wins
    counts[offset + lengths - 1] = area - last_end
    drop = (runs > 0) & (last_end == area)  # ends in ones: no trailing zero run
    keep = np.ones(len(counts), dtype=bool)
    keep[(offset + lengths - 1)[drop]] = False
    return counts[keep], lengths - drop


def rle_strings(counts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Concatenated COCO counts (K,) with each mask's ``lengths`` (R,) -> R compressed strings,
    byte for byte pycocotools' ``rleToString``: from the fourth count on, each is stored as its
    difference to the count two before; then 5 bits per character, low bits first, bit 0x20 set
    while more characters follow (a sign-extended stop: 0x10 of the last character is the sign),
    plus 48."""
    if len(counts) == 0:
        return []
    first = np.cumsum(lengths) - lengths
    index = ranks(lengths)  # position within its mask
    value = counts.astype(np.int64)
    later = np.flatnonzero(index > 2)
    value[later] -= counts[later - 2]
    # characters per value: the fewest 5-bit groups holding it as a signed number, i.e.
    # bit_length(v if v >= 0 else ~v) // 5 + 1 (exact in float64: pycocotools' counts are 32-bit)
    chars = np.frexp((value ^ (value >> 63)).astype(np.float64))[1].astype(np.int64) // 5 + 1
    ends = np.cumsum(chars)
    shift = 5 * (np.arange(ends[-1]) - np.repeat(ends - chars, chars))  # 5 x a character's place in its value
    text = (np.repeat(value, chars) >> shift) & 0x1F  # arithmetic shift, as C's on the signed long
    text += 48 + 0x20
    text[ends - 1] -= 0x20  # the last character of a value: no continuation bit
    text = text.astype(np.uint8).tobytes().decode("ascii")
    mask_ends = np.cumsum(np.add.reduceat(chars, first)).tolist()  # every mask has >= 1 count
    return [text[start:end] for start, end in zip([0] + mask_ends[:-1], mask_ends)]


def encode_rles(masks: np.ndarray, crops: MaskCrops | None = None) -> list[dict]:
    """(R, H, W) bool (or 0/1) -> R COCO RLEs ``{"size": [H, W], "counts": str}``, equal to pycocotools'.
    ``crops``: the masks' ``MaskCrops``, if already made (they are shared with the class histograms)."""
    count, height, width = np.shape(masks)
    if count == 0:
        return []
    starts, ends = (crops or MaskCrops.of(masks)).runs
    counts, lengths = run_counts(starts, ends, count, height * width)
    return [{"size": [height, width], "counts": s} for s in rle_strings(counts, lengths)]


def decode_rles(rles: list[dict]) -> np.ndarray:
    """COCO RLEs -> (R, H, W) bool (R = 0 gives shape (0, 0, 0): callers know H, W)."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    coded = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    return mask_utils.decode(coded).transpose(2, 0, 1).astype(bool)
