"""Streaming region shards through the real DataModule vs reading the same bytes raw.

Shard set: 1024 ADE20K-sized samples (100 regions x 1024 float16 features, their COCO RLEs,
areas, 151-column class histograms, a 512x683 label PNG, meta), 32 per shard (one shard written
by the real writer, ``bench.shards``, and copied), in a temporary directory; the page cache is
warm for all readers. The DataModule runs with the default config's 20000-region shuffle buffer,
whose fill at the start of every epoch is part of the time (an epoch reads ~1.2x the set).

  disk        every shard read with O_DIRECT into a reused aligned buffer: the disk's own read
              speed (the page cache bypassed). The target (>= 25% of the raw read speed) is
              judged against this one: the issue's "a naive WebDataset reader delivers only
              2-10% of the disk's read speed" is what the naive reader measures against it.
  cached      every shard read from the page cache into a reused 1 MiB buffer (``readinto``):
              a memory-copy ceiling (the copies stay in the CPU cache), reported alongside.
  ours/train  ``RegionShardDataModule(train_unit="region").train_dataloader()``, one epoch of
              1024-region float32 batches (the paper's region-level training), num_workers=0,
              with the default ``data.verify=sha256``: every shard's sha256 checked as it is
              streamed (hashed on a helper thread from the mapped bytes, one shard ahead).
  unverified  the same epoch with ``data.verify=size``: ``verification_cost`` is the ratio of
              the two (what checking every byte's integrity costs the training stream).
  ours/eval   ``val_dataloader()``, one pass of 16-image batches with labels and RLEs decoded.
  naive       the literal WebDataset pipeline this replaced: ``wds.WebDataset`` -> ``np.load``/PNG/
              JSON decode of every member -> one Python tuple per region -> ``wds.shuffle`` ->
              ``wds.batched``.
Speeds are bytes of shard files per second; ratios are against raw in the same run.
Check: one eval pass decodes every sample identically to ``np.load``/PIL/json on the members
that ``webdataset`` reads, and a train epoch yields the expected number of full batches.
"""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench import shards
from bench.rle import encode_rles
from benchmarks.inputs import Case
from benchmarks.painting import inputs as painting_inputs

SAMPLES, PER_SHARD, REGIONS, DIM, CLASSES = 1024, 32, 100, 1024, 150
BATCH, BUFFER = 1024, 20000


