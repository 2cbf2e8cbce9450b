"""Region shards: the on-disk format between extraction and training.

A *shard set* is a directory of WebDataset tar files plus one ``manifest.json``::

    <shard_dir>/<split>/shard-000000.tar      one sample per image, in split order
    <shard_dir>/<split>/shard-000000.json     this shard's manifest entry (written after the tar)
    <shard_dir>/<split>/manifest.json         all entries merged, written when every shard exists

Sample schema (the tar member extensions of one sample; ``R`` regions, ``d`` feature dim,
``C`` classes, image ``H x W``, patch grid ``h x w``). A sample is one *extraction unit*: an
image, or a frame of a scene or of a clip. Every sample holds the common region members:

    __key__       unit id (no '.': webdataset would split the key there and merge samples)
    feats.npy     (R, d) float16   pooled region features
    rle.json      list of R COCO RLEs {"size": [H, W], "counts": str}, the region masks
    areas.npy     (R,) int64       region pixel counts
    meta.json     {"id", "height", "width", "patch_size", "grid": [h, w], "pad": [top, left],
                   "regions", "coverage"} plus what the task adds (e.g. the scene or clip a frame
                   belongs to and its position there)
    patches.npy   (d, h, w) float16, optional: the raw patch grid (patch baselines)

and the members its task declares (``bench.tasks``: ``Task.members``), encoded by extension
(.npy arrays as given, .png uint8 images, .json values). Segmentation and retrieval declare:

    hist.npy      (R, C+1) int32   per-region pixel counts of each ground-truth class;
                                   the last column counts ignore (255) pixels
    label.png     (H, W) uint8     ground-truth label map, 255 = ignore

A multi-view task would add e.g. depth.npy, intrinsics.npy, pose.npy; a video task label.json.
The writer and reader handle any member the same way: ``decode_sample(sample, fields)`` decodes the
members named (by stem) and checks the common ones plus those the reader requires.

Schema versions (``manifest.json``'s ``schema_version``): 1 = the members above with hist.npy and
label.png always present and no ``members``/``task`` in the manifest; 2 = the manifest lists the
``task`` and its sample ``members``. The tar bytes of a segmentation sample are the same in both.
``load_manifest`` reads a version-1 manifest as segmentation's members, and refuses a version it
does not know with a message to re-extract.

Everything is stored as .npy/.json/.png, never pickles, so reading a shard runs no code.

Reading (``read_tar_samples``, ``decode_sample``) is built for streaming speed: a shard is
memory-mapped and its ustar headers are parsed directly (Python's ``tarfile`` costs ~50 us per
member); .npy members become ``np.frombuffer`` views after a cached header parse
(``np.load`` costs ~30 us per member); ``decode_sample(sample, fields=...)`` decodes only the
members a stage needs (region training needs neither the label PNG, ~1 ms to decode at
ADE20K size, nor the RLEs).

Every shard is written under this process's temporary name (``bench.atomic.tmp_path``), its
sha256 computed from the bytes as they are written, fsynced and renamed when complete; then its
entry (count, keys, sha256, skipped images) is written beside it the same way. A shard whose tar
and entry exist and whose sha256 matches is *verified* and kept by a re-run; anything else is
redone. So an extraction killed at any moment resumes to the same shard contents. A shard is
written while holding its lock (``<split>/.locks/shard-NNNNNN``, an ``flock`` the kernel releases
if the writer dies), and the manifest is merged under the split's lock after checking every
shard's sha256 against its entry: concurrent extractions of one directory share the work, and
``manifest.json`` never disagrees with the files. Features must be finite: ``encode_sample``
refuses NaN and Inf (including float16 overflow, ``|x| > 65504``), naming the image.

The manifest records the split it covers (``split_items``: the images the split listed,
``split_ids_sha256``: a sha256 of their sorted ids); ``load_manifest`` checks that the shards
plus the skipped images are exactly that split, so a manifest that lost a shard is refused
rather than scored as a smaller split. Readers can verify each shard's sha256 as it is streamed
(``read_tar_samples(urls, sha256s)``): the hash is computed on a helper thread from the same
memory-mapped bytes the parser reads (no second pass over the disk), one shard ahead of the
consumer, and a mismatch is an error naming the shard before any of its samples is yielded.

Work is split deterministically: shard ``i`` holds ids ``[i*S, (i+1)*S)`` of the split
and belongs to process ``i % count``, so ranks or array jobs each write their own shards.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import math
import mmap
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from bench import atomic
from bench.atomic import file_sha256 as sha256
from bench.regions.cache import summarize_stats

log = logging.getLogger("regionbench.shards")

SCHEMA_VERSION = 2
COMMON = ("feats.npy", "rle.json", "areas.npy", "meta.json")  # every sample of every task
OPTIONAL = ("patches.npy",)
V1_MEMBERS = (*COMMON, "hist.npy", "label.png")  # what every schema-1 sample held
REQUIRED = V1_MEMBERS  # kept for readers of schema 1


class ShardError(RuntimeError):
    """A shard or manifest that is missing, truncated or inconsistent."""


class NonFiniteFeatures(ValueError):
    """Features holding NaN or Inf: never written to a shard."""


REEXTRACT = "python -m bench.extract experiment=NAME"


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


def finite_half(array: np.ndarray, key: str, what: str) -> np.ndarray:
    """``array`` as float16, refusing NaN and Inf (also values beyond float16's +-65504)."""
    with np.errstate(over="ignore"):  # overflow to Inf is reported below, naming the image
        half = np.asarray(array).astype(np.float16)
    if ((half.view(np.uint16) & 0x7C00) == 0x7C00).any():  # exponent all ones: NaN or Inf (np.isfinite: ~7x slower)
        nan, inf = int(np.isnan(half).sum()), int(np.isinf(half).sum())
        finite = np.abs(np.asarray(array)[np.isfinite(array)])
        largest = float(finite.max()) if finite.size else float("nan")
        raise NonFiniteFeatures(
            f"image '{key}': its {what} hold {nan} NaN and {inf} Inf values as float16 (largest finite |x| "
            f"before rounding: {largest:.4g}; float16 overflows beyond 65504): refusing to write them. Check the "
            "backbone's checkpoint and options (backbone.params.*)")
    return half


def encode_member(name: str, value) -> bytes:
    """A member's bytes by its extension: .npy (the array as given), .png (uint8 image), .json."""
    if name.endswith(".npy"):
        return _npy(np.asarray(value))
    if name.endswith(".png"):
        return _png(value)
    if name.endswith(".json"):
        return json.dumps(value, sort_keys=True).encode()
    raise ValueError(f"shard member {name!r}: only .npy, .json and .png members are stored")


def encode_sample(key: str, feats: np.ndarray, rles: list[dict], areas: np.ndarray, meta: dict,
                  patches: np.ndarray | None = None, members: dict[str, object] | None = None,
                  hist: np.ndarray | None = None, label: np.ndarray | None = None) -> dict[str, bytes | str]:
    """One unit's record as tar members (see the module docstring for the schema): the common
    region members plus the task's ``members`` ({"depth.npy": array, ...}, encoded by extension).
    ``hist``/``label`` are the segmentation members given by keyword (``hist.npy`` as int32, ``label.png``).
    Raises ``NonFiniteFeatures`` naming ``key`` if ``feats`` or ``patches`` are not finite in float16."""
    members = dict(members or {})
    if hist is not None:
        members["hist.npy"] = np.asarray(hist).astype(np.int32)
    if label is not None:
        members["label.png"] = label
    sample = {
        "__key__": check_key(key),
        "feats.npy": _npy(finite_half(feats, key, "region features")),
        "rle.json": json.dumps(rles).encode(),
        "areas.npy": _npy(areas.astype(np.int64)),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }
    for name, value in members.items():
        if name in sample or name in OPTIONAL:
            raise ValueError(f"task member {name!r} would replace a common shard member")
        sample[name] = encode_member(name, value)
    if patches is not None:
        sample["patches.npy"] = _npy(finite_half(patches, key, "patch grid"))
    return sample


FIELDS = {"feats": "feats.npy", "rle": "rle.json", "areas": "areas.npy", "hist": "hist.npy",
          "label": "label.png", "meta": "meta.json", "patches": "patches.npy"}  # decoded name -> member


def _member_of(name: str, sample: dict) -> str | None:
    """The member that decodes to ``name``: FIELDS, else the sample's member with that stem."""
    if name in FIELDS:
        return FIELDS[name]
    return next((m for m in sample if m.partition(".")[0] == name and not m.startswith("__")), None)


def decode_sample(sample: dict, fields: tuple[str, ...] | None = None, copy: bool = True,
                  required: tuple[str, ...] = ()) -> dict:
    """Tar members -> arrays. Module-level (picklable) so DataLoader workers can use it.

    ``fields``: the decoded names to produce (a member's stem: "feats", "hist", "depth"; "key" is
    always there); None = every member present. ``required``: members the reader's task needs
    beyond the common ones (checked with them). ``copy=False`` returns .npy arrays as read-only
    views of the member bytes (the streams copy them into batches anyway).
    """
    missing = [ext for ext in (*COMMON, *required) if ext not in sample]
    if missing:
        raise ShardError(f"sample '{sample.get('__key__')}' in {sample.get('__url__')} lacks {missing}; "
                         "the shard is damaged or was written by another version or task: re-run extraction")
    if fields is None:
        fields = tuple(m.partition(".")[0] for m in sample if not m.startswith("__"))
    out = {"key": sample["__key__"]}
    for name in fields:
        member = _member_of(name, sample)
        if member is None or member not in sample:
            hint = ("re-extract with extract.patches=true" if name == "patches" else
                    "the shards were extracted for another task, or with an older schema: re-run extraction")
            raise ShardError(f"sample '{sample['__key__']}' in {sample.get('__url__')} has no "
                             f"{member or name + '.*'}: {hint}")
        raw = sample[member]
        try:
            if member.endswith(".npy"):
                out[name] = load_npy(raw, copy=copy)
            elif member.endswith(".json"):
                out[name] = json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
            else:
                out[name] = np.array(Image.open(io.BytesIO(raw)))
        except Exception as err:  # damaged bytes (only possible when sha256 verification is off)
            raise ShardError(f"shard {sample.get('__url__')} is damaged: {member} of sample '{sample['__key__']}' "
                             f"does not decode ({type(err).__name__}: {err}). Delete the shard and re-run: "
                             f"{REEXTRACT}") from err
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
    types (GNU long names: our writer never makes them) is listed by ``tarfile`` instead.

    Damage is met as ``tarfile`` meets it (fuzz-tested against it): an empty or cut first header,
    a cut inside a member's data or its padding, or a cut or bad header after a pax header raise;
    a cut at a member boundary or inside a later header ends the archive (the manifest's key check
    catches the missing samples). A bad checksum raises anywhere (``tarfile`` would end there).
    """
    members, headers, pos, pax, end = [], [], 0, None, len(data)
    after_pax = False  # the next header completes a pax header: it must be there and be a member
    if end < 512:
        raise tarfile.ReadError("empty file" if end == 0 else f"truncated header in {url}")
    while pos + 512 <= end or after_pax:
        if pos + 512 > end:
            raise tarfile.ReadError(f"truncated header after a pax header in {url} (byte {pos})")
        kind = data[pos + 156]
        if kind == 0 and data[pos:pos + 512] == _ZERO_BLOCK:
            if after_pax:
                raise tarfile.ReadError(f"empty header after a pax header in {url} (byte {pos})")
            break
        if kind not in (_FILE, _OLD_FILE, _DIRECTORY, _PAX, _GLOBAL_PAX) or data[pos + 124] & 0x80:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
        headers.append(pos)
        size = int(data[pos + 124:pos + 136].rstrip(b"\0 ") or b"0", 8)
        start = pos + 512
        if start + (size + 511) // 512 * 512 > end:
            raise tarfile.ReadError(f"unexpected end of data in {url} (member at byte {pos} is cut)")
        if kind == _PAX:  # records "<length> <key>=<value>\n" for the next member
            block = data[start:start + size]
            pax = _pax_records(block) if b" path=" in block or b" size=" in block else None
            after_pax = True
        elif kind in (_FILE, _OLD_FILE):
            name = data[pos:pos + 100].split(b"\0", 1)[0].decode()
            if data[pos + 345] and data[pos + 257:pos + 262] == b"ustar":
                name = data[pos + 345:pos + 500].split(b"\0", 1)[0].decode() + "/" + name
            if pax:
                name, size = pax.get("path", name), int(pax.get("size", size))
                if start + (size + 511) // 512 * 512 > end:
                    raise tarfile.ReadError(f"unexpected end of data in {url} (member {name!r} is cut)")
            members.append((name, start, size))
        if kind != _PAX:
            pax, after_pax = None, False
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


def read_tar_samples(urls: Iterable[str], sha256s: dict[str, str] | None = None) -> Iterator[dict]:
    """Samples of tar shards, as ``webdataset.tarfile_to_samples`` yields them: dicts with
    ``__key__``, ``__url__`` and one entry per member extension (lower case), holding a
    ``memoryview`` of the member's bytes. Each shard is memory-mapped: no copy of its bytes is
    made until a stage copies what it decodes (the map closes when the last view is gone).

    ``sha256s`` (url -> hex digest, e.g. from the manifest): those shards are hashed on a helper
    thread, one shard ahead of the consumer, from the mapped bytes the parser then reads; a
    mismatch raises ``ShardError`` naming the shard before any of its samples is yielded. A shard
    that does not parse raises ``ShardError`` naming it too."""
    urls = list(urls)
    if not sha256s:
        for url in urls:
            yield from _shard_samples(_map_shard(url), url)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-sha256")
    try:  # hashlib releases the GIL: the next shard is hashed while this one is consumed
        ahead = pool.submit(_map_verified, urls[0], sha256s.get(urls[0])) if urls else None
        for i, url in enumerate(urls):
            data = ahead.result()
            if i + 1 < len(urls):
                ahead = pool.submit(_map_verified, urls[i + 1], sha256s.get(urls[i + 1]))
            yield from _shard_samples(data, url)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _map_shard(url: str):
    with open(url, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        # MAP_POPULATE maps every page up front: one call instead of a page fault per 4 KiB
        return mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                         prot=mmap.PROT_READ) if size else b""


def _map_verified(url: str, expected: str | None):
    data = _map_shard(url)
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ShardError(f"shard {url} does not match its sha256 in the manifest (read {actual[:12]}..., "
                             f"manifest {expected[:12]}...): it was damaged after extraction. Delete it and "
                             f"re-run: {REEXTRACT}")
    return data


def _shard_samples(data, url: str) -> Iterator[dict]:
    try:
        members = _tar_members(data, url)
    except Exception as err:  # tarfile.ReadError, a garbled header field
        raise ShardError(f"shard {url} is damaged ({type(err).__name__}: {err}). Delete it and re-run: "
                         f"{REEXTRACT}") from err
    view, current = memoryview(data), None
    for name, start, size in members:
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
def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def write_shard(path: Path, samples: Iterable[dict]) -> list[str]:
    """Write samples into ``path`` atomically; returns their keys (see ``write_shard_hashed``)."""
    return write_shard_hashed(path, samples)[0]


class _HashingWriter:
    """A binary stream that hashes and counts what is written through it."""

    def __init__(self, stream):
        self.stream, self.digest, self.bytes = stream, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


def write_shard_hashed(path: Path, samples: Iterable[dict]) -> tuple[list[str], str, int]:
    """Write samples into ``path`` atomically; returns (keys, sha256, bytes) of what was written.

    The tar goes to this process's temporary name and is renamed only after it is closed and
    fsynced, so a killed process never leaves a complete-looking shard (nor one another process
    renames); on an exception the temporary file is removed. ``mtime=0`` and fixed owner fields
    make the bytes a function of the samples alone. The sha256 is of the bytes as written.
    """
    import webdataset as wds

    keys: list[str] = []
    with atomic.atomic_file(path, fsync=True) as stream:
        hashing = _HashingWriter(stream)
        # mtime an int: a float one makes tarfile add a pax header to every member
        writer = wds.TarWriter(hashing, encoder=False, mtime=0, user="regionbench", group="regionbench")
        for sample in samples:
            writer.write(sample)
            keys.append(sample["__key__"])
        writer.close()
    return keys, hashing.digest.hexdigest(), hashing.bytes


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
    atomic.write_atomic(split_dir / f"{entry.name}.json", json.dumps(entry.to_dict(), indent=1).encode(), fsync=True)


def lock_path(split_dir: Path, name: str) -> Path:
    """The lock file held while shard ``name`` (or, for "manifest", the manifest) is written."""
    return Path(split_dir) / ".locks" / name


def read_entry(split_dir: Path, name: str) -> ShardEntry | None:
    path = split_dir / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return ShardEntry(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def verified_sha256(split_dir: Path, name: str, expected_keys: list[str]) -> str | None:
    """The shard's sha256 if its tar matches its entry byte for byte and holds ``expected_keys``
    (less the skipped ones), else None. Only such a shard is kept by a re-run."""
    entry = read_entry(split_dir, name)
    tar = split_dir / f"{name}.tar"
    if entry is None or not tar.is_file():
        return None
    expected = [k for k in expected_keys if k not in {s["id"] for s in entry.skipped}]
    ok = entry.keys == expected and tar.stat().st_size == entry.bytes and sha256(tar) == entry.sha256
    return entry.sha256 if ok else None


def write_under_locks(split_dir: Path, indices: list[int], write: Callable[[int], bool]) -> int:
    """Call ``write(i)`` for each shard index holding that shard's lock; returns how many wrote.

    Shards another process holds are skipped at first and waited for at the end, so concurrent
    extractions of one directory split the work; ``write`` must check, under the lock, whether
    the shard is already verified (written by the other process) and return False then."""
    written, busy = 0, []
    for i in indices:
        with atomic.locked(lock_path(split_dir, shard_name(i)), wait=False) as held:
            if held:
                written += write(i)
            else:
                busy.append(i)
    for i in busy:
        with atomic.locked(lock_path(split_dir, shard_name(i))):
            written += write(i)
    return written


def remove_shard_orphans(split_dir: Path, name: str) -> None:
    """Temporary files of shard ``name`` (its tar, its entry), called while holding its lock: any
    left then belongs to a writer that died, of this version (``<name>.<host>-<pid>.tar.tmp``) or
    an older one (``<name>.tar.tmp``)."""
    for entry in os.scandir(split_dir):
        if entry.name.startswith(f"{name}.") and entry.name.endswith(".tmp"):
            Path(entry.path).unlink(missing_ok=True)


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


def split_ids_digest(ids: Iterable[str]) -> str:
    """sha256 of a split's sorted ids, one per line: the identity of the split a manifest covers."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def merge_manifest(split_dir: Path, plan: list[list[str]], info: dict,
                   known: dict[str, str] | None = None) -> dict | None:
    """Write ``manifest.json`` if every planned shard is complete and matches its entry; else None.

    Runs under the split's lock, taking each shard's lock while checking it, so a shard being
    written by another process is waited for, never half-seen. ``known``: shard name -> sha256
    this process hashed in this run (not hashed again); every other shard is hashed here."""
    split_dir = Path(split_dir)
    known = known or {}
    shards = []
    with atomic.locked(lock_path(split_dir, "manifest")):
        for leftover in split_dir.glob("manifest.*.tmp"):  # under the lock, only a dead writer's
            leftover.unlink(missing_ok=True)
        for i, keys in enumerate(plan):
            name = shard_name(i)
            with atomic.locked(lock_path(split_dir, name)):
                entry = read_entry(split_dir, name)
                tar = split_dir / f"{name}.tar"
                if entry is None or not tar.is_file():
                    return None
                if sorted(entry.keys + [s["id"] for s in entry.skipped]) != sorted(keys):
                    log.warning("%s holds other images than this extraction planned (another extraction with "
                                "another extract.samples_per_shard or split?): not writing the manifest", tar)
                    return None
                digest = known.get(name) or (sha256(tar) if tar.stat().st_size == entry.bytes else None)
                if digest != entry.sha256:
                    log.warning("%s does not match its entry %s.json: not writing the manifest; a re-run "
                                "redoes that shard", tar, name)
                    return None
            shards.append(entry.to_dict())
        ids = [k for keys in plan for k in keys]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "num_samples": sum(s["count"] for s in shards),
            "num_regions": sum(s["regions"] for s in shards),
            "num_shards": len(shards),
            "split_items": len(ids),  # images the split listed, skipped ones included
            "split_ids_sha256": split_ids_digest(ids),
            "skipped": [s for e in shards for s in e["skipped"]],
            "cache_damaged": [p for e in shards for s in e["stats"].values() for p in s.get("cache_damaged", ())],
            "notes": notes_of({k: v for e in shards for k, v in e["stats"].items()}),
            "region_stats": summarize_stats({k: v for e in shards for k, v in e["stats"].items()}),
            "shards": shards,
            **info,
            "versions": library_versions(),
        }
        atomic.write_atomic(split_dir / "manifest.json", json.dumps(manifest, indent=1).encode(), fsync=True)
    return manifest


