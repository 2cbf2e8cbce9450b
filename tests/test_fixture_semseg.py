"""The fixtures' real VOC and ADE20K photos through extraction, training and scoring, with the
paper's SLIC regions (50 components, compactness 8) and ground-truth regions: oracle mIoU is
exact for GT regions and below it for superpixels."""
from __future__ import annotations

import pytest

from bench.extract import extract
from tests.conftest import FIXTURES, shared_or_skip, tiny_config

pytestmark = pytest.mark.fixtures

RUN = ["cell=region_linear/minivoc", "model.report_oracle=true", "trainer.max_epochs=1",
       "regions.params.slic.num_components=50", "dataset.generate=null"]


def voc_tree(tmp_path):
    """A VOC2012 directory of symlinks to the two labelled fixture photos, with its own split files."""
    shared_or_skip()
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    sources = {"2007_000063": FIXTURES / "voc/VOCdevkit/VOC2012",  # palette PNG
               "2007_000129": FIXTURES / "voc/l_mode_variant"}     # L-mode PNG
    for image_id, where in sources.items():
        jpg = where / "JPEGImages" / f"{image_id}.jpg" if where.name == "VOC2012" else where / f"{image_id}.jpg"
        png = where / "SegmentationClass" / f"{image_id}.png" if where.name == "VOC2012" else where / f"{image_id}.png"
        (voc / "JPEGImages" / f"{image_id}.jpg").symlink_to(jpg)
        (voc / "SegmentationClass" / f"{image_id}.png").symlink_to(png)
    for split in ("train", "val"):
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("2007_000063\n2007_000129\n")
    return ["dataset.name=voc_fixtures", f"dataset.root={tmp_path / 'voc'}"]


def ade_dataset(tmp_path):
    root = shared_or_skip() / "ade20k"
    return ["dataset.name=ade20k_fixtures", "dataset.layout=ade20k", f"dataset.root={root}",
            "dataset.train_split=validation", "dataset.val_split=validation", "dataset.num_classes=150"]


@pytest.mark.parametrize("dataset", [voc_tree, ade_dataset], ids=["voc", "ade20k"])
def test_real_samples_extract_train_and_score_with_slic_and_gt_regions(tmp_path, dataset):
    from train import train

    data = dataset(tmp_path)
    results = {}
    for source in ("slic", "gt"):
        cfg = tiny_config(tmp_path, *data, *RUN, f"regions.source={source}",
                          f"paths.results_root={tmp_path / source}")
        extract(cfg)
        results[source] = train(cfg)["region_linear/minivoc"]
    n = 2 if "voc_fixtures" in data[0] else 3
    assert results["gt"]["num_images"] == results["slic"]["num_images"] == n
    assert results["gt"]["oracle_miou"] == 1.0
    assert 0.3 < results["slic"]["oracle_miou"] < 1.0
    assert 30 < results["slic"]["regions_per_image"] <= 50 and results["slic"]["coverage"] == 1.0
    print(f"{data[0]}: SLIC 50/8 oracle mIoU {results['slic']['oracle_miou']:.4f}, "
          f"{results['slic']['regions_per_image']:.1f} regions/image")
