"""Overlapped extraction: worker processes make the shard samples while this process runs the networks.

    this process (backbone, SAM)                    worker processes (``extract.workers``, spawned)
    -------------------------------------------     -----------------------------------------------
    hands out units in shard order           ->     read and decode the unit (``task.load_unit``)
    answers "features" / "masks" / "meta"    <->    caches, CPU region sources (SLIC, the SAM+SLIC
      (the backbone; a SAM-family source)           merge, gt), pooling, the task's members, encoding
    writes each shard in plan order          <-     (stats, encoded sample) | skipped | failed

A worker runs the same ``Extractor.sample`` (or the task's ``sample``) as a one-process extraction;
only its networks are proxies (``RemoteBackbone``, ``RemoteRegions``) whose calls this process
answers with the same models, so the shard bytes are the same for any number of workers
(``tests/test_pipeline_workers.py``). Shards are still written here, one at a time under their
locks (``bench.shards``): kill -9 and resume behave as in one process. Workers exit when this
process does (their pipe closes).

``Serial`` is the same interface run in this process (``extract.workers=0``, and small splits under
``auto``, where starting workers costs more than it saves).
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
import traceback
from collections import deque
from multiprocessing.connection import wait

from omegaconf import DictConfig

from datamodules.voc import CorruptImageError

log = logging.getLogger("regionbench.extract")

AUTO_MIN_UNITS = 48  # under `auto`, fewer units than this run in one process (a worker starts in ~3 s)
DEPTH = 2  # units handed to each worker ahead of its results: the next one is there when it finishes


def worker_count(setting, units: int) -> int:
    """Workers for a split with ``units`` left to extract: ``extract.workers`` as a number, or ``auto``
    (this process's share of the CPU cores it may use — torchrun's LOCAL_WORLD_SIZE or SLURM's tasks
    per node start that many extractions on one machine — at most 8; none for fewer than
    AUTO_MIN_UNITS units)."""
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env = os.environ
        local = int(env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0] or 1)
        return 0 if units < AUTO_MIN_UNITS else max(1, min(cores // max(local, 1), 8))
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 0:
        raise ValueError(f"extract.workers={setting!r}: a number >= 0 or auto")
    return setting


# ----------------------------------------------------------------------------- results


def make_sample(extractor, load, key: str, item) -> tuple:
    """One unit through ``load`` and the task's sample: ("sample", stats, sample) or ("skipped", record)."""
    start = time.perf_counter()
    try:
        image, label = load(item)
    except CorruptImageError as err:
        log.warning("skipping unreadable image %s: %s", item.image_path, err)
        return "skipped", {"id": key, "path": str(item.image_path), "reason": err.reason, "message": str(err)}
    decoded = time.perf_counter()
    stats, sample = (extractor.task.sample or type(extractor).sample)(extractor, key, image, label)
    stats["stage_seconds"]["decode"] = decoded - start
    return "sample", stats, sample


class Serial:
    """Units made one at a time in this process when they are taken."""

    def __init__(self, extractor, load):
        self.extractor, self.load = extractor, load
        self.items: dict = {}
        self.served_seconds = 0.0

    def finish(self) -> None:
        self.items.clear()

    def schedule(self, units: list) -> None:
        self.items.update((unit.id, unit) for unit in units)

    def drop(self, keys: list[str]) -> None:
        for key in keys:
            self.items.pop(key, None)

    def take(self, key: str) -> tuple:
        result = make_sample(self.extractor, self.load, key, self.items.pop(key))
        if result[0] == "sample":
            self.served_seconds += result[1].get("backbone_seconds", 0.0)
        return result


# ----------------------------------------------------------------------------- this process


