"""benchmarks/gpu.py (`make bench-gpu`): the skip without CUDA, the table, and the helpers that run on a CPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.backbones import vit as backbones_vit
from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the module would run, not skip")
def test_without_cuda_the_module_says_so_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == gpu.SKIP_MESSAGE
    assert "no CUDA device" in gpu.SKIP_MESSAGE
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written


MEASURED = {
    "device": "NVIDIA A100-SXM4-80GB", "torch": "2.14.1",
    "sam": {"model": "SAM ViT-H, random init", "points_per_side": 32, "points_per_batch": 64,
            "sizes": {"voc": {"seconds_per_image": 1.234, "masks_per_image": 3.5, "images": 2}}},
    "backbone": {"model": "dinov2_vitl14", "batch": 8,
                 "sizes": {"ade20k": {"single_images_per_s": 20.0, "batched_images_per_s": 50.0,
                                      "identical": False, "identical_fp16": True, "max_rel_diff": 2.5e-7}}},
    "pooling": {"mode": "mean", "sizes": {"voc": {"ms_per_image": 0.456, "input": "375x500, 90 masks"}}},
    "extraction": {"datasets": [{"dataset": "miniade", "size": "ade20k", "images": 32, "seconds": 4.0,
                                 "images_per_s": 8.0, "backbone_busy": 0.25,
                                 "busy_source": "extraction summary"}]},
    "autocast": {"device": "cuda", "images": 5, "masks": 239, "models": {"dinov2_vitl14": {"bf16": 0.0123}}},
}


def test_render_table_formats_every_measurement():
    assert gpu.render_table(MEASURED).splitlines() == [
        "bench-gpu on NVIDIA A100-SXM4-80GB (torch 2.14.1)",
        "",
        "| measurement | input | result | notes |",
        "|---|---|---|---|",
        "| SAM AMG (SAM ViT-H, random init) | voc 500x375 | 1.23 s/image | table10 preset: 32x32 points in "
        "batches of 64; 3.5 masks/image over 2 images |",
        "| backbone dinov2_vitl14, 1 image/forward | ade20k 683x512 | 20.0 images/s | features() |",
        "| backbone dinov2_vitl14, 8 images/forward | ade20k 683x512 | 50.0 images/s (2.50x) | features_batch(); "
        "same as single: fp32 bits no, after fp16 rounding yes, max rel diff 2.5e-07 |",
        "| pooling (mean) on the GPU | 375x500, 90 masks | 0.46 ms/image | bench.pooling.pool_regions, grid and "
        "masks on CUDA |",
        "| extraction end to end | miniade 683x512, 32 images | 8.00 images/s | backbone busy 25% "
        "(extraction summary) |",
        "| bf16 autocast vs fp32, dinov2_vitl14 | 5 fixture images, 239 SLIC regions | max rel diff 1.2e-02 | GPU |",
    ]


def test_failures_skips_and_cpu_measurements_are_labelled():
    rows = gpu.table_rows({"sam": {"error": "OutOfMemoryError: CUDA out of memory"},
                           "autocast": {"skipped": "no fixture images under x"}})
    assert rows == [("sam", "-", "failed", "OutOfMemoryError: CUDA out of memory"),
                    ("autocast vs fp32, pooled features", "-", "skipped", "no fixture images under x")]
    cpu = {"autocast": {**MEASURED["autocast"], "device": "cpu"}}
    (row,) = gpu.table_rows(cpu)
    assert "CPU measurement" in row[3] and "make bench-gpu" in row[3]


def test_guarded_turns_an_exception_into_an_error_entry():
    assert gpu.guarded(lambda: {"x": 1}) == {"x": 1}
    assert gpu.guarded(lambda: 1 / 0) == {"error": "ZeroDivisionError: division by zero"}


def test_batch_agreement_tells_bits_from_fp16_rounding():
    grid = torch.linspace(1, 2, 24).reshape(2, 3, 4)
    same = gpu.batch_agreement([grid, grid], [grid.clone(), grid.clone()])
    assert same == {"identical": True, "identical_fp16": True, "max_rel_diff": 0.0}
    one_ulp = grid.clone()
    one_ulp[0, 0, 0] = torch.nextafter(grid[0, 0, 0], torch.tensor(3.0))  # 1.0 -> 1 + 2^-23: same float16
    close = gpu.batch_agreement([grid, grid], [grid, one_ulp])
    assert close["identical"] is False and close["identical_fp16"] is True
    assert close["max_rel_diff"] == pytest.approx(2.0**-23 / 2)
    far = gpu.batch_agreement([grid], [grid + 0.01])
    assert far["identical"] is False and far["identical_fp16"] is False


def test_backbone_busy_prefers_the_reported_fraction():
    reported = {"a": {"backbone_busy": 0.5}, "b": {"summary": {"backbone_busy": 0.7}}}
    assert gpu.backbone_busy(reported, 1.0, 10.0) == (pytest.approx(0.6), "extraction summary")
    assert gpu.backbone_busy({"a": {}}, 2.5, 10.0) == (0.25, "sum of per-image backbone_seconds / wall time")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = backbones_vit.save_random_checkpoint("dinov2_vitl14", tmp_path_factory.mktemp("vit") / "l.pth")
    return path, backbones_vit.load_vit_backbone("dinov2_vitl14", path)


def _blocks(height: int, width: int, size: int) -> np.ndarray:
    """(R, H, W) bool masks: the image cut into size x size blocks."""
    labels = (np.arange(height)[:, None] // size) * (-(-width // size)) + np.arange(width)[None, :] // size
    return labels[None] == np.unique(labels)[:, None, None]


def test_autocast_pooled_difference_on_cpu(tiny_vit):
    _, backbone = tiny_vit
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)]
    masks = [_blocks(*image.shape[:2], 20) for image in images]
    # grids computed beforehand, in float32: autocast cannot touch them, so no difference at all
    grids = {id(image): backbone.features(image) for image in images}
    assert gpu.autocast_pooled_difference(lambda image: grids[id(image)], images, masks, 14, "cpu",
                                          torch.bfloat16) == 0.0
    # the real backbone under CPU bf16 autocast: a small, nonzero difference (7-bit mantissa)
    diff = gpu.autocast_pooled_difference(backbone.features, images, masks, 14, "cpu", torch.bfloat16)
    assert 1e-4 < diff < 0.05


def test_end_to_end_extraction_on_cpu_counts_images_and_busy_time(tiny_vit, tmp_path, monkeypatch):
    path, _ = tiny_vit
    monkeypatch.setitem(gpu.SIZES, "voc", (42, 56))
    monkeypatch.setattr(gpu, "EXTRACT_IMAGES", (3, 1))
    result = gpu.end_to_end("voc", path, torch.device("cpu"), tmp_path)
    assert result["dataset"] == "minivoc" and result["images"] == 4
    assert 0 < result["backbone_busy"] < 1 and result["images_per_s"] > 0


def test_fixture_images_are_the_voc_and_ade_samples():
    if not gpu.FIXTURES.is_dir():
        pytest.skip(f"../shared/fixtures is absent ({gpu.FIXTURES})")
    images = gpu.fixture_images()
    assert len(images) == 5  # 2 VOC + 3 ADE20K (../shared/fixtures/SOURCES.md)
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 for image in images)
