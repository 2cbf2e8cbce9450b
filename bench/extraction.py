"""The shared extraction stage: unit -> regions -> patch features -> pooled region vectors -> shards.

``python -m bench.extract`` (the entry point) hands the config to its task, whose extraction calls
``extract_splits`` (or ``Extractor`` and ``process_split`` directly). ``extract_splits`` extracts every shard set the experiment's cells need (each distinct ``extract.shard_dir``
once), for the train and val splits. Killed at any point, a re-run keeps verified shards
and redoes the rest. Under torchrun (RANK/WORLD_SIZE) or a SLURM array
(SLURM_ARRAY_TASK_ID/COUNT) each process writes its own shards; the last to finish
merges the manifest. ``extract.index``/``extract.count`` set the split explicitly.
Two extractions started on the same directory share it: each shard is written under its lock
by whichever process takes it first, the other waits for it and keeps it (``bench.shards``).

Mask and feature caches are keyed by the image's content (``bench.regions.cache.content_key``:
a sha256 of the decoded RGB pixels); a damaged cache entry is logged, recomputed and listed in
the manifest's ``cache_damaged``. Features that are not finite are refused, naming the image.
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
from tqdm import tqdm

from bench import shards
from bench.backbones import build_backbone
from bench.config import cell_configs
from bench.images import to_rgb8
from bench.backbones.cache import FeatureCache
from bench.regions.cache import MaskCache, content_key, mask_stats, run_source
from bench.pooling import pool_regions
from bench.pipeline import RemoteBackbone, RemoteRegions, Serial, WorkerPool, network_source_name
from bench.progress import bar_options
from bench.mask_crops import MaskCrops, bounding_boxes
from bench.rle import encode_rles
from bench.regions import build_regions
from bench.regions.sam_slic import SamSlicRegions
from datamodules.datasets import prepare_dataset, split_name

log = logging.getLogger("regionbench.extract")


class Extractor:
    """Builds one unit's shard sample from a region source, a backbone and a pooling mode; the task
    (a ``bench.tasks.base.Task``) reads the unit and adds its own members."""

    def __init__(self, cfg: DictConfig, task, remote=None):
        self.task = task  # a bench.tasks.base.Task: how a unit is read and which members it adds
        self.remote = remote  # in an extraction worker: the pipe to the process holding the networks
        self.regions, self.cache = None, None
        source = cfg.regions.source
        if source != "none":
            params = OmegaConf.to_container(cfg.regions.params.get(source, {}), resolve=True)
            self.regions = build_regions(source, **params) if remote is None else remote_regions(source, params, remote)
            self.cache = MaskCache(cfg.regions.cache, cfg.dataset.name, source, params)
            if isinstance(self.regions, SamSlicRegions):  # reuse (and fill) the SAM source's own cache
                self.sam_cache = MaskCache(cfg.regions.cache, cfg.dataset.name, params["sam"],
                                           params["sam_params"] or {})
        self.backbone_name = cfg.backbone.name
        self.backbone_params = OmegaConf.to_container(cfg.backbone.params.get(cfg.backbone.name, {}), resolve=True)
        self._backbone = None  # built on the first feature-cache miss: a warm cache never loads the weights
        self.features = FeatureCache(cfg.extract.feature_cache, cfg.dataset.name, self.backbone_name,
                                     self.backbone_params)
        self.pooling = cfg.pooling.mode
        self.patches = cfg.extract.patches
        self.num_classes = cfg.dataset.num_classes
        self.ignore_index = cfg.dataset.ignore_index

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = (build_backbone(self.backbone_name, **self.backbone_params) if self.remote is None
                              else RemoteBackbone(self.remote))
            self.features.set_meta(self._backbone.patch_size, self._backbone.embed_dim)
        return self._backbone

    @property
    def patch_size(self) -> int:
        meta = self.features.meta()
        return meta["patch_size"] if meta else self.backbone.patch_size

    @property
    def embed_dim(self) -> int:
        meta = self.features.meta()
        return meta["embed_dim"] if meta else self.backbone.embed_dim

    def grid(self, key: str, rgb: np.ndarray, image_key: str | None = None) -> tuple[torch.Tensor, bool, float]:
        """((d, h, w) patch features, whether they came from the cache, backbone seconds);
        float16-rounded either way. ``image_key``: ``content_key(key, rgb)`` if already known."""
        image_key = image_key or content_key(key, rgb)
        cached = self.features.get(image_key)
        if cached is not None:
            return cached, True, 0.0
        backbone = self.backbone  # built (weights loaded) outside the timed call
        start = time.perf_counter()
        with torch.inference_mode():
            grid = backbone.features(rgb)
        # a worker's backbone runs in another process: the forward pass's time there, not the wait
        seconds = getattr(backbone, "last_seconds", time.perf_counter() - start)
        return self.features.put(image_key, grid), False, seconds

    def masks(self, key: str, rgb: np.ndarray, label: np.ndarray,
              image_key: str | None = None) -> tuple[np.ndarray, dict]:
        """The image's region masks and statistics, from the mask cache or the generator."""
        height, width = rgb.shape[:2]
        if self.regions is None:
            return np.zeros((0, height, width), dtype=bool), {**mask_stats(np.zeros((0,)), height, width),
                                                              "seconds": 0.0, "peak_mem_mb": 0.0}
        image_key = image_key or content_key(key, rgb)
        # a generator that reads the label map (gt) depends on its content too
        cache_key = content_key(image_key, label) if getattr(self.regions, "needs_label", False) else image_key
        cached = self.cache.get(cache_key, height, width)
        if cached is not None:
            return cached
        if isinstance(self.regions, SamSlicRegions):
            masks, stats = self.sam_slic_masks(image_key, rgb)
        else:
            masks, stats = run_source(self.regions, rgb, label)
        if stats["empty_dropped"]:
            log.warning("%s: region source %s returned %d empty masks; dropped", key,
                        type(self.regions).__name__, stats["empty_dropped"])
        self.cache.put(cache_key, masks, stats)
        return masks, stats

    def sam_slic_masks(self, image_key: str, rgb: np.ndarray) -> tuple[np.ndarray, dict]:
        """SAM+SLIC from the SAM source's cached masks when present: a sweep runs SAM once."""
        height, width = rgb.shape[:2]
        cached = self.sam_cache.get(image_key, height, width)
        if cached is None:
            sam_masks, sam_stats = run_source(self.regions.sam, rgb, None)
            self.sam_cache.put(image_key, sam_masks, sam_stats)
        else:
            sam_masks, sam_stats = cached
        start = time.perf_counter()
        masks = self.regions.from_masks(sam_masks, rgb)
        stats = {**mask_stats(masks, height, width), "seconds": sam_stats["seconds"] + time.perf_counter() - start,
                 "peak_mem_mb": sam_stats["peak_mem_mb"], "empty_dropped": 0}
        return masks, stats

    def take_damaged(self) -> list[str]:
        """Cache entries found damaged (and recomputed) since the last call."""
        caches = [self.features, self.cache, getattr(self, "sam_cache", None)]
        return [path for cache in caches if cache is not None for path in cache.take_damaged()]

    def sample(self, key: str, image: np.ndarray, label) -> tuple[dict, dict]:
        """(region statistics, the encoded shard sample) for one unit: its image and its annotation
        (``label``: what the task's ``load_unit`` returned, e.g. a label map), which only the task reads
        (and a region source that needs it, ``gt``)."""
        rgb = to_rgb8(image)
        height, width = rgb.shape[:2]
        self.task.check_unit(key, rgb, label)
        clock = [time.perf_counter()]  # stage boundaries: features, regions, pooling, encode
        image_key = content_key(key, rgb)  # the caches' key: this image's pixels, not only its name
        grid, features_cached, backbone_seconds = self.grid(key, rgb, image_key)  # (d, h, w)
        p = self.patch_size
        d, h, w = grid.shape
        clock.append(time.perf_counter())
        masks, stats = self.masks(key, rgb, label, image_key)
        stats = {**stats, "features_cached": features_cached, "backbone_seconds": backbone_seconds}
        damaged = self.take_damaged()
        if damaged:
            stats["cache_damaged"] = damaged
        clock.append(time.perf_counter())
        boxes = bounding_boxes(masks)  # shared by pooling and the encoding
        if len(masks):
            feats = pool_regions(grid, torch.from_numpy(masks), p, mode=self.pooling, boxes=boxes).numpy()
        else:  # no regions (e.g. SAM found nothing): the image still flows through, all uncovered
            feats = np.zeros((0, d), dtype=np.float32)
        clock.append(time.perf_counter())
        meta = {"id": key, "height": height, "width": width, "patch_size": p, "grid": [h, w],
                "pad": [(h * p - height) // 2, (w * p - width) // 2],
                # timings stay out of the tar (in the shard entry) so shard bytes are reproducible
                "regions": stats["regions"], "coverage": stats["coverage"]}
        sample, extra_meta = self.encode(key, feats, masks, label, meta, grid.numpy() if self.patches else None, boxes)
        notes = note_counts(self.task, extra_meta)
        if notes:
            stats["notes"] = notes
        clock.append(time.perf_counter())
        stats["stage_seconds"] = dict(zip(("features", "regions", "pooling", "encode"), np.diff(clock).tolist()))
        return stats, sample

    def encode(self, key: str, feats: np.ndarray, masks: np.ndarray, annotation, meta: dict,
               patches: np.ndarray | None = None, boxes: np.ndarray | None = None) -> tuple[dict, dict]:
        """(the encoded shard sample, the task's extra meta) of one unit after pooling: the task's
        members (e.g. class histograms, label.png), the masks' COCO RLEs and areas. feats (R, d),
        masks (R, H, W) bool, boxes: their ``bounding_boxes`` if known. The masks are read once, as
        their bounding-box crops (``bench.mask_crops.MaskCrops``), which all of these share."""
        crops = MaskCrops.of(masks, boxes)
        members, extra_meta = self.task.unit_members(self, key, masks, annotation, crops)
        sample = shards.encode_sample(key, feats=feats, rles=encode_rles(masks, crops), areas=crops.areas,
                                      meta={**meta, **extra_meta}, patches=patches, members=members)
        return sample, extra_meta


def remote_regions(source: str, params: dict, remote):
    """A worker's region source: CPU sources built here, a SAM-family model asked of the process
    holding it (for SAM+SLIC: its SAM half; SLIC and the merge run here)."""
    from bench.regions import REGION_SOURCES

    if network_source_name(source):
        return RemoteRegions(remote)
    if source == "sam_slic":
        return build_regions(source, **params, build_sam=lambda name, **kwargs: RemoteRegions(remote))
    return REGION_SOURCES[source](**params)


def note_counts(task, meta: dict) -> dict[str, int]:
    """{note: count} of the task's ``notes`` that hold for a unit's meta (True counts 1; 0 is left out)."""
    counts = {name: int(value(meta)) for name, value in task.notes.items()}
    return {name: n for name, n in counts.items() if n}


def process_split(cfg: DictConfig, extractor: Extractor, split: str, index: int, count: int,
                  pool: "WorkerPool | None" = None) -> dict | None:
    """Write this process's shards of one split; merge the manifest if all shards exist. ``pool``:
    worker processes to make the samples (``extract.workers``); without one, all is done here."""
    items = extractor.task.units(cfg.dataset, split)
    load = extractor.task.load_unit(cfg)
    for item in items:
        shards.check_key(item.id)
    plan = (extractor.task.plan or (lambda units, n: shards.plan_shards([u.id for u in units], n)))(
        items, cfg.extract.samples_per_shard)
    by_id = {item.id: item for item in items}
    split_dir = Path(cfg.extract.shard_dir) / split_name(split)  # a list file's path: its own folder name
    members = sorted({*shards.COMMON, *extractor.task.members})
    if (split_dir / "manifest.json").is_file():  # another task's samples are not this task's shards
        held = sorted(shards.manifest_members(shards.load_json(split_dir / "manifest.json")))
        if held != members:
            raise shards.ShardError(f"{split_dir} holds shards whose samples hold {', '.join(held)}, not the "
                                    f"{', '.join(members)} of task {extractor.task.name}: set extract.shard_dir "
                                    "to another directory or delete this one")
    split_dir.mkdir(parents=True, exist_ok=True)
    mine = shards.my_shards(len(plan), index, count)
    known = {}  # shard name -> sha256 of the tar, verified or written by this process in this run
    for i in mine:
        digest = shards.verified_sha256(split_dir, shards.shard_name(i), plan[i])
        if digest is not None:
            known[shards.shard_name(i)] = digest
    todo = [i for i in mine if shards.shard_name(i) not in known]
    units = [by_id[key] for i in todo for key in plan[i]]
    workers = pool.workers(cfg.extract.workers, len(units)) if pool is not None else None
    log.info("%s/%s: %d shards, %d mine, %d to write (%s)", cfg.extract.shard_dir, split, len(plan), len(mine),
             len(todo), f"{workers.count} worker processes" if workers else "in this process")
    bar = tqdm(total=len(units), desc=f"extract {split}", unit="img", **bar_options(),
               disable=not cfg.extract.progress, file=sys.stdout)
    made = workers.begin(extractor, cfg, split) if workers else Serial(extractor, load)
    started = time.perf_counter()

    def write(i: int) -> bool:
        """Write shard i unless another process has (called holding its lock); True if written."""
        name = shards.shard_name(i)
        digest = shards.verified_sha256(split_dir, name, plan[i])
        if digest is not None:  # another extraction of this directory wrote it meanwhile
            known[name] = digest
            made.drop(plan[i])
            bar.update(len(plan[i]))
            return False
        shards.remove_shard_orphans(split_dir, name)
        skipped: list[dict] = []
        stats: dict[str, dict] = {}
        busy = [0.0]  # seconds spent waiting for samples; the rest of write_shard's time is writing

        def samples(ids=plan[i], skipped=skipped, stats=stats, busy=busy):
            for key in ids:
                start = time.perf_counter()
                try:
                    result = made.take(key)
                except shards.NonFiniteFeatures as err:
                    raise shards.NonFiniteFeatures(f"{by_id[key].image_path}: {err}") from None
                busy[0] += time.perf_counter() - start
                bar.update(1)
                if result[0] == "skipped":
                    skipped.append(result[1])
                    continue
                stats[key], sample = result[1], result[2]
                yield sample

        tar = split_dir / f"{name}.tar"
        start = time.perf_counter()
        keys, digest, size = shards.write_shard_hashed(tar, samples())
        shards.write_entry(split_dir, shards.ShardEntry(
            name=name, count=len(keys), keys=keys, sha256=digest, bytes=size,
            regions=sum(v["regions"] for v in stats.values()), stats=stats, skipped=skipped,
            write_seconds=time.perf_counter() - start - busy[0]))
        known[name] = digest
        return True

    made.schedule(units)
    written = shards.write_under_locks(split_dir, todo, write)
    made.finish()
    bar.close()
    if todo:
        seconds = time.perf_counter() - started
        log.info("%s: wrote %d shards (%d done by another process), %d images in %.1f s: %.2f images/s, "
                 "backbone busy %.0f%% of the time (%s)", split_dir, written, len(todo) - written, len(units), seconds,
                 len(units) / max(seconds, 1e-9), 100 * made.served_seconds / max(seconds, 1e-9),
                 f"{workers.count} worker processes" if workers else "in this process")
    info = {
        "split": split,
        "task": extractor.task.name,
        "members": members,
        "feature_dim": extractor.embed_dim,
        "num_classes": cfg.dataset.num_classes,
        "has_patches": bool(cfg.extract.patches),
        "feature_cache": extractor.features.size(),
        "config": {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                   if k in ("dataset", "regions", "backbone", "pooling", "extract")},
    }
    info["config"]["extract"].pop("index", None), info["config"]["extract"].pop("count", None)
    manifest = shards.merge_manifest(split_dir, plan, info, known)
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


def extract_splits(cfg: DictConfig, splits_of, task) -> dict[str, dict]:
    """Region shards of the splits ``splits_of(cell config)`` names, for every selected cell (each
    distinct ``extract.shard_dir``/split once); returns {shard_dir/split: manifest}."""
    index, count = process_index(cfg)
    done: dict[str, dict] = {}
    with WorkerPool() as pool:
        for ccfg in cell_configs(cfg).values():
            prepare_dataset(ccfg.dataset)
            extractor = None
            for split in splits_of(ccfg):
                where = f"{ccfg.extract.shard_dir}/{split}"
                if where in done:
                    continue
                extractor = extractor or Extractor(ccfg, task)
                start = time.perf_counter()
                done[where] = process_split(ccfg, extractor, split, index, count, pool)
                log.info("%s done in %.1f s", where, time.perf_counter() - start)
    return done
