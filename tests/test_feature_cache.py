"""The feature cache: a second pooling variant reuses the patch grids without running the backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.config import cell_config
from bench.extract import extract
from bench.extraction import Extractor
from bench.shards import load_manifest
from bench.tasks import TASKS
from tests.conftest import tiny_config


def test_second_pooling_variant_reads_the_cache_and_never_builds_the_backbone(tmp_path, monkeypatch):
    import bench.extraction as extract_module

    mean = tiny_config(tmp_path, "cell=region_linear/minivoc", "dataset.max_images=3")
    extract(mean)
    val = load_manifest(Path(cell_config(mean, "region_linear/minivoc").extract.shard_dir) / "val")
    assert val["region_stats"]["feature_cache_hit_rate"] == 0.0
    assert val["feature_cache"]["files"] == 6 and val["feature_cache"]["bytes"] > 0

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built although every grid is cached")

    monkeypatch.setattr(extract_module, "build_backbone", refuse)
    maxed = tiny_config(tmp_path, "cell=region_linear/minivoc", "dataset.max_images=3", "pooling.mode=max")
    extract(maxed)
    val_max = load_manifest(Path(cell_config(maxed, "region_linear/minivoc").extract.shard_dir) / "val")
    assert val_max["region_stats"]["feature_cache_hit_rate"] == 1.0
    assert val_max["feature_dim"] == val["feature_dim"]  # known from the cache's metadata


def test_cold_and_warm_cache_give_identical_shards(tmp_path):
    cfg = tiny_config(tmp_path, "cell=region_linear/minivoc", "dataset.max_images=2")
    first = Extractor(cell_config(cfg, "region_linear/minivoc"), TASKS["segmentation"])
    rgb = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    label = np.zeros((50, 60), np.uint8)
    _, cold = first.sample("img", rgb, label)
    _, warm = Extractor(cell_config(cfg, "region_linear/minivoc"), TASKS["segmentation"]).sample("img", rgb, label)
    assert cold["feats.npy"] == warm["feats.npy"]
