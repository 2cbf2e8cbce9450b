"""Throughput without a reference: decoder training steps and end-to-end extraction.

Decoders: every entry of ``models.decoders.DECODERS``, built with its own defaults for 1024-d
features and 150 classes, timed over full training steps in float32 on the CPU (forward,
``weighted_cross_entropy`` with area weights, backward, AdamW step) on in-memory batches
shaped as the DataModule delivers them: 1024 shuffled regions for ``train_unit="region"``
decoders, 16 images x 100 regions (with ``image_index``) for ``train_unit="image"`` ones.
Data loading is measured separately (benchmarks/shards.py). A decoder that fails to build or
step is reported with its error, never skipped.

Matmul precision: one (1024 x 1024) @ (1024 x 1000) product in float32, bfloat16 and float16
(whether half-precision compute pays on this CPU; features are stored as float16 either way).

Extraction: ``bench.extract.extract`` on the quickstart experiment's region cell (MiniVOC
320x240, SLIC 300 components, the colour-texture backbone, mean pooling), with the mask and
feature caches off so every stage really runs; per-stage seconds come from the shard entries
(``stage_seconds`` per image, ``write_seconds`` per shard).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.measure import median_seconds

DIM, CLASSES = 1024, 150


def decoder_batch(unit: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images, per_image = (16, 100) if unit == "image" else (1, 1024)
    count = images * per_image
    hist = torch.randint(0, 50, (count, CLASSES + 1), generator=generator)
    hist[torch.arange(count), torch.randint(0, CLASSES, (count,), generator=generator)] += 2000  # a clear majority
    return {"feats": torch.randn(count, DIM, generator=generator), "hist": hist,
            "areas": hist.sum(dim=1),
            "image_index": torch.arange(images).repeat_interleave(per_image) if unit == "image" else None}


def decoder_step_seconds(name: str, runs: int = 10, warmup: int = 2) -> dict:
    """Median seconds and regions/s of one training step of decoder ``name``."""
    from bench.labels import region_labels
    from models.decoders import build_decoder
    from models.segmenter import weighted_cross_entropy

    torch.manual_seed(0)
    decoder = build_decoder(name, in_dim=DIM, num_classes=CLASSES)
    unit = getattr(decoder, "train_unit", "region")
    batch = decoder_batch(unit)
    labels = region_labels(batch["hist"])
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3, weight_decay=0.01)
    decoder.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = decoder(batch["feats"], batch["image_index"])
        weighted_cross_entropy(logits, labels, batch["areas"], "area").backward()
        optimizer.step()

    median, times, _ = median_seconds(step, runs, warmup=warmup)
    regions = len(batch["feats"])
    return {"decoder": name, "unit": unit, "regions_per_step": regions, "seconds": median, "runs": times,
            "regions_per_s": regions / median,
            "parameters": sum(p.numel() for p in decoder.parameters())}


def decoder_rows(runs: int = 10, warmup: int = 2) -> list[dict]:
    from models.decoders import DECODERS

    rows = []
    for name in DECODERS:
        try:
            rows.append(decoder_step_seconds(name, runs, warmup))
        except Exception as err:  # reported in the table, not skipped
            rows.append({"decoder": name, "error": f"{type(err).__name__}: {err}"})
    return rows


def matmul_rows(runs: int = 5) -> list[dict]:
    """Seconds of one (1024 x 1024) @ (1024 x 1000) matmul (a 1024-region batch through the MLP's
    1000-wide layer) in float32, bfloat16 and float16, and each one's time over float32's."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, DIM, generator=generator), torch.randn(DIM, 1000, generator=generator)
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x, y = a.to(dtype), b.to(dtype)
        median, times, _ = median_seconds(lambda: x @ y, runs)
        rows.append({"dtype": str(dtype).removeprefix("torch."), "seconds": median, "runs": times})
    for row in rows:
        row["vs_float32"] = row["seconds"] / rows[0]["seconds"]
    return rows


STAGES = ("decode", "regions", "features", "pooling", "encode", "write")


