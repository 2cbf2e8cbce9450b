"""Bring any decoded image to the one layout every stage expects: (H, W, 3) uint8, C-contiguous.

The released code fed ``np.array(PIL.Image)`` straight to fast-slic, which rejects grayscale
and RGBA arrays, so those images silently got no regions. Here every stage calls ``to_rgb8``
first. Accepted inputs (anything else raises, naming the shape and dtype):

    shape       (H, W) gray, (H, W, 1) gray, (H, W, 2) gray + alpha, (H, W, 3) RGB, (H, W, 4) RGBA
    dtype       uint8                       as is
                uint16 (16-bit PNG/TIFF)    round(v / 257): the exact inverse of the usual
                                            8 -> 16-bit expansion v * 257 (differs from v >> 8
                                            by at most 1)
                float16/32/64 in [0, 1]     round(v * 255); values up to half a uint8 step
                                            outside [0, 1] (resampling overshoot) are clipped
                bool                        False -> 0, True -> 255

Gray is replicated to three channels. Alpha is dropped, not composited: the colour channels
are kept as stored, which is what PIL's ``convert("RGB")`` does.

A decoded PIL image goes through ``pil_to_rgb8`` instead, which knows its mode (an array cannot
tell CMYK from RGBA, or palette indices from grey):

    mode                                  -> RGB
    RGB                                   as is
    1, L, LA, P (+ transparency), PA,     PIL's own ``convert("RGB")``: CMYK by PIL's formula
    RGBA, CMYK, YCbCr, LAB, HSV, ...      (255 - C - K, ...; an Adobe CMYK JPEG's inversion is undone
                                          by PIL's decoder; no ICC colour management), alpha dropped
    I;16, I;16B, I;16L, I;16N (16-bit)    round(v / 257), as uint16 arrays above; PIL's convert
                                          clips instead (every value above 255 becomes white)
    I (32-bit int; 16-bit PGM/PNG open    round(v / 257) if every value is in 0..65535, else an error
    in this mode)                         (PIL clips to 0..255)
    F (32-bit float)                      round(v * 255) if every value is in [0, 1], as float arrays
                                          above, else an error (PIL clips to 0..255)
"""
from __future__ import annotations

import numpy as np
from PIL import Image

_HALF_STEP = 0.5 / 255  # a float value this far outside [0, 1] still rounds to 0 or 255


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Any supported dtype -> uint8, same shape."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError(f"float image of shape {image.shape} contains NaN or inf values")
        low, high = float(image.min()), float(image.max())
        if low < -_HALF_STEP or high > 1 + _HALF_STEP:
            raise ValueError(
                f"float image values must lie in [0, 1], got [{low:.4g}, {high:.4g}]; "
                "for a [0, 255] image cast it with image.astype(np.uint8)")
        return np.rint(np.clip(image.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    raise TypeError(
        f"unsupported image dtype {image.dtype} (shape {image.shape}); expected uint8, uint16, "
        "float in [0, 1] or bool — e.g. a 16-bit PIL image in mode 'I' should be cast with "
        "np.asarray(img).astype(np.uint16)")


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any supported image (see module docstring) -> (H, W, 3) uint8, C-contiguous.

    May return ``image`` itself when it already is C-contiguous (H, W, 3) uint8.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = image[:, :, 0]  # gray (+ alpha): keep the gray channel
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # RGBA: drop alpha
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"unsupported image shape {image.shape} (dtype {image.dtype}); expected (H, W), "
            "(H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) — a (3, H, W) tensor needs "
            "image.transpose(1, 2, 0)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    image = _to_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def pil_to_rgb8(image: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> (H, W, 3) uint8, a writable copy (see the module docstring).

    Raises ValueError for a 32-bit integer image beyond 16 bits or a float image outside [0, 1].
    """
    if image.mode.startswith("I;16"):
        return to_rgb8(np.asarray(image).astype(np.uint16))  # native byte order (I;16B is big-endian)
    if image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"32-bit integer image with values {values.min()}..{values.max()}; only 16-bit "
                             "values 0..65535 are read (as v / 257)")
        return to_rgb8(values.astype(np.uint16))
    if image.mode == "F":
        return to_rgb8(np.array(image))
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def records_to_masks(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """Automatic-mask-generator records (binary ``segmentation``) -> (R, H, W) bool, empty ones dropped."""
    masks = [record["segmentation"] for record in records if record["segmentation"].any()]
    if not masks:
        return np.zeros((0, *shape), dtype=bool)
    return np.stack(masks).astype(bool, copy=False)
