"""Run checkpoints that survive kill -9: written atomically, verified before use, replayed exactly.

A run directory's ``checkpoints/`` holds at most two states:

    last.ckpt       the newest: every epoch end, and every ``checkpoint.every_n_steps`` optimizer steps or
                    ``checkpoint.every_minutes`` minutes when set (cluster jobs with wall-time limits)
    previous.ckpt   the state before it, the fallback when last.ckpt is found damaged

Writes: the checkpoint goes to this process's temporary file in the same directory
(``last.<host>-<pid>.ckpt.tmp``, ``bench.atomic``), is fsynced, the old last.ckpt becomes previous.ckpt
and the new one is renamed into place (``os.replace``), so a kill at any moment leaves complete files
only (and perhaps a ``.tmp``, removed by the next run). Lightning's own writer is not atomic off /tmp:
fsspec stages the file in the system temp directory and *copies* it over the checkpoint.

Reads: a checkpoint is a zip archive whose members carry CRC-32s (torch writes them); every member is
read and checked (``damage``), which catches truncation and flipped bits that ``torch.load`` reads
without complaint. A damaged file is moved aside to ``<name>.damaged-<time>`` with a warning, never
deleted, and the run falls back to the previous state or to scratch.

Exact replay: the training stream of epoch e is a pure function of (seed, e, rank)
(datamodules/region_shards.py), so ``ReplayLoader`` records how many batches of the epoch were consumed
and a resumed run re-creates that epoch's stream and drops them; ``RunCheckpoints`` seeds torch's
generator from (seed, step, rank) before every step, so dropout does not depend on where a run was
cut. An interrupted run therefore ends with the same weights, bit for bit, as an uninterrupted one
(tests/test_resume.py), as long as the number of devices is the same.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from bench.atomic import remove_orphans, write_atomic

log = logging.getLogger("regionbench")

LAST, PREVIOUS = "last.ckpt", "previous.ckpt"


# ----------------------------------------------------------------------------- files


def write_rotating(path: Path, data: bytes | memoryview, previous: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that a reader (or a kill) never sees a partial file
    (``bench.atomic.atomic_file``: temporary sibling, fsync, rename, directory fsync). With
    ``previous``, an existing ``path`` is first renamed to ``previous``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, fsync=True, previous=previous)


def damage(path: Path) -> str | None:
    """What is wrong with the checkpoint file at ``path`` (truncated, a bad CRC), or None if every
    member of its zip archive reads back intact."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return f"CRC mismatch in member {bad}" if bad else None