def notes_of(stats: dict[str, dict]) -> dict[str, dict]:
    """{note: {"count": its total, "ids": the samples it was made on}} from per-sample extraction
    statistics (a task's ``notes``: frames with an invalid pose, tokens cut from a clip), in sample order."""
    out: dict[str, dict] = {}
    for key, values in stats.items():
        for note, count in values.get("notes", {}).items():
            entry = out.setdefault(note, {"count": 0, "ids": []})
            entry["count"] += count
            entry["ids"].append(key)
    return out


def load_manifest(split_dir: Path | str) -> dict:
    """The split's manifest, checked to cover the split it was extracted from (``check_manifest``)."""
    path = Path(split_dir) / "manifest.json"
    if not path.is_file():
        partial = sorted(Path(split_dir).glob("shard-*.json")) if Path(split_dir).is_dir() else []
        hint = (f" ({len(partial)} shard entries exist: an extraction is unfinished or another array job is "
                "still running)" if partial else "")
        raise ShardError(f"no shard manifest at {path}{hint}. Run: python -m bench.extract experiment=NAME")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ShardError(f"{path} is damaged ({err}): delete it and re-run: {REEXTRACT}") from None
    check_schema(manifest, path)
    check_manifest(manifest, path)
    return manifest


def check_schema(manifest: dict, path: Path) -> None:
    """A schema version this reader knows (1, or up to ``SCHEMA_VERSION``), or a ShardError to re-extract."""
    version = manifest.get("schema_version", 1)
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ShardError(f"{path} has shard schema version {version!r}; this RegionBench reads versions 1 to "
                         f"{SCHEMA_VERSION}. Delete the split directory and re-extract: {REEXTRACT}")