def write_shard_set(case: Case, root: Path, samples: int = SAMPLES, seed: int = 0) -> dict:
    """The benchmark shard set under root/train; returns its manifest. One shard is encoded by
    the real writer; the others are copies of its tar (readers check keys per shard only)."""
    import shutil

    rng = np.random.default_rng(seed)
    masks = np.resize(case.masks, (REGIONS, *case.masks.shape[1:]))  # the first REGIONS, repeated if fewer
    rles, areas = encode_rles(masks), masks.sum(axis=(1, 2))
    label = painting_inputs(case)[2].numpy()
    height, width = label.shape
    split = root / "train"
    split.mkdir(parents=True)
    keys = [f"img{i:05d}" for i in range(PER_SHARD)]
    encoded = [shards.encode_sample(
        key, feats=rng.standard_normal((REGIONS, DIM)).astype(np.float16), rles=rles, areas=areas,
        hist=rng.integers(0, 2000, (REGIONS, CLASSES + 1)), label=label,
        meta={"id": key, "height": height, "width": width, "patch_size": 14, "grid": [37, 49], "pad": [3, 3]})
        for key in keys]
    first = split / f"{shards.shard_name(0)}.tar"
    shards.write_shard(first, encoded)
    digest, size = shards.sha256(first), first.stat().st_size
    plan = [keys] * -(-samples // PER_SHARD)
    for i in range(len(plan)):
        if i:
            shutil.copyfile(first, split / f"{shards.shard_name(i)}.tar")
        shards.write_entry(split, shards.ShardEntry(name=shards.shard_name(i), count=PER_SHARD, keys=keys,
                                                    sha256=digest, bytes=size, regions=REGIONS * PER_SHARD))
    return shards.merge_manifest(split, plan, {"split": "train", "feature_dim": DIM, "num_classes": CLASSES,
                                               "has_patches": False})


def urls(root: Path, manifest: dict) -> list[str]:
    return [str(root / "train" / f"{s['name']}.tar") for s in manifest["shards"]]


def raw_read(paths: list[str]) -> int:
    buffer, total = bytearray(1 << 20), 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total


def direct_read(paths: list[str]) -> int | None:
    """Every shard read with O_DIRECT (page cache bypassed) into a reused aligned 4 MiB buffer:
    the disk's read speed. None where the file system refuses O_DIRECT (e.g. tmpfs)."""
    import mmap
    import os

    buffer, total = mmap.mmap(-1, 1 << 22), 0  # anonymous maps are page-aligned, as O_DIRECT needs
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            return None
        try:
            while n := os.readv(fd, [buffer]):
                total += n
        except OSError:
            return None
        finally:
            os.close(fd)
    return total


def naive_decode(sample: dict) -> dict:
    """The decoder this replaced: every member, ``np.load``/PIL/json on bytes."""
    load = lambda member: np.load(io.BytesIO(sample[member]), allow_pickle=False)  # noqa: E731
    return {"key": sample["__key__"], "feats": load("feats.npy"), "rle": json.loads(sample["rle.json"]),
            "areas": load("areas.npy"), "hist": load("hist.npy"),
            "label": np.array(Image.open(io.BytesIO(sample["label.png"]))), "meta": json.loads(sample["meta.json"])}


def naive_epoch(paths: list[str], steps: int) -> int:
    import webdataset as wds

    from datamodules.region_shards import collate_region_rows, explode_regions

    stream = map(naive_decode, wds.WebDataset(paths, shardshuffle=False, empty_check=False))
    stream = wds.shuffle(BUFFER, initial=BUFFER)(explode_regions(stream))
    stream = wds.batched(BATCH, collation_fn=collate_region_rows, partial=False)(stream)
    return sum(len(batch["feats"]) for _, batch in zip(range(steps), stream))


def datamodule(root: Path, verify: str = "sha256"):
    from datamodules.region_shards import RegionShardDataModule

    return RegionShardDataModule(str(root), train_split="train", val_split="train", batch_size=16,
                                 region_batch_size=BATCH, region_buffer=BUFFER, train_unit="region", verify=verify)


def train_epoch(dm) -> int:
    return sum(len(batch["feats"]) for batch in dm.train_dataloader())


def eval_pass(dm) -> list[dict]:
    return [batch for batch in dm.val_dataloader()]


def check(root: Path, manifest: dict, dm) -> dict:
    import webdataset as wds

    expected = [naive_decode(s) for s in wds.WebDataset(urls(root, manifest), shardshuffle=False, empty_check=False)]
    batches = eval_pass(dm)
    got = {"feats": np.concatenate([b["feats"].numpy() for b in batches]),
           "hist": np.concatenate([b["hist"].numpy() for b in batches]),
           "labels": [lab.numpy() for b in batches for lab in b["labels"]],
           "keys": [k for b in batches for k in b["keys"]], "rles": [r for b in batches for r in b["rles"]]}
    same = (np.array_equal(got["feats"], np.concatenate([e["feats"] for e in expected]).astype(np.float32))
            and np.array_equal(got["hist"], np.concatenate([e["hist"] for e in expected]))
            and got["keys"] == [e["key"] for e in expected] and got["rles"] == [e["rle"] for e in expected]
            and all(np.array_equal(a, e["label"]) for a, e in zip(got["labels"], expected)))
    steps = len(dm.train_dataloader())
    regions = train_epoch(dm)
    ok = same and regions == steps * BATCH
    return {"ok": ok, "eval_identical": same, "train_regions": regions,
            "text": (f"identical decode; {steps} full batches" if ok else
                     f"MISMATCH: eval identical={same}, train regions {regions} != {steps}x{BATCH}")}


def temporary_root() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="regionbench-shards-")
