"""Region masks cached per (dataset, image, generator config), with per-image statistics.

    <cache root>/<dataset>/<source>-<digest of its parameters>/config.json
    <cache root>/<dataset>/<source>-<digest>/<image id>.json   {"rle": [...], "stats": {...}}

A sweep over backbones or pooling re-reads the masks instead of re-running SAM; changing a
generator parameter changes the digest, so it invalidates that generator's cache only. Files
are written atomically (temporary name + rename), so a killed run never leaves half a record.

Statistics per image: ``regions`` (count), ``coverage`` (fraction of pixels in at least one
region), ``seconds`` (generation wall time, kept from the run that made the masks) and
``peak_mem_mb`` (CUDA: peak allocated during generation; CPU: the process's peak resident
set size so far, an upper bound).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bench.rle import decode_rles, encode_rles


def params_digest(source: str, params: dict) -> str:
    blob = json.dumps({"source": source, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def mask_stats(masks: np.ndarray, height: int, width: int) -> dict:
    """regions and coverage of (R, H, W) bool masks."""
    covered = masks.any(axis=0).sum() if len(masks) else 0
    return {"regions": int(len(masks)), "coverage": float(covered) / float(height * width)}


def _peak_mem_mb(device_used_cuda: bool) -> float:
    if device_used_cuda and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_source(source, rgb: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Generate masks with timing and memory statistics; drops empty masks (counted)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    masks = source.generate(rgb, label) if getattr(source, "needs_label", False) else source.generate(rgb)
    seconds = time.perf_counter() - start
    masks = np.asarray(masks, dtype=bool)
    keep = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)
    stats = {**mask_stats(masks[keep], *rgb.shape[:2]), "seconds": seconds,
             "peak_mem_mb": round(_peak_mem_mb(cuda), 1), "empty_dropped": int((~keep).sum())}
    return masks[keep], stats


class MaskCache:
    """Per-image RLE records for one generator configuration (``root=None`` disables caching)."""

    def __init__(self, root: str | Path | None, dataset: str, source: str, params: dict):
        self.dir = None
        if root is not None:
            self.dir = Path(root) / dataset / f"{source}-{params_digest(source, params)}"
            self.dir.mkdir(parents=True, exist_ok=True)
            config = self.dir / "config.json"
            if not config.is_file():
                _atomic_write(config, json.dumps({"source": source, "params": params}, indent=1, default=str))

    def get(self, key: str, height: int, width: int) -> tuple[np.ndarray, dict] | None:
        if self.dir is None or not (self.dir / f"{key}.json").is_file():
            return None
        record = json.loads((self.dir / f"{key}.json").read_text())
        masks = decode_rles(record["rle"]) if record["rle"] else np.zeros((0, height, width), bool)
        if masks.shape[1:] != (height, width):
            return None  # the image changed size since the masks were made: regenerate
        return masks, {**record["stats"], "cached": True}

    def put(self, key: str, masks: np.ndarray, stats: dict) -> None:
        if self.dir is not None:
            record = {"rle": encode_rles(masks) if len(masks) else [], "stats": stats}
            _atomic_write(self.dir / f"{key}.json", json.dumps(record))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summarize_stats(per_image: dict[str, dict]) -> dict:
    """Dataset summary of per-image statistics (means; max for memory)."""
    if not per_image:
        return {"images": 0}
    values = list(per_image.values())
    mean = lambda k: float(np.mean([v[k] for v in values]))  # noqa: E731
    return {"images": len(values), "regions_per_image": mean("regions"), "coverage": mean("coverage"),
            "seconds_per_image": mean("seconds"), "peak_mem_mb": max(v["peak_mem_mb"] for v in values),
            "images_without_regions": sum(v["regions"] == 0 for v in values),
            "feature_cache_hit_rate": float(np.mean([bool(v.get("features_cached")) for v in values])),
            # backbone time per image over the images whose features were computed in this run
            "backbone_seconds_per_image": _mean_or_none([v["backbone_seconds"] for v in values
                                                         if not v.get("features_cached") and "backbone_seconds" in v])}


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
