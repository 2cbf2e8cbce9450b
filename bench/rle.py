"""COCO run-length encoding of mask stacks (pycocotools), JSON-able."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(R, H, W) bool -> R COCO RLEs ``{"size": [H, W], "counts": str}``."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def decode_rles(rles: list[dict]) -> np.ndarray:
    """COCO RLEs -> (R, H, W) bool (R = 0 gives shape (0, 0, 0): callers know H, W)."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    coded = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    return mask_utils.decode(coded).transpose(2, 0, 1).astype(bool)
