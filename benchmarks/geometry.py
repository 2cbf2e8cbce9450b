"""3D region positions of one ScanNet frame: ours vs a literal per-pixel loop.

    python -m benchmarks.geometry [--masks 100] [--reference-masks 100] [--runs 5]

Input (``make_inputs``): a 1296x968 colour frame's masks (SAM-like blobs, ``benchmarks.inputs``),
a 640x480 depth image in metres with 5% missing pixels, ScanNet's colour and depth intrinsics (of
scene0000_00) and a random camera-to-world pose.
Ours: ``bench.geometry.region_positions_3d`` (one np.nonzero over all masks, one back-projection
at depth resolution, a percentile per region).
Reference: ``reference_positions_3d`` below: for each mask, for each of its pixels, in plain Python
floats, find the nearest depth pixel, back-project it and transform it to the world; then
np.percentile over the collected points.
Check: both agree to 1e-9 m and in validity. The reference runs once (it takes seconds); with
``--reference-masks`` below ``--masks`` it is timed on the first masks only and ours is timed on
the same subset for the ratio.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from bench.geometry import EXTENT_PERCENTILES, region_positions_3d
from benchmarks.inputs import sam_like_masks
from benchmarks.measure import median_seconds

COLOR_HW, DEPTH_HW = (968, 1296), (480, 640)
# colour: scene0000_00 in the fixture pickle (scannet_infos.pkl); depth: ScanNet's usual depth intrinsics
K_COLOR = np.array([[1169.621094, 0.0, 646.295044], [0.0, 1167.105103, 489.927032], [0.0, 0.0, 1.0]])
K_DEPTH = np.array([[577.590698, 0.0, 318.905426], [0.0, 578.729797, 242.683609], [0.0, 0.0, 1.0]])


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """(4, 4) camera-to-world: a random rotation (QR of a Gaussian) and a translation in a room."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = q, rng.uniform(0, 5, 3)
    return pose


def make_inputs(masks: int = 100, color_hw=COLOR_HW, depth_hw=DEPTH_HW, seed: int = 0) -> dict:
    """masks (R, H, W) bool, depth (h, w) float32 metres with 5% zeros, K_color, K_depth, pose."""
    rng = np.random.default_rng(seed)
    (H, W), (h, w) = color_hw, depth_hw
    yy, xx = np.mgrid[:h, :w]
    depth = 1.5 + 2.0 * (yy / h) + 0.5 * np.sin(xx / 40.0) + rng.normal(0, 0.01, (h, w))
    depth[rng.random((h, w)) < 0.05] = 0
    scale = np.diag([W / COLOR_HW[1], H / COLOR_HW[0], 1.0])  # intrinsics follow the image size
    dscale = np.diag([w / DEPTH_HW[1], h / DEPTH_HW[0], 1.0])
    return {"masks": sam_like_masks(rng, H, W, masks), "depth": depth.astype(np.float32),
            "K_color": scale @ K_COLOR, "K_depth": dscale @ K_DEPTH, "pose": random_pose(rng)}


def reference_positions_3d(masks, depth, K_color, K_depth, pose) -> tuple[np.ndarray, np.ndarray]:
    """The same quantity as ``region_positions_3d``, pixel by pixel and mask by mask."""
    R = len(masks)
    h, w = depth.shape
    positions, valid = np.zeros((R, 6), dtype=np.float32), np.zeros(R, dtype=bool)
    pose = [[float(x) for x in row] for row in np.asarray(pose)]
    if not all(math.isfinite(x) for row in pose for x in row):
        return positions, valid
    fxc, fyc, cxc, cyc = (float(K_color[0][0]), float(K_color[1][1]), float(K_color[0][2]), float(K_color[1][2]))
    fxd, fyd, cxd, cyd = (float(K_depth[0][0]), float(K_depth[1][1]), float(K_depth[0][2]), float(K_depth[1][2]))
    for r in range(R):
        points = []
        for v, u in np.argwhere(masks[r]).tolist():
            ud = fxd * ((u - cxc) / fxc) + cxd  # the colour ray, through the depth camera
            vd = fyd * ((v - cyc) / fyc) + cyd
            col, row = math.floor(ud + 0.5), math.floor(vd + 0.5)
            if not (0 <= col < w and 0 <= row < h):
                continue
            z = float(depth[row, col])
            if not z > 0:
                continue
            x = (col - cxd) / fxd * z  # the depth pixel's own ray
            y = (row - cyd) / fyd * z
            points.append([pose[a][0] * x + pose[a][1] * y + pose[a][2] * z + pose[a][3] for a in range(3)])
        if points:
            low, mid, high = np.percentile(np.array(points), [EXTENT_PERCENTILES[0], 50, EXTENT_PERCENTILES[1]], axis=0)
            positions[r, :3], positions[r, 3:] = mid, high - low
            valid[r] = True
    return positions, valid


