"""Region shards: the on-disk format between extraction and training.

A *shard set* is a directory of WebDataset tar files plus one ``manifest.json``::

    <shard_dir>/<split>/shard-000000.tar      one sample per image, in split order
    <shard_dir>/<split>/shard-000000.json     this shard's manifest entry (written after the tar)
    <shard_dir>/<split>/manifest.json         all entries merged, written when every shard exists

Sample schema (the tar member extensions of one sample; ``R`` regions, ``d`` feature dim,
``C`` classes, image ``H x W``, patch grid ``h x w``):

    __key__       image id (no '.': webdataset would split the key there and merge samples)
    feats.npy     (R, d) float16   pooled region features
    rle.json      list of R COCO RLEs {"size": [H, W], "counts": str}, the region masks
    areas.npy     (R,) int64       region pixel counts
    hist.npy      (R, C+1) int32   per-region pixel counts of each ground-truth class;
                                   the last column counts ignore (255) pixels
    label.png     (H, W) uint8     ground-truth label map, 255 = ignore
    meta.json     {"id", "height", "width", "patch_size", "grid": [h, w], "pad": [top, left]}
    patches.npy   (d, h, w) float16, optional: the raw patch grid (patch baselines)

Everything is stored as .npy/.json/.png, never pickles, so reading a shard runs no code.

Every shard is written under a temporary name and renamed when complete, then its entry
(count, keys, sha256, skipped images) is written beside it. A shard whose tar and entry
exist and whose sha256 matches is *verified* and kept by a re-run; anything else is
redone. So an extraction killed at any moment resumes to the same shard contents.

Work is split deterministically: shard ``i`` holds ids ``[i*S, (i+1)*S)`` of the split
and belongs to process ``i % count``, so ranks or array jobs each write their own shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from bench.mask_cache import summarize_stats

SCHEMA_VERSION = 1
REQUIRED = ("feats.npy", "rle.json", "areas.npy", "hist.npy", "label.png", "meta.json")
OPTIONAL = ("patches.npy",)


class ShardError(RuntimeError):
    """A shard or manifest that is missing, truncated or inconsistent."""


# ----------------------------------------------------------------------------- encoding
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def check_key(key: str) -> str:
    if "." in key or "/" in key:
        raise ValueError(
            f"sample key '{key}' contains '.' or '/': webdataset splits keys at the first '.' "
            "and would silently merge samples. Rename the image (e.g. replace '.' with '_').")
    return key


def encode_sample(key: str, feats: np.ndarray, rles: list[dict], areas: np.ndarray,
                  hist: np.ndarray, label: np.ndarray, meta: dict,
                  patches: np.ndarray | None = None) -> dict[str, bytes | str]:
    """One image's record as tar members (see the module docstring for the schema)."""
    sample = {
        "__key__": check_key(key),
        "feats.npy": _npy(feats.astype(np.float16)),
        "rle.json": json.dumps(rles).encode(),
        "areas.npy": _npy(areas.astype(np.int64)),
        "hist.npy": _npy(hist.astype(np.int32)),
        "label.png": _png(label),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }
    if patches is not None:
        sample["patches.npy"] = _npy(patches.astype(np.float16))
    return sample


def decode_sample(sample: dict) -> dict:
    """Tar members -> arrays. Module-level (picklable) so DataLoader workers can use it."""
    missing = [ext for ext in REQUIRED if ext not in sample]
    if missing:
        raise ShardError(f"sample '{sample.get('__key__')}' in {sample.get('__url__')} lacks {missing}; "
                         "the shard is damaged or was written by another version: re-run extraction")
    out = {
        "key": sample["__key__"],
        "feats": np.load(io.BytesIO(sample["feats.npy"]), allow_pickle=False),
        "rle": json.loads(sample["rle.json"]),
        "areas": np.load(io.BytesIO(sample["areas.npy"]), allow_pickle=False),
        "hist": np.load(io.BytesIO(sample["hist.npy"]), allow_pickle=False),
        "label": np.array(Image.open(io.BytesIO(sample["label.png"]))),
        "meta": json.loads(sample["meta.json"]),
    }
    if "patches.npy" in sample:
        out["patches"] = np.load(io.BytesIO(sample["patches.npy"]), allow_pickle=False)
    return out


# ----------------------------------------------------------------------------- writing
def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def write_shard(path: Path, samples: Iterable[dict]) -> list[str]:
    """Write samples into ``path`` atomically; returns their keys.

    The tar is written to ``<path>.tmp`` and renamed only after it is closed, so a
    killed process never leaves a complete-looking shard. ``mtime=0`` and fixed
    owner fields make the bytes a function of the samples alone.
    """
    import webdataset as wds

    tmp = path.with_name(path.name + ".tmp")
    keys: list[str] = []
    with open(tmp, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False, mtime=0.0, user="regionbench", group="regionbench")
        for sample in samples:
            writer.write(sample)
            keys.append(sample["__key__"])
        writer.close()
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
    return keys


