"""Awkward inputs through the real pipeline: EXIF rotation, tiny and grayscale images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.config import cell_config
from bench.extract import extract
from bench.shards import load_manifest
from datamodules.voc import load_image_for_label, save_label_png
from tests.conftest import tiny_config


def write_voc(root: Path, images: dict[str, tuple[Image.Image, np.ndarray]], splits: dict[str, list[str]]):
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for key, (image, label) in images.items():
        image.save(voc / "JPEGImages" / f"{key}.jpg", quality=95)
        save_label_png(voc / "SegmentationClass" / f"{key}.png", label)
    for split, keys in splits.items():
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(keys) + "\n")


def test_exif_rotated_jpeg_is_oriented_like_its_label(tmp_path):
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    viewed = load_image_for_label(tmp_path / "r.jpg", (40, 30))  # label drawn on the viewed image
    assert viewed.shape == (40, 30, 3)
    assert viewed[:10].mean() > 200 and viewed[-10:].mean() < 50  # the band is now on top
    raw = load_image_for_label(tmp_path / "r.jpg", (30, 40))  # label drawn on stored pixels
    assert raw.shape == (30, 40, 3) and raw[:, :10].mean() > 200
    with pytest.raises(ValueError, match="do not belong together"):
        load_image_for_label(tmp_path / "r.jpg", (31, 40))


def test_tiny_and_grayscale_images_flow_through_extraction_training_and_eval(tmp_path):
    rng = np.random.default_rng(0)
    images = {}
    for i, (h, w, mode) in enumerate([(10, 8, "RGB"), (13, 9, "L"), (40, 50, "L"), (6, 6, "RGB")]):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        label = np.zeros((h, w), np.uint8)
        label[: h // 2] = 15
        images[f"img_{i}"] = (image, label)
    write_voc(tmp_path / "voc", images, {"train": ["img_0", "img_1", "img_2"], "val": ["img_2", "img_3"]})
    overrides = ["dataset.name=awkward", f"dataset.root={tmp_path / 'voc'}", "dataset.generate=null",
                 "cell=region_linear/minivoc", "trainer.max_epochs=1", "data.region_batch_size=8"]
    cfg = tiny_config(tmp_path, *overrides)
    extract(cfg)
    manifest = load_manifest(Path(cell_config(cfg, "region_linear/minivoc").extract.shard_dir) / "val")
    assert manifest["num_samples"] == 2 and manifest["region_stats"]["images"] == 2
    from train import train

    metrics = train(cfg)["region_linear/minivoc"]
    assert metrics["num_images"] == 2 and 0.0 <= metrics["miou"] <= 1.0
    assert metrics["num_pixels"] == 40 * 50 + 6 * 6
