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
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bench import shards as shardio

# ----------------------------------------------------------------------------- stages


def collate_regions(samples: list[dict]) -> dict:
    """Decoded samples -> one batch: region tensors concatenated, per-image data in lists.

    feats (N, d) float32, hist (N, C+1) int64, areas (N,) int64, image_index (N,) int64
    with N the total region count; keys, labels (H, W), rles, metas and patches per image.
    """
    counts = [len(s["feats"]) for s in samples]
    dim = samples[0]["feats"].shape[1]
    batch = {
        "feats": torch.from_numpy(np.concatenate([s["feats"] for s in samples]).astype(np.float32)
                                  if sum(counts) else np.zeros((0, dim), np.float32)),
        "hist": torch.from_numpy(np.concatenate([s["hist"] for s in samples]).astype(np.int64)),
        "areas": torch.from_numpy(np.concatenate([s["areas"] for s in samples]).astype(np.int64)),
        "image_index": torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts)),
        "keys": [s["key"] for s in samples],
        "labels": [torch.from_numpy(s["label"].astype(np.int64)) for s in samples],
        "rles": [s["rle"] for s in samples],
        "metas": [s["meta"] for s in samples],
    }
    if "patches" in samples[0]:
        batch["patches"] = [torch.from_numpy(s["patches"].astype(np.float32)) for s in samples]
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


def verified(samples: Iterator[dict], expected: dict[str, list[str]], urls: list[str]) -> Iterator[dict]:
    """Pass samples through, checking each shard's keys against the manifest as it ends."""
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

    try:
        for sample in samples:
            url = sample["__url__"]
            if url != current:
                if current is not None:
                    close(current)
                current, seen = url, []
            seen.append(sample["__key__"])
            yield sample
    except shardio.ShardError:
        raise
    except Exception as err:  # tarfile errors inside a damaged shard
        bad = current if current is not None and current in pending else (pending[0] if pending else "?")
        raise shardio.ShardError(f"shard {bad} is damaged ({type(err).__name__}: {err}). "
                                 "Delete it and re-run extraction") from err
    if current is not None:
        close(current)
    for url in pending:  # shards that produced no sample at all
        current, seen = url, []
        close(url)


def _slot(rank: int, world: int) -> tuple[int, int]:
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info else (1, 0)
    return rank * workers + worker, world * workers


def _read(urls: list[str]) -> Iterator[dict]:
    import webdataset as wds

    return wds.tarfile_to_samples()(iter({"url": u} for u in urls))


# ----------------------------------------------------------------------------- datasets


class TrainStream(IterableDataset):
    """Endless shuffled stream cut to the same number of batches on every rank.

    ``unit="image"``: batches of ``batch_size`` whole images (``collate_regions``).
    ``unit="region"``: batches of ``batch_size`` regions from a ``region_buffer``-deep
    shuffle buffer (``collate_region_rows``).
    """

    def __init__(self, split_dir: Path, manifest: dict, batch_size: int, rank: int, world: int,
                 seed: int, shuffle_buffer: int, unit: str = "image", region_buffer: int = 20000):
        if unit not in ("image", "region"):
            raise ValueError(f"unit={unit!r}: image or region")
        self.urls = [str(Path(split_dir) / f"{s['name']}.tar") for s in manifest["shards"]]
        self.expected = {u: s["keys"] for u, s in zip(self.urls, manifest["shards"])}
        self.units = manifest["num_samples"] if unit == "image" else manifest["num_regions"]
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

    def _samples(self, slot: int, slots: int) -> Iterator[dict]:
        """This slot's share of shards, permutation after permutation, forever."""
        for cycle in range(10**9):
            rng = random.Random(f"{self.seed}-{self.epoch}-{cycle}")
            order = rng.sample(self.urls, len(self.urls))
            if len(order) >= slots:
                mine = order[slot::slots]
                yield from verified(_read(mine), self.expected, mine)
            else:  # fewer shards than slots: every slot reads all, keeps every slots-th sample
                for i, sample in enumerate(verified(_read(order), self.expected, order)):
                    if i % slots == slot:
                        yield sample

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        slot, slots = _slot(self.rank, self.world)
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        my_batches = len(range(worker, self.steps, workers))
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        stream = self._samples(slot, slots)
        stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)
        stream = map(shardio.decode_sample, stream)
        if self.unit == "region":
            stream = explode_regions(stream)
            stream = wds.shuffle(self.region_buffer, initial=self.region_buffer, rng=rng)(stream)
            stream = wds.batched(self.batch_size, collation_fn=collate_region_rows, partial=False)(stream)
        else:
            stream = wds.batched(self.batch_size, collation_fn=collate_regions, partial=False)(stream)
        for _, batch in zip(range(my_batches), stream):
            yield batch


class EvalStream(IterableDataset):
    """Every sample exactly once across ranks and workers, in shard order per slot."""

    def __init__(self, split_dir: Path, manifest: dict, batch_size: int, rank: int, world: int,
                 num_workers: int):
        self.urls = [str(Path(split_dir) / f"{s['name']}.tar") for s in manifest["shards"]]
        self.expected = {u: s["keys"] for u, s in zip(self.urls, manifest["shards"])}
        self.counts = [s["count"] for s in manifest["shards"]]
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
        stream = verified(_read(mine), self.expected, mine)
        stream = map(shardio.decode_sample, stream)
        yield from wds.batched(self.batch_size, collation_fn=collate_regions, partial=True)(stream)


class EpochLoader(DataLoader):
    """A DataLoader that advances its dataset's epoch (shuffle seed) on each pass."""

    def __init__(self, dataset: TrainStream, first_epoch: int, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self._next_epoch = first_epoch

    def __iter__(self):
        self.dataset.epoch = self._next_epoch
        self._next_epoch += 1
        return super().__iter__()


# ----------------------------------------------------------------------------- datamodule


class RegionShardDataModule(pl.LightningDataModule):
    """Train and val streams over ``<shard_dir>/<split>`` shard sets (see bench.shards)."""

    def __init__(self, shard_dir: str, train_split: str, val_split: str, batch_size: int = 16,
                 region_batch_size: int = 1024, region_buffer: int = 20000, train_unit: str = "image",
                 num_workers: int = 0, shuffle_buffer: int = 64, verify: str = "size", seed: int = 0):
        super().__init__()
        self.train_unit = train_unit
        self.region_batch_size, self.region_buffer = region_batch_size, region_buffer
        self.shard_dir = Path(shard_dir)
        self.train_split, self.val_split = train_split, val_split
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.verify, self.seed = shuffle_buffer, verify, seed
        self.manifests: dict[str, dict] = {}

    def manifest(self, split: str) -> dict:
        if split not in self.manifests:
            split_dir = self.shard_dir / split
            manifest = shardio.load_manifest(split_dir)
            shardio.verify_shards(split_dir, manifest, self.verify)
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
        stream = TrainStream(self.shard_dir / self.train_split, self.manifest(self.train_split),
                             self.region_batch_size if by_region else self.batch_size, rank, world, self.seed,
                             self.shuffle_buffer, unit=self.train_unit, region_buffer=self.region_buffer)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return EpochLoader(stream, first_epoch=epoch, **self._loader_kwargs())

    def eval_dataloader(self, split: str) -> DataLoader:
        rank, world = self._rank_world()
        stream = EvalStream(self.shard_dir / split, self.manifest(split), self.batch_size, rank, world,
                            self.num_workers)
        return DataLoader(stream, batch_size=None, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_split)