def move_aside(path: Path, problem: str) -> Path:
    """Rename a damaged file to ``<name>.damaged-<YYYYmmdd-HHMMSS>`` (never deleted) and say so."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.damaged-{stamp}.{n}"), n + 1
    os.replace(path, aside)
    log.warning("checkpoint %s is damaged (%s); moved to %s", path, problem, aside)
    return aside


def remove_stale_writes(directory: Path) -> None:
    """Delete the temporary files of checkpoint writes whose writer was killed (``bench.atomic``)."""
    for tmp in remove_orphans(directory):
        log.info("removed %s, an unfinished checkpoint write of a killed run", tmp)


def usable_checkpoint(directory: Path) -> tuple[Path | None, int]:
    """(the newest intact checkpoint in ``directory``, or None; how many damaged ones were moved aside).
    Tries last.ckpt, then previous.ckpt."""
    damaged = 0
    for name in (LAST, PREVIOUS):
        path = directory / name
        if not path.is_file():
            continue
        problem = damage(path)
        if problem is None:
            return path, damaged
        move_aside(path, problem)
        damaged += 1
    return None, damaged


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's dict, its tensors memory-mapped (cheap even for large models). Our own files:
    they hold Lightning's loop state and hyperparameters, not only tensors."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def resume_point(checkpoint: dict) -> tuple[int, int, int]:
    """(epoch training continues in, global step, batches of that epoch already done) of a Lightning
    checkpoint: as RunCheckpoints recorded it or, for one written at an epoch end by Lightning's
    ModelCheckpoint (older runs), the start of the epoch after its ``epoch``."""
    position = checkpoint.get("callbacks", {}).get(RunCheckpoints.__name__, {}).get("resume_at")
    if position is not None:
        return position["epoch"], position["step"], position["batches"]
    return int(checkpoint["epoch"]) + 1, int(checkpoint["global_step"]), 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, made atomic (``write_rotating``); overwriting ``last.ckpt``
    keeps the state it replaces as ``previous.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        write_rotating(path, buffer.getbuffer(), previous=path.with_name(PREVIOUS) if path.name == LAST else None)


# ----------------------------------------------------------------------------- replay


class ReplayLoader:
    """Wraps a training loader whose epoch ``e`` is a pure function of ``e`` (the datamodule's EpochLoader,
    whose ``_next_epoch`` it sets) so that Lightning can stop it mid-epoch and resume it exactly
    (Lightning's ``state_dict`` / ``load_state_dict`` loader protocol; its checkpoints store the state).

    Each pass serves epoch ``current_epoch()``, read when its first batch is drawn (Lightning's epoch
    counter is final only then); a pass after ``load_state_dict`` drops the batches the interrupted
    run had consumed. Skipped batches are still produced (decoded and shuffled), not trained on.
    ``layout`` (devices, workers) decides which batches a stream yields: a resumption under another
    layout is warned about, since from there on it trains on other batches than an uninterrupted run.
    """

    def __init__(self, loader, current_epoch: Callable[[], int], layout: dict):
        self.loader, self.current_epoch, self.layout = loader, current_epoch, layout
        self.epoch, self.served = 0, 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches consumed) from a checkpoint

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        self.epoch, self.served = self.current_epoch(), 0
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == self.epoch else 0
        self.resume_at = None
        self.loader._next_epoch = self.epoch  # EpochLoader: the stream's shuffle seed for this pass
        for batch in self.loader:
            self.served += 1
            if self.served > skip:
                yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.served, "length": len(self), "layout": self.layout}

    def load_state_dict(self, state: dict) -> None:
        theirs = {**state.get("layout", {}), "batches per epoch": state["length"]}
        ours = {**self.layout, "batches per epoch": len(self)}
        if theirs != ours:
            log.warning("resuming with %s where the checkpoint was written with %s: from here on training draws "
                        "other batches than an uninterrupted run would", ours, theirs)
        self.resume_at = (state["epoch"], min(state["batches"], len(self)))


# ----------------------------------------------------------------------------- callback


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one optimizer step on one rank: a function of nothing else."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:8], "little") >> 1


class RunCheckpoints(pl.Callback):
    """Writes ``<directory>/last.ckpt`` at every training epoch end and, when set, every ``every_n_steps``
    optimizer steps and every ``every_minutes`` minutes (never twice for the last batch of an epoch);
    seeds torch before every step (``step_seed``); and carries, across resumptions, the training time
    of the checkpointed progress and where the run was resumed (``train_seconds``, ``resumed``)."""

    def __init__(self, directory: Path, seed: int, every_n_steps: int | None = None,
                 every_minutes: float | None = None):
        for name, value in (("every_n_steps", every_n_steps), ("every_minutes", every_minutes)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"checkpoint.{name}={value!r}: must be > 0 (0 in the config: epoch ends only)")
        self.directory, self.seed = Path(directory), seed
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self.seconds_before, self.resumed = 0.0, []
        self._restored, self._started, self._last_save, self._resume_at = False, None, None, None

    @property
    def train_seconds(self) -> float:
        """Training time so far, summed over the processes whose progress was checkpointed."""
        return self.seconds_before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._last_save = time.perf_counter(), time.monotonic()
        if self._restored:
            self.resumed.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                 "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds_before, self._started = self.train_seconds, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_step, trainer.global_rank))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 < trainer.num_training_batches and self._due(trainer):
            self.save(trainer, {"epoch": trainer.current_epoch, "batches": batch_idx + 1})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, {"epoch": trainer.current_epoch + 1, "batches": 0})

    def _due(self, trainer: pl.Trainer) -> bool:
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if self.every_minutes:
            late = time.monotonic() - self._last_save >= 60 * self.every_minutes
            due = due or trainer.strategy.broadcast(late)  # rank 0's clock decides: every rank must save
        return due

    def save(self, trainer: pl.Trainer, position: dict) -> None:
        """Checkpoint now; ``position``: the epoch a resumed run continues in and its batches done."""
        self._resume_at = {**position, "step": trainer.global_step}
        # every rank calls it; rank 0 writes (AtomicCheckpointIO)
        trainer.save_checkpoint(self.directory / LAST, weights_only=False)
        self._last_save = time.monotonic()

    @property
    def state_key(self) -> str:
        return type(self).__name__  # where resume_point finds the state in a checkpoint

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds, "resumed": list(self.resumed), "resume_at": self._resume_at}

    def load_state_dict(self, state: dict) -> None:
        self.seconds_before, self.resumed = state["train_seconds"], list(state["resumed"])
        self._restored = True