class Workers:
    """Spawned worker processes, started once per extraction and reused by every split
    (``begin(extractor, cfg, split)`` hands them the split's config and task; a worker starts in
    seconds: torch and the project are imported).

    Units go out in the order ``schedule`` gives, ``DEPTH`` per worker ahead. ``take(key)`` returns
    that unit's result, answering the workers' network calls meanwhile (a key not handed out yet
    goes first); ``drop(keys)`` forgets units another process wrote. At most ``count * DEPTH``
    results wait here for the writer. ``served_seconds``: time spent in the networks answering
    calls (the backbone's, and SAM's, busy time)."""

    def __init__(self, count: int):
        self.count = count
        self.procs, self.conns = [], []
        self.begin(None, None, "")

    def __enter__(self):
        context = multiprocessing.get_context("spawn")  # torch and OpenMP are not fork-safe
        for i in range(self.count):
            ours, theirs = context.Pipe()
            proc = context.Process(target=worker_main, args=(theirs, i), name=f"regionbench-extract-{i}", daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)
        return self

    def __exit__(self, exc_type, *exc):
        """Stop the workers: told to, after a finished extraction; killed at once after an error (their
        units are of no use, and one may be blocked sending a result nobody reads)."""
        for conn in self.conns if exc_type is None else ():
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker already gone needs no stop
                conn.send(("stop",))
        for proc in self.procs:
            if exc_type is None:
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return False

    def begin(self, extractor, cfg: DictConfig | None, split: str) -> "Workers":
        """Make ``split``'s units with ``extractor`` (this process's networks) and ``cfg`` (the workers')."""
        self.extractor, self.split = extractor, split
        self.batch = int(cfg.extract.backbone_batch) if cfg is not None else 1
        if self.batch < 1:
            raise ValueError(f"extract.backbone_batch={self.batch}: must be >= 1")
        self.pending: deque = deque()  # units not handed out, in order
        self.held: dict = {}  # key -> unit, for every scheduled key not yet taken
        self.out: dict[int, list[str]] = {i: [] for i in range(self.count)}  # keys handed out, oldest first
        self.done: dict[str, tuple] = {}
        self.dropped: set[str] = set()
        self.served_seconds = 0.0
        if extractor is not None:
            for conn in self.conns:  # Extractor (this module's importer) and the task pickle by reference
                conn.send(("setup", type(extractor), cfg, extractor.task))
        return self

    def finish(self) -> None:
        """Wait for results of dropped units still out, so that the next split starts clean."""
        while self._in_flight():
            self._answer_one()

    def schedule(self, units: list) -> None:
        for unit in units:
            self.pending.append(unit.id)
            self.held[unit.id] = unit

    def drop(self, keys: list[str]) -> None:
        for key in keys:
            if key in self.done:
                del self.done[key]
            elif any(key in keys_out for keys_out in self.out.values()):
                self.dropped.add(key)  # its result is discarded when it arrives
            elif key in self.pending:
                self.pending.remove(key)
            self.held.pop(key, None)

    def take(self, key: str) -> tuple:
        if key not in self.held:
            raise KeyError(f"{key} was not scheduled")
        if key not in self.done and key in self.pending:  # wanted now: hand it out first
            self.pending.remove(key)
            self.pending.appendleft(key)
        while key not in self.done:
            self._hand_out(key)
            self._answer_one()
        self.held.pop(key, None)
        return self.done.pop(key)

    def _hand_out(self, wanted: str) -> None:
        """Send units to workers with fewer than DEPTH; the window of results waiting here is
        ``count * DEPTH``, but the unit the writer waits for goes out regardless (results of shards
        it skipped for now must not hold it up)."""
        for i, conn in enumerate(self.conns):
            while self.pending and len(self.out[i]) < DEPTH and (
                    self.pending[0] == wanted or len(self.done) + self._in_flight() < self.count * DEPTH):
                key = self.pending.popleft()
                conn.send(("unit", key, self.held[key]))
                self.out[i].append(key)

    def _in_flight(self) -> int:
        return sum(len(keys) for keys in self.out.values())

    def _answer_one(self) -> None:
        """Wait for messages from the workers and handle them; a dead worker is an error. Feature
        calls that arrive together go through the backbone as one batch (``extract.backbone_batch``)."""
        features = []  # (conn, rgb) of this round's feature calls
        for conn in wait(self.conns):
            i = self.conns.index(conn)
            for message in self._messages(i):  # all it sent: a result is often followed by its next call
                kind = message[0]
                if kind == "call" and message[1] == "features":
                    features.append((conn, message[2]))
                elif kind == "call":
                    conn.send(("reply", *self._call(*message[1:])))
                else:
                    self._result(i, message)
        for start in range(0, len(features), self.batch):
            group = features[start:start + self.batch]
            grids, seconds = self._features([rgb for _, rgb in group])
            for (conn, _), grid in zip(group, grids):
                conn.send(("reply", grid, seconds / len(group)))

    def _messages(self, i: int):
        """The messages waiting from worker ``i`` (at least one); its death is an error naming it."""
        conn = self.conns[i]
        try:
            yield conn.recv()
            while conn.poll():
                yield conn.recv()
        except (EOFError, OSError):
            self.procs[i].join(timeout=5)
            raise RuntimeError(
                f"extraction worker {self.procs[i].name} died (exit code {self.procs[i].exitcode}) while making "
                f"{', '.join(self.out[i]) or 'no unit'} of {self.split}; out of memory? Run with "
                "extract.workers=0 to see the error in this process") from None

    def _result(self, i: int, message: tuple) -> None:
        kind, key = message[0], message[1]
        self.out[i].remove(key)
        if key in self.dropped:
            self.dropped.discard(key)
        elif kind == "failed":
            raise message[2]
        else:
            self.done[key] = (kind, *message[2:])

    def _features(self, images: list) -> tuple[list, float]:
        """Patch grids of ``images`` from this process's backbone, several in one forward pass when
        they arrive together (``features_batch``: bit-identical to one at a time on the CPU, measured
        in tests/test_backbones_batch.py; on a GPU see make bench-gpu); (grids, seconds)."""
        import torch

        start = time.perf_counter()
        backbone = self.extractor.backbone
        with torch.inference_mode():
            grids = backbone.features_batch(images) if len(images) > 1 else [backbone.features(images[0])]
        seconds = time.perf_counter() - start
        self.served_seconds += seconds
        return grids, seconds

    def _call(self, method: str, *args) -> tuple:
        """A worker's network call, answered with this process's models: (value, seconds)."""
        start = time.perf_counter()
        value = NETWORK_CALLS[method](self.extractor, *args)
        seconds = time.perf_counter() - start
        self.served_seconds += seconds
        return value, seconds


