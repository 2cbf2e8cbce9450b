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

Reading (``read_tar_samples``, ``decode_sample``) is built for streaming speed: a shard is
memory-mapped and its ustar headers are parsed directly (Python's ``tarfile`` costs ~50 us per
member); .npy members become ``np.frombuffer`` views after a cached header parse
(``np.load`` costs ~30 us per member); ``decode_sample(sample, fields=...)`` decodes only the
members a stage needs (region training needs neither the label PNG, ~1 ms to decode at
ADE20K size, nor the RLEs). The member encoding itself is unchanged (schema version 1).

Every shard is written under a temporary name and renamed when complete, then its entry
(count, keys, sha256, skipped images) is written beside it. A shard whose tar and entry
exist and whose sha256 matches is *verified* and kept by a re-run; anything else is
redone. So an extraction killed at any moment resumes to the same shard contents.

Work is split deterministically: shard ``i`` holds ids ``[i*S, (i+1)*S)`` of the split
and belongs to process ``i % count``, so ranks or array jobs each write their own shards.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import mmap
import os
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
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


FIELDS = {"feats": "feats.npy", "rle": "rle.json", "areas": "areas.npy", "hist": "hist.npy",
          "label": "label.png", "meta": "meta.json", "patches": "patches.npy"}  # decoded name -> member


def decode_sample(sample: dict, fields: tuple[str, ...] | None = None, copy: bool = True) -> dict:
    """Tar members -> arrays. Module-level (picklable) so DataLoader workers can use it.

    ``fields``: the decoded names to produce (keys of ``FIELDS``; "key" is always there);
    None = all required ones plus ``patches`` when present. ``copy=False`` returns .npy arrays
    as read-only views of the member bytes (the streams copy them into batches anyway).
    """
    missing = [ext for ext in REQUIRED if ext not in sample]
    if missing:
        raise ShardError(f"sample '{sample.get('__key__')}' in {sample.get('__url__')} lacks {missing}; "
                         "the shard is damaged or was written by another version: re-run extraction")
    if fields is None:
        fields = tuple(name for name, member in FIELDS.items() if member in sample)
    out = {"key": sample["__key__"]}
    for name in fields:
        member = FIELDS[name]
        if member not in sample:  # only the optional patches can be absent here
            raise ShardError(f"sample '{sample['__key__']}' in {sample.get('__url__')} has no {member}: "
                             "re-extract with extract.patches=true")
        raw = sample[member]
        if member.endswith(".npy"):
            out[name] = load_npy(raw, copy=copy)
        elif member.endswith(".json"):
            out[name] = json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
        else:
            out[name] = np.array(Image.open(io.BytesIO(raw)))
    return out


_NPY_MAGIC = b"\x93NUMPY"


@lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """An .npy header dict literal -> (dtype, shape, fortran_order, element count); refuses
    object dtypes. Cached: a shard set repeats a handful of headers."""
    info = ast.literal_eval(header.decode("latin1"))
    dtype = np.lib.format.descr_to_dtype(info["descr"])
    if dtype.hasobject:
        raise ShardError("an .npy member holds Python objects (a pickle); shards never do: re-run extraction")
    shape = tuple(info["shape"])
    return dtype, shape, bool(info["fortran_order"]), math.prod(shape)


def load_npy(raw: bytes | memoryview, copy: bool = True) -> np.ndarray:
    """The array in .npy bytes (format 1.0-3.0), like ``np.load(BytesIO(raw), allow_pickle=False)``."""
    if raw[:6] != _NPY_MAGIC:
        raise ShardError("an .npy member does not start with the .npy magic string: the shard is damaged")
    start = 10 if raw[6] == 1 else 12  # format 1.0: 2-byte header length; 2.0/3.0: 4 bytes
    length = int.from_bytes(raw[8:start], "little")
    dtype, shape, fortran, count = _npy_header(bytes(raw[start:start + length]))
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=start + length)
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return array.copy() if copy else array


# ----------------------------------------------------------------------------- reading
_ZERO_BLOCK = bytes(512)


_FILE, _OLD_FILE, _DIRECTORY, _PAX, _GLOBAL_PAX = b"0"[0], 0, b"5"[0], b"x"[0], b"g"[0]


def _tar_members(data, url: str) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the regular files in an in-memory tar, in order.

    Parses ustar headers directly, with pax extended headers (shards written before mtime became
    an int have one per member) applied for ``path`` and ``size``; an archive with other member
    types (GNU long names: our writer never makes them) is listed by ``tarfile`` instead. Like
    ``tarfile``, a cut at a member boundary or inside a header ends the archive silently (the
    manifest's key check catches it); a cut inside a member's data or a bad checksum raises.
    """
    members, headers, pos, pax, end = [], [], 0, None, len(data)
    while pos + 512 <= end:
        kind = data[pos + 156]
        if kind == 0 and data[pos:pos + 512] == _ZERO_BLOCK:
            break
        if kind not in (_FILE, _OLD_FILE, _DIRECTORY, _PAX, _GLOBAL_PAX) or data[pos + 124] & 0x80:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
        headers.append(pos)
        size = int(data[pos + 124:pos + 136].rstrip(b"\0 ") or b"0", 8)
        start = pos + 512
        if start + size > end:
            raise tarfile.ReadError(f"unexpected end of data in {url} (member at byte {pos} is cut)")
        if kind == _PAX:  # records "<length> <key>=<value>\n" for the next member
            block = data[start:start + size]
            pax = _pax_records(block) if b" path=" in block or b" size=" in block else None
        elif kind in (_FILE, _OLD_FILE):
            name = data[pos:pos + 100].split(b"\0", 1)[0].decode()
            if data[pos + 345] and data[pos + 257:pos + 262] == b"ustar":
                name = data[pos + 345:pos + 500].split(b"\0", 1)[0].decode() + "/" + name
            if pax:
                name, size = pax.get("path", name), int(pax.get("size", size))
                if start + size > end:
                    raise tarfile.ReadError(f"unexpected end of data in {url} (member {name!r} is cut)")
            members.append((name, start, size))
            pax = None
        pos = start + (size + 511) // 512 * 512
    _check_header_sums(data, headers, url)
    return members


_OCTAL_WEIGHTS = 8 ** np.arange(5, -1, -1)


def _check_header_sums(data, headers: list[int], url: str) -> None:
    """Verify every header's checksum at once (a Python sum per header would cost ~4 us)."""
    if not headers:
        return
    blocks = np.frombuffer(data, np.uint8)[np.asarray(headers)[:, None] + np.arange(512)]  # (n, 512)
    fields = blocks[:, 148:156]
    computed = blocks.sum(axis=1, dtype=np.int64) - fields.sum(axis=1, dtype=np.int64) + 8 * 32
    digits = fields[:, :6].astype(np.int64) - ord("0")
    usual = ((digits >= 0) & (digits <= 7)).all(axis=1) & ((fields[:, 6] == 0) | (fields[:, 6] == 32))
    stored = np.where(usual, digits @ _OCTAL_WEIGHTS, -1)  # tarfile writes "%06o\0"; parse others below
    for i in np.flatnonzero(~usual | (stored != computed)).tolist():
        field = bytes(fields[i]).split(b"\0", 1)[0].strip()
        if int(field or b"0", 8) != computed[i]:
            raise tarfile.ReadError(f"bad tar header checksum at byte {headers[i]} of {url}")


def _pax_records(block: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(block) and block[pos:pos + 1] != b"\0":
        length = int(block[pos:block.index(b" ", pos)])
        key, _, value = block[block.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def read_tar_samples(urls: Iterable[str]) -> Iterator[dict]:
    """Samples of tar shards, as ``webdataset.tarfile_to_samples`` yields them: dicts with
    ``__key__``, ``__url__`` and one entry per member extension (lower case), holding a
    ``memoryview`` of the member's bytes. Each shard is memory-mapped: no copy of its bytes is
    made until a stage copies what it decodes (the map closes when the last view is gone)."""
    for url in urls:
        with open(url, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # MAP_POPULATE maps every page up front: one call instead of a page fault per 4 KiB
            data = mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                             prot=mmap.PROT_READ) if size else b""
        view, current = memoryview(data), None
        for name, start, size in _tar_members(data, url):
            base = name.rsplit("/", 1)[-1]
            if "." not in base or (base.startswith("__") and base.endswith("__")):
                continue
            stem, ext = base.split(".", 1)
            key = name[:len(name) - len(base)] + stem
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            ext = ext.lower()
            if ext in current:
                raise ValueError(f"{name}: duplicate file name in tar file {url}")
            current[ext] = view[start:start + size]
        if current is not None:
            yield current


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
        # mtime an int: a float one makes tarfile add a pax header to every member
        writer = wds.TarWriter(stream, encoder=False, mtime=0, user="regionbench", group="regionbench")
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
    stats: dict[str, dict] = field(default_factory=dict)  # per image: regions, coverage, seconds, peak_mem_mb,
                                                          # stage_seconds {decode, features, regions, pooling, encode}
    skipped: list[dict] = field(default_factory=list)  # [{"id", "path", "reason"}]
    write_seconds: float = 0.0  # tar writing, fsync and checksum of this shard (timing only: not in the tar)

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
