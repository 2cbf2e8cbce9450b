"""SLIC superpixels at the paper's settings (50 components, compactness 8).

Ours: fast-slic 0.4.0 through ``bench.regions.SlicRegions`` (its AVX2 path, one thread: the
default config's ``num_threads: 1``). Reference: ``skimage.segmentation.slic`` with
n_segments=50, compactness=8 and its other defaults (Lab conversion, 10 iterations, connectivity
enforced). Different algorithms, so the check only reports both segment counts.
"""
from __future__ import annotations

import numpy as np

from bench.regions import SlicRegions
from benchmarks.inputs import Case


def workloads(case: Case) -> dict:
    from skimage.segmentation import slic

    fast = SlicRegions(num_components=50, compactness=8, num_threads=1)
    return {"ours": lambda: fast.label_map(case.image),
            "reference": lambda: slic(case.image, n_segments=50, compactness=8, start_label=0)}


def compare(ours: np.ndarray, reference: np.ndarray) -> dict:
    counts = [len(np.unique(ours)), len(np.unique(reference))]
    return {"ok": True, "segments": counts,
            "text": f"segments: fast-slic {counts[0]}, skimage {counts[1]}"}
