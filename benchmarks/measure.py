"""Timing and memory helpers shared by the benchmarks.

Time: ``median_seconds(fn, runs)`` calls ``fn`` once to warm up (lazy imports, thread pools,
first-touch page faults), then ``runs`` times, and returns the median wall time and all runs.

Memory: ``peak_extra_memory(fn)`` is the peak resident set size (RSS) during ``fn`` minus the
RSS just before it, in bytes. It is read from the kernel, so it sees every allocation that is
touched — torch CPU tensors, numpy arrays, C libraries — unlike ``tracemalloc``, which sees
only Python's own allocator and misses torch entirely. The kernel's high-water mark (VmHWM in
/proc/self/status) is reset before the call by writing "5" to /proc/self/clear_refs (Linux
>= 4.0), so earlier, larger peaks of the process do not hide this one; where that is refused,
a thread samples VmRSS every 0.5 ms instead (and may miss a peak shorter than that).

glibc keeps freed blocks below its (dynamic, up to 32 MB) mmap threshold in the heap and reuses
them without the RSS growing, which would hide allocations of a later measurement. So memory is
measured in a child process (``measure_memory_in_child``) started with MALLOC_MMAP_THRESHOLD_=
65536 and MALLOC_TRIM_THRESHOLD_=0: every block of 64 KiB or more is its own mapping, returned to
the kernel when freed, and the RSS follows what is live. Timings are taken in the parent, with the
allocator at its defaults, as the library runs in practice.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def median_seconds(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> tuple[float, list[float], object]:
    """(median, every run) wall-clock seconds of ``fn()`` over ``runs`` calls after ``warmup``
    calls, and the last call's result."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_memory(fn: Callable[[], object]) -> tuple[int, str]:
    """(peak RSS during fn - RSS before fn in bytes, method used: "vmhwm" or "sampled")."""
    before = _status_kib("VmRSS")
    if _reset_peak():
        fn()
        return max(0, _status_kib("VmHWM") - before) * 1024, "vmhwm"
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _status_kib("VmRSS"))
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak[0], _status_kib("VmRSS")) - before) * 1024, "sampled"


def measure_memory_in_child(case: str, threads: int) -> dict[str, dict]:
    """Run ``python -m benchmarks.memory <case> <threads>`` with the allocator settings above;
    returns {hot path: {"ours"|"reference": {"bytes": int, "method": str}}} as the child prints it."""
    env = {**os.environ, **MALLOC_ENV}
    result = subprocess.run([sys.executable, "-m", "benchmarks.memory", case, str(threads)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of case {case} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def relative_error(ours, reference) -> tuple[float, float]:
    """(max |ours - reference|, that divided by max |reference|) of two tensors/arrays."""
    import numpy as np

    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {reference.shape}")
    err = float(np.abs(ours - reference).max()) if ours.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return err, err / scale if scale else err
