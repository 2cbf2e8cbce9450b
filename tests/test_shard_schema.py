"""Shard schema versions (bench/shards.py): common region members + the members a task declares;
segmentation's bytes are those of schema 1; version-1 shard sets still read; an unknown version or
a shard set without the members a reader needs is refused with a message to re-extract."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import shards
from bench.rle import encode_rles
from bench.tasks import TASKS
from datamodules.region_shards import RegionShardDataModule
from datamodules.datasets import split_name


def v1_encode_sample(key, feats, rles, areas, hist, label, meta) -> dict:
    """encode_sample of schema 1, verbatim (members written by one fixed list)."""
    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint8), mode="L").save(buf, format="PNG")
        return buf.getvalue()
    return {"__key__": key, "feats.npy": npy(feats.astype(np.float16)), "rle.json": json.dumps(rles).encode(),
            "areas.npy": npy(areas.astype(np.int64)), "hist.npy": npy(hist.astype(np.int32)),
            "label.png": png(label), "meta.json": json.dumps(meta, sort_keys=True).encode()}


def test_a_segmentation_sample_has_the_bytes_of_schema_1(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((4, 9, 11)) > 0.5
    feats, hist = rng.standard_normal((4, 8)), rng.integers(0, 50, (4, 22))
    label = rng.integers(0, 21, (9, 11)).astype(np.uint8)
    meta = {"id": "a", "height": 9, "width": 11}
    old = v1_encode_sample("a", feats, encode_rles(masks), masks.sum((1, 2)), hist, label, meta)
    members, _ = TASKS["segmentation"].unit_members(type("E", (), {"num_classes": 21, "ignore_index": 255}), "a",
                                                    masks, label)
    by_task = shards.encode_sample("a", feats, encode_rles(masks), masks.sum((1, 2)), meta, members=members)
    by_keyword = shards.encode_sample("a", feats=feats, rles=encode_rles(masks), areas=masks.sum((1, 2)),
                                      hist=hist, label=label, meta=meta)
    assert by_keyword == old
    assert set(by_task) == set(old) and by_task["label.png"] == old["label.png"]
    shards.write_shard(tmp_path / "old.tar", [old])
    shards.write_shard(tmp_path / "new.tar", [by_keyword])
    assert shards.sha256(tmp_path / "old.tar") == shards.sha256(tmp_path / "new.tar")


def test_task_members_of_any_kind_round_trip_and_are_required_when_asked(tmp_path):
    rng = np.random.default_rng(1)
    masks = rng.random((3, 6, 7)) > 0.5
    depth, pose = rng.random((6, 7)).astype(np.float32), {"pose": np.eye(4).tolist(), "scene": "s0"}
    sample = shards.encode_sample("f0", rng.standard_normal((3, 5)), encode_rles(masks), masks.sum((1, 2)),
                                  {"id": "f0", "scene": "s0", "frame": 3},
                                  members={"depth.npy": depth, "pose.json": pose})
    shards.write_shard(tmp_path / "s.tar", [sample])
    (read,) = shards.read_tar_samples([str(tmp_path / "s.tar")])
    out = shards.decode_sample(read, required=("depth.npy", "pose.json"))
    assert np.array_equal(out["depth"], depth) and out["pose"] == pose and out["meta"]["frame"] == 3
    assert set(out) == {"key", "feats", "rle", "areas", "meta", "depth", "pose"}
    with pytest.raises(shards.ShardError, match=r"lacks \['hist.npy'\].*re-run extraction"):
        shards.decode_sample(read, ("feats",), required=("hist.npy",))
    with pytest.raises(shards.ShardError, match="has no label.png.*another task"):
        shards.decode_sample(read, ("label",))
    with pytest.raises(ValueError, match="would replace a common shard member"):
        shards.encode_sample("f0", np.zeros((0, 5)), [], np.zeros(0), {}, members={"feats.npy": depth})


@pytest.fixture()
def shard_copy(tiny_root, region_cfg, tmp_path):
    """A copy of the tiny val shard set (the session's stays untouched)."""
    source = Path(region_cfg.extract.shard_dir)
    split = split_name(region_cfg.dataset.val_split)
    shutil.copytree(source / split, tmp_path / split, ignore=shutil.ignore_patterns(".locks"))
    return tmp_path, region_cfg.dataset.val_split


def test_new_manifests_record_schema_task_and_members(shard_copy):
    root, split = shard_copy
    manifest = shards.load_manifest(root / split_name(split))
    assert manifest["schema_version"] == shards.SCHEMA_VERSION == 2
    assert manifest["task"] == "segmentation"
    assert manifest["members"] == sorted(shards.V1_MEMBERS)


def _eval_keys(root, split, members=("hist.npy", "label.png")) -> list[str]:
    dm = RegionShardDataModule(str(root), split, split, batch_size=4, members=members)
    return [k for batch in dm.eval_dataloader(split) for k in batch["keys"]]


def test_a_schema_1_manifest_still_reads(shard_copy):
    root, split = shard_copy
    path = root / split_name(split) / "manifest.json"
    expected = _eval_keys(root, split)
    manifest = json.loads(path.read_text())
    for key in ("task", "members"):
        del manifest[key]
    manifest["schema_version"] = 1
    path.write_text(json.dumps(manifest))
    assert shards.manifest_members(shards.load_manifest(path.parent)) == shards.V1_MEMBERS
    assert _eval_keys(root, split) == expected and expected


def test_an_unknown_schema_version_says_to_re_extract(shard_copy):
    root, split = shard_copy
    path = root / split_name(split) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 3
    path.write_text(json.dumps(manifest))
    with pytest.raises(shards.ShardError, match="schema version 3; this RegionBench reads versions 1 to 2.*re-extract"):
        shards.load_manifest(path.parent)


def test_a_reader_needing_members_the_shards_lack_says_to_re_extract(shard_copy):
    root, split = shard_copy
    with pytest.raises(shards.ShardError, match="needs depth.npy too: they were extracted for another task"):
        _eval_keys(root, split, members=("hist.npy", "label.png", "depth.npy"))
