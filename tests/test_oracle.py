"""The oracle and ground-truth regions; images without any region flow through everything."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.config import cell_config
from bench.extract import extract
from bench.shards import load_manifest
from datamodules.datasets import prepare_dataset
from datamodules.voc import save_label_png
from tests.conftest import tiny_config

GT = ["cell=region_linear/minivoc", "regions.source=gt", "model.report_oracle=true", "trainer.max_epochs=1"]


def test_gt_regions_oracle_is_exact_and_empty_images_flow_through(tmp_path):
    from eval import evaluate
    from train import train

    cfg = tiny_config(tmp_path, *GT)
    prepare_dataset(cfg.dataset)
    labels = Path(cfg.dataset.root) / "VOCdevkit/VOC2012/SegmentationClass"
    for key in ("mini_000003", "mini_000014"):  # one train, one val image: all void -> no GT region
        shape = np.array(Image.open(labels / f"{key}.png")).shape
        save_label_png(labels / f"{key}.png", np.full(shape, 255, np.uint8))
    extract(cfg)
    shard_dir = Path(cell_config(cfg, "region_linear/minivoc").extract.shard_dir)
    val = load_manifest(shard_dir / "val")
    assert val["region_stats"]["images_without_regions"] == 1
    assert val["shards"][0]["stats"]["mini_000014"]["regions"] == 0

    metrics = train(cfg)["region_linear/minivoc"]
    assert metrics["num_images"] == 6  # the region-less image was scored too
    assert metrics["oracle_miou"] == 1.0  # GT segments labelled by their own pixels: exact
    assert metrics["coverage"] < 1.0  # void pixels belong to no GT region

    oracle = evaluate(tiny_config(tmp_path, *GT, "model.kind=oracle"))["region_linear/minivoc"]
    assert oracle["miou"] == 1.0 and oracle["uncovered_pixels"] == 0


def test_slic_oracle_is_below_one_but_above_the_trained_model(tmp_path):
    from train import train

    cfg = tiny_config(tmp_path, "cell=region_linear/minivoc", "model.report_oracle=true", "trainer.max_epochs=1")
    extract(cfg)
    metrics = train(cfg)["region_linear/minivoc"]
    assert metrics["miou"] < metrics["oracle_miou"] < 1.0
    assert metrics["regions_per_image"] > 10 and metrics["coverage"] == 1.0
