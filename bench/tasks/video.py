"""Activity classification of video clips (Kinetics-400, MiniKinetics): the paper's Table 9.

Unit: one clip, listed by its split's csv (``datamodules.kinetics``). Every listed clip is a unit; a
one-off pre-scan (worker processes) records which are missing or undecodable, and those are skipped
by extraction, counted and named in the manifest's ``skipped`` and in metrics.json. A decodable clip
becomes ``dataset.num_frames`` evenly spaced frames (decoded exactly, optionally resized to
``dataset.short_side``), each frame its regions, each region one vector. Shard members beyond the
common region members (regions of all frames, frame after frame):

    frame.npy   (N,) int16          the frame index of each region
    pos2d.npy   (N, 6) float32      normalised centroid (x, y) and box (x0, y0, x1, y1) in its frame
    cls.npy     (T, d) float16      each frame's global feature (a ViT's class token)

``meta.json`` gains ``label`` (class id), ``label_name``, ``frames``, ``pts`` (seconds) and
``tokens_cut``. A clip keeps at most ``dataset.max_tokens`` regions: the smallest are cut first
(ties: later frame, then later region first), and the number cut is counted in the manifest
(``notes.tokens_cut``). Models (``models.video``): the region transformer and the CLS linear probe.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from bench import runs, shards
from bench.geometry import region_positions_2d
from bench.images import to_rgb8
from bench.pooling import pool_regions
from bench.mask_crops import MaskCrops, bounding_boxes
from bench.rle import encode_rles
from bench.tasks.base import Task
from datamodules import kinetics

MEMBERS = ("frame.npy", "pos2d.npy", "cls.npy")
REGION_FIELDS = ("frame", "pos2d")
UNIT_FIELDS = ("cls",)


def prescan_path(dataset: DictConfig, split: str) -> Path:
    return Path(dataset.prescan) / f"{split}.json"


def units(dataset: DictConfig, split: str) -> list:
    """Every clip the split's csv lists (capped at ``dataset.max_images``): those found in csv order,
    then the missing ones; the pre-scan of the split is run (or brought up to date) first."""
    found, missing = kinetics.list_clips(dataset.root, split)
    clips = found + missing  # a missing clip is a unit too: skipped, counted and named, never silently
    clips = clips[: dataset.max_images] if dataset.max_images else clips
    kinetics.prescan(clips, prescan_path(dataset, split), min_frames=int(dataset.num_frames))
    return clips


def load_unit(cfg: DictConfig):
    """clip -> (frames (T, H, W, 3) uint8, annotation {label, label_name, pts}); a clip the pre-scan
    found missing or undecodable raises ``CorruptImageError`` (extraction counts, names and skips it)."""
    from datamodules.voc import CorruptImageError

    dataset = cfg.dataset
    scans: dict[str, dict] = {}

    def load(clip) -> tuple[np.ndarray, dict]:
        if clip.split not in scans:
            scans[clip.split] = json.loads(prescan_path(dataset, clip.split).read_text())["clips"]
        scan = scans[clip.split].get(clip.id)
        if scan is None or not scan["decodable"]:
            raise CorruptImageError(clip.path, scan["reason"] if scan else "not pre-scanned")
        frames, pts = kinetics.sample_frames(clip.path, int(dataset.num_frames), dataset.short_side)
        return frames, {"label": clip.label_id, "label_name": clip.label, "pts": [float(t) for t in pts],
                        "max_tokens": int(dataset.max_tokens)}
    return load


def check_unit(key: str, frames: np.ndarray, annotation: dict) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip '{key}': frames must be (T, H, W, 3), got {frames.shape}")


def cap_tokens(areas: np.ndarray, frame: np.ndarray, max_tokens: int) -> np.ndarray:
    """areas (N,), frame (N,) -> sorted indices of the regions kept: all if N <= max_tokens, else the
    ``max_tokens`` largest (ties: earlier frame, then earlier region kept)."""
    n = len(areas)
    if n <= max_tokens:
        return np.arange(n)
    order = np.lexsort((np.arange(n), frame, -areas.astype(np.int64)))  # largest first, then earliest
    return np.sort(order[:max_tokens])


def global_feature(extractor, rgb: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """A frame's (d,) global feature: from its patch grid when the backbone defines it so (no second
    pass; the colour-texture descriptor), else the backbone's class token (``global_feature``)."""
    from bench.backbones import BACKBONES  # here: loading the task registry must not load the backbones

    factory = BACKBONES[extractor.backbone_name]
    if hasattr(factory, "global_from_grid"):
        return factory.global_from_grid(grid).numpy()
    with torch.inference_mode():
        return extractor.backbone.global_feature(rgb).float().numpy()


