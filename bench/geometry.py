"""Where a region is: its 2D box and centroid in the image, and its 3D centroid and extent in the room.

Pure numpy functions (float64 inside, float32 out) for the multi-view task's position embeddings.

Conventions
-----------
Pixels: (u, v) = (column, row); a pixel's centre has integer coordinates, as in OpenCV and in
ScanNet's intrinsics. A pinhole ``K`` is (3, 3) (a (4, 4) ScanNet intrinsics matrix is accepted and
its top-left block used); skew must be 0 (ScanNet's is).

Colour -> depth: ScanNet's colour (1296x968) and depth (640x480) cameras have different
intrinsics but are registered (same centre and orientation), so a colour pixel's ray
``K_color^-1 [u, v, 1]`` lands in the depth image at ``K_depth`` times that ray; the colour pixel
takes the *nearest* depth pixel (``floor(x + 0.5)``), or none when that falls outside the depth
image. Depth 0 means "no measurement".

3D points: every depth pixel is back-projected once per frame, through its own ray
``K_depth^-1 [u_d, v_d, 1]`` times its depth (z, metres), then to world coordinates with the
camera-to-world ``pose``. A colour pixel's point is its nearest depth pixel's point: the depth
image holds the measurement, so work stays at depth resolution (307k points) and each colour
pixel only indexes. A region's points are the multiset over its colour pixels with a valid depth
(a depth pixel seen by four colour pixels counts four times, so every colour pixel weighs the same).

3D position of a region: centroid = per-axis median of its points (robust to depth noise and to
pixels that leak onto the background at object borders); extent = per-axis 90th minus 10th
percentile (``EXTENT_PERCENTILES``; numpy's default linear interpolation), so a few stray points
neither set the centre nor the size. A region with no valid-depth pixel, or every region of a frame
whose pose has a non-finite entry (ScanNet has -inf/NaN poses), is invalid and gets zeros.
"""
from __future__ import annotations

import numpy as np

EXTENT_PERCENTILES = (10.0, 90.0)


def as_intrinsics(K: np.ndarray) -> np.ndarray:
    """(3, 3) or (4, 4) intrinsics -> (3, 3) float64; raises on non-finite values, skew or f <= 0."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (4, 4):
        K = K[:3, :3]
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be (3, 3) or (4, 4), got shape {K.shape}")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics must be finite with positive focal lengths, got\n{K}")
    if K[0, 1] != 0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise ValueError(f"intrinsics must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew), got\n{K}")
    return K


def color_to_depth_pixels(u: np.ndarray, v: np.ndarray, K_color: np.ndarray,
                          K_depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour pixel coordinates u, v (any same shape) -> depth pixel coordinates (u_d, v_d), float64,
    unrounded: the colour ray ``K_color^-1 [u, v, 1]`` projected through ``K_depth``."""
    Kc, Kd = as_intrinsics(K_color), as_intrinsics(K_depth)
    x = (np.asarray(u, dtype=np.float64) - Kc[0, 2]) / Kc[0, 0]
    y = (np.asarray(v, dtype=np.float64) - Kc[1, 2]) / Kc[1, 1]
    return Kd[0, 0] * x + Kd[0, 2], Kd[1, 1] * y + Kd[1, 2]


def nearest_depth_index(color_hw: tuple[int, int], depth_hw: tuple[int, int], K_color: np.ndarray,
                        K_depth: np.ndarray) -> np.ndarray:
    """(H, W) int64: for each colour pixel the flat index ``row * w + col`` of its nearest depth
    pixel in an (h, w) depth image, -1 where that falls outside. Separable (no skew): one
    rounding per column and per row."""
    (H, W), (h, w) = color_hw, depth_hw
    ud, vd = color_to_depth_pixels(np.arange(W), np.arange(H), K_color, K_depth)
    cols, rows = np.floor(ud + 0.5).astype(np.int64), np.floor(vd + 0.5).astype(np.int64)  # (W,), (H,)
    cols = np.where((cols >= 0) & (cols < w), cols, -1)
    rows = np.where((rows >= 0) & (rows < h), rows, -1)
    index = rows[:, None] * w + cols[None, :]
    return np.where((rows[:, None] >= 0) & (cols[None, :] >= 0), index, -1)