class WorkerPool:
    """The workers of one extraction, shared by its splits and cells: started when a split first
    needs them (``workers``), stopped when the block ends."""

    def __init__(self):
        self._workers: Workers | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._workers is not None:
            self._workers.__exit__(*exc)
        return False

    def workers(self, setting, units: int) -> Workers | None:
        """The workers for a split of ``units`` units under ``extract.workers=setting``, or None (here)."""
        count = worker_count(setting, units)
        if count == 0:
            return None
        if self._workers is not None and self._workers.count != count:
            self._workers.__exit__(None, None, None)
            self._workers = None
        if self._workers is None:
            self._workers = Workers(count).__enter__()
        return self._workers


def _features(extractor, rgb):
    import torch

    with torch.inference_mode():
        return extractor.backbone.features(rgb)


def _meta(extractor):
    return extractor.backbone.patch_size, extractor.backbone.embed_dim


def _masks(extractor, rgb):
    from bench.regions.sam_slic import SamSlicRegions

    source = extractor.regions.sam if isinstance(extractor.regions, SamSlicRegions) else extractor.regions
    return source.generate(rgb)


NETWORK_CALLS = {"features": _features, "meta": _meta, "masks": _masks}  # features: batched in _answer_one


def network_source_name(source: str) -> bool:
    """Whether region source ``source`` (a registry name) runs a network: SAM and its family."""
    from bench.regions.sam import SAM_FAMILY
    from bench.regions.sam2 import SAM2_FAMILY

    return source in SAM_FAMILY or source in SAM2_FAMILY


# ----------------------------------------------------------------------------- workers


class Remote:
    """A worker's end of the pipe: ``call`` asks this process's networks; units that arrive while it
    waits for an answer are kept for later."""

    def __init__(self, conn):
        self.conn = conn
        self.units: deque = deque()

    def call(self, method: str, *args) -> tuple:
        self.conn.send(("call", method, *args))
        while True:
            message = self.conn.recv()
            if message[0] == "reply":
                return message[1], message[2]
            self.units.append(message)

    def next_message(self):
        return self.units.popleft() if self.units else self.conn.recv()


class RemoteBackbone:
    """The backbone of the process that holds it: same ``features``, ``patch_size``, ``embed_dim``;
    ``last_seconds`` is the time the forward pass took there (not the wait)."""

    def __init__(self, remote: Remote):
        self.remote, self.last_seconds, self._meta = remote, 0.0, None

    def features(self, rgb):
        grid, self.last_seconds = self.remote.call("features", rgb)
        return grid

    @property
    def patch_size(self) -> int:
        self._meta = self._meta or self.remote.call("meta")[0]
        return self._meta[0]

    @property
    def embed_dim(self) -> int:
        self._meta = self._meta or self.remote.call("meta")[0]
        return self._meta[1]


class RemoteRegions:
    """A SAM-family source run by the process that holds it (``generate`` only)."""

    def __init__(self, remote: Remote):
        self.remote = remote

    def generate(self, image):
        return self.remote.call("masks", image)[0]


def worker_main(conn, index: int) -> None:
    """A worker: for each ("setup", Extractor class, cfg, task) build its extractor, then make the
    samples of the units it is handed, until told to stop (or its pipe closes)."""
    import torch

    torch.set_num_threads(1)  # the cores are the workers'; one thread each
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s %(name)s[{index}]: %(message)s")
    remote = Remote(conn)
    extractor = load = setup_error = None
    while True:
        try:
            message = remote.next_message()
        except (EOFError, OSError):  # the extraction process is gone
            return
        if message[0] == "stop":
            return
        if message[0] == "setup":
            _, extractor_class, cfg, task = message
            try:
                extractor = extractor_class(cfg, task, remote=remote)
                load, setup_error = task.load_unit(cfg), None
            except Exception as err:  # reported for each unit handed out
                setup_error = err
            continue
        _, key, item = message
        try:
            if setup_error is not None:
                raise setup_error
            result = make_sample(extractor, load, key, item)
        except Exception as err:
            conn.send(("failed", key, portable(err)))
            continue
        conn.send((result[0], key, *result[1:]))


def portable(err: Exception) -> Exception:
    """``err`` if it survives pickling (the extraction process re-raises it, with the worker's
    traceback as a note), else a RuntimeError carrying its type, message and traceback."""
    import pickle

    text = "".join(traceback.format_exception(err))
    try:
        copy = pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"in an extraction worker: {type(err).__name__}: {err}\n{text}")
    copy.add_note(f"(raised in an extraction worker)\n{text}")
    return copy
