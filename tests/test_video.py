"""Activity classification (Table 9): MiniKinetics and the fixture clips through the pre-scan,
extraction, both models, the token cap, skipped clips named, and 2-rank DDP evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import shards
from bench.config import cell_config, load_config
from bench.tasks.video import cap_tokens
from tests.conftest import eval_on_one_and_two_ranks, shared_or_skip

# 1 train + 1 val clip per class (12 classes), 16 frames of 64x48; 10 SLIC regions per frame
TINY_KINETICS = ["dataset.generate.num_train=1", "dataset.generate.num_val=1", "dataset.generate.frames=16",
                 "dataset.generate.width=64", "dataset.generate.height=48", "regions.params.slic.num_components=10",
                 "extract.samples_per_shard=4", "extract.progress=false", "trainer.max_epochs=2",
                 "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false", "logger.kind=none",
                 "dataset.max_tokens=60"]
BROKEN = {"zero_bytes": "zeRoBytes00_000010_000020", "missing": "nOtHeRe0000_000010_000020"}


def overrides(root: Path) -> list[str]:
    return ["experiment=table9_activity", *TINY_KINETICS, f"paths.data_root={root / 'data'}",
            f"paths.results_root={root / 'results'}"]


def config(root: Path, *extra: str):
    return load_config([*overrides(root), *extra])


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory) -> Path:
    """MiniKinetics with one val clip emptied to zero bytes and one listed but absent, extracted."""
    from bench.extract import extract
    from datamodules.datasets import prepare_dataset

    root = tmp_path_factory.mktemp("video")
    cfg = cell_config(config(root), "region_transformer/minikinetics")
    prepare_dataset(cfg.dataset)
    data = Path(cfg.dataset.root)
    csv = data / "annotations" / "kinetics-400_val.csv"
    rows = csv.read_text().splitlines()
    for clip_id in BROKEN.values():
        youtube = clip_id[:11]
        rows.append(f"growing,{youtube},10,20,val,0")
    csv.write_text("\n".join(rows) + "\n")
    (data / "val" / f"{BROKEN['zero_bytes']}.mp4").write_bytes(b"")
    extract(config(root, "cell=*/minikinetics"))
    return root


def shard_dir(root: Path, split: str) -> Path:
    return Path(cell_config(config(root), "region_transformer/minikinetics").extract.shard_dir) / split


def test_cap_keeps_the_largest_regions_earliest_first_in_order():
    areas = np.array([5, 9, 5, 1, 9, 5])
    frame = np.array([0, 0, 1, 1, 2, 2])
    assert cap_tokens(areas, frame, 10).tolist() == [0, 1, 2, 3, 4, 5]
    assert cap_tokens(areas, frame, 4).tolist() == [0, 1, 2, 4]  # the 9s, then the 5s of frames 0 and 1
    assert cap_tokens(areas, frame, 0).tolist() == []


def test_clips_become_capped_tokens_and_broken_clips_are_named(kinetics_root):
    manifest = shards.load_manifest(shard_dir(kinetics_root, "val"))
    assert manifest["task"] == "video" and manifest["num_samples"] == 12 and manifest["split_items"] == 14
    assert {s["id"]: s["reason"] for s in manifest["skipped"]} == {BROKEN["zero_bytes"]: "zero_bytes",
                                                                   BROKEN["missing"]: "missing"}
    cut = manifest["notes"]["tokens_cut"]
    samples = list(shards.read_split(shard_dir(kinetics_root, "val"))[0])
    per_clip = {s["key"]: s["meta"]["tokens_cut"] for s in samples}
    assert cut["count"] == sum(per_clip.values()) > 0 and cut["ids"] == [k for k, v in per_clip.items() if v]
    for sample in samples:
        n = len(sample["feats"])
        assert n <= 60 and sample["frame"].shape == (n,) and sample["pos2d"].shape == (n, 6)
        assert sample["cls"].shape == (8, sample["feats"].shape[1])
        assert np.all(np.diff(sample["frame"]) >= 0) and set(sample["frame"]) <= set(range(8))
        assert sample["meta"]["label_name"] and len(sample["meta"]["pts"]) == 8


@pytest.mark.parametrize("row", ["cls_linear", "region_transformer"])
def test_both_rows_train_and_eval_reproduces_them(kinetics_root, row):
    from eval import evaluate
    from train import train

    cell = f"{row}/minikinetics"
    trained = train(config(kinetics_root, f"cell={cell}"))[cell]
    assert trained["task"] == "video" and trained["num_clips"] == 12
    assert 0 <= trained["top1"] <= trained["top5"] <= 1 and 0 <= trained["mean_class_acc"] <= 1
    assert {s["id"] for s in trained["skipped"]["val"]} == set(BROKEN.values())
    again = evaluate(config(kinetics_root, f"cell={cell}", "pictures=1"))[cell]
    assert {k: again[k] for k in ("top1", "top5", "mean_class_acc")} == \
        {k: trained[k] for k in ("top1", "top5", "mean_class_acc")}
    if row == "region_transformer":
        assert list((kinetics_root / "results" / "table9_activity" / row / "minikinetics" / "clips").glob("*.png"))


def test_two_rank_ddp_evaluation_equals_one_rank(kinetics_root, tmp_path):
    from train import train

    cell = "region_transformer/minikinetics"
    train(config(kinetics_root, f"cell={cell}"))
    results = eval_on_one_and_two_ranks(overrides(kinetics_root), kinetics_root / "results", cell, tmp_path)
    assert results[2]["eval"]["world_size"] == 2 and results[2]["num_clips"] == results[1]["num_clips"] == 12
    assert {k: results[2][k] for k in ("top1", "top5", "mean_class_acc")} == \
        {k: results[1][k] for k in ("top1", "top5", "mean_class_acc")}


def test_the_fixture_clips_go_through_the_prescan_and_extraction(tmp_path):
    """The two real Kinetics clips, in the release layout under made-up ids, at a short side of 64."""
    from bench.extract import extract

    videos = shared_or_skip() / "kinetics" / "videos"
    root = tmp_path / "kinetics"
    (root / "annotations").mkdir(parents=True)
    rows = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for split in ("train", "val"):
        (root / split).mkdir()
        for i, (name, label) in enumerate((("demo.mp4", "arm wrestling"), ("test.mp4", "abseiling"))):
            youtube = f"fixture{split[:2]}{i:02d}"
            (root / split / f"{youtube}_000000_000010.mp4").symlink_to(videos / name)
            rows.append(f'"{label}",{youtube},0,10,{split},0' if " " in label else f"{label},{youtube},0,10,{split},0")
        (root / "annotations" / f"kinetics-400_{split}.csv").write_text("\n".join(rows[:1] + rows[-2:]) + "\n")
    cfg = load_config(["experiment=table9_activity", "cell=region_transformer/minikinetics", *TINY_KINETICS,
                       f"paths.data_root={tmp_path / 'data'}", f"dataset.root={root}", "dataset.generate=null",
                       "dataset.name=fixture_clips", "dataset.num_classes=2", "dataset.short_side=64"])
    extract(cfg)
    manifest = shards.load_manifest(Path(cell_config(cfg, "region_transformer/minikinetics").extract.shard_dir) / "val")
    assert manifest["num_samples"] == 2 and not manifest["skipped"]
    scan = json.loads((tmp_path / "data" / "prescan" / "fixture_clips" / "val.json").read_text())
    assert scan["counts"]["decodable"] == 2
    for sample in shards.read_split(Path(cell_config(cfg, "region_transformer/minikinetics").extract.shard_dir)
                                    / "val")[0]:
        assert min(sample["meta"]["height"], sample["meta"]["width"]) == 64 and sample["cls"].shape[0] == 8
