"""Streaming region shards into Lightning.

Shards are assigned to (rank, worker) slots from the manifest, never by webdataset's
node splitter (which gives ranks unequal sample counts):

* training: each epoch the shards are permuted with a seed, dealt to slots round robin,
  streamed through a shuffle buffer and batched; the stream continues into the next
  permutation when a slot runs dry, so every rank yields exactly
  ``ceil(units / (world * batch_size))`` batches and DDP never waits on a rank. The unit is
  an image (patch baselines, trained per pixel) or a region: region classifiers are trained,
  as in the paper, on batches of regions drawn from many images through a region-level
  shuffle buffer (batches of whole images are strongly correlated and train worse).
* evaluation: shard ``i`` belongs to slot ``i % slots``, so every sample is read exactly
  once across ranks and workers; each shard's keys are checked against the manifest as
  it is read, so a missing or truncated shard (even one cut at a member boundary, which
  tar reads without complaint) is an error naming the shard.

Integrity (``data.verify``): ``sha256`` (the default) checks every shard's size before reading
and its sha256 while it is streamed, hashed on a helper thread from the bytes the reader maps
(``bench.shards.read_tar_samples``): a damaged shard fails the epoch that reads it, naming it,
before any of its samples reaches the model. ``size`` and ``exists`` only check before reading.
The manifest itself is checked to cover the split it was extracted from
(``bench.shards.check_manifest``), so evaluation cannot silently score a shard short.

Speed (``make bench``, "shard streaming"): shards are parsed by ``bench.shards.read_tar_samples``
(one read per shard, no per-member tarfile overhead), each stage decodes only the members it
uses, and the region shuffle buffer is a preallocated array pool from which whole batches
are drawn with one fancy index (``shuffled_region_batches``), not a Python object per region.
"""
from __future__ import annotations

import functools
import math
import random
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bench import shards as shardio
from datamodules.datasets import split_name

