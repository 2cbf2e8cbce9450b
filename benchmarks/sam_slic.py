"""The SAM+SLIC merge: SLIC superpixels fill what the SAM masks leave uncovered (spec §1.4).

Ours: ``bench.regions.sam_slic.merge_sam_slic`` (two bincounts over the label map and one scatter).
Reference: ``reference_merge`` below, the released ``merge_sam_and_slic_regions.py`` loop
literally, on CPU torch tensors as the released code runs by default: for every SLIC label
present in the uncovered area, compare the whole label map with it, intersect, count, keep.
Check: the two mask stacks are identical (same count, order and pixels).
"""
from __future__ import annotations

import numpy as np
import torch

from bench.regions.sam_slic import merge_sam_slic
from benchmarks.inputs import Case


def reference_merge(sam_masks: np.ndarray, labels: np.ndarray, min_pixels: int = 300,
                    min_proportion: float = 0) -> torch.Tensor:
    """(n, H, W) bool SAM masks, (H, W) SLIC labels -> (n + K, H, W) bool, as the released code."""
    sam = torch.from_numpy(sam_masks)
    slic = torch.from_numpy(labels)
    uncovered = ~sam.any(dim=0)
    kept = []
    for value in set(slic[uncovered].tolist()):
        region = slic == value
        inter = region & uncovered
        if inter.sum() >= min_pixels and inter.sum() / region.sum() >= min_proportion:
            kept.append(inter)
    return torch.cat([sam, torch.stack(kept)]) if kept else sam


def workloads(case: Case) -> dict:
    return {"ours": lambda: merge_sam_slic(case.sam, case.slic),
            "reference": lambda: reference_merge(case.sam, case.slic)}


def compare(ours: np.ndarray, reference: torch.Tensor) -> dict:
    reference = reference.numpy()
    same = ours.shape == reference.shape and bool((ours == reference).all())
    return {"ok": same, "masks": [len(ours), len(reference)],
            "text": f"identical ({len(ours)} masks)" if same else f"DIFFERENT: {ours.shape} vs {reference.shape}"}
