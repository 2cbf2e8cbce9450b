"""Region generators through extraction: the SAM mask cache shared with SAM+SLIC, statistics."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import cell_config
from bench.extract import extract
from bench.regions.sam import save_random_checkpoint
from bench.shards import load_manifest
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint("sam", "vit_test", tmp_path_factory.mktemp("weights") / "sam_vit_test.pth")


def sam_overrides(checkpoint: Path) -> list[str]:
    return ["dataset.max_images=2", "regions.params.sam.model_type=vit_test", f"regions.params.sam.checkpoint={checkpoint}",
            "regions.params.sam.points_per_side=2", "regions.params.sam.pred_iou_thresh=0.0",
            "regions.params.sam.stability_score_thresh=0.0", "cell=region_linear/minivoc"]


def manifest_for(cfg, split="val") -> dict:
    return load_manifest(Path(cell_config(cfg, "region_linear/minivoc").extract.shard_dir) / split)


def test_sam_slic_fills_the_sam_cache_and_sam_then_reuses_it(tmp_path, sam_checkpoint):
    merged = tiny_config(tmp_path, *sam_overrides(sam_checkpoint), "regions.source=sam_slic",
                         "regions.params.sam_slic.min_pixels=50")
    extract(merged)
    merged_stats = manifest_for(merged)["shards"][0]["stats"]
    sam = tiny_config(tmp_path, *sam_overrides(sam_checkpoint), "regions.source=sam")
    extract(sam)
    sam_stats = manifest_for(sam)["shards"][0]["stats"]
    assert set(sam_stats) == set(merged_stats) == {"mini_000012", "mini_000013"}
    assert all(s["cached"] for s in sam_stats.values())  # SAM did not run again
    for key in sam_stats:  # SLIC only adds regions where SAM left pixels uncovered
        assert merged_stats[key]["regions"] >= sam_stats[key]["regions"]
        assert merged_stats[key]["coverage"] >= sam_stats[key]["coverage"]
    summary = manifest_for(merged)["region_stats"]
    assert summary["images"] == 2 and summary["seconds_per_image"] > 0 and summary["peak_mem_mb"] > 0


def test_changing_a_generator_setting_invalidates_only_its_cache(tmp_path, sam_checkpoint):
    base = tiny_config(tmp_path, *sam_overrides(sam_checkpoint), "regions.source=sam")
    changed = tiny_config(tmp_path, *sam_overrides(sam_checkpoint), "regions.source=sam",
                          "regions.params.sam.box_nms_thresh=0.5")
    assert cell_config(base, "region_linear/minivoc").extract.shard_dir != \
        cell_config(changed, "region_linear/minivoc").extract.shard_dir
    extract(base)
    extract(changed)
    caches = sorted(p.name for p in (tmp_path / "data" / "masks" / "minivoc").iterdir())
    assert len([c for c in caches if c.startswith("sam-")]) == 2
    assert not any(s.get("cached") for s in manifest_for(changed)["shards"][0]["stats"].values())


def test_a_checkpoint_of_the_wrong_model_type_names_both(tmp_path, sam_checkpoint):
    cfg = tiny_config(tmp_path, *sam_overrides(sam_checkpoint), "regions.source=sam",
                      "regions.params.sam.model_type=vit_b")
    with pytest.raises(ValueError, match=r"vit_test.*vit_b|vit_b.*vit_test"):
        extract(cfg)
