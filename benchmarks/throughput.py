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


def extraction(num_train: int = 64, num_val: int = 16) -> dict:
    """Images/s of a fresh quickstart region-cell extraction and its per-stage ms per image."""
    from bench import shards
    from bench.config import cell_configs, load_config
    from bench.extract import extract
    from datamodules.datasets import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="regionbench-extract-") as tmp:
        cfg = load_config(["experiment=quickstart", "cell=region_linear/minivoc", f"paths.data_root={tmp}",
                           f"paths.results_root={tmp}/results", f"dataset.generate.num_train={num_train}",
                           f"dataset.generate.num_val={num_val}", "regions.cache=null",
                           "extract.feature_cache=null", "extract.progress=false"])
        (ccfg,) = cell_configs(cfg).values()
        prepare_dataset(ccfg.dataset)  # generating MiniVOC is not part of extraction
        start = time.perf_counter()
        manifests = extract(cfg)
        wall = time.perf_counter() - start
        stage = dict.fromkeys(STAGES, 0.0)
        images = 0
        for where, manifest in manifests.items():
            split_dir = Path(where)
            for entry in manifest["shards"]:
                full = shards.read_entry(split_dir, entry["name"])
                stage["write"] += full.write_seconds
                for stats in full.stats.values():
                    images += 1
                    for key, seconds in stats["stage_seconds"].items():
                        stage[key] += seconds
    ms = {k: 1000 * v / images for k, v in stage.items()}
    ms["other"] = 1000 * wall / images - sum(ms.values())
    return {"images": images, "seconds": wall, "images_per_s": images / wall, "ms_per_image": ms,
            "config": "quickstart region_linear/minivoc: MiniVOC 320x240, SLIC 300, colortexture, mean pooling"}


def regions_per_image(manifest: dict) -> float:
    return float(np.mean([s["regions"] / max(s["count"], 1) for s in manifest["shards"]]))