def workloads(inputs: dict, masks: int | None = None) -> dict:
    args = dict(inputs, masks=inputs["masks"][:masks])
    return {"ours": lambda: region_positions_3d(**args), "reference": lambda: reference_positions_3d(**args)}


def compare(ours, reference) -> dict:
    (pos, valid), (ref_pos, ref_valid) = ours, reference
    same_valid = bool(np.array_equal(valid, ref_valid))
    err = float(np.abs(pos.astype(np.float64) - ref_pos).max()) if len(pos) else 0.0
    ok = same_valid and err <= 1e-6
    return {"ok": ok, "max_abs_error_m": err, "valid": int(valid.sum()),
            "text": f"max abs diff {err:.1e} m, {int(valid.sum())}/{len(valid)} valid" +
                    ("" if same_valid else ", VALIDITY DIFFERS")}


def row(runs: int = 5, masks: int = 100, reference_masks: int | None = None) -> dict:
    """One row for ``benchmarks.run``: ours (median of ``runs``) vs the reference (one run)."""
    inputs = make_inputs(masks)
    full = workloads(inputs)
    ours_full, ours_full_runs, _ = median_seconds(full["ours"], runs)
    subset = workloads(inputs, reference_masks)
    ours, ours_runs, ours_out = median_seconds(subset["ours"], runs)
    start = time.perf_counter()
    ref_out = subset["reference"]()
    reference = time.perf_counter() - start
    n = len(inputs["masks"][:reference_masks])
    pixels = int(inputs["masks"].sum())
    check = compare(ours_out, ref_out)
    note = ("" if n == len(inputs["masks"])
            else f"; reference on the first {n} masks, ours on all: {ours_full * 1e3:.0f} ms")
    return {"id": "geometry", "hot_path": "3D region positions (ScanNet frame)",
            "input": f"{COLOR_HW[1]}x{COLOR_HW[0]} colour, {DEPTH_HW[1]}x{DEPTH_HW[0]} depth, "
                     f"{len(inputs['masks'])} masks ({pixels / 1e6:.1f} M mask pixels)",
            "ours_s": ours, "ours_runs": ours_runs, "reference_s": reference, "reference_runs": [reference],
            "speedup": reference / ours, "ours_full_s": ours_full, "ours_full_runs": ours_full_runs,
            "reference_masks": n, "check": {**check, "text": check["text"] + note},
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.geometry", description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--reference-masks", type=int, default=None, help="time the reference on the first N masks")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    result = row(args.runs, args.masks, args.reference_masks)
    print(f"{result['hot_path']}: {result['input']}")
    print(f"  ours      {result['ours_full_s'] * 1e3:8.1f} ms (median of {args.runs}, all masks)")
    print(f"  reference {result['reference_s'] * 1e3:8.1f} ms (1 run, {result['reference_masks']} masks; "
          f"ours on those: {result['ours_s'] * 1e3:.1f} ms)")
    print(f"  ratio {result['speedup']:.1f}x; check: {'OK' if result['check']['ok'] else 'FAILED'} "
          f"({result['check']['text']})")
    return result


if __name__ == "__main__":
    main()
