"""Shard format: round trip, atomic writes, manifests, resumable and split extraction."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import shards
from bench.extract import extract
from bench.rle import decode_rles, encode_rles
from tests.conftest import tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def random_sample(key: str, rng: np.random.Generator, with_patches: bool = False) -> dict:
    masks = rng.random((5, 9, 11)) > 0.5
    return shards.encode_sample(
        key, feats=rng.standard_normal((5, 8)), rles=encode_rles(masks), areas=masks.sum((1, 2)),
        hist=rng.integers(0, 50, (5, 22)), label=rng.integers(0, 21, (9, 11)).astype(np.uint8),
        meta={"id": key, "height": 9, "width": 11, "patch_size": 14, "grid": [1, 1], "pad": [2, 1]},
        patches=rng.standard_normal((8, 1, 1)) if with_patches else None)


def test_encode_decode_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    samples = [random_sample(f"img_{i}", rng, with_patches=i == 1) for i in range(3)]
    keys = shards.write_shard(tmp_path / "s.tar", samples)
    assert keys == ["img_0", "img_1", "img_2"]
    assert not (tmp_path / "s.tar.tmp").exists()
    import webdataset as wds

    read = [shards.decode_sample(s) for s in wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False)]
    assert [r["key"] for r in read] == keys
    for raw, dec in zip(samples, read):
        assert dec["feats"].dtype == np.float16 and dec["feats"].shape == (5, 8)
        assert dec["hist"].dtype == np.int32 and dec["hist"].shape == (5, 22)
        masks = decode_rles(dec["rle"])
        assert masks.shape == (5, 9, 11)
        np.testing.assert_array_equal(masks.sum((1, 2)), dec["areas"])
        assert dec["label"].shape == (9, 11) and dec["label"].dtype == np.uint8
        assert raw["label.png"] and dec["meta"]["pad"] == [2, 1]
    assert "patches" in read[1] and "patches" not in read[0]


def test_rle_round_trip_exact():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 13, 7)) > 0.3
    np.testing.assert_array_equal(decode_rles(encode_rles(masks)), masks)


@pytest.mark.parametrize("key", ["2007.000032", "dir/name"])
def test_keys_with_dots_are_refused(key):
    with pytest.raises(ValueError, match="merge"):
        shards.check_key(key)


def test_same_samples_give_identical_bytes(tmp_path):
    samples = [random_sample(f"k{i}", np.random.default_rng(i)) for i in range(3)]
    shards.write_shard(tmp_path / "a.tar", samples)
    time.sleep(1.1)  # a writer that stamped wall-clock mtimes would now differ
    shards.write_shard(tmp_path / "b.tar", samples)
    assert shards.sha256(tmp_path / "a.tar") == shards.sha256(tmp_path / "b.tar")


def test_plan_and_split_cover_every_shard_once():
    plan = shards.plan_shards([f"i{k}" for k in range(10)], 3)
    assert [len(p) for p in plan] == [3, 3, 3, 1]
    owned = sorted(i for rank in range(3) for i in shards.my_shards(len(plan), rank, 3))
    assert owned == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="extract.index"):
        shards.my_shards(4, 3, 3)


def test_manifest_describes_the_shard_set(tiny_root, region_cfg):
    split_dir = Path(region_cfg.extract.shard_dir) / "val"
    manifest = shards.load_manifest(split_dir)
    assert manifest["num_samples"] == 6 and manifest["num_shards"] == 2
    assert [s["count"] for s in manifest["shards"]] == [4, 2]
    assert manifest["feature_dim"] > 0 and manifest["num_classes"] == 21
    assert manifest["config"]["regions"]["source"] == "slic"
    assert manifest["versions"]["webdataset"] != "not installed"
    for s in manifest["shards"]:
        tar = split_dir / f"{s['name']}.tar"
        assert shards.sha256(tar) == s["sha256"]
        assert list(shards.iter_tar_keys(tar)) == s["keys"]
    shards.verify_shards(split_dir, manifest, "sha256")


def test_missing_manifest_says_what_to_run(tmp_path):
    with pytest.raises(shards.ShardError, match="python -m bench.extract"):
        shards.load_manifest(tmp_path)


def _shard_contents(split_dir: Path) -> dict[str, str]:
    manifest = shards.load_manifest(split_dir)
    return {s["name"]: s["sha256"] for s in manifest["shards"]} | {"keys": json.dumps(
        [s["keys"] for s in manifest["shards"]])}


# with workers: ~10 s more, in `make test-slow` (the default suite stays under 15 minutes on 2 cores)
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_two_array_jobs_write_the_same_shards_as_one(tiny_root, tmp_path, workers):
    """index/count split: each job writes its own shards; the last one merges the manifest. With
    worker processes making the samples (bench/pipeline.py) too."""
    overrides = ["cell=region_linear/minivoc", f"extract.shard_dir={tmp_path / 'split'}", f"extract.workers={workers}"]
    first = extract(tiny_config(tiny_root, *overrides, "extract.index=0", "extract.count=2"))
    assert all(m is None for m in first.values())  # job 0 alone cannot finish the manifest
    extract(tiny_config(tiny_root, *overrides, "extract.index=1", "extract.count=2"))
    from bench.config import cell_config

    reference = Path(cell_config(tiny_config(tiny_root), "region_linear/minivoc").extract.shard_dir)
    for split in ("train", "val"):
        assert _shard_contents(tmp_path / "split" / split) == _shard_contents(reference / split)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # workers: ~19 s, make test-slow
def test_kill_9_mid_extraction_then_resume_gives_identical_shards(tiny_root, tmp_path, workers):
    """Kill the extractor while a shard is being written; the re-run ends identical. With worker
    processes (bench/pipeline.py) they exit with it: none is left behind."""
    from bench.config import cell_config

    reference = Path(cell_config(tiny_config(tiny_root), "region_linear/minivoc").extract.shard_dir)
    target = tmp_path / "killed"
    args = [sys.executable, "-m", "bench.extract", "experiment=quickstart", "cell=region_linear/minivoc",
            *tiny_overrides(tiny_root), f"extract.shard_dir={target}", "extract.samples_per_shard=4",
            f"extract.workers={workers}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_mid_shard, workers_seen = False, []
    while time.time() < deadline and proc.poll() is None:
        done = list((target / "train").glob("shard-*.json")) if (target / "train").is_dir() else []
        if done and list((target / "train").glob("*.tar.tmp")):
            workers_seen = children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_shard = True
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_mid_shard, "extraction finished before it could be killed mid-shard"
    if workers and sys.platform.startswith("linux"):
        assert len(workers_seen) >= workers, workers_seen  # the spawned workers (and perhaps a tracker)
        left = time.time() + 30
        while time.time() < left and any(Path(f"/proc/{pid}").exists() for pid in workers_seen):
            time.sleep(0.1)
        alive = [pid for pid in workers_seen if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
        assert not alive, f"worker processes {alive} outlived the killed extraction"
    assert not (target / "train" / "manifest.json").exists()
    subprocess.run(args, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for split in ("train", "val"):
        assert _shard_contents(target / split) == _shard_contents(reference / split)
