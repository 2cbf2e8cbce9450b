"""Pool a (d, h, w) patch-feature grid into one d-vector per region mask.

The grid comes from a backbone that centre-padded the (H, W) image to (h*p, w*p) with
pad-before = pad // 2 (``bench.backbones``); masks are (R, H, W) on the unpadded image.

Modes (paper Table 2):
  mean        the paper's method: upsample the grid bilinearly (align_corners=False) to
              (h*p, w*p), crop the image window, average the features over each mask's pixels.
  max         the same upsampling, channel-wise max over the mask's pixels.
  downsample  the "downsample masks" ablation, fixed: see ``pool_regions``.

Two deliberate differences from the released ``process_regions.py``:
  - the crop offset is the padding offset (top = (h*p - H) // 2, left = (w*p - W) // 2);
    the released code used torchvision's CenterCrop, whose round-half-even offset is one pixel
    off whenever the pad is 3, 7, 11, ... pixels;
  - an empty mask gives a zero vector (or an error with ``empty="error"``), never NaN, and no
    mask is ever dropped: the output always has R rows.

``pool_regions`` never builds the (d, H, W) upsampled map (the released code needed 1.4 GB
per ADE image for ViT-L); ``pool_regions_reference`` does, literally, and is the slow,
obviously-correct reference that the tests and benchmarks compare against.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench.exact_sums import weighted_sums
from bench.mask_crops import bounding_boxes
from bench.padding import center_pad_amounts

POOLING_MODES = ("mean", "max", "downsample")
EMPTY_POLICIES = ("zero", "error")


def linear_interpolation_matrix(size: int, grid: int, patch_size: int, offset: int) -> torch.Tensor:
    """(size, grid) float32: row y holds the weights PyTorch's linear interpolation
    (align_corners=False) from ``grid`` to ``grid * patch_size`` samples gives the grid cells
    at output position ``offset + y``; ``interpolation_numerators / (2 * patch_size)``."""
    return (interpolation_numerators(size, grid, patch_size, offset) / (2 * patch_size)).float()


def interpolation_numerators(size: int, grid: int, patch_size: int, offset: int) -> torch.Tensor:
    """(size, grid) float64 holding integers: ``linear_interpolation_matrix`` times 2p, exactly.

    Source coordinate src = (dst + 0.5) / p - 0.5 = (2 dst + 1 - p) / 2p, clamped at 0; weights
    1 - frac and frac go to floor(src) and floor(src) + 1, and both to the last cell past the
    end, exactly as ``upsample_linear1d``/``upsample_bilinear2d`` do. Every weight is a multiple
    of 1/2p, so the numerators are integers in [0, 2p] and each row sums to 2p.
    """
    twice = (2 * (torch.arange(size) + offset) + 1 - patch_size).clamp(min=0)  # 2p * src
    lower = (twice // (2 * patch_size)).clamp(max=grid - 1)
    upper = (lower + 1).clamp(max=grid - 1)
    upper_weight = twice - 2 * patch_size * lower
    matrix = torch.zeros(size, grid, dtype=torch.float64)
    rows = torch.arange(size)
    matrix.index_put_((rows, lower), (2 * patch_size - upper_weight).double(), accumulate=True)
    matrix.index_put_((rows, upper), upper_weight.double(), accumulate=True)
    return matrix


def box_matrix(size: int, grid: int, patch_size: int, offset: int) -> torch.Tensor:
    """(size, grid) float64 one-hot: position y lies in patch (offset + y) // patch_size."""
    return F.one_hot((torch.arange(size) + offset) // patch_size, grid).double()


def _neighbours(size: int, grid: int, patch_size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two grid cells (lower, upper: (size,) int64) and the upper weight ((size,) float64)
    of output positions offset .. offset + size - 1."""
    source = ((torch.arange(size, dtype=torch.float64) + offset + 0.5) / patch_size - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=grid - 1)
    upper = (lower + 1).clamp(max=grid - 1)
    return lower, upper, source - lower


def empty_masks(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(R, H, W) -> (R,) bool, True where a mask has no pixel."""
    masks = _as_bool_tensor(masks)
    return ~masks.flatten(1).any(dim=1)


def pool_regions(features: torch.Tensor, masks: torch.Tensor | np.ndarray, patch_size: int,
                 mode: str = "mean", empty: str = "zero", chunk_elements: int = 1 << 24,
                 boxes: np.ndarray | None = None) -> torch.Tensor:
    """Pool features (d, h, w) over masks (R, H, W) bool -> (R, d) float32, on features' device.

    ``features`` is the grid of a backbone with patch size p that centre-padded the (H, W) image,
    so (h, w) must be (ceil(H/p), ceil(W/p)). float16/bfloat16 features are accepted.

    mean and downsample are bit-reproducible: the result does not depend on the BLAS, its code
    path for the CPU, memory alignment, thread count or device. Every weight is an integer
    (interpolation weights times 2p, or 0/1), so the weights are exact float64 sums, and the
    weighted sums of features are order-independent (``bench.exact_sums``); one division by the
    integer normaliser and the cast to float32 follow. max is elementwise (no sums to order).

    mean: equal to ``pool_regions_reference`` (upsample, crop, masked mean) but computed without
        the (d, H, W) map. Bilinear upsampling is separable and linear: with Ay (H, h) and
        Ax (W, w) the interpolation matrices of the cropped window, the mean over mask M is
        features . (Ay^T M Ax) / |M|. The (R, h, w) weights come from matmuls of each mask's
        bounding box (CPU) or batched matmuls over chunks of masks, then one (R, h*w) @ (h*w, d)
        weighted sum.
    max: the exact channel-wise max of the upsampled features over the mask's pixels, each
        pixel's value computed from its 4 bilinear neighbours, in chunks of pixels, and only at
        the few mask pixels that can hold a maximum (see ``_max_pool``).
    downsample: each mask is placed at its padding offset in the padded frame and each patch's
        coverage (fraction of its p*p pixels in the mask) is computed; the features of the
        patches with coverage >= 0.5 are averaged with equal weights. If no patch reaches 0.5,
        the single patch of largest coverage is used (first in raster order on ties), so a small
        mask never vanishes (the released code silently dropped such masks).

    Empty masks: a mask with no pixel gives a zero vector in every mode (``empty="zero"``), or
    ``empty="error"`` raises a ValueError naming the empty indices. ``empty_masks`` finds them.

    ``chunk_elements`` caps the size of the temporary tensors (elements, not bytes).
    ``boxes``: the masks' ``bench.mask_crops.bounding_boxes`` if known (CPU pooling reads each
    mask's box only; the caller may share them with later work).
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode '{mode}'; valid modes: {list(POOLING_MODES)}")
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"unknown empty-mask policy '{empty}'; valid policies: {list(EMPTY_POLICIES)}")
    masks = _as_bool_tensor(masks)
    d, h, w = _check_shapes(features, masks, patch_size)
    device = features.device
    if len(masks) == 0:
        return torch.zeros(0, d, dtype=torch.float32, device=device)
    height, width = masks.shape[1:]
    top, left = center_pad_amounts(height, patch_size)[0], center_pad_amounts(width, patch_size)[0]
    flat = features.detach().float().reshape(d, h * w).T  # (h*w, d)

    if mode == "max":
        is_empty = empty_masks(masks).to(device)
        _raise_if_empty(is_empty, empty)
        return _max_pool(flat, masks, patch_size, (h, w), (top, left), chunk_elements, boxes)
    if mode == "mean":  # integer weights: (2p)^2 times the bilinear ones
        along_y = interpolation_numerators(height, h, patch_size, top)
        along_x = interpolation_numerators(width, w, patch_size, left)
    else:
        along_y = box_matrix(height, h, patch_size, top)
        along_x = box_matrix(width, w, patch_size, left)
    weights, areas = _mask_moments(masks, along_y.to(device), along_x.to(device), chunk_elements, boxes)
    weights = weights.flatten(1)  # (R, h*w) exact integers
    is_empty = areas == 0
    _raise_if_empty(is_empty, empty)
    if mode == "mean":
        divisor = areas * (2 * patch_size) ** 2
    else:  # weights are per-patch pixel counts
        selected = 2 * weights >= patch_size * patch_size
        fallback = ~selected.any(dim=1) & ~is_empty
        selected[fallback] = F.one_hot(weights[fallback].argmax(dim=1), h * w).bool()
        weights, divisor = selected.double(), selected.sum(dim=1).double()
    return (weighted_sums(weights, flat) / divisor.clamp(min=1)[:, None]).float()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block; the thread count is restored after.

    For loops of many small ops: with intra-op threads each op ends in a thread barrier, and on
    a CPU shared with other jobs a descheduled thread stalls every barrier (bounding-box
    moments at 1024x1024: 4.7 s on two threads vs 30 ms on one, on this busy 2-core machine).
    Not thread-safe: another Python thread's torch ops also run on one thread meanwhile.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _raise_if_empty(is_empty: torch.Tensor, empty: str) -> None:
    if empty == "error" and is_empty.any():
        raise ValueError(f"masks {is_empty.nonzero().flatten().tolist()} are empty; drop them before "
                         "pooling or pass empty='zero' to get zero vectors for them")


def _mask_moments(masks: torch.Tensor, along_y: torch.Tensor, along_x: torch.Tensor,
                  chunk_elements: int, boxes: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """masks (R, H, W), along_y (H, h), along_x (W, w) -> ((R, h, w) along_y^T M_r along_x, (R,) |M_r|)
    in the matrices' dtype; exact for integer-valued float64 matrices (integer sums below 2^53).

    CPU masks: computed on each mask's bounding box only (``_box_moments``). Masks on another
    device: dense batched matmuls over chunks of masks; the areas come out of the same matmuls:
    a column of ones appended to both matrices makes entry (h, w) equal 1^T M 1.
    """
    if masks.device.type == "cpu" and along_y.device.type == "cpu":
        with one_thread():
            return _box_moments(masks.numpy(), along_y, along_x, boxes)
    height, width = masks.shape[1:]
    h, w = along_y.shape[1], along_x.shape[1]
    along_y = torch.cat([along_y, along_y.new_ones(height, 1)], dim=1)  # (H, h+1)
    along_x = torch.cat([along_x, along_x.new_ones(width, 1)], dim=1)   # (W, w+1)
    chunk = max(1, chunk_elements // (height * width))
    out = []
    for start in range(0, len(masks), chunk):
        block = masks[start:start + chunk].to(along_y.device, along_y.dtype)  # (c, H, W)
        if h <= w:  # contract the image side with the smaller grid side first
            out.append((along_y.T @ block) @ along_x)
        else:
            out.append(along_y.T @ (block @ along_x))
    moments = torch.cat(out)  # (R, h+1, w+1)
    return moments[:, :h, :w], moments[:, h, w]


def _support(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(size, grid) interpolation matrix -> (first, stop) (size,) int: row y's non-zero columns lie in first[y]:stop[y]."""
    nonzero = matrix != 0
    return nonzero.argmax(axis=1), matrix.shape[1] - nonzero[:, ::-1].argmax(axis=1)


def _box_moments(masks: np.ndarray, along_y: torch.Tensor, along_x: torch.Tensor,
                 boxes: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``_mask_moments`` on CPU: for each mask only its bounding box (y0:y1, x0:x1) and the grid
    cells its rows and columns reach (first[y0]:stop[y1-1], both matrices are banded and
    monotone) enter the matmuls. SAM-like masks' boxes total ~1/40 of R*H*W at ADE20K size, so
    this does ~1/40 of the dense work and never converts the whole stack to float. The small
    matmuls are torch's (numpy's BLAS threads cannot be limited without another package)."""
    count, (h, w) = len(masks), (along_y.shape[1], along_x.shape[1])
    first_y, stop_y = _support(along_y.numpy())
    first_x, stop_x = _support(along_x.numpy())
    weights = torch.zeros(count, h, w, dtype=along_y.dtype)
    areas = np.zeros(count, dtype=np.float64)
    boxes = bounding_boxes(masks) if boxes is None else boxes
    for r, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        if y0 == y1:
            continue
        crop = masks[r, y0:y1, x0:x1]
        i0, i1, j0, j1 = first_y[y0], stop_y[y1 - 1], first_x[x0], stop_x[x1 - 1]
        block, ay, ax = torch.from_numpy(crop).to(along_y.dtype), along_y[y0:y1, i0:i1], along_x[x0:x1, j0:j1]
        weights[r, i0:i1, j0:j1] = (ay.T @ block) @ ax if i1 - i0 <= j1 - j0 else ay.T @ (block @ ax)
        areas[r] = np.count_nonzero(crop)
    return weights, torch.from_numpy(areas)


def _max_pool(flat: torch.Tensor, masks: torch.Tensor, patch_size: int, grid: tuple[int, int],
              offsets: tuple[int, int], chunk_elements: int, boxes: np.ndarray | None = None) -> torch.Tensor:
    """flat (h*w, d), masks (R, H, W) -> (R, d) channel-wise max of the bilinear upsampling over
    each mask's pixels (zeros for empty masks).

    Exact, but evaluated at few pixels (``_max_candidates``): only the candidates are
    interpolated from their 4 neighbours, in chunks of pixels, and reduced per mask.

    The loop issues thousands of small ops. With torch's intra-op threads each one ends in a
    thread barrier, and on a CPU shared with other jobs a descheduled thread stalls every
    barrier: 2.9 s instead of 0.07 s at ADE20K size on a busy 2-core machine. So on the CPU the
    loop runs on one thread (``one_thread``).
    """
    if flat.device.type == "cpu":
        with one_thread():
            return _max_pool_loop(flat, masks, patch_size, grid, offsets, chunk_elements, boxes)
    return _max_pool_loop(flat, masks, patch_size, grid, offsets, chunk_elements, boxes)


def _max_pool_loop(flat: torch.Tensor, masks: torch.Tensor, patch_size: int, grid: tuple[int, int],
                   offsets: tuple[int, int], chunk_elements: int, boxes: np.ndarray | None) -> torch.Tensor:
    """``_max_pool``'s work."""
    flat = flat.contiguous()  # rows are gathered: a transposed view would make every gather strided
    (h, w), (top, left), d = grid, offsets, flat.shape[1]
    height, width = masks.shape[1:]
    device = flat.device
    y0, y1, wy = (t.numpy() for t in _neighbours(height, h, patch_size, top))
    x0, x1, wx = (t.numpy() for t in _neighbours(width, w, patch_size, left))
    region, ys, xs = _max_candidates(masks.cpu().numpy(), y0, x0, h, w, boxes)
    # per candidate: the flat indices of its 4 neighbours and its two weights
    corners = [torch.from_numpy(a).to(device) for a in
               (y0[ys] * w + x0[xs], y0[ys] * w + x1[xs], y1[ys] * w + x0[xs], y1[ys] * w + x1[xs])]
    fy, fx = (torch.from_numpy(a).float()[:, None].to(device) for a in (wy[ys], wx[xs]))
    out = torch.zeros(len(masks), d, device=device)
    # chunks of 256 candidates keep the (c, d) temporaries in cache; index_select gathers
    # rows several times faster than advanced indexing
    pixel_chunk = max(1, min(chunk_elements // (5 * d), 256))
    bounds = np.searchsorted(region, np.arange(len(masks) + 1)).tolist()
    for r in range(len(masks)):
        best = None
        for first in range(bounds[r], bounds[r + 1], pixel_chunk):
            part = slice(first, min(first + pixel_chunk, bounds[r + 1]))
            c00, c01, c10, c11 = (flat.index_select(0, c[part]) for c in corners)
            upper = torch.lerp(c00, c01, fx[part])  # (c, d)
            lower = torch.lerp(c10, c11, fx[part])
            values = torch.lerp(upper, lower, fy[part]).amax(dim=0)
            best = values if best is None else torch.maximum(best, values)
        if best is not None:  # else the mask is empty: zeros
            out[r] = best
    return out


def _max_candidates(masks: np.ndarray, lower_y: np.ndarray, lower_x: np.ndarray, h: int,
                    w: int, boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, H, W) bool -> (region, y, x) int64 arrays of the pixels that can hold a channel's
    maximum of the bilinear upsampling over their mask, grouped by region.

    Along a row, pixels sharing the same left grid neighbour lower_x[x] form an interpolation
    interval in which every channel is affine (or constant) in a weight that is monotone in x,
    so the max over the mask's pixels of that interval is at its leftmost or rightmost one.
    Keep only those; then, among the survivors of one column sharing the same top neighbour
    lower_y[y], keep the topmost and bottommost for the same reason along y. Each mask is
    searched within its bounding box only.
    """
    height = masks.shape[1]
    regions, rows, cols = [], [], []
    boxes = bounding_boxes(masks) if boxes is None else boxes
    for r, (ya, yb, xa, xb) in enumerate(boxes.tolist()):
        if ya == yb:
            continue
        ys, xs = np.nonzero(masks[r, ya:yb, xa:xb])  # row-major: sorted by (y, x)
        ys, xs = ys + ya, xs + xa
        keep = _run_ends(ys * w + lower_x[xs])       # ends of each (row, x-interval) run
        ys, xs = ys[keep], xs[keep]
        order = np.argsort(xs * height + ys)         # now sorted by (x, y)
        ys, xs = ys[order], xs[order]
        keep = _run_ends(xs * h + lower_y[ys])       # ends of each (column, y-interval) run
        rows.append(ys[keep]), cols.append(xs[keep]), regions.append(np.full(int(keep.sum()), r))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(regions), np.concatenate(rows), np.concatenate(cols)


def _run_ends(keys: np.ndarray) -> np.ndarray:
    """(N,) keys with equal keys adjacent -> (N,) bool, True at the first and last element of each run."""
    change = keys[1:] != keys[:-1]
    return np.concatenate([[True], change]) | np.concatenate([change, [True]])


def pool_regions_reference(features: torch.Tensor, masks: torch.Tensor | np.ndarray, patch_size: int,
                           mode: str = "mean") -> torch.Tensor:
    """The slow literal version of ``pool_regions`` (same arguments, empty masks -> zeros), (R, d).

    mean/max: ``F.interpolate`` the whole grid to (h*p, w*p), crop the image window at the
    padding offset, reduce over each mask's pixels. downsample: pad each mask into the padded
    frame, ``avg_pool2d`` by p, select patches with coverage >= 0.5 (else the largest).
    Memory is O(d*H*W).
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode '{mode}'; valid modes: {list(POOLING_MODES)}")
    masks = _as_bool_tensor(masks).to(features.device)
    d, h, w = _check_shapes(features, masks, patch_size)
    height, width = masks.shape[1:]
    top, left = center_pad_amounts(height, patch_size)[0], center_pad_amounts(width, patch_size)[0]
    features = features.float()
    out = torch.zeros(len(masks), d, device=features.device)
    if mode == "downsample":
        frame = torch.zeros(len(masks), h * patch_size, w * patch_size, device=features.device)
        frame[:, top:top + height, left:left + width] = masks.float()
        coverage = F.avg_pool2d(frame[:, None], patch_size)[:, 0]  # (R, h, w)
        for r in range(len(masks)):
            if not masks[r].any():
                continue
            chosen = coverage[r].flatten() >= 0.5
            if not chosen.any():
                chosen = F.one_hot(coverage[r].flatten().argmax(), h * w).bool()  # first maximum
            out[r] = features.flatten(1)[:, chosen].mean(dim=1)
        return out
    upsampled = F.interpolate(features[None], size=(h * patch_size, w * patch_size), mode="bilinear",
                              align_corners=False)[0]
    upsampled = upsampled[:, top:top + height, left:left + width]  # (d, H, W)
    for r in range(len(masks)):
        if masks[r].any():
            values = upsampled[:, masks[r]]  # (d, |M_r|)
            out[r] = values.mean(dim=1) if mode == "mean" else values.amax(dim=1)
    return out


def _as_bool_tensor(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(R, H, W) bool or integer 0/1 array/tensor -> bool tensor (shares memory when already bool)."""
    masks = torch.as_tensor(masks)
    if masks.dtype.is_floating_point or masks.dtype.is_complex:
        raise TypeError(f"masks must be bool or integer 0/1, got {masks.dtype}; threshold soft masks "
                        "first, e.g. masks > 0.5")
    return masks if masks.dtype == torch.bool else masks != 0


def _check_shapes(features: torch.Tensor, masks: torch.Tensor, patch_size: int) -> tuple[int, int, int]:
    """Validate features (d, h, w) against masks (R, H, W); return (d, h, w)."""
    if features.ndim != 3:
        raise ValueError(f"features must be (d, h, w), got shape {tuple(features.shape)}; "
                         "drop a batch dimension with features[0]")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (R, H, W), got shape {tuple(masks.shape)}")
    d, h, w = features.shape
    height, width = masks.shape[1:]
    expected = (-(-height // patch_size), -(-width // patch_size))
    if len(masks) and (h, w) != expected:
        raise ValueError(
            f"a {height}x{width} image centre-padded to a multiple of patch_size={patch_size} has a "
            f"{expected[0]}x{expected[1]} grid, but features are {h}x{w}; pass the backbone's "
            "patch_size, and features and masks of the same image")
    return d, h, w
