"""Patch grids cached per (dataset, image, backbone config) as float16 .npy files.

    <cache root>/<dataset>/<backbone>-<digest of its parameters>/<image id>.npy   (d, h, w) float16

Pooling ablations, region-generator sweeps and re-runs read the grid instead of running the
backbone again. Every grid goes through float16 whether it was just computed or read back, so a
run gives the same pooled features (and byte-identical shards) with a cold or a warm cache.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from bench.mask_cache import params_digest


class FeatureCache:
    """``get``/``put`` patch grids; counts hits, misses and bytes for the run's report."""

    def __init__(self, root: str | Path | None, dataset: str, backbone: str, params: dict):
        self.dir = None
        self.hits = self.misses = self.bytes_written = 0
        if root is not None:
            self.dir = Path(root) / dataset / f"{backbone}-{params_digest(backbone, params)}"
            self.dir.mkdir(parents=True, exist_ok=True)

    def meta(self) -> dict | None:
        """{"patch_size", "embed_dim"} of the backbone that filled the cache, if any."""
        path = None if self.dir is None else self.dir / "meta.json"
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    def set_meta(self, patch_size: int, embed_dim: int) -> None:
        if self.dir is not None and self.meta() is None:
            tmp = self.dir / f"meta.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"patch_size": patch_size, "embed_dim": embed_dim}))
            os.replace(tmp, self.dir / "meta.json")

    def get(self, key: str) -> torch.Tensor | None:
        path = None if self.dir is None else self.dir / f"{key}.npy"
        if path is None or not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))

    def put(self, key: str, grid: torch.Tensor) -> torch.Tensor:
        """Store the grid; returns it rounded through float16 (what a later ``get`` returns)."""
        half = grid.detach().cpu().to(torch.float16).numpy()
        if self.dir is not None:
            buf = io.BytesIO()
            np.save(buf, half, allow_pickle=False)
            tmp = self.dir / f"{key}.npy.{os.getpid()}.tmp"
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, self.dir / f"{key}.npy")
            self.bytes_written += len(buf.getvalue())
        return torch.from_numpy(half.astype(np.float32))

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
