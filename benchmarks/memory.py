"""Child process of ``benchmarks.measure.measure_memory_in_child``: peak extra memory of every
hot path's workloads on one case, printed as one JSON line.

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 python -m benchmarks.memory ade20k 1

Ours is called once before it is measured (lazy imports and one-time buffers are not its
working memory); the reference is measured on its first call (it takes seconds, and its
one-time costs are tiny next to its gigabytes). A reference timed only once (pooling at
1024x1024: 25 s, 4.8 GB) is measured during that run in the parent instead, with the default
allocator: its multi-GB upsampled map is its own mapping either way, so only blocks below
32 MB could hide in reused heap memory there.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from benchmarks.hot_paths import HOT_PATHS
from benchmarks.inputs import make_case
from benchmarks.measure import MALLOC_ENV, peak_extra_memory


def main(case_name: str, threads: int) -> dict:
    missing = [k for k in MALLOC_ENV if os.environ.get(k) != MALLOC_ENV[k]]
    if missing:
        raise SystemExit(f"run through benchmarks.measure.measure_memory_in_child (needs {MALLOC_ENV})")
    case = make_case(case_name)
    out = {}
    for name, spec in HOT_PATHS.items():
        if case_name not in spec.cases:
            continue
        torch.set_num_threads(spec.threads or threads)
        jobs = spec.workloads(case)
        jobs["ours"]()
        out[name] = {}
        for which in ("ours", "reference"):
            if which == "reference" and spec.reference_runs.get(case_name) == 1:
                out[name][which] = None  # measured during its single timed run in the parent
                continue
            extra, method = peak_extra_memory(jobs[which])
            out[name][which] = {"bytes": extra, "method": method}
        del jobs
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
