"""DataModule streams: exactly-once evaluation, equal training steps, damaged shards named."""
from __future__ import annotations

import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bench import shards
from datamodules.region_shards import EvalStream, RegionShardDataModule, TrainStream


def split_dir(cfg, split="val") -> Path:
    return Path(cfg.extract.shard_dir) / split


def eval_keys(directory: Path, rank: int, world: int, workers: int) -> list[str]:
    manifest = shards.load_manifest(directory)
    stream = EvalStream(directory, manifest, batch_size=3, rank=rank, world=world, num_workers=workers)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    batches = list(loader)
    assert len(batches) == len(stream)  # progress bars and Lightning rely on __len__
    return [k for b in batches for k in b["keys"]]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 0), (2, 2)])
def test_eval_reads_every_sample_exactly_once(region_cfg, world, workers):
    directory = split_dir(region_cfg, "train")  # 3 shards: 4 + 4 + 4
    manifest = shards.load_manifest(directory)
    seen = Counter(k for rank in range(world) for k in eval_keys(directory, rank, world, workers))
    expected = [k for s in manifest["shards"] for k in s["keys"]]
    assert sorted(seen) == sorted(expected)
    assert set(seen.values()) == {1}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_gives_every_rank_the_same_number_of_steps(region_cfg, world):
    directory = split_dir(region_cfg, "train")
    manifest = shards.load_manifest(directory)  # 12 samples in 3 shards
    steps = []
    for rank in range(world):
        stream = TrainStream(directory, manifest, batch_size=5, rank=rank, world=world, seed=0, shuffle_buffer=4)
        batches = list(DataLoader(stream, batch_size=None))
        batch = min(5, 12 // world)  # capped at a rank's share of one epoch
        assert all(len(b["keys"]) == batch for b in batches)
        steps.append(len(batches))
        assert len(batches) == len(stream)
    assert steps == [-(-12 // (world * min(5, 12 // world)))] * world


def test_training_order_changes_with_the_epoch_but_is_reproducible(region_cfg):
    directory = split_dir(region_cfg, "train")
    manifest = shards.load_manifest(directory)

    def keys(epoch):
        stream = TrainStream(directory, manifest, batch_size=4, rank=0, world=1, seed=0, shuffle_buffer=4)
        stream.epoch = epoch
        return [k for b in stream for k in b["keys"]]

    assert keys(0) == keys(0)
    assert keys(0) != keys(1)
    assert sorted(keys(0)) == sorted(k for s in manifest["shards"] for k in s["keys"])


def _damaged_copy(cfg, tmp_path) -> tuple[Path, dict]:
    copy = tmp_path / "val"
    shutil.copytree(split_dir(cfg), copy)
    return copy, shards.load_manifest(copy)


def test_shard_truncated_at_a_member_boundary_is_named(region_cfg, tmp_path):
    directory, manifest = _damaged_copy(region_cfg, tmp_path)
    tar_path = directory / "shard-000000.tar"
    # Rewrite the shard without its last sample: a valid tar that reads without any error.
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    last_key = members[-1][0].name.split(".", 1)[0]
    import io

    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            if not member.name.startswith(last_key + "."):
                tar.addfile(member, io.BytesIO(data))
    # verify=False: the key check itself (the sha256 verified while streaming would fail first)
    stream = EvalStream(directory, manifest, batch_size=2, rank=0, world=1, num_workers=0, verify=False)
    with pytest.raises(shards.ShardError, match="shard-000000.tar.*manifest lists 4"):
        list(stream)


def test_shard_cut_mid_member_is_named(region_cfg, tmp_path):
    directory, manifest = _damaged_copy(region_cfg, tmp_path)
    tar_path = directory / "shard-000001.tar"
    tar_path.write_bytes(tar_path.read_bytes()[: tar_path.stat().st_size // 2 + 100])
    stream = EvalStream(directory, manifest, batch_size=2, rank=0, world=1, num_workers=0)
    with pytest.raises(shards.ShardError, match="shard-000001.tar"):
        list(stream)
    # and the size check before reading catches it without reading a byte of samples
    with pytest.raises(shards.ShardError, match="shard-000001.tar.*truncated"):
        shards.verify_shards(directory, manifest, "size")


def test_missing_shard_is_named(region_cfg, tmp_path):
    directory, manifest = _damaged_copy(region_cfg, tmp_path)
    (directory / "shard-000001.tar").unlink()
    dm = RegionShardDataModule(str(tmp_path), train_split="val", val_split="val")
    with pytest.raises(shards.ShardError, match="shard-000001.tar.*missing"):
        dm.manifest("val")


@pytest.mark.parametrize("world", [1, 2])
def test_region_batches_mix_images_and_cover_every_region(region_cfg, world):
    directory = split_dir(region_cfg, "train")
    manifest = shards.load_manifest(directory)
    total = manifest["num_regions"]
    assert total == sum(s["regions"] for s in manifest["shards"]) > 0
    per_rank = []
    for rank in range(world):
        stream = TrainStream(directory, manifest, batch_size=64, rank=rank, world=world, seed=0,
                             shuffle_buffer=4, unit="region", region_buffer=500)
        batches = list(DataLoader(stream, batch_size=None))
        assert len(batches) == len(stream) == -(-total // (world * 64))
        assert all(b["feats"].shape == (64, manifest["feature_dim"]) for b in batches)
        assert all(b["hist"].shape == (64, 22) and b["areas"].shape == (64,) for b in batches)
        per_rank.append(len(batches))
    assert len(set(per_rank)) == 1
    # An epoch is a window on an endless stream: about every region once (the shuffle buffer
    # straddles epoch boundaries), in an order mixing images.
    stream = TrainStream(directory, manifest, batch_size=64, rank=0, world=1, seed=0, shuffle_buffer=4,
                         unit="region", region_buffer=500)
    areas = torch.cat([b["areas"] for b in stream])
    assert abs(int(areas.sum()) - 12 * 160 * 120) < 0.1 * 12 * 160 * 120
    sequential = torch.cat([b["areas"] for b in EvalStream(directory, manifest, 12, 0, 1, 0)])
    assert not torch.equal(areas[:64], sequential[:64])