@dataclass
class ShardEntry:
    """The manifest entry of one shard."""

    name: str
    count: int
    keys: list[str]
    sha256: str
    bytes: int
    regions: int  # total regions in the shard (sizes region-level training epochs)
    stats: dict[str, dict] = field(default_factory=dict)  # per image: regions, coverage, seconds, peak_mem_mb
    skipped: list[dict] = field(default_factory=list)  # [{"id", "path", "reason"}]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def write_entry(split_dir: Path, entry: ShardEntry) -> None:
    path = split_dir / f"{entry.name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entry.to_dict(), indent=1))
    os.replace(tmp, path)


def read_entry(split_dir: Path, name: str) -> ShardEntry | None:
    path = split_dir / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return ShardEntry(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def shard_is_verified(split_dir: Path, name: str, expected_keys: list[str]) -> bool:
    """A shard is kept by a re-run only if its tar matches its entry byte for byte."""
    entry = read_entry(split_dir, name)
    tar = split_dir / f"{name}.tar"
    if entry is None or not tar.is_file():
        return False
    expected = [k for k in expected_keys if k not in {s["id"] for s in entry.skipped}]
    return entry.keys == expected and tar.stat().st_size == entry.bytes and sha256(tar) == entry.sha256


# ----------------------------------------------------------------------------- planning
def plan_shards(ids: list[str], samples_per_shard: int) -> list[list[str]]:
    """Split ordered ids into consecutive shards of ``samples_per_shard``."""
    if samples_per_shard < 1:
        raise ValueError(f"extract.samples_per_shard must be >= 1, got {samples_per_shard}")
    return [ids[i:i + samples_per_shard] for i in range(0, len(ids), samples_per_shard)]


def my_shards(num_shards: int, index: int, count: int) -> list[int]:
    """The shard indices process ``index`` of ``count`` writes (round robin)."""
    if not 0 <= index < count:
        raise ValueError(f"extract.index={index} must be in [0, extract.count={count})")
    return list(range(index, num_shards, count))


# ----------------------------------------------------------------------------- manifest
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("regionbench", "torch", "numpy", "webdataset", "fast-slic", "pycocotools", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def merge_manifest(split_dir: Path, plan: list[list[str]], info: dict) -> dict | None:
    """Write ``manifest.json`` if every planned shard is verified; else return None."""
    shards = []
    for i, keys in enumerate(plan):
        name = shard_name(i)
        entry = read_entry(split_dir, name)
        if entry is None or not (split_dir / f"{name}.tar").is_file():
            return None
        shards.append(entry.to_dict())
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "num_samples": sum(s["count"] for s in shards),
        "num_regions": sum(s["regions"] for s in shards),
        "num_shards": len(shards),
        "skipped": [s for e in shards for s in e["skipped"]],
        "region_stats": summarize_stats({k: v for e in shards for k, v in e["stats"].items()}),
        "shards": shards,
        **info,
        "versions": library_versions(),
    }
    path = split_dir / "manifest.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return manifest


def load_manifest(split_dir: Path | str) -> dict:
    path = Path(split_dir) / "manifest.json"
    if not path.is_file():
        partial = sorted(Path(split_dir).glob("shard-*.json")) if Path(split_dir).is_dir() else []
        hint = (f" ({len(partial)} shard entries exist: an extraction is unfinished or another array job is "
                "still running)" if partial else "")
        raise ShardError(f"no shard manifest at {path}{hint}. Run: python -m bench.extract experiment=NAME")
    return json.loads(path.read_text())


def verify_shards(split_dir: Path | str, manifest: dict, level: str = "size") -> None:
    """Check every shard of the manifest exists ("exists"), has its size ("size") or hash ("sha256")."""
    split_dir = Path(split_dir)
    for shard in manifest["shards"]:
        tar = split_dir / f"{shard['name']}.tar"
        if not tar.is_file():
            raise ShardError(f"shard {tar} listed in {split_dir / 'manifest.json'} is missing: re-run extraction")
        if level in ("size", "sha256") and tar.stat().st_size != shard["bytes"]:
            raise ShardError(f"shard {tar} has {tar.stat().st_size} bytes but the manifest says {shard['bytes']}: "
                             "it is truncated or was overwritten. Delete it and re-run extraction")
        if level == "sha256" and sha256(tar) != shard["sha256"]:
            raise ShardError(f"shard {tar} does not match its sha256 in the manifest: delete it and re-run extraction")


def iter_tar_keys(path: Path) -> Iterator[str]:
    """Sample keys in a tar, in order (for tests and repair tools)."""
    seen = None
    with tarfile.open(path) as tar:
        for member in tar:
            key = member.name.split(".", 1)[0]
            if key != seen:
                seen = key
                yield key
