"""Files that are either complete or absent, checksummed records, per-shard locks, and digests.

Every file RegionBench writes goes to a temporary sibling named for its writer,
``<stem>.<host>-<pid><suffix>.tmp`` (so two processes never share one), and is renamed over the
final name with ``os.replace`` once complete: a reader never sees half a file. ``fsync=True``
(shards, manifests) also forces the bytes to disk before the rename; cache entries skip that,
since their checksum catches a torn write and they are recomputed.

A writer killed mid-write leaves its temporary file behind: ``remove_orphans`` deletes those of
dead processes on this host, and any older than a day (another host's, whose pid cannot be
checked here). The host is in the name so that a shared cache on a cluster file system never
loses a file another node is writing.

Cache records are *sealed*: the payload followed by one text line ``\\nregionbench-sha256:<hex>\\n``
over the payload. ``unseal`` returns the payload only if the line is there and matches, so a
truncated, overwritten or bit-flipped record is recognised as damaged instead of being decoded.
A sealed ``.npy`` is still an ordinary ``.npy`` to ``np.load`` (which stops at the array's end).

``locked`` takes an exclusive ``flock`` on a lock file: held while a shard is written, or while a
manifest is merged, and released by the kernel if the holder dies (even under ``kill -9``).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HOST = socket.gethostname().split(".")[0].replace("-", "_") or "localhost"
ORPHAN_AGE_SECONDS = 24 * 3600  # a temporary file of another host this old is abandoned
_SEAL = b"\nregionbench-sha256:"
_SEAL_LENGTH = len(_SEAL) + 64 + 1  # marker, hex digest, newline


def digest(value, length: int = 8) -> str:
    """Short sha256 of a JSON-able value (keys sorted; other objects by ``str``): the one way
    RegionBench names a directory or a record after the settings that made it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            hasher.update(block)
    return hasher.hexdigest()


def tmp_path(path: Path) -> Path:
    """This process's temporary sibling of ``path``: ``<stem>.<host>-<pid><suffix>.tmp``."""
    return path.with_name(f"{path.stem}.{HOST}-{os.getpid()}{path.suffix}.tmp")


@contextmanager
def atomic_file(path: Path, fsync: bool = False, previous: Path | None = None) -> Iterator:
    """Open this process's temporary sibling of ``path`` for binary writing; when the block ends
    without an exception, rename it over ``path`` (an exception removes it instead).

    ``fsync=True`` forces the bytes to disk before the rename and the directory entry after it.
    With ``previous``, an existing ``path`` is first renamed to ``previous`` (checkpoints keep the
    state they replace; between the two renames only ``previous`` exists, so readers try both).
    """
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the renames themselves reach the disk
        finally:
            os.close(directory)


@contextmanager
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary sibling path for a writer that takes a path (a library's save function, or a
    whole directory); renamed over ``path`` when the block ends without an exception (a directory
    already at ``path`` is replaced), removed otherwise. ``keep_suffix``: the temporary name ends in
    ``path``'s suffix, for writers that choose the format by it."""
    tmp = path.with_name(f"{path.stem}.{HOST}-{os.getpid()}.tmp{path.suffix}") if keep_suffix else tmp_path(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = tmp_path(path.with_name(path.name + "-old"))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | memoryview, fsync: bool = False, previous: Path | None = None) -> None:
    """Write ``data`` to ``path`` through ``atomic_file``."""
    with atomic_file(path, fsync=fsync, previous=previous) as f:
        f.write(data)


def seal(payload: bytes) -> bytes:
    """``payload`` + the checksum line that ``unseal`` verifies."""
    return payload + _SEAL + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def unseal(data: bytes) -> bytes | None:
    """The payload of sealed ``data``, or None when the seal is missing or does not match."""
    if len(data) < _SEAL_LENGTH or data[-_SEAL_LENGTH:-65] != _SEAL or data[-1:] != b"\n":
        return None
    payload = data[:-_SEAL_LENGTH]
    return payload if hashlib.sha256(payload).hexdigest().encode() == data[-65:-1] else None


def _owner(tmp_name: str) -> tuple[str, int] | None:
    """(host, pid) from a ``tmp_path`` name, or None for another naming."""
    parts = tmp_name[:-len(".tmp")].split(".")
    for part in parts[1:]:
        host, _, pid = part.rpartition("-")
        if host and pid.isdigit():
            return host, int(pid)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM  # exists, owned by someone else
    return True


def is_orphan(tmp: Path, now: float | None = None) -> bool:
    """A temporary file whose writer is gone: a dead pid on this host, or older than a day."""
    try:
        age = (now or time.time()) - tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    owner = _owner(tmp.name)
    if owner is not None and owner[0] == HOST and not _alive(owner[1]):
        return True
    return age > ORPHAN_AGE_SECONDS


def remove_orphans(directory: Path, prefix: str = "") -> list[Path]:
    """Delete orphaned ``*.tmp`` files (names starting with ``prefix``) in ``directory``; returns them."""
    removed = []
    if not directory.is_dir():
        return removed
    now = time.time()
    for entry in os.scandir(directory):
        if entry.name.endswith(".tmp") and entry.name.startswith(prefix) and is_orphan(Path(entry.path), now):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


@contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    Yields True when the lock is held; with ``wait=False`` yields False at once if another
    process holds it (the block then runs without the lock and must not write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock
