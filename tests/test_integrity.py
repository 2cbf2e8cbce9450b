"""Caches and shards prove their integrity (issue 12, items 5-10), with real faults: regenerated
data under a warm cache, truncated / garbage / byte-flipped files, a manifest with a shard dropped,
a backbone whose features overflow float16, two extraction processes on one shard directory."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import shards
from bench.config import cell_config
from bench.extract import extract
from tests.conftest import tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
CELL = "cell=region_linear/minivoc"


def shard_dir(cfg) -> Path:
    return Path(cell_config(cfg, "region_linear/minivoc").extract.shard_dir)


def contents(split_dir: Path) -> dict[str, str]:
    """shard name -> sha256 of the tar on disk, plus the manifest's keys."""
    manifest = shards.load_manifest(split_dir)
    return {s["name"]: shards.sha256(split_dir / f"{s['name']}.tar") for s in manifest["shards"]} | {
        "keys": json.dumps([s["keys"] for s in manifest["shards"]])}


def flip_byte(path: Path, offset: int) -> None:
    """Same-length damage: one byte inverted in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def member_offset(tar_path: Path, suffix: str) -> int:
    """Byte offset of the data of the first member whose name ends with ``suffix``."""
    with tarfile.open(tar_path) as tar:
        return next(m.offset_data for m in tar.getmembers() if m.name.endswith(suffix))


def copy_split(cfg, tmp_path: Path, split: str = "val") -> Path:
    copy = tmp_path / "shards" / split
    shutil.copytree(shard_dir(cfg) / split, copy)
    return copy


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- item 5
def test_regenerated_dataset_never_meets_stale_cached_regions_or_features(tmp_path):
    """Same ids, new pixels (dataset.generate.seed=1) under a warm mask and feature cache: the
    shards equal those of an extraction without any cache, and nothing was a cache hit."""
    base = [CELL, "dataset.max_images=2"]
    extract(tiny_config(tmp_path, *base))  # fills both caches with the seed-0 images
    regenerated = tiny_config(tmp_path, *base, "dataset.generate.seed=1")
    extract(regenerated)
    uncached = tiny_config(tmp_path, *base, "dataset.generate.seed=1", "extract.feature_cache=null",
                           "regions.cache=null", f"extract.shard_dir={tmp_path / 'uncached'}")
    extract(uncached)
    for split in ("train", "val"):
        manifest = shards.load_manifest(shard_dir(regenerated) / split)
        assert manifest["region_stats"]["feature_cache_hit_rate"] == 0.0
        assert not any(s.get("cached") for e in manifest["shards"] for s in e["stats"].values())
        assert contents(shard_dir(regenerated) / split) == contents(tmp_path / "uncached" / split)


# ----------------------------------------------------------------------------- item 6
def test_damaged_cache_entries_are_named_counted_and_recomputed(tmp_path, caplog):
    base = [CELL, "dataset.max_images=3"]
    cfg = tiny_config(tmp_path, *base)
    extract(cfg)  # cold: 6 feature grids, 6 mask records
    reference = {split: contents(shard_dir(cfg) / split) for split in ("train", "val")}
    features = sorted(p for p in (tmp_path / "data" / "features").rglob("*.npy"))
    masks = sorted(p for p in (tmp_path / "data" / "masks").rglob("*.json") if p.name != "config.json")
    assert len(features) == len(masks) == 6
    rng = np.random.default_rng(0)
    features[0].write_bytes(features[0].read_bytes()[:len(features[0].read_bytes()) // 2])  # truncated
    flip_byte(features[1], 300)  # a float16 in the grid's data: reads as another number (or NaN)
    features[2].write_bytes(rng.integers(0, 256, features[2].stat().st_size, dtype=np.uint8).tobytes())
    masks[0].write_bytes(masks[0].read_bytes()[:40])  # truncated JSON
    masks[1].write_bytes(b"\xff\xfe" + rng.integers(0, 256, 100, dtype=np.uint8).tobytes())  # not UTF-8
    flip_byte(masks[2], 20)
    damaged = {str(p) for p in (*features[:3], *masks[:3])}

    again = tiny_config(tmp_path, *base, f"extract.shard_dir={tmp_path / 'again'}")
    with caplog.at_level(logging.WARNING):
        extract(again)
    listed = [p for split in ("train", "val")
              for p in shards.load_manifest(tmp_path / "again" / split)["cache_damaged"]]
    assert sorted(listed) == sorted(damaged)
    for path in damaged:
        assert path in caplog.text
    for split in ("train", "val"):  # recomputed: the shards are those of the cold run
        assert contents(tmp_path / "again" / split) == reference[split]

    third = tiny_config(tmp_path, *base, f"extract.shard_dir={tmp_path / 'third'}")
    extract(third)  # the recomputed entries were written back, sound
    for split in ("train", "val"):
        manifest = shards.load_manifest(tmp_path / "third" / split)
        assert manifest["cache_damaged"] == [] and manifest["region_stats"]["feature_cache_hit_rate"] == 1.0


def test_orphaned_temporary_files_are_cleaned_up(tmp_path):
    """What a writer killed mid-write leaves: ``<name>.<host>-<pid>.<ext>.tmp`` with its pid gone.
    A live writer's file (this process) and another host's recent one are left alone."""
    from bench import atomic

    base = [CELL, "dataset.max_images=1"]
    extract(tiny_config(tmp_path, *base))
    cache_dirs = sorted({p.parent for p in (tmp_path / "data" / "features").rglob("*.npy")} |
                        {p.parent for p in (tmp_path / "data" / "masks").rglob("config.json")})
    assert len(cache_dirs) == 2
    pid = dead_pid()
    orphans = [d / f"mini_000000-0.{atomic.HOST}-{pid}.npy.tmp" for d in cache_dirs]
    alive = [d / f"mini_000000-0.{atomic.HOST}-{os.getpid()}.npy.tmp" for d in cache_dirs]
    elsewhere = [d / f"mini_000000-0.otherhost-{pid}.npy.tmp" for d in cache_dirs]
    for path in orphans + alive + elsewhere:
        path.write_bytes(b"half a record")
    extract(tiny_config(tmp_path, *base, f"extract.shard_dir={tmp_path / 'again'}"))
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in alive + elsewhere)


# ----------------------------------------------------------------------------- item 7
def test_byte_flip_in_a_shard_fails_the_epoch_that_reads_it_naming_the_shard(region_cfg, tmp_path):
    """Same size, so the size check passes: the sha256 computed while streaming catches it,
    in evaluation and in training, before any sample of the damaged shard is yielded."""
    from bench.runs import build_datamodule

    for split in ("train", "val"):
        copy = copy_split(region_cfg, tmp_path, split)
        flip_byte(copy / "shard-000001.tar", member_offset(copy / "shard-000001.tar", "feats.npy") + 200)
    cfg = cell_config(tiny_config(tmp_path, f"extract.shard_dir={tmp_path / 'shards'}"), "region_linear/minivoc")
    dm = build_datamodule(cfg)  # data.verify from bench/defaults.yaml
    dm.manifest("val")  # sizes agree: nothing is read yet
    with pytest.raises(shards.ShardError, match=r"shard-000001\.tar.*sha256.*python -m bench.extract") as err:
        for _ in dm.val_dataloader():
            pass
    assert "shard-000000" not in str(err.value)
    manifest = shards.load_manifest(tmp_path / "shards" / "val")
    urls = [str(tmp_path / "shards" / "val" / f"{s['name']}.tar") for s in manifest["shards"]]
    keys = []
    with pytest.raises(shards.ShardError, match=r"shard-000001\.tar"):
        for sample in shards.read_tar_samples(urls, {u: s["sha256"] for u, s in zip(urls, manifest["shards"])}):
            keys.append(sample["__key__"])
    assert keys == manifest["shards"][0]["keys"]  # every sample of shard 0, none of shard 1
    with pytest.raises(shards.ShardError, match=r"shard-000001\.tar.*sha256"):
        for _ in dm.train_dataloader():
            pass


def test_eval_of_a_byte_flipped_shard_fails_instead_of_scoring(region_cfg, tmp_path):
    """The issue's case: eval.py exited 0 with a slightly wrong mIoU. The oracle needs no checkpoint."""
    from eval import evaluate

    copy_split(region_cfg, tmp_path, "train")
    copy = copy_split(region_cfg, tmp_path, "val")
    flip_byte(copy / "shard-000001.tar", member_offset(copy / "shard-000001.tar", "feats.npy") + 200)
    cfg = tiny_config(tmp_path, CELL, "model.kind=oracle", f"extract.shard_dir={tmp_path / 'shards'}")
    with pytest.raises(shards.ShardError, match=r"shard-000001\.tar.*sha256"):
        evaluate(cfg)


# ----------------------------------------------------------------------------- item 8
def test_a_shard_damaged_in_its_tar_header_is_the_one_named(region_cfg, tmp_path):
    """Shard 0 is sound and read completely; shard 1's first header is damaged (same size)."""
    from datamodules.region_shards import RegionShardDataModule

    copy = copy_split(region_cfg, tmp_path, "val")
    flip_byte(copy / "shard-000001.tar", 3)  # inside the first member's name: its header checksum fails
    for verify in ("size", "sha256"):
        dm = RegionShardDataModule(str(copy.parent), train_split="val", val_split="val", batch_size=2, verify=verify)
        with pytest.raises(shards.ShardError) as err:
            list(dm.val_dataloader())
        named = str(err.value).split(" ")[1]
        assert named == str(copy / "shard-000001.tar"), (verify, str(err.value))
        assert "shard-000000" not in str(err.value)


def test_a_manifest_with_a_shard_dropped_is_refused_by_evaluation(region_cfg, tmp_path):
    """Edited consistently (counts and regions adjusted), the manifest still no longer covers
    the split it was extracted from: 4 of 6 images must not be scored as if they were all."""
    from eval import evaluate

    copy_split(region_cfg, tmp_path, "train")
    copy = copy_split(region_cfg, tmp_path, "val")
    manifest = json.loads((copy / "manifest.json").read_text())
    dropped = manifest["shards"].pop(1)
    manifest["num_shards"] -= 1
    manifest["num_samples"] -= dropped["count"]
    manifest["num_regions"] -= dropped["regions"]
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (copy / "shard-000001.tar").unlink()
    (copy / "shard-000001.json").unlink()
    with pytest.raises(shards.ShardError, match=r"4 of the 6 images.*python -m bench\.extract"):
        shards.load_manifest(copy)
    cfg = tiny_config(tmp_path, CELL, "model.kind=oracle", f"extract.shard_dir={tmp_path / 'shards'}")
    with pytest.raises(shards.ShardError, match=r"4 of the 6 images"):
        evaluate(cfg)


# ----------------------------------------------------------------------------- item 9
def test_non_finite_values_are_refused_when_encoding_naming_the_image():
    rng = np.random.default_rng(0)
    masks = rng.random((2, 5, 6)) > 0.5
    args = dict(rles=[], areas=masks.sum((1, 2)), hist=np.zeros((2, 22)), label=np.zeros((5, 6), np.uint8),
                meta={"id": "k"})
    for bad, what in [(np.nan, "1 NaN and 0 Inf"), (-np.inf, "0 NaN and 1 Inf"), (1e5, "0 NaN and 1 Inf")]:
        feats = rng.standard_normal((2, 8))  # 1e5: finite, but beyond float16's range
        feats[1, 3] = bad
        with pytest.raises(ValueError, match=f"'img_7': its region features hold {what}"):
            shards.encode_sample("img_7", feats=feats, **args)
        with pytest.raises(ValueError, match=f"'img_7': its patch grid hold {what}"):
            shards.encode_sample("img_7", feats=rng.standard_normal((2, 8)), patches=feats[:, :, None], **args)


@pytest.mark.parametrize("fault", ["nan", "overflow"])
def test_extraction_refuses_non_finite_backbone_features_naming_the_image(tmp_path, fault):
    """A real backbone fault: a checkpoint whose final-norm weights are NaN, or so large that the
    features exceed float16's range (written as Inf before this check)."""
    from bench.backbones.vit import save_random_checkpoint

    checkpoint = save_random_checkpoint("dinov2_vits14", tmp_path / "weights" / "dinov2_vits14_pretrain.pth")
    state = torch.load(checkpoint, map_location="cpu")
    if fault == "nan":
        state["norm.weight"][0] = float("nan")
    else:
        state["norm.weight"] *= 1e6
    torch.save(state, checkpoint)
    cfg = tiny_config(tmp_path, CELL, "dataset.max_images=1", "backbone.name=dinov2_vits14",
                      f"backbone.params.dinov2_vits14.checkpoint={checkpoint}")
    with pytest.raises(ValueError, match=r"mini_000000\.jpg.*'mini_000000'.*(NaN|Inf)"):
        extract(cfg)
    train = shard_dir(cfg) / "train"
    assert not (train / "manifest.json").exists() and not list(train.glob("*.tmp"))


# ----------------------------------------------------------------------------- item 10
def test_two_extractions_on_one_shard_directory_cooperate(tiny_root, tmp_path):
    """Two real processes started together on one shard directory (one shard per image, caches
    off so that both are busy at once): both finish, every shard is written once, no temporary
    file is left and the manifest agrees with the files and with a one-process extraction."""
    target = tmp_path / "shared"
    args = [sys.executable, "-m", "bench.extract", "experiment=quickstart", CELL, *tiny_overrides(tiny_root),
            f"extract.shard_dir={target}", "extract.samples_per_shard=1", "extract.feature_cache=null",
            "regions.cache=null"]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    written = [int(line.split(" wrote ")[1].split()[0]) for out in outputs for line in out.splitlines()
               if " wrote " in line and "shards" in line]
    assert sum(written) == 12 + 6, outputs  # each shard written by exactly one of the two processes
    reference = tmp_path / "reference"
    extract(tiny_config(tiny_root, CELL, f"extract.shard_dir={reference}", "extract.samples_per_shard=1"))
    for split in ("train", "val"):
        manifest = shards.load_manifest(target / split)
        for s in manifest["shards"]:  # the manifest agrees with its files
            assert shards.sha256(target / split / f"{s['name']}.tar") == s["sha256"]
            assert (target / split / f"{s['name']}.tar").stat().st_size == s["bytes"]
        assert contents(target / split) == contents(reference / split)
        assert not [p for p in (target / split).iterdir() if p.name.endswith(".tmp")]
