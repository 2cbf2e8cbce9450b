"""Average and max pooling of a (d, h, w) patch grid into R region vectors.

Ours: ``bench.pooling.pool_regions`` (mean: separable interpolation weights on each mask's
bounding box, then one matmul; max: exact, evaluated only at the pixels that can hold a maximum).
Reference: ``reference_pooling`` below, the released ``process_regions.py`` method literally —
upsample the whole grid bilinearly to the padded image size, crop the image window, and reduce
each mask's pixels (a boolean gather of d x |M| values per mask).
Check: max |ours - reference| / max |reference| over all R x d outputs (target 1e-4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.padding import center_pad_amounts
from bench.pooling import _mask_moments, linear_interpolation_matrix, pool_regions
from benchmarks.inputs import PATCH_SIZE, Case
from benchmarks.measure import relative_error


def reference_pooling(features: torch.Tensor, masks: torch.Tensor, patch_size: int, mode: str) -> torch.Tensor:
    """features (d, h, w), masks (R, H, W) bool -> (R, d): upsample, crop, masked mean/max."""
    d, h, w = features.shape
    height, width = masks.shape[1:]
    top, left = center_pad_amounts(height, patch_size)[0], center_pad_amounts(width, patch_size)[0]
    upsampled = F.interpolate(features[None].float(), size=(h * patch_size, w * patch_size), mode="bilinear",
                              align_corners=False)[0]
    upsampled = upsampled[:, top:top + height, left:left + width]  # (d, H, W)
    out = torch.zeros(len(masks), d)
    for r in range(len(masks)):
        values = upsampled[:, masks[r]]  # (d, |M_r|)
        out[r] = values.mean(dim=1) if mode == "mean" else values.amax(dim=1)
    return out


def blas_pooling(features: torch.Tensor, masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean pooling as ``pool_regions`` computed it before its sums were made exact: the same
    bounding-box moments in float32, then one float32 BLAS product (whose last bits follow the
    BLAS code path, the alignment and the thread count)."""
    d, h, w = features.shape
    height, width = masks.shape[1:]
    top, left = center_pad_amounts(height, patch_size)[0], center_pad_amounts(width, patch_size)[0]
    along_y = linear_interpolation_matrix(height, h, patch_size, top)
    along_x = linear_interpolation_matrix(width, w, patch_size, left)
    weights, areas = _mask_moments(masks, along_y, along_x, 1 << 24)
    weights = weights.flatten(1).float() / areas.float().clamp(min=1)[:, None]
    return weights @ features.float().reshape(d, h * w).T


def exact_workloads(case: Case) -> dict:
    """Ours: exact, order-independent sums; reference: the float32 BLAS sums they replaced."""
    masks = torch.from_numpy(case.masks)
    grid = case.grid.half().float()  # what extraction pools: grids go through float16
    return {"ours": lambda: pool_regions(grid, masks, PATCH_SIZE, mode="mean"),
            "reference": lambda: blas_pooling(grid, masks, PATCH_SIZE)}


def compare_exact(ours: torch.Tensor, reference: torch.Tensor) -> dict:
    abs_err, rel_err = relative_error(ours, reference)
    return {"max_abs_error": abs_err, "max_rel_error": rel_err, "ok": rel_err <= 1e-5,
            "text": f"max rel diff {rel_err:.1e}"}


def workloads(case: Case, mode: str) -> dict:
    masks = torch.from_numpy(case.masks)
    return {"ours": lambda: pool_regions(case.grid, masks, PATCH_SIZE, mode=mode),
            "reference": lambda: reference_pooling(case.grid, masks, PATCH_SIZE, mode)}


def compare(ours: torch.Tensor, reference: torch.Tensor) -> dict:
    abs_err, rel_err = relative_error(ours, reference)
    return {"max_abs_error": abs_err, "max_rel_error": rel_err, "ok": rel_err <= 1e-4,
            "text": f"max rel err {rel_err:.1e}"}
