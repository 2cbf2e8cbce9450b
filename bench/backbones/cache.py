"""Patch grids cached per (dataset, image content, backbone config) as float16 .npy files.

    <cache root>/<dataset>/<backbone>-<digest of its parameters>/meta.json    {"patch_size", "embed_dim"}
    <cache root>/<dataset>/<backbone>-<digest>/<image id>-<content digest>.npy   (d, h, w) float16

Pooling ablations, region-generator sweeps and re-runs read the grid instead of running the
backbone again. Every grid goes through float16 whether it was just computed or read back, so a
run gives the same pooled features (and byte-identical shards) with a cold or a warm cache.

Keys are ``bench.regions.cache.content_key``: a sha256 of the decoded RGB pixels the backbone reads,
so a regenerated or edited image never meets the grid of the one it replaced. Every file is
written atomically and sealed with a sha256 of its bytes (``bench.atomic``; a sealed ``.npy``
still loads with ``np.load``). A damaged entry (truncated, garbage, a flipped byte) fails that
check on read: it is logged with its path, reported by ``take_damaged``, counted as a miss and
recomputed. Temporary files of writers that died are removed when the cache is opened.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from bench.atomic import remove_orphans, seal, unseal, write_atomic
from bench.regions.cache import params_digest, report_damaged


def cache_dir(root: str | Path, dataset: str, backbone: str, params: dict) -> Path:
    """The directory holding one backbone config's grids of one dataset (options added later, at their
    neutral value, are left out of the name: ``bench.config.HASH_NEUTRAL``)."""
    from bench.config import without_neutral

    params = without_neutral(dict(params), f"backbone.params.{backbone}")
    return Path(root) / dataset / f"{backbone}-{params_digest(backbone, params)}"


class FeatureCache:
    """``get``/``put`` patch grids by content key; counts hits, misses and bytes for the run's report."""

    def __init__(self, root: str | Path | None, dataset: str, backbone: str, params: dict):
        self.dir = None
        self.hits = self.misses = self.bytes_written = 0
        self.damaged: list[str] = []  # entries found damaged since the last take_damaged()
        self._meta: dict | None = None
        if root is not None:
            self.dir = cache_dir(root, dataset, backbone, params)
            self.dir.mkdir(parents=True, exist_ok=True)
            remove_orphans(self.dir)

    def meta(self) -> dict | None:
        """{"patch_size", "embed_dim"} of the backbone that filled the cache, if any (and sound)."""
        if self._meta is None and self.dir is not None and (self.dir / "meta.json").is_file():
            data = (self.dir / "meta.json").read_bytes()
            try:  # unsealed: written before entries were sealed, still fine if it parses
                meta = json.loads(unseal(data) or data)
                self._meta = {"patch_size": int(meta["patch_size"]), "embed_dim": int(meta["embed_dim"])}
            except (ValueError, KeyError, TypeError):
                report_damaged(self.dir / "meta.json", "not a record of patch size and dim", self.damaged)
        return self._meta

    def set_meta(self, patch_size: int, embed_dim: int) -> None:
        if self.dir is not None and self._meta is None:
            self._meta = {"patch_size": patch_size, "embed_dim": embed_dim}
            write_atomic(self.dir / "meta.json", seal(json.dumps(self._meta).encode()))

    def get(self, key: str) -> torch.Tensor | None:
        """The (d, h, w) float32 grid stored under ``key`` (a content key), or None: not cached or
        damaged (logged, to be recomputed)."""
        path = None if self.dir is None else self.dir / f"{key}.npy"
        try:
            data = path.read_bytes() if path is not None else None
        except FileNotFoundError:
            data = None
        grid = None if data is None else self._decode(path, data)
        if grid is None:
            self.misses += 1
            return None
        self.hits += 1
        return torch.from_numpy(grid.astype(np.float32))

    def _decode(self, path: Path, data: bytes) -> np.ndarray | None:
        """The (d, h, w) float16 grid in a sealed entry, or None (reported as damaged)."""
        payload, grid, problem = unseal(data), None, "checksum mismatch: truncated or overwritten"
        if payload is not None:
            try:
                grid = np.load(io.BytesIO(payload), allow_pickle=False)
                problem = (None if grid.dtype == np.float16 and grid.ndim == 3
                           else f"holds a {grid.dtype} array of shape {grid.shape}, not a (d, h, w) float16 grid")
            except ValueError as err:  # sealed, yet not an array: a foreign writer
                problem = str(err)
        if problem is not None:
            report_damaged(path, problem, self.damaged)
            return None
        return grid

    def put(self, key: str, grid: torch.Tensor) -> torch.Tensor:
        """Store the grid; returns it rounded through float16 (what a later ``get`` returns)."""
        half = grid.detach().cpu().to(torch.float16).numpy()
        if self.dir is not None:
            buf = io.BytesIO()
            np.save(buf, half, allow_pickle=False)
            sealed = seal(buf.getvalue())
            write_atomic(self.dir / f"{key}.npy", sealed)
            self.bytes_written += len(sealed)
        return torch.from_numpy(half.astype(np.float32))

    def take_damaged(self) -> list[str]:
        """Paths of the entries found damaged since the last call."""
        damaged, self.damaged = self.damaged, []
        return damaged

    def size(self) -> dict:
        """Files and bytes in this backbone's cache directory."""
        if self.dir is None:
            return {"dir": None, "files": 0, "bytes": 0}
        files = [e for e in os.scandir(self.dir) if e.name.endswith(".npy")]
        return {"dir": str(self.dir), "files": len(files), "bytes": sum(e.stat().st_size for e in files)}

    def report(self) -> dict:
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / lookups if lookups else 0.0,
                "bytes_written": self.bytes_written, "dir": str(self.dir) if self.dir else None}
