"""Region masks cached per (dataset, image content, generator config), with per-image statistics.

    <cache root>/<dataset>/<source>-<digest of its parameters>/config.json
    <cache root>/<dataset>/<source>-<digest>/<image id>-<content digest>.json   {"rle": [...], "stats": {...}}

A sweep over backbones or pooling re-reads the masks instead of re-running SAM; changing a
generator parameter changes the digest, so it invalidates that generator's cache only.

Entries are keyed by what the generator consumes, not by the image's name: the content digest
(``content_key``) is a sha256 over the decoded RGB pixels (dtype, shape and bytes) that
``bench.images.to_rgb8`` hands to every stage, and for generators that read the label map too
(``gt``) over the label. Decoded pixels rather than file bytes, so a change in how images are
decoded (EXIF orientation, colour modes) is a change of content as well; a regenerated or
edited dataset therefore never meets the regions of the images it replaced. Hashing costs
0.27 ms per 320x240 image and 1.2 ms per 683x512 one on the 2-core build machine under load
(SLIC alone takes ~9 ms per 320x240 image). Entries of replaced images stay on disk until the
cache directory is deleted.

Every entry is written atomically and sealed with a sha256 of its bytes (``bench.atomic``). A
truncated, garbage or bit-flipped entry fails that check on read: it is logged with its path,
reported by ``take_damaged`` (the extractor lists it in the shard manifest's ``cache_damaged``)
and regenerated. Temporary files of writers that died are removed when the cache is opened.

Statistics per image: ``regions`` (count), ``coverage`` (fraction of pixels in at least one
region), ``seconds`` (generation wall time, kept from the run that made the masks) and
``peak_mem_mb`` (CUDA: peak allocated during generation; CPU: the process's peak resident
set size so far, an upper bound).
"""
from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bench.atomic import remove_orphans, seal, unseal, write_atomic
from bench.rle import decode_rles, encode_rles

log = logging.getLogger("regionbench.cache")


def params_digest(source: str, params: dict) -> str:
    blob = json.dumps({"source": source, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def content_key(key: str, *arrays: np.ndarray) -> str:
    """``<key>-<16 hex digits>``: the cache key of an image's content. The digest is a sha256 over
    each array's dtype, shape and bytes (e.g. the (H, W, 3) uint8 RGB image, then its label)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return f"{key}-{digest.hexdigest()[:16]}"


def report_damaged(path: Path, reason: str, damaged: list[str]) -> None:
    log.warning("damaged cache entry %s (%s): recomputing it", path, reason)
    damaged.append(str(path))


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
    """Per-image RLE records for one generator configuration (``root=None`` disables caching).
    ``key`` is a ``content_key``."""

    def __init__(self, root: str | Path | None, dataset: str, source: str, params: dict):
        self.dir = None
        self.damaged: list[str] = []  # entries found damaged since the last take_damaged()
        if root is not None:
            self.dir = Path(root) / dataset / f"{source}-{params_digest(source, params)}"
            self.dir.mkdir(parents=True, exist_ok=True)
            remove_orphans(self.dir)
            config = self.dir / "config.json"
            if not config.is_file():
                write_atomic(config, json.dumps({"source": source, "params": params}, indent=1, default=str).encode())

    def get(self, key: str, height: int, width: int) -> tuple[np.ndarray, dict] | None:
        """(masks (R, H, W) bool, stats) or None: not cached, or damaged (logged, then regenerated)."""
        if self.dir is None:
            return None
        path = self.dir / f"{key}.json"
        try:
            payload = unseal(path.read_bytes())
        except FileNotFoundError:
            return None
        problem, masks, stats = "checksum mismatch: truncated or overwritten", None, None
        if payload is not None:
            try:
                record = json.loads(payload)
                masks = decode_rles(record["rle"]) if record["rle"] else np.zeros((0, height, width), bool)
                stats = record["stats"]
                problem = (None if masks.shape[1:] == (height, width)
                           else f"masks of {masks.shape[1:]} for an image of {(height, width)}")
            except (ValueError, KeyError, TypeError) as err:  # sealed, yet not a record: a foreign writer
                problem = f"{type(err).__name__}: {err}"
        if problem is not None:
            report_damaged(path, problem, self.damaged)
            return None
        return masks, {**stats, "cached": True}

    def put(self, key: str, masks: np.ndarray, stats: dict) -> None:
        if self.dir is not None:
            record = {"rle": encode_rles(masks) if len(masks) else [], "stats": stats}
            write_atomic(self.dir / f"{key}.json", seal(json.dumps(record).encode()))

    def take_damaged(self) -> list[str]:
        """Paths of the entries found damaged since the last call."""
        damaged, self.damaged = self.damaged, []
        return damaged


def summarize_stats(per_image: dict[str, dict]) -> dict:
    """Dataset summary of per-image statistics (means; max for memory)."""
    if not per_image:
        return {"images": 0}
    values = list(per_image.values())
    mean = lambda k: float(np.mean([v[k] for v in values]))  # noqa: E731
    return {"images": len(values), "regions_per_image": mean("regions"), "coverage": mean("coverage"),
            "seconds_per_image": mean("seconds"), "peak_mem_mb": max(v["peak_mem_mb"] for v in values),
            "images_without_regions": sum(v["regions"] == 0 for v in values),
            "cache_damaged": sum(len(v.get("cache_damaged", ())) for v in values),
            "feature_cache_hit_rate": float(np.mean([bool(v.get("features_cached")) for v in values])),
            # backbone time per image over the images whose features were computed in this run
            "backbone_seconds_per_image": _mean_or_none([v["backbone_seconds"] for v in values
                                                         if not v.get("features_cached") and "backbone_seconds" in v])}


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
