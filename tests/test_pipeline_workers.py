"""Extraction with worker processes (bench/pipeline.py): the same shard bytes and records as one
process, errors raised where the extraction runs, a dead worker named. The kill -9 and index/count
guarantees with workers are in tests/test_shards.py."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.config import cell_config
from bench.extract import extract
from bench.pipeline import worker_count
from bench.shards import load_manifest
from tests.conftest import tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def tars(split_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(split_dir.glob("shard-*.tar"))}


def shard_dir(cfg, cell: str = "region_linear/minivoc") -> Path:
    return Path(cell_config(cfg, cell).extract.shard_dir)


def test_worker_count_auto_runs_small_splits_here_and_refuses_nonsense():
    assert worker_count("auto", 10) == 0 and worker_count(0, 1000) == 0 and worker_count(3, 1) == 3
    assert 1 <= worker_count("auto", 1000) <= 8
    for bad in (-1, "two", 1.5, True):
        with pytest.raises(ValueError, match="extract.workers"):
            worker_count(bad, 100)


def test_workers_write_the_bytes_of_one_process_for_patch_and_region_cells(tiny_root, tmp_path):
    """Both quickstart cells (patch grids, SLIC regions) made by two workers: every tar and every
    shard's stats keys equal the one-process extraction's (tiny_root, made in this process)."""
    cfg = tiny_config(tiny_root, "extract.workers=2", f"paths.data_root={tmp_path}", "extract.feature_cache=null",
                      "regions.cache=null", f"dataset.root={tiny_config(tiny_root).dataset.root}")
    extract(cfg)
    for cell in ("patch_linear/minivoc", "region_linear/minivoc"):
        for split in ("train", "val"):
            ours, theirs = shard_dir(cfg, cell) / split, shard_dir(tiny_config(tiny_root), cell) / split
            assert tars(ours) == tars(theirs) and len(tars(ours)) >= 2
            mine, ref = load_manifest(ours), load_manifest(theirs)
            assert [s["keys"] for s in mine["shards"]] == [s["keys"] for s in ref["shards"]]
            assert mine["skipped"] == ref["skipped"] == []


def test_sam_runs_in_the_extraction_process_and_slic_in_the_workers(tmp_path):
    """SAM+SLIC with a tiny random-weight SAM: the workers' SAM is a proxy to this process (the SLIC
    half and the merge run in the worker), and two workers write what one process writes."""
    from bench.extraction import Extractor
    from bench.pipeline import Remote, RemoteRegions
    from bench.regions.sam import save_random_checkpoint
    from bench.regions.sam_slic import SamSlicRegions
    from bench.tasks import get_task

    checkpoint = save_random_checkpoint("sam", "vit_test", tmp_path / "sam_vit_test.pth")
    sam = ["dataset.max_images=3", "regions.params.sam.model_type=vit_test", f"regions.params.sam.checkpoint={checkpoint}",
           "regions.params.sam.points_per_side=2", "regions.params.sam.pred_iou_thresh=0.0",
           "regions.params.sam.stability_score_thresh=0.0", "cell=region_linear/minivoc", "regions.source=sam_slic",
           "regions.cache=null", "extract.feature_cache=null"]
    serial = tiny_config(tmp_path / "serial", *sam, "extract.workers=0")
    extract(serial)
    workers = tiny_config(tmp_path / "workers", *sam, "extract.workers=2",
                          f"dataset.root={serial.dataset.root}")
    extract(workers)
    for split in ("train", "val"):
        assert tars(shard_dir(workers) / split) == tars(shard_dir(serial) / split)
    proxy = Extractor(cell_config(workers, "region_linear/minivoc"), get_task("segmentation"), remote=Remote(None))
    assert isinstance(proxy.regions, SamSlicRegions) and isinstance(proxy.regions.sam, RemoteRegions)


def test_a_corrupt_image_is_skipped_and_recorded_by_a_worker_as_by_one_process(tmp_path):
    from datamodules.datasets import prepare_dataset

    records = {}
    for workers in (0, 2):
        cfg = tiny_config(tmp_path / f"w{workers}", "cell=region_linear/minivoc", f"extract.workers={workers}")
        prepare_dataset(cfg.dataset)
        bad = Path(cfg.dataset.root) / "VOCdevkit/VOC2012/JPEGImages/mini_000013.jpg"  # a val image
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
        extract(cfg)
        records[workers] = load_manifest(shard_dir(cfg) / "val")["skipped"]
        assert tars(shard_dir(cfg) / "val")
    assert [s["id"] for s in records[2]] == ["mini_000013"]
    assert records[2][0]["path"].endswith("/w2/data/minivoc/VOCdevkit/VOC2012/JPEGImages/mini_000013.jpg")
    assert records[2][0]["message"] == records[0][0]["message"].replace("/w0/", "/w2/")
    assert [sorted(s) for s in records[2]] == [sorted(s) for s in records[0]] and records[2][0]["reason"]


def test_an_error_in_a_worker_is_raised_here_with_its_type_and_message(tmp_path):
    from datamodules.datasets import prepare_dataset

    cfg = tiny_config(tmp_path, "cell=region_linear/minivoc", "extract.workers=2")
    prepare_dataset(cfg.dataset)
    label = Path(cfg.dataset.root) / "VOCdevkit/VOC2012/SegmentationClass/mini_000002.png"
    pixels = np.array(Image.open(label))
    pixels[0, 0] = 60  # not a VOC class, not the ignore index
    Image.fromarray(pixels).save(label)
    with pytest.raises(ValueError, match=r"mini_000002.png: label values \[60\] are outside VOC"):
        extract(cfg)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_a_worker_killed_by_the_system_stops_the_extraction_naming_it(tiny_root, tmp_path):
    """A worker SIGKILLed (as the kernel's OOM killer does): the extraction stops with an error that
    names the worker and its units, instead of waiting for ever."""
    target = tmp_path / "shards"
    args = [sys.executable, "-m", "bench.extract", "experiment=quickstart", "cell=region_linear/minivoc",
            *tiny_overrides(tiny_root), f"paths.data_root={tmp_path / 'data'}", f"extract.shard_dir={target}",
            "extract.workers=2", "regions.cache=null", "dataset.generate.num_train=60"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(target.glob("train/*.tar.tmp")):
        time.sleep(0.02)
    workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    spawned = [pid for pid in workers if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert spawned, workers
    os.kill(spawned[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "extraction worker regionbench-extract-" in err and "died (exit code -9)" in err, err[-2000:]


@pytest.mark.slow  # ~13 s; batching is off by default (extract.backbone_batch=1)
def test_feature_calls_that_arrive_together_are_one_batch_with_the_same_bytes(tiny_root, tmp_path, monkeypatch):
    """extract.backbone_batch=4 with three workers: the backbone sees batches (features_batch is
    called with several images) and the shards equal the one-process ones. The backbone is made slow
    (as a large one is: 0.2 s a call) so that the workers' calls queue up while it runs."""
    from bench.backbones import ColorTextureBackbone

    sizes = []
    single, batched = ColorTextureBackbone.features, ColorTextureBackbone.features_batch

    def slow(self, image):
        time.sleep(0.2)
        return single(self, image)

    def counting(self, images):
        sizes.append(len(images))
        time.sleep(0.2)
        return batched(self, images)

    monkeypatch.setattr(ColorTextureBackbone, "features", slow)
    monkeypatch.setattr(ColorTextureBackbone, "features_batch", counting)
    cfg = tiny_config(tiny_root, "extract.workers=3", "extract.backbone_batch=4", f"paths.data_root={tmp_path}",
                      "extract.feature_cache=null", "regions.cache=null", "cell=region_linear/minivoc",
                      f"dataset.root={tiny_config(tiny_root).dataset.root}")
    extract(cfg)
    assert sizes and max(sizes) > 1, sizes
    for split in ("train", "val"):
        assert tars(shard_dir(cfg) / split) == tars(shard_dir(tiny_config(tiny_root)) / split)


def test_auto_shares_the_cores_among_the_extractions_started_on_one_machine(monkeypatch):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more ranks than cores: still one worker each
    assert worker_count("auto", 1000) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1(x2)")  # SLURM's repeated-count syntax
    assert worker_count("auto", 1000) == min(cores, 8)


@pytest.mark.slow  # ~18 s; the same split as extract.index/count, tested with workers in tests/test_shards.py
def test_torchrun_ranks_with_workers_write_the_bytes_of_one_process(tiny_root, tmp_path):
    """torchrun --nproc_per_node=2, each rank with two workers: rank r writes shards r, r+2, ...; the
    last merges the manifest; the tars equal the one-process extraction's."""
    target = tmp_path / "shards"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                          "-m", "bench.extract", "experiment=quickstart", "cell=region_linear/minivoc",
                          *tiny_overrides(tiny_root), f"extract.shard_dir={target}", "extract.workers=2"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    reference = shard_dir(tiny_config(tiny_root))
    for split in ("train", "val"):
        assert tars(target / split) == tars(reference / split)
        assert load_manifest(target / split)["num_samples"] == load_manifest(reference / split)["num_samples"]
