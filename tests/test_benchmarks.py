"""The benchmarks' equality checks at a tiny size: every reference still agrees with ours, and
the harness (memory reading, shard streaming, decoder steps, extraction stages) still runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.regions.sam_slic import merge_sam_slic
from benchmarks import painting, pooling, post_pooling, sam_slic, shards, slic, throughput
from benchmarks.inputs import tiny_case
from benchmarks.measure import median_seconds, peak_extra_memory


@pytest.fixture(scope="module")
def case():
    return tiny_case()


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_pooling_matches_its_literal_reference(case, mode):
    jobs = pooling.workloads(case, mode)
    check = pooling.compare(jobs["ours"](), jobs["reference"]())
    assert check["ok"], check


@pytest.mark.parametrize("min_pixels", [1, 10, 300])
def test_sam_slic_merge_matches_the_released_loop(case, min_pixels):
    ours = merge_sam_slic(case.sam, case.slic, min_pixels=min_pixels)
    check = sam_slic.compare(ours, sam_slic.reference_merge(case.sam, case.slic, min_pixels=min_pixels))
    assert check["ok"], check
    if min_pixels == 1:
        assert len(ours) > len(case.sam)  # the fill is exercised, not only the copy


def test_painting_and_miou_update_match_the_released_evaluation(case):
    jobs = painting.workloads(case)
    check = painting.compare(jobs["ours"](), jobs["reference"]())
    assert check["ok"], check


def test_slic_benchmark_runs_both_implementations(case):
    jobs = slic.workloads(case)
    ours, reference = jobs["ours"](), jobs["reference"]()
    assert ours.shape == reference.shape == case.image.shape[:2]
    assert slic.compare(ours, reference)["segments"][0] > 1


def test_shard_streaming_decodes_what_webdataset_reads(case, tmp_path):
    manifest = shards.write_shard_set(case, tmp_path, samples=64)
    paths = shards.urls(tmp_path, manifest)
    size = sum(s["bytes"] for s in manifest["shards"])
    assert shards.raw_read(paths) == size
    assert shards.direct_read(paths) in (size, None)  # None where O_DIRECT is refused
    check = shards.check(tmp_path, manifest, shards.datamodule(tmp_path))
    assert check["ok"], check
    assert shards.naive_epoch(paths, steps=2) == 2 * shards.BATCH


def test_memory_reading_sees_torch_allocations():
    extra, method = peak_extra_memory(lambda: torch.ones(50_000_000).sum())  # 200 MB, freed at once
    assert extra > 150e6, (extra, method)


def test_median_seconds_returns_every_run_and_the_result():
    median, runs, result = median_seconds(lambda: 7, runs=5, warmup=0)
    assert len(runs) == 5 and median in runs and result == 7


def test_every_decoder_trains_a_step():
    rows = throughput.decoder_rows(runs=1, warmup=0)
    from models.decoders import DECODERS

    assert [r["decoder"] for r in rows] == list(DECODERS)
    assert all("error" not in r and r["regions_per_s"] > 0 for r in rows), rows


def test_extraction_compares_the_pipeline_with_the_pre_issue_code_on_the_same_bytes():
    """Two workers against the pre-issue-17 code in one process (extraction() raises if their shard
    bytes differ); every stage reported, the backbone's busy fraction a fraction."""
    result = throughput.extraction(num_train=4, num_val=2, workers=2)
    assert result["images"] == result["reference"]["images"] == 6
    assert result["speedup"] == result["images_per_s"] / result["reference"]["images_per_s"]
    assert set(result["ms_per_image"]) == set(throughput.STAGES)
    assert all(v >= 0 for v in result["ms_per_image"].values()) and 0 < result["backbone_busy"] < 1


def test_the_pre_issue_code_is_really_patched_in_for_the_reference():
    from bench import extraction
    from benchmarks import post_pooling

    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0, 1:3, 2:4] = masks[1, 0, :] = True
    with throughput.pre_issue_17():
        assert not hasattr(extraction.MaskCrops.of(masks), "runs")
        assert extraction.bounding_boxes is post_pooling.bounding_boxes_reference
        assert extraction.encode_rles(masks, None) == post_pooling.encode_rles_reference(masks)
    assert hasattr(extraction.MaskCrops.of(masks), "runs")


def test_tiny_case_is_deterministic():
    a, b = tiny_case(seed=3), tiny_case(seed=3)
    assert np.array_equal(a.masks, b.masks) and torch.equal(a.grid, b.grid)


def test_matmul_precision_rows_cover_three_dtypes():
    rows = throughput.matmul_rows(runs=1)
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16", "float16"] and rows[0]["vs_float32"] == 1


def test_scene_tokens_row_counts_tokens_and_times_both_steps():
    from benchmarks import scene_tokens

    row = scene_tokens.row(runs=1, frames=2, regions=5, grid=4)
    assert (row["region_tokens"], row["patch_tokens"]) == (10, 32)
    assert row["ours_s"] > 0 and row["reference_s"] > 0 and row["speedup"] == row["reference_s"] / row["ours_s"]


def test_video_frames_row_samples_the_reference_frames():
    from benchmarks import video_frames

    row = video_frames.row(runs=1, num_frames=4, gop=30, seconds=2, fixtures=False)
    assert row["id"] == "video_frames" and row["check"]["ok"] and row["check"]["identical_frames"]
    assert row["ours_s"] > 0 and row["speedup"] > 0 and row["fixtures"] == []


def test_clip_tokens_row_times_and_measures_both_steps():
    from benchmarks import scene_tokens

    row = scene_tokens.clip_row(runs=1, frames=2, tokens=6, grid=3, heads=4)
    assert (row["region_tokens"], row["patch_tokens"]) == (6, 18)
    assert row["ours_s"] > 0 and row["reference_s"] > 0 and row["reference_mem_bytes"] >= 0


@pytest.mark.parametrize("generator", ["sam_slic", "slic"])
def test_post_pooling_sample_bytes_equal_the_pre_issue_17_code(case, generator):
    inputs = post_pooling.make_inputs(generator, case)
    reference = post_pooling.post_pooling_reference(inputs)
    boxes = post_pooling.bounding_boxes_reference(inputs["masks"])
    for ours in (post_pooling.post_pooling(inputs), post_pooling.post_pooling(inputs, boxes)):
        assert sorted(ours) == sorted(reference)
        assert all(ours[k] == reference[k] for k in ours)
    rows = post_pooling.rows(runs=1, generators=(generator,), parts={generator: ("total", "boxes")}, case=case)
    assert all(row["check"]["ok"] and row["speedup"] > 0 for row in rows)
    assert rows[0]["target"] == ">=20x" and "target" not in rows[1]


def test_post_pooling_check_raises_on_different_bytes():
    with pytest.raises(AssertionError, match="hist.npy"):
        post_pooling.check({"hist.npy": b"1", "label.png": b"2"}, {"hist.npy": b"0", "label.png": b"2"})