# ----------------------------------------------------------------------------- stages


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A region-level member -> tensor: floats as float32, integers as int64, booleans as bool."""
    if array.dtype.kind == "f":
        return float32(array) if array.ndim == 2 else torch.from_numpy(array.astype(np.float32))
    return torch.from_numpy(array.astype(bool if array.dtype.kind == "b" else np.int64))


def collate_regions(samples: list[dict], region_fields: tuple[str, ...] = (),
                    unit_fields: tuple[str, ...] = ()) -> dict:
    """Decoded samples -> one batch: region tensors concatenated, per-image data in lists.

    feats (N, d) float32, areas (N,) int64, image_index (N,) int64 with N the total region count,
    hist (N, C+1) int64 when the samples hold it, and each of ``region_fields`` (a task's per-region
    members, e.g. pos2d (N, 6)) concatenated the same way; each of ``unit_fields`` (one array per
    sample, e.g. a clip's class tokens (T, d)) stacked to (B, ...); keys, labels (H, W) when present,
    rles, metas and patches per sample.
    """
    counts = [len(s["feats"]) for s in samples]
    dim = samples[0]["feats"].shape[1]
    batch = {
        "feats": float32(np.concatenate([s["feats"] for s in samples])) if sum(counts)
        else torch.zeros(0, dim),
        "areas": torch.from_numpy(np.concatenate([s["areas"] for s in samples]).astype(np.int64)),
        "image_index": torch.from_numpy(np.repeat(np.arange(len(samples)), counts)),
        "keys": [s["key"] for s in samples],
        "rles": [s["rle"] for s in samples],
        "metas": [s["meta"] for s in samples],
    }
    if "hist" in samples[0]:
        batch["hist"] = torch.from_numpy(np.concatenate([s["hist"] for s in samples]).astype(np.int64))
    if "label" in samples[0]:
        batch["labels"] = [torch.from_numpy(s["label"].astype(np.int64)) for s in samples]
    for name in region_fields:
        batch[name] = _tensor(np.concatenate([s[name] for s in samples]))
    for name in unit_fields:
        batch[name] = _tensor(np.stack([s[name] for s in samples]))
    if "patches" in samples[0]:
        batch["patches"] = [float32(s["patches"]) for s in samples]
    return batch


def frame_groups(samples: Iterator[dict], group_of: Callable[[str], str],
                 group_frames: int | None) -> Iterator[list[dict]]:
    """Consecutive samples of one group (a scene: ``group_of(key)``) -> lists of samples. A group of
    F frames with ``group_frames`` = n < F is split into ceil(F / n) evenly interleaved groups (frames
    j, j + k, j + 2k, ... with k = ceil(F / n)), so each covers the whole scene."""
    current, name = [], None
    for sample in samples:
        group = group_of(sample["key"] if "key" in sample else sample["__key__"])
        if current and group != name:
            yield from _interleave(current, group_frames)
            current = []
        current.append(sample)
        name = group
    if current:
        yield from _interleave(current, group_frames)


def _interleave(frames: list, group_frames: int | None) -> list[list]:
    k = 1 if not group_frames else -(-len(frames) // group_frames)
    return [frames[j::k] for j in range(k)]


def count_groups(keys: list[str], group_of: Callable[[str], str], group_frames: int | None) -> int:
    """How many groups ``frame_groups`` makes of samples with these keys (in stream order)."""
    return sum(1 for _ in frame_groups(({"key": k} for k in keys), group_of, group_frames))


def collate_groups(groups: list[list[dict]], region_fields: tuple[str, ...] = ()) -> dict:
    """Groups of decoded samples -> ``collate_regions`` of all their samples, plus group_index (N,)
    int64: the group of each region (a transformer attends within it)."""
    samples = [s for group in groups for s in group]
    batch = collate_regions(samples, region_fields)
    counts = [sum(len(s["feats"]) for s in group) for group in groups]
    batch["group_index"] = torch.from_numpy(np.repeat(np.arange(len(groups)), counts))
    return batch


def collate_region_rows(rows: list[tuple]) -> dict:
    """(feat (d,), hist (C+1,), area) rows -> feats (B, d) float32, hist (B, C+1), areas (B,) int64."""
    feats, hists, areas = zip(*rows)
    return {"feats": torch.from_numpy(np.stack(feats).astype(np.float32)),
            "hist": torch.from_numpy(np.stack(hists).astype(np.int64)),
            "areas": torch.tensor(areas, dtype=torch.int64)}


def explode_regions(samples: Iterator[dict]) -> Iterator[tuple]:
    """Decoded samples -> one (feat, hist, area) row per region."""
    for sample in samples:
        yield from zip(sample["feats"], sample["hist"], sample["areas"].tolist())


REGION_FIELDS = ("feats", "hist", "areas")  # what region-level training decodes


def shuffled_region_batches(samples: Iterator[dict], buffer: int, batch_size: int,
                            rng: np.random.Generator, fields: tuple[str, ...] = REGION_FIELDS) -> Iterator[dict]:
    """Decoded samples -> batches of ``batch_size`` regions, as ``collate_region_rows`` makes them
    (plus any further per-region ``fields``, e.g. a task's positions).

    A region shuffle buffer without a Python object per region: incoming regions are copied
    into free rows of preallocated arrays (the pool), and an index array lists the occupied
    rows. Whenever at least ``buffer`` regions are held, ``batch_size`` of them are drawn
    uniformly without replacement (one fancy index per array) and their rows freed; only
    8-byte row numbers move, never the rows. When the stream ends the pool is drained the same
    way; a last partial batch is dropped.
    """
    pool: list[np.ndarray] | None = None  # one array per field, a row per region
    occupied = np.empty(0, dtype=np.int64)  # occupied[:size]: rows holding regions
    free = np.empty(0, dtype=np.int64)  # rows to reuse; rows >= top were never used
    size = top = 0
    for sample in samples:
        rows = tuple(sample[name] for name in fields)
        count = len(rows[0])
        reuse = min(count, len(free))
        slots = np.concatenate([free[len(free) - reuse:], np.arange(top, top + count - reuse)])
        free, top = free[:len(free) - reuse], top + count - reuse
        if pool is None or top > len(pool[0]):
            capacity = max(2 * top, buffer + batch_size)
            grown = [np.empty((capacity, *a.shape[1:]), a.dtype) for a in rows]
            if pool is not None:
                for new, old in zip(grown, pool):
                    new[:len(old)] = old
            pool = grown
        for array, values in zip(pool, rows):
            array[slots] = values
        if size + count > len(occupied):
            occupied = np.concatenate([occupied[:size], np.empty(max(size + count, 2 * len(occupied)), np.int64)])
        occupied[size:size + count] = slots
        size += count
        while size >= max(buffer, batch_size):
            size, drawn = _draw(occupied, size, batch_size, rng)
            free = np.concatenate([free, drawn])
            yield _region_batch(pool, drawn, fields)
    while size >= batch_size:
        size, drawn = _draw(occupied, size, batch_size, rng)
        yield _region_batch(pool, drawn, fields)


def _draw(occupied: np.ndarray, size: int, batch_size: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Remove ``batch_size`` random entries from ``occupied[:size]`` (the tail fills the holes);
    returns (new size, the removed rows)."""
    pick = rng.choice(size, batch_size, replace=False)
    drawn = occupied[pick]
    last = size - batch_size
    holes = pick[pick < last]
    tail = np.ones(batch_size, dtype=bool)
    tail[pick[pick >= last] - last] = False
    occupied[holes] = occupied[last + np.flatnonzero(tail)]
    return last, drawn


def float32(array: np.ndarray) -> torch.Tensor:
    """(N, d) float16 array -> float32 tensor, converted by torch (~20x faster than numpy's cast) in
    chunks below torch's parallel grain size: serial, so a busy CPU cannot stall it on a
    thread barrier (one multi-threaded cast of 1024 x 1024 took 8 ms instead of 0.1 on a loaded
    2-core machine). ``array`` may be a read-only view of a shard: it is only read."""
    if array.flags.writeable:
        src = torch.from_numpy(array)
    else:
        with warnings.catch_warnings():  # torch warns that writing to it would be undefined; we only read
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(array)
    out = torch.empty(src.shape, dtype=torch.float32)
    step = max(1, 32767 // max(1, src[0].numel() if len(src) else 1))
    for start in range(0, len(src), step):
        out[start:start + step].copy_(src[start:start + step])
    return out


def _region_batch(pool: list[np.ndarray], rows: np.ndarray, fields: tuple[str, ...] = REGION_FIELDS) -> dict:
    return {name: _tensor(array[rows]) for name, array in zip(fields, pool)}


def verified(samples: Iterator[dict], expected: dict[str, list[str]], urls: list[str]) -> Iterator[dict]:
    """Pass samples through, checking each shard's keys against the manifest as it ends. (A shard
    that does not parse, or fails its sha256, is named by the reader itself.)"""
    pending = list(urls)
    current, seen = None, []

    def close(url):
        if seen != expected[url]:
            missing = len(expected[url]) - len(seen)
            raise shardio.ShardError(
                f"shard {url} yielded {len(seen)} samples but the manifest lists {len(expected[url])}"
                f"{f' ({missing} missing: truncated?)' if missing > 0 else ' (keys differ)'}. "
                "Delete the shard and re-run: python -m bench.extract experiment=NAME")
        pending.remove(url)

    for sample in samples:
        url = sample["__url__"]
        if url != current:
            if current is not None:
                close(current)
            current, seen = url, []
        seen.append(sample["__key__"])
        yield sample
    if current is not None:
        close(current)
    for url in pending:  # shards that produced no sample at all
        current, seen = url, []
        close(url)


def _slot(rank: int, world: int) -> tuple[int, int]:
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info else (1, 0)
    return rank * workers + worker, world * workers


def _read(urls: list[str], sha256s: dict[str, str] | None) -> Iterator[dict]:
    return shardio.read_tar_samples(urls, sha256s)


def _checksums(urls: list[str], manifest: dict, verify: bool) -> dict[str, str] | None:
    """url -> the manifest's sha256, for the reader to verify while streaming (None: no check)."""
    return {u: s["sha256"] for u, s in zip(urls, manifest["shards"])} if verify else None


# ----------------------------------------------------------------------------- datasets


UNITS = ("image", "region", "scene")


class TrainStream(IterableDataset):
    """Endless shuffled stream cut to the same number of batches on every rank.

    ``unit="image"``: batches of ``batch_size`` whole images (``collate_regions``).
    ``unit="region"``: batches of ``batch_size`` regions from a ``region_buffer``-deep
    shuffle buffer (``collate_region_rows``). ``unit="scene"``: batches of ``batch_size`` groups
    of frames (``frame_groups``: a scene, or an interleaved part of it; ``collate_groups``); the
    shards hold whole scenes. ``region_fields``: a task's per-region members, batched with the
    regions. ``verify``: check each shard's sha256 as it is read.
    """

    def __init__(self, split_dir: Path, manifest: dict, batch_size: int, rank: int, world: int,
                 seed: int, shuffle_buffer: int, unit: str = "image", region_buffer: int = 20000,
                 verify: bool = True, region_fields: tuple[str, ...] = (), unit_fields: tuple[str, ...] = (),
                 group_of: Callable[[str], str] | None = None, group_frames: int | None = None):
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r}: one of {', '.join(UNITS)}")
        if unit == "scene" and group_of is None:
            raise ValueError("unit='scene' needs group_of (the scene of a sample key)")
        self.urls = [str(Path(split_dir) / f"{s['name']}.tar") for s in manifest["shards"]]
        self.expected = {u: s["keys"] for u, s in zip(self.urls, manifest["shards"])}
        self.sha256s = _checksums(self.urls, manifest, verify)
        self.region_fields, self.group_of, self.group_frames = tuple(region_fields), group_of, group_frames
        self.unit_fields = tuple(unit_fields)
        self.units = {"image": manifest["num_samples"], "region": manifest["num_regions"],
                      "scene": group_of and sum(count_groups(s["keys"], group_of, group_frames)
                                                for s in manifest["shards"])}[unit]
        if self.units == 0:
            raise shardio.ShardError(f"{split_dir} holds no training {unit}s")
        # A batch or buffer larger than a rank's share of the data would make the endless stream
        # cycle through the shards many times per batch: cap both at one epoch's share.
        share = max(1, self.units // world)
        self.batch_size, self.rank, self.world = min(batch_size, share), rank, world
        self.seed, self.shuffle_buffer, self.epoch = seed, shuffle_buffer, 0
        self.unit, self.region_buffer = unit, min(region_buffer, share)
        self.steps = math.ceil(self.units / (world * self.batch_size))

    def __len__(self) -> int:
        return self.steps

    def _samples(self, slot: int, slots: int) -> Iterator:
        """This slot's share of shards, permutation after permutation, forever: samples, or for
        unit="scene" lists of samples (groups never cross shards: a shard holds whole scenes)."""
        for cycle in range(10**9):
            rng = random.Random(f"{self.seed}-{self.epoch}-{cycle}")
            order = rng.sample(self.urls, len(self.urls))
            if len(order) >= slots:
                mine = order[slot::slots]
                yield from self._units(verified(_read(mine, self.sha256s), self.expected, mine))
            else:  # fewer shards than slots: every slot reads all, keeps every slots-th sample (group)
                stream = self._units(verified(_read(order, self.sha256s), self.expected, order))
                for i, unit in enumerate(stream):
                    if i % slots == slot:
                        yield unit

    def _units(self, samples: Iterator[dict]) -> Iterator:
        return frame_groups(samples, self.group_of, self.group_frames) if self.unit == "scene" else samples

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        slot, slots = _slot(self.rank, self.world)
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        my_batches = len(range(worker, self.steps, workers))
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        stream = self._samples(slot, slots)
        stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)
        if self.unit == "region":
            fields = REGION_FIELDS + self.region_fields
            stream = (shardio.decode_sample(s, fields, copy=False) for s in stream)
            stream = shuffled_region_batches(stream, self.region_buffer, self.batch_size,
                                             np.random.default_rng(rng.getrandbits(64)), fields)
        elif self.unit == "scene":
            stream = ([shardio.decode_sample(s, copy=False) for s in group] for group in stream)
            collate = functools.partial(collate_groups, region_fields=self.region_fields)
            stream = wds.batched(self.batch_size, collation_fn=collate, partial=False)(stream)
        else:
            stream = (shardio.decode_sample(s, copy=False) for s in stream)
            collate = functools.partial(collate_regions, region_fields=self.region_fields,
                                        unit_fields=self.unit_fields)
            stream = wds.batched(self.batch_size, collation_fn=collate, partial=False)(stream)
        for _, batch in zip(range(my_batches), stream):
            yield batch


class EvalStream(IterableDataset):
    """Every sample exactly once across ranks and workers, in shard order per slot.
    ``verify``: check each shard's sha256 as it is read. With ``group_of``, batches hold
    ``batch_size`` whole groups of frames (``frame_groups``, ``collate_groups``) instead of
    ``batch_size`` images: a shard holds whole scenes, so a scene is never split across slots."""

    def __init__(self, split_dir: Path, manifest: dict, batch_size: int, rank: int, world: int,
                 num_workers: int, verify: bool = True, region_fields: tuple[str, ...] = (),
                 unit_fields: tuple[str, ...] = (), group_of: Callable[[str], str] | None = None,
                 group_frames: int | None = None):
        self.urls = [str(Path(split_dir) / f"{s['name']}.tar") for s in manifest["shards"]]
        self.expected = {u: s["keys"] for u, s in zip(self.urls, manifest["shards"])}
        self.sha256s = _checksums(self.urls, manifest, verify)
        self.region_fields, self.group_of, self.group_frames = tuple(region_fields), group_of, group_frames
        self.unit_fields = tuple(unit_fields)
        self.counts = [s["count"] if group_of is None else count_groups(s["keys"], group_of, group_frames)
                       for s in manifest["shards"]]
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.num_workers = max(num_workers, 1)

    def __len__(self) -> int:
        slots = self.world * self.num_workers
        first = self.rank * self.num_workers
        return sum(math.ceil(sum(self.counts[slot::slots]) / self.batch_size)
                   for slot in range(first, first + self.num_workers))

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        slot, slots = _slot(self.rank, self.world)
        mine = self.urls[slot::slots]
        stream = verified(_read(mine, self.sha256s), self.expected, mine)
        stream = (shardio.decode_sample(s, copy=False) for s in stream)
        if self.group_of is not None:
            stream = frame_groups(stream, self.group_of, self.group_frames)
            collate = functools.partial(collate_groups, region_fields=self.region_fields)
        else:
            collate = functools.partial(collate_regions, region_fields=self.region_fields,
                                        unit_fields=self.unit_fields)
        yield from wds.batched(self.batch_size, collation_fn=collate, partial=True)(stream)


def as_is(batch: dict) -> dict:
    """The loaders' collate_fn: batches are complete already. DataLoader's default for
    batch_size=None walks every nested object (each RLE dict and string: ~2 ms per image)."""
    return batch


class EpochLoader(DataLoader):
    """A DataLoader that advances its dataset's epoch (shuffle seed) on each pass."""

    def __init__(self, dataset: TrainStream, first_epoch: int, **kwargs):
        super().__init__(dataset, batch_size=None, collate_fn=as_is, **kwargs)
        self._next_epoch = first_epoch

    def __iter__(self):
        self.dataset.epoch = self._next_epoch
        self._next_epoch += 1
        return super().__iter__()


# ----------------------------------------------------------------------------- datamodule


VERIFY = ("exists", "size", "sha256")  # data.verify: what is checked (each level includes the previous)


class RegionShardDataModule(pl.LightningDataModule):
    """Train and val streams over ``<shard_dir>/<split>`` shard sets (see bench.shards).

    ``verify``: "exists" / "size" check every shard before reading; "sha256" (default) also
    verifies each shard's sha256 while streaming it."""

    def __init__(self, shard_dir: str, train_split: str, val_split: str, batch_size: int = 16,
                 region_batch_size: int = 1024, region_buffer: int = 20000, train_unit: str = "image",
                 num_workers: int = 0, shuffle_buffer: int = 64, verify: str = "sha256", seed: int = 0,
                 members: tuple[str, ...] = (), region_fields: tuple[str, ...] = (), unit_fields: tuple[str, ...] = (),
                 group_of: Callable[[str], str] | None = None, group_frames: int | None = None,
                 eval_groups: bool = False):
        """``region_fields``: per-region members batched with the regions (a task's positions);
        ``group_of`` (sample key -> its scene) and ``group_frames``: how ``train_unit="scene"``
        groups frames; ``eval_groups``: evaluate in those groups too (a scene-level model)."""
        super().__init__()
        self.members = tuple(members)  # sample members the task needs beyond bench.shards.COMMON
        self.region_fields, self.group_of, self.group_frames = tuple(region_fields), group_of, group_frames
        self.unit_fields = tuple(unit_fields)
        self.eval_groups = eval_groups
        if verify not in VERIFY:
            raise ValueError(f"data.verify={verify!r} is not one of {', '.join(VERIFY)}")
        self.train_unit = train_unit
        self.region_batch_size, self.region_buffer = region_batch_size, region_buffer
        self.shard_dir = Path(shard_dir)
        self.train_split, self.val_split = train_split, val_split
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.verify, self.seed = shuffle_buffer, verify, seed
        self.manifests: dict[str, dict] = {}

    def manifest(self, split: str) -> dict:
        if split not in self.manifests:
            split_dir = self.shard_dir / split_name(split)
            manifest = shardio.load_manifest(split_dir)
            # sha256: sizes now, hashes while streaming (no second pass over the disk)
            shardio.require_members(manifest, self.members, split_dir)
            shardio.verify_shards(split_dir, manifest, "size" if self.verify == "sha256" else self.verify)
            self.manifests[split] = manifest
        return self.manifests[split]

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": False,
                "multiprocessing_context": "spawn" if self.num_workers else None}

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        by_region = self.train_unit == "region"
        stream = TrainStream(self.shard_dir / split_name(self.train_split), self.manifest(self.train_split),
                             self.region_batch_size if by_region else self.batch_size, rank, world, self.seed,
                             self.shuffle_buffer, unit=self.train_unit, region_buffer=self.region_buffer,
                             verify=self.verify == "sha256", region_fields=self.region_fields,
                             unit_fields=self.unit_fields, group_of=self.group_of, group_frames=self.group_frames)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return EpochLoader(stream, first_epoch=epoch, **self._loader_kwargs())

    def eval_dataloader(self, split: str) -> DataLoader:
        rank, world = self._rank_world()
        stream = EvalStream(self.shard_dir / split_name(split), self.manifest(split), self.batch_size, rank, world,
                            self.num_workers, verify=self.verify == "sha256", region_fields=self.region_fields,
                            unit_fields=self.unit_fields, group_of=self.group_of if self.eval_groups else None,
                            group_frames=self.group_frames)
        return DataLoader(stream, batch_size=None, collate_fn=as_is, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_split)
