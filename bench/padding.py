"""Centre padding to a multiple of the patch size (pad before = pad // 2, as DINOv2's CenterPadding)."""
from __future__ import annotations

import numpy as np


def padded_size(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``size``."""
    return -(-size // multiple) * multiple


def center_pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding of one side: before = pad // 2, after = pad - before."""
    pad = padded_size(size, multiple) - size
    return pad // 2, pad - pad // 2


def center_pad(image: np.ndarray, multiple: int) -> np.ndarray:
    """(H, W, ...) -> (Hp, Wp, ...) zero-padded as ``center_pad_amounts`` says."""
    pads = [center_pad_amounts(image.shape[0], multiple), center_pad_amounts(image.shape[1], multiple)]
    return np.pad(image, pads + [(0, 0)] * (image.ndim - 2))
