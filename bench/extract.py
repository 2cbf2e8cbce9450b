"""Extract region shards: image -> regions -> patch features -> pooled region vectors.

    python -m bench.extract experiment=quickstart [key=value ...]

Extracts every shard set the experiment's cells need (each distinct ``extract.shard_dir``
once), for the train and val splits. Killed at any point, a re-run keeps verified shards
and redoes the rest. Under torchrun (RANK/WORLD_SIZE) or a SLURM array
(SLURM_ARRAY_TASK_ID/COUNT) each process writes its own shards; the last to finish
merges the manifest. ``extract.index``/``extract.count`` set the split explicitly.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pycocotools import mask as mask_utils
from tqdm import tqdm

from bench import shards
from bench.backbones import build_backbone
from bench.config import cell_configs, load_config
from bench.images import to_rgb8
from bench.labels import class_histogram
from bench.pooling import pool_regions
from bench.regions import build_regions
from datamodules.datasets import dataset_items, prepare_dataset
from datamodules.voc import CorruptImageError, load_image, load_label

log = logging.getLogger("regionbench.extract")


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(R, H, W) bool -> COCO RLEs with str counts (JSON-able)."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def decode_rles(rles: list[dict]) -> np.ndarray:
    """COCO RLEs -> (R, H, W) bool."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    coded = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    return mask_utils.decode(coded).transpose(2, 0, 1).astype(bool)


class Extractor:
    """Builds one image's shard sample from a region source, a backbone and a pooling mode."""

    def __init__(self, cfg: DictConfig):
        self.regions = None
        if cfg.regions.source != "none":
            self.regions = build_regions(cfg.regions.source, **cfg.regions.params.get(cfg.regions.source, {}))
        self.backbone = build_backbone(cfg.backbone.name, **cfg.backbone.params.get(cfg.backbone.name, {}))
        self.pooling = cfg.pooling.mode
        self.patches = cfg.extract.patches
        self.num_classes = cfg.dataset.num_classes
        self.ignore_index = cfg.dataset.ignore_index

    def sample(self, key: str, image: np.ndarray, label: np.ndarray) -> tuple[int, dict]:
        """(number of regions, the encoded shard sample) for one image."""
        rgb = to_rgb8(image)
        height, width = rgb.shape[:2]
        if label.shape != (height, width):
            raise ValueError(f"label of '{key}' is {label.shape} but its image is {(height, width)}")
        with torch.inference_mode():
            grid = self.backbone.features(rgb)  # (d, h, w)
        p = self.backbone.patch_size
        d, h, w = grid.shape
        if self.regions is not None:
            masks = self.regions.generate(rgb)
            keep = masks.reshape(len(masks), -1).any(axis=1)
            if not keep.all():  # generators should never return empty masks: say so, then drop them
                log.warning("%s: region source %s returned %d empty masks; dropped", key,
                            type(self.regions).__name__, int((~keep).sum()))
                masks = masks[keep]
            feats = pool_regions(grid, torch.from_numpy(masks), p, mode=self.pooling).numpy()
        else:
            masks = np.zeros((0, height, width), dtype=bool)
            feats = np.zeros((0, d), dtype=np.float32)
        meta = {"id": key, "height": height, "width": width, "patch_size": p, "grid": [h, w],
                "pad": [(h * p - height) // 2, (w * p - width) // 2]}
        return len(masks), shards.encode_sample(
            key, feats=feats, rles=encode_rles(masks) if len(masks) else [],
            areas=masks.sum(axis=(1, 2)),
            hist=class_histogram(masks, label, self.num_classes, self.ignore_index)
            if len(masks) else np.zeros((0, self.num_classes + 1), np.int32),
            label=label, meta=meta, patches=grid.numpy() if self.patches else None)


def process_split(cfg: DictConfig, extractor: Extractor, split: str, index: int, count: int) -> dict | None:
    """Write this process's shards of one split; merge the manifest if all shards exist."""
    items = dataset_items(cfg.dataset, split)
    for item in items:
        shards.check_key(item.id)
    plan = shards.plan_shards([item.id for item in items], cfg.extract.samples_per_shard)
    by_id = {item.id: item for item in items}
    split_dir = Path(cfg.extract.shard_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    mine = shards.my_shards(len(plan), index, count)
    todo = [i for i in mine if not shards.shard_is_verified(split_dir, shards.shard_name(i), plan[i])]
    log.info("%s/%s: %d shards, %d mine, %d to write", cfg.extract.shard_dir, split, len(plan), len(mine), len(todo))
    bar = tqdm(total=sum(len(plan[i]) for i in todo), desc=f"extract {split}", unit="img",
               disable=not cfg.extract.progress, file=sys.stdout)
    for i in todo:
        skipped: list[dict] = []
        regions = [0]

        def samples(ids=plan[i], skipped=skipped, regions=regions):
            for key in ids:
                item = by_id[key]
                try:
                    image = load_image(item.image_path)
                except CorruptImageError as err:
                    log.warning("skipping unreadable image %s: %s", item.image_path, err)
                    skipped.append({"id": key, "path": str(item.image_path), "reason": str(err)})
                    bar.update(1)
                    continue
                num_regions, sample = extractor.sample(key, image, load_label(item.label_path))
                regions[0] += num_regions
                yield sample
                bar.update(1)

        name = shards.shard_name(i)
        tar = split_dir / f"{name}.tar"
        keys = shards.write_shard(tar, samples())
        shards.write_entry(split_dir, shards.ShardEntry(
            name=name, count=len(keys), keys=keys, sha256=shards.sha256(tar), bytes=tar.stat().st_size,
            regions=regions[0], skipped=skipped))
    bar.close()
    info = {
        "split": split,
        "feature_dim": extractor.backbone.embed_dim,
        "num_classes": cfg.dataset.num_classes,
        "has_patches": bool(cfg.extract.patches),
        "config": {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                   if k in ("dataset", "regions", "backbone", "pooling", "extract")},
    }
    info["config"]["extract"].pop("index", None), info["config"]["extract"].pop("count", None)
    manifest = shards.merge_manifest(split_dir, plan, info)
    if manifest is None:
        log.info("%s: waiting for other processes' shards; the last one writes manifest.json", split_dir)
    elif manifest["skipped"]:
        log.warning("%s: %d images skipped: %s", split_dir, len(manifest["skipped"]),
                    ", ".join(s["path"] for s in manifest["skipped"]))
    return manifest


def process_index(cfg: DictConfig) -> tuple[int, int]:
    """(index, count) of this process: config, else torchrun, else a SLURM array, else (0, 1)."""
    if cfg.extract.count is not None:
        return int(cfg.extract.index or 0), int(cfg.extract.count)
    env = os.environ
    if "WORLD_SIZE" in env:
        return int(env.get("RANK", 0)), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def extract(cfg: DictConfig) -> dict[str, dict]:
    """Extract every shard set the selected cells need; returns {shard_dir/split: manifest}."""
    index, count = process_index(cfg)
    done: dict[str, dict] = {}
    for ccfg in cell_configs(cfg).values():
        prepare_dataset(ccfg.dataset)
        extractor = None
        for split in (ccfg.dataset.train_split, ccfg.dataset.val_split):
            where = f"{ccfg.extract.shard_dir}/{split}"
            if where in done:
                continue
            extractor = extractor or Extractor(ccfg)
            start = time.perf_counter()
            done[where] = process_split(ccfg, extractor, split, index, count)
            log.info("%s done in %.1f s", where, time.perf_counter() - start)
    return done


def main(argv: list[str] | None = None) -> dict[str, dict]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    return extract(cfg)


if __name__ == "__main__":
    main()