def pre_issue_17():
    """The extraction code as it was before issue 17, patched in for the reference run: the one-hot
    class histogram, pycocotools' RLEs on an (H, W, R) Fortran copy, ``masks.sum`` areas, no shared
    mask crops, the old bounding boxes for pooling (benchmarks/post_pooling.py keeps those
    functions). Runs with extract.workers=0."""
    from contextlib import ExitStack
    from unittest import mock

    from bench import extraction
    from bench.tasks import segmentation
    from benchmarks import post_pooling

    stack = ExitStack()
    stack.enter_context(mock.patch.object(segmentation, "class_histogram",
                                          lambda masks, label, c, ignore, crops=None:
                                          post_pooling.class_histogram_reference(masks, label, c, ignore)))
    stack.enter_context(mock.patch.object(extraction, "encode_rles",
                                          lambda masks, crops=None: post_pooling.encode_rles_reference(masks)))
    no_crops = SimpleNamespace(of=lambda masks, boxes=None: SimpleNamespace(areas=masks.sum(axis=(1, 2))))
    stack.enter_context(mock.patch.object(extraction, "MaskCrops", no_crops))
    stack.enter_context(mock.patch.object(extraction, "bounding_boxes", post_pooling.bounding_boxes_reference))
    return stack


def extract_once(tmp: str, run: str, overrides: list[str]) -> dict:
    """One fresh extraction of the quickstart region cell into ``tmp/run``; images/s, the backbone's
    busy fraction (its seconds over the wall time), CPU ms per image per stage, the tars' sha256."""
    import hashlib

    from bench import shards
    from bench.config import load_config
    from bench.extract import extract

    cfg = load_config(["experiment=quickstart", "cell=region_linear/minivoc", f"paths.data_root={tmp}/{run}",
                       f"dataset.root={tmp}/minivoc", f"paths.results_root={tmp}/results", "regions.cache=null",
                       "extract.feature_cache=null", "extract.progress=false", *overrides])
    start = time.perf_counter()
    manifests = extract(cfg)
    wall = time.perf_counter() - start
    stage, images, backbone, digests = dict.fromkeys(STAGES, 0.0), 0, 0.0, {}
    for where, manifest in manifests.items():
        split_dir = Path(where)
        for entry in manifest["shards"]:
            full = shards.read_entry(split_dir, entry["name"])
            stage["write"] += full.write_seconds
            digests[f"{split_dir.name}/{entry['name']}"] = hashlib.sha256((split_dir / f"{entry['name']}.tar")
                                                                          .read_bytes()).hexdigest()
            for stats in full.stats.values():
                images += 1
                backbone += stats["backbone_seconds"]
                for key, seconds in stats["stage_seconds"].items():
                    stage[key] += seconds
    return {"images": images, "seconds": wall, "images_per_s": images / wall, "backbone_busy": backbone / wall,
            "ms_per_image": {k: 1000 * v / images for k, v in stage.items()}, "sha256": digests}


def extraction(num_train: int = 300, num_val: int = 100, workers="auto") -> dict:
    """The quickstart default's region-cell extraction (MiniVOC 320x240, 300 + 100 images, SLIC, the
    colour-texture backbone, mean pooling; caches off so every stage runs): ours (extract.workers=auto)
    against the pre-issue-17 code in one process (``pre_issue_17``), in this process, on the same
    images. The two must write the same bytes."""
    from bench.config import load_config
    from datamodules.datasets import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="regionbench-extract-") as tmp:
        sizes = [f"dataset.generate.num_train={num_train}", f"dataset.generate.num_val={num_val}"]
        prepare_dataset(load_config(["experiment=quickstart", f"dataset.root={tmp}/minivoc", *sizes]).dataset)
        with pre_issue_17():
            reference = extract_once(tmp, "reference", [*sizes, "extract.workers=0"])
        ours = extract_once(tmp, "ours", [*sizes, f"extract.workers={workers}"])
    if ours.pop("sha256") != reference.pop("sha256"):
        raise AssertionError("the pipelined extraction wrote other bytes than the pre-issue-17 code")
    return {**ours, "reference": reference, "speedup": ours["images_per_s"] / reference["images_per_s"],
            "config": "quickstart region_linear/minivoc: MiniVOC 320x240, SLIC 300, colortexture, mean pooling"}


def regions_per_image(manifest: dict) -> float:
    return float(np.mean([s["regions"] / max(s["count"], 1) for s in manifest["shards"]]))