def sample_clip(extractor, key: str, frames: np.ndarray, annotation: dict) -> tuple[dict, dict]:
    """(statistics, encoded shard sample) of one clip: each frame's regions pooled as for images,
    every frame's global feature, the regions of all frames capped at ``dataset.max_tokens``."""
    from bench.extraction import note_counts

    check_unit(key, frames, annotation)
    feats, masks, frame_of, cls, stats = [], [], [], [], []
    for t, image in enumerate(frames):
        rgb = to_rgb8(image)
        frame_key = f"{key}_f{t}"
        start = time.perf_counter()
        grid, cached, backbone_seconds = extractor.grid(frame_key, rgb)
        frame_masks, frame_stats = extractor.masks(frame_key, rgb, None)
        pooled = pool_regions(grid, torch.from_numpy(frame_masks), extractor.patch_size, mode=extractor.pooling) \
            if len(frame_masks) else torch.zeros(0, grid.shape[0])
        cls.append(global_feature(extractor, rgb, grid))
        feats.append(pooled.numpy())
        masks.append(frame_masks)
        frame_of.append(np.full(len(frame_masks), t, dtype=np.int16))
        stats.append({**frame_stats, "features_cached": cached, "backbone_seconds": backbone_seconds,
                      "frame_seconds": time.perf_counter() - start})
    feats, masks, frame_of = np.concatenate(feats), np.concatenate(masks), np.concatenate(frame_of)
    boxes = bounding_boxes(masks)  # one pass over the stack: the areas' crops and the kept masks' share them
    areas = MaskCrops.of(masks, boxes).areas
    keep = cap_tokens(areas, frame_of, annotation["max_tokens"])
    cut = len(areas) - len(keep)
    feats, masks, frame_of, areas = feats[keep], masks[keep], frame_of[keep], areas[keep]
    height, width = frames.shape[1:3]
    meta = {"id": key, "height": int(height), "width": int(width), "patch_size": extractor.patch_size,
            "frames": len(frames), "regions": int(len(keep)), "coverage": float(np.mean([s["coverage"] for s in stats])),
            "label": int(annotation["label"]), "label_name": annotation["label_name"], "pts": annotation["pts"],
            "tokens_cut": int(cut)}
    members = {"frame.npy": frame_of, "pos2d.npy": region_positions_2d(masks),
               "cls.npy": shards.finite_half(np.stack(cls), key, "class token")}
    sample = shards.encode_sample(key, feats=feats, rles=encode_rles(masks, MaskCrops.of(masks, boxes[keep])) if len(masks) else [], areas=areas,
                                  meta=meta, members=members)
    total = {"regions": int(len(keep)), "coverage": meta["coverage"],
             "seconds": float(sum(s["seconds"] for s in stats)), "peak_mem_mb": max(s["peak_mem_mb"] for s in stats),
             "features_cached": all(s["features_cached"] for s in stats),
             "backbone_seconds": float(sum(s["backbone_seconds"] for s in stats)),
             "stage_seconds": {"frames": float(sum(s["frame_seconds"] for s in stats))}}
    notes = note_counts(extractor.task, meta)
    if notes:
        total["notes"] = notes
    return total, sample


def extract(cfg: DictConfig, task: Task) -> dict:
    """Train and val shards of every selected cell."""
    from bench.extraction import extract_splits

    return extract_splits(cfg, lambda c: (c.dataset.train_split, c.dataset.val_split), task)


def models() -> dict:
    from models.video import MODELS

    return MODELS


def build_datamodule(cfg: DictConfig):
    """Batches of whole clips (``data.batch_size``), tokens grouped by clip."""
    return runs.ResumableShards(shard_dir=cfg.extract.shard_dir, train_split=cfg.dataset.train_split,
                                val_split=cfg.dataset.val_split, seed=cfg.seed, members=MEMBERS, train_unit="image",
                                region_fields=REGION_FIELDS, unit_fields=UNIT_FIELDS, **cfg.data)


def check_data(cfg: DictConfig, datamodule, split: str) -> dict:
    manifest = runs.check_shards(cfg, datamodule, split)
    if manifest["num_samples"] == 0:
        raise shards.ShardError(f"{cfg.extract.shard_dir}/{split} holds no decodable clip (manifest skipped: "
                                f"{len(manifest['skipped'])}): check dataset.root")
    return manifest


def build_model(cfg: DictConfig, manifest: dict):
    from models.video import MODELS

    video = cfg.video
    kind = cfg.model.kind
    if kind not in MODELS:
        raise ValueError(f"model.kind={kind!r} is unknown for task video; valid: {', '.join(MODELS)}")
    common = dict(in_dim=manifest["feature_dim"], num_classes=cfg.dataset.num_classes, lr=cfg.model.lr,
                  weight_decay=cfg.model.weight_decay, scheduler=cfg.model.scheduler,
                  warmup_epochs=cfg.model.warmup_epochs, cosine_t_max=cfg.model.cosine_t_max)
    if kind == "cls":
        return MODELS[kind](**common)
    return MODELS[kind](num_frames=int(cfg.dataset.num_frames), width=video.width, layers=video.layers,
                        heads=video.heads, dim_feedforward=video.dim_feedforward, dropout=video.dropout,
                        fourier_bands=video.fourier_bands, **common)


def summary(metrics: dict) -> str:
    return (f"top-1 {100 * metrics['top1']:.2f}  top-5 {100 * metrics['top5']:.2f}  mean class "
            f"{100 * metrics['mean_class_acc']:.2f}  ({metrics['num_clips']} clips scored)")


def report(cfg: DictConfig) -> dict:
    return {"class_names": kinetics.class_names(cfg.dataset.root)}


def pictures(cfg: DictConfig, model, count: int, out: Path) -> None:
    from bench.tools.visualize import draw_clips

    draw_clips(cfg, model, count, out, REGION_FIELDS, UNIT_FIELDS)


def tokens_cut(meta: dict) -> int:
    return meta.get("tokens_cut", 0)


TASK = Task(
    name="video", members=MEMBERS, units=units, load_unit=load_unit, unit_members=None, check_unit=check_unit,
    extract=extract, summary=summary, trains=True, models=models, build_datamodule=build_datamodule,
    check_data=check_data, build_model=build_model, report=report, pictures=pictures, sample=sample_clip,
    notes={"tokens_cut": tokens_cut})
