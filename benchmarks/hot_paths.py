"""The hot paths that have a reference implementation: what each runs, its target, its sizes.

Every entry gives ``workloads(case) -> {"ours": fn, "reference": fn}`` (inputs built once,
each fn a complete call) and ``compare(ours result, reference result) -> {"ok", "text", ...}``.
Targets apply at ADE20K size (the issue's sizes); other sizes are reported without one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from benchmarks import painting, pooling, sam_slic, slic

CASES = ("ade20k", "voc", "1024")


@dataclass
class HotPath:
    title: str
    workloads: Callable
    compare: Callable
    min_speedup: float | None = None         # reference seconds / our seconds, at ADE20K size
    max_memory_ratio: float | None = None    # our peak extra memory / the reference's
    min_per_second: float | None = None      # calls per second of ours (painting: images/s)
    threads: int | None = None               # torch threads while running (None = default)
    cases: tuple[str, ...] = field(default=CASES)
    reference_runs: dict[str, int] = field(default_factory=dict)  # fewer timed reference runs per case

    def target_text(self) -> str:
        parts = []
        if self.min_speedup:
            parts.append(f">={self.min_speedup:g}x")
        if self.max_memory_ratio:
            parts.append(f"mem <=1/{1 / self.max_memory_ratio:g}")
        if self.min_per_second:
            parts.append(f">={self.min_per_second:g}/s 1 core")
        return ", ".join(parts) or "report"


HOT_PATHS = {
    # The pooling references at 1024x1024 take ~25 s and 4.8 GB per call: one timed run each
    # (plus one in the memory child) keeps `make bench` under 10 minutes.
    "pooling_mean": HotPath("average pooling", partial(pooling.workloads, mode="mean"), pooling.compare,
                            min_speedup=100, max_memory_ratio=1 / 50, reference_runs={"1024": 1}),
    # The price of bit-reproducible pooling (shard bytes the same on every CPU): ratio < 1 is its cost.
    "pooling_exact": HotPath("average pooling: exact sums vs float32 BLAS", pooling.exact_workloads,
                             pooling.compare_exact, threads=1),
    "pooling_max": HotPath("max pooling", partial(pooling.workloads, mode="max"), pooling.compare,
                           min_speedup=30, reference_runs={"1024": 1}),
    "sam_slic": HotPath("SAM+SLIC merge", sam_slic.workloads, sam_slic.compare, min_speedup=8),
    "painting": HotPath("painting + mIoU update", painting.workloads, painting.compare, min_per_second=20,
                        threads=1),
    "slic": HotPath("SLIC: fast-slic vs skimage", slic.workloads, slic.compare),
}