def load_json(path: Path) -> dict:
    """A manifest or entry as written, unchecked; a damaged file is a ShardError saying to re-extract."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:
        raise ShardError(f"{path} is damaged ({err}): delete it and re-run: {REEXTRACT}") from None


def manifest_members(manifest: dict) -> tuple[str, ...]:
    """The members every sample of the shard set holds (schema 1: segmentation's, it had no other)."""
    return tuple(manifest.get("members") or V1_MEMBERS)


def require_members(manifest: dict, members: tuple[str, ...], path: Path | str) -> None:
    """Raise ShardError, saying to re-extract, if the shard set's samples lack any of ``members``."""
    missing = [m for m in members if m not in manifest_members(manifest)]
    if missing:
        raise ShardError(f"shards in {path} (task {manifest.get('task', 'segmentation')}) hold "
                         f"{', '.join(manifest_members(manifest))} but this reader needs {', '.join(missing)} too: "
                         f"they were extracted for another task. Re-extract: {REEXTRACT}")


_WARNED_OLD: set[str] = set()


def check_manifest(manifest: dict, path: Path) -> None:
    """The manifest's shards are shard-000000.. in order, their counts add up, and with the skipped
    images they are exactly the split it records (count and ids); raises ``ShardError`` if not.
    Manifests written before splits were recorded get the first two checks (and a warning once)."""
    names = [s["name"] for s in manifest["shards"]]
    if names != [shard_name(i) for i in range(len(names))] or manifest.get("num_shards", len(names)) != len(names):
        raise ShardError(f"{path} lists shards {names[:3]}{'...' if len(names) > 3 else ''} ({len(names)}) "
                         f"instead of shard-000000..{shard_name(len(names) - 1)} in order: it was edited or "
                         f"mixed with another extraction. Delete the split directory and re-run: {REEXTRACT}")
    counted = sum(s["count"] for s in manifest["shards"])
    if counted != manifest["num_samples"] or any(s["count"] != len(s["keys"]) for s in manifest["shards"]):
        raise ShardError(f"{path} says num_samples={manifest['num_samples']} but its shards list {counted}: "
                         f"it was edited. Delete the split directory and re-run: {REEXTRACT}")
    if "split_items" not in manifest:
        if str(path) not in _WARNED_OLD:
            _WARNED_OLD.add(str(path))
            log.warning("%s predates split records: a shard missing from its end cannot be detected. "
                        "Re-extract to record the split", path)
        return
    skipped = manifest["skipped"]
    if counted + len(skipped) != manifest["split_items"]:
        raise ShardError(
            f"{path}: its shards hold {counted} of the {manifest['split_items']} images of the split it was "
            f"extracted from ({len(skipped)} skipped as unreadable): a shard is missing from the manifest, "
            f"so evaluation would score a smaller split. Delete the split directory and re-run: {REEXTRACT}")
    ids = [k for s in manifest["shards"] for k in s["keys"]] + [s["id"] for s in skipped]
    if split_ids_digest(ids) != manifest.get("split_ids_sha256"):
        raise ShardError(f"{path}: the images in its shards are not the split it was extracted from "
                         f"(ids differ from split_ids_sha256). Delete the split directory and re-run: {REEXTRACT}")


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


def read_split(split_dir: Path | str, keys: Iterable[str] | None = None, verify: str = "sha256",
               fields: tuple[str, ...] | None = None) -> tuple[Iterator[dict], dict]:
    """(decoded samples in shard order, manifest) of an extracted split: the one reader the
    tools share with training (``read_tar_samples``). ``keys``: only these samples, reading only
    the shards that hold them. ``verify``: "sha256" checks each shard's hash as it is read,
    "size"/"exists" only what ``verify_shards`` checks. When every shard is read, the samples
    read must be exactly those the manifest lists, else ``ShardError`` (a shard cut at a member
    boundary reads as a valid shorter archive)."""
    split_dir = Path(split_dir)
    manifest = load_manifest(split_dir)
    verify_shards(split_dir, manifest, level="exists" if verify == "exists" else "size")
    wanted = None if keys is None else set(keys)
    chosen = [s for s in manifest["shards"] if wanted is None or wanted & set(s["keys"])]
    urls = {str(split_dir / f"{s['name']}.tar"): s for s in chosen}
    sha256s = {url: s["sha256"] for url, s in urls.items()} if verify == "sha256" else None

    def samples() -> Iterator[dict]:
        read = []
        for raw in read_tar_samples(urls, sha256s):
            read.append(raw["__key__"])
            if wanted is None or raw["__key__"] in wanted:
                yield decode_sample(raw, fields)
        expected = [k for s in chosen for k in s["keys"]]
        if read != expected:
            raise ShardError(f"{split_dir}: the shards hold other samples than manifest.json lists "
                             f"({len(read)} read, {len(expected)} listed): delete them and re-run: {REEXTRACT}")

    return samples(), manifest


def iter_tar_keys(path: Path) -> Iterator[str]:
    """Sample keys in a tar, in order (for tests and repair tools)."""
    seen = None
    with tarfile.open(path) as tar:
        for member in tar:
            key = member.name.split(".", 1)[0]
            if key != seen:
                seen = key
                yield key