def backproject_depth(depth: np.ndarray, K_depth: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """depth (h, w) metres (0 = missing), K_depth, pose (4, 4) camera-to-world
    -> (points (h * w, 3) float64 world coordinates in row-major pixel order, valid (h * w,) bool).

    Missing depth gives valid False (and the camera centre as its point). Written element by element
    (no matrix product) so a per-pixel reference computing in the same order agrees bit for bit."""
    Kd, pose = as_intrinsics(K_depth), np.asarray(pose, dtype=np.float64)
    h, w = depth.shape
    z = np.asarray(depth, dtype=np.float64).reshape(-1)
    u = np.tile(np.arange(w, dtype=np.float64), h)
    v = np.repeat(np.arange(h, dtype=np.float64), w)
    x = (u - Kd[0, 2]) / Kd[0, 0] * z
    y = (v - Kd[1, 2]) / Kd[1, 1] * z
    points = np.empty((h * w, 3))
    for axis in range(3):
        R = pose[axis]
        points[:, axis] = R[0] * x + R[1] * y + R[2] * z + R[3]
    return points, (z > 0) & np.isfinite(z)


def region_positions_2d(masks: np.ndarray) -> np.ndarray:
    """masks (R, H, W) bool -> (R, 6) float32: centroid (x, y) and box (x0, y0, x1, y1) in [0, 1].

    Pixel j spans [j, j + 1) / W: the centroid is the mean of pixel centres (j + 0.5) / W, the box
    runs from the first pixel's left edge to the last pixel's right edge (a full mask is
    (0, 0, 1, 1)). Empty masks give zeros."""
    R, H, W = masks.shape
    out = np.zeros((R, 6), dtype=np.float32)
    per_row = np.count_nonzero(masks, axis=2)  # (R, H)
    per_col = np.count_nonzero(masks, axis=1)  # (R, W)
    area = per_row.sum(axis=1)
    full = area > 0
    if not full.any():
        return out
    per_row, per_col, area = per_row[full], per_col[full], area[full].astype(np.float64)
    cy = per_row @ (np.arange(H) + 0.5) / area / H
    cx = per_col @ (np.arange(W) + 0.5) / area / W
    rows, cols = per_row > 0, per_col > 0
    y0, y1 = rows.argmax(axis=1), H - rows[:, ::-1].argmax(axis=1)  # first row, last row + 1
    x0, x1 = cols.argmax(axis=1), W - cols[:, ::-1].argmax(axis=1)
    out[full] = np.stack([cx, cy, x0 / W, y0 / H, x1 / W, y1 / H], axis=1)
    return out


def region_positions_3d(masks: np.ndarray, depth: np.ndarray, K_color: np.ndarray, K_depth: np.ndarray,
                        pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """masks (R, H, W) bool at colour resolution, depth (h, w) metres (0 = missing), K_color for the
    (H, W) frame, K_depth, pose (4, 4) camera-to-world
    -> (positions (R, 6) float32: world centroid (x, y, z) = per-axis median and extent
    (ex, ey, ez) = per-axis 90th - 10th percentile, in metres; valid (R,) bool).

    Invalid regions (no pixel with valid depth; every region when the pose is not finite) are zeros.
    One pass over the masks (np.flatnonzero), one back-projection at depth resolution, then a
    percentile per region over its own points only."""
    R, H, W = masks.shape
    positions, valid = np.zeros((R, 6), dtype=np.float32), np.zeros(R, dtype=bool)
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"pose must be (4, 4) camera-to-world, got shape {pose.shape}")
    if R == 0 or not np.isfinite(pose).all():
        return positions, valid
    index = nearest_depth_index((H, W), depth.shape, K_color, K_depth).reshape(-1)  # (H * W,)
    points, has_depth = backproject_depth(depth, K_depth, pose)  # (h * w, 3), (h * w,)
    flat = np.flatnonzero(np.asarray(masks, dtype=bool))  # sorted: region-major (bool: numpy's fast path)
    region = flat // (H * W)
    pixel = flat - region * (H * W)
    target = index[pixel]
    keep = target >= 0
    keep[keep] = has_depth[target[keep]]
    region, target = region[keep], target[keep]
    bounds = np.searchsorted(region, np.arange(R + 1))
    low, high = EXTENT_PERCENTILES
    for r in np.flatnonzero(np.diff(bounds)):
        q = np.percentile(points[target[bounds[r]:bounds[r + 1]]], [low, 50.0, high], axis=0)  # (3, 3)
        positions[r, :3], positions[r, 3:] = q[1], q[2] - q[0]
        valid[r] = True
    return positions, valid


def centre_scene(xyz: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xyz (N, 3) world coordinates of one scene's regions (all its frames), valid (N,) bool
    -> (centred (N, 3) float32, centre (3,) float64).

    The centre is the per-axis median of the valid rows, so a position embedding sees coordinates
    relative to the room rather than to wherever its scan started; invalid rows stay zeros. A scene
    with no valid row has centre zeros."""
    xyz, valid = np.asarray(xyz, dtype=np.float64), np.asarray(valid, dtype=bool)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or valid.shape != (len(xyz),):
        raise ValueError(f"expected xyz (N, 3) and valid (N,), got {xyz.shape} and {valid.shape}")
    centre = np.median(xyz[valid], axis=0) if valid.any() else np.zeros(3)
    centred = np.where(valid[:, None], xyz - centre, 0.0)
    return centred.astype(np.float32), centre
