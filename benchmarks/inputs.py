"""Synthetic benchmark inputs at realistic sizes (deterministic from a seed).

    make_case("ade20k")  -> Case: 512x683 image, 37x49x1024 grid, 106 masks (SAM-like blobs + SLIC fill)
    make_case("voc")     -> 375x500, 27x36x1024, 90 masks
    make_case("1024")    -> 1024x1024, 74x74x1024, 150 masks

The image is smooth colour noise with flat ellipses pasted on it, so SLIC (50 components,
compactness 8, the paper's settings) gives natural-looking superpixels. SAM-like masks are
ellipses of log-uniform area (0.05% .. 15% of the image) with noisy borders; they overlap and
leave part of the image uncovered, as SAM does. The masks of a case are the first ``n`` blobs
followed by the SLIC superpixels that fill what they leave uncovered (``merge_sam_slic``, the
paper's SAM+SLIC), with the smallest ``n`` that reaches the case's mask count.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

PATCH_SIZE = 14  # ViT-L/14
FEATURE_DIM = 1024
SIZES = {"ade20k": (512, 683, 106), "voc": (375, 500, 90), "1024": (1024, 1024, 150)}  # H, W, masks


@dataclass
class Case:
    name: str
    image: np.ndarray        # (H, W, 3) uint8
    sam: np.ndarray          # (n, H, W) bool, the SAM-like blobs
    slic: np.ndarray         # (H, W) int64 SLIC label map
    masks: np.ndarray        # (R, H, W) bool, sam then SLIC fill
    grid: torch.Tensor       # (d, h, w) float32 patch features

    def describe(self) -> str:
        height, width = self.image.shape[:2]
        d, h, w = self.grid.shape
        return (f"{height}x{width}, grid {h}x{w}x{d}, {len(self.masks)} masks "
                f"({len(self.sam)} SAM-like + {len(self.masks) - len(self.sam)} SLIC)")


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) float32: a cells x cells standard normal grid upsampled bicubically."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0, 0].numpy()


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: smooth colour noise, 25 flat ellipses, pixel noise."""
    image = np.stack([smooth_noise(rng, height, width, 6) * 40 + 128 for _ in range(3)], axis=-1)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(25):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.03, 0.25) * min(height, width)
        inside = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.5, 2))) ** 2 < 1
        image[inside] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def sam_like_masks(rng: np.random.Generator, height: int, width: int, n: int,
                   smallest: float = 0.0005, largest: float = 0.15) -> np.ndarray:
    """(<= n, H, W) bool: rotated ellipses with noisy borders, area log-uniform in
    [smallest, largest] of the image; empty ones (centred off-image and tiny) are dropped."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    masks = np.zeros((n, height, width), dtype=bool)
    for i in range(n):
        area = height * width * np.exp(rng.uniform(np.log(smallest), np.log(largest)))
        ratio = rng.uniform(0.4, 2.5)
        ry, rx = np.sqrt(area / np.pi / ratio), np.sqrt(area / np.pi * ratio)
        cy, cx, theta = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
        v = -(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
        masks[i] = (u / ry) ** 2 + (v / rx) ** 2 + 0.5 * smooth_noise(rng, height, width, 12) < 1
    return masks[masks.reshape(n, -1).any(axis=1)]


def slic_labels(image: np.ndarray) -> np.ndarray:
    """The paper's SLIC (fast-slic, 50 components, compactness 8) label map, int64."""
    from bench.regions import SlicRegions

    return SlicRegions(num_components=50, compactness=8, num_threads=1).label_map(image).astype(np.int64)


@lru_cache(maxsize=None)
def make_case(name: str, seed: int = 0, feature_dim: int = FEATURE_DIM) -> Case:
    """The named case (see ``SIZES``); cached, so treat the arrays as read-only."""
    from bench.regions.sam_slic import merge_sam_slic

    height, width, target = SIZES[name]
    rng = np.random.default_rng(seed)
    image = synthetic_image(rng, height, width)
    blobs = sam_like_masks(rng, height, width, target)
    labels = slic_labels(image)
    for n in range(1, len(blobs) + 1):
        masks = merge_sam_slic(blobs[:n], labels)
        if len(masks) >= target:
            break
    masks = masks[:target]  # drop surplus SLIC fill so the count is exact
    h, w = -(-height // PATCH_SIZE), -(-width // PATCH_SIZE)
    grid = torch.randn(feature_dim, h, w, generator=torch.Generator().manual_seed(seed))
    return Case(name, image, blobs[:n], labels, masks, grid)


def tiny_case(seed: int = 0, height: int = 61, width: int = 83, masks: int = 12, feature_dim: int = 16) -> Case:
    """A small case of the same construction (SLIC with 50 components still), for tests."""
    from bench.regions.sam_slic import merge_sam_slic

    rng = np.random.default_rng(seed)
    image = synthetic_image(rng, height, width)
    blobs = sam_like_masks(rng, height, width, masks, smallest=0.01, largest=0.3)
    labels = slic_labels(image)
    merged = merge_sam_slic(blobs, labels, min_pixels=10)
    grid = torch.randn(feature_dim, -(-height // PATCH_SIZE), -(-width // PATCH_SIZE),
                       generator=torch.Generator().manual_seed(seed))
    return Case("tiny", image, blobs, labels, merged, grid)
