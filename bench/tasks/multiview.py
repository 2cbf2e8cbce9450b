"""Multi-view semantic segmentation of RGB-D scenes (ScanNet, MiniScanNet): the paper's Table 7.

Unit: one frame of a scene (``datamodules.scannet``), read at label resolution, with its depth,
intrinsics and camera pose. Shard members beyond the common region members: segmentation's
``hist.npy`` and ``label.png`` (so pixels are painted and scored exactly as for images), and per region

    pos2d.npy    (R, 6) float32  normalised centroid (x, y) and box (x0, y0, x1, y1) in the frame
    pos3d.npy    (R, 6) float32  world centroid (median of its back-projected pixels with depth) and
                                 extent (10-90 percentile range), metres, centred on the scene (the
                                 median camera position of its listed frames)
    valid3d.npy  (R,) bool       False: no pixel with depth, or the frame's pose is not finite

and ``meta.json`` gains ``scene``, ``frame``, ``pose_valid``. A frame whose pose is not finite keeps its
image-level use; it is counted and named in the manifest and metrics.json (``notes.invalid_pose``).
Each scene's frames go to one shard (``plan``), so a scene-level model sees whole scenes and
evaluation on any number of ranks scores every frame exactly once.

Models (``models.multiview``): a region classifier with optional 2D/3D position embeddings
(``multiview.pos2d`` / ``multiview.pos3d``), whose transformer attends within a frame or a scene
(``multiview.context``; ``multiview.scene_frames`` caps a scene group's frames).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bench import runs
from bench.geometry import centre_scene, region_positions_2d, region_positions_3d
from bench.labels import class_histogram
from bench.tasks.base import Task
from datamodules import scannet
from datamodules.datasets import class_names

MEMBERS = ("hist.npy", "label.png", "pos2d.npy", "pos3d.npy", "valid3d.npy")
REGION_FIELDS = ("pos2d", "pos3d", "valid3d")  # per-region members batched with the regions


def units(dataset: DictConfig, split: str) -> list[scannet.ScanNetFrame]:
    """The split's frames: every ``dataset.frame_stride``-th, at most ``dataset.max_frames_per_scene``
    per scene (evenly spaced), capped at ``dataset.max_images`` frames."""
    frames = _frames(str(dataset.root), split, dataset.layout, int(dataset.frame_stride),
                     dataset.max_frames_per_scene)
    return frames[: dataset.max_images] if dataset.max_images else frames


@functools.lru_cache(maxsize=8)
def _frames(root: str, split: str, layout: str, stride: int, cap: int | None) -> list[scannet.ScanNetFrame]:
    return scannet.iter_frames(root, split, layout, stride, cap)


def scene_of(key: str) -> str:
    """A frame's shard key (``<scene>_<frame>``) -> its scene id."""
    return key.rsplit("_", 1)[0]


def plan(frames: list[scannet.ScanNetFrame], samples_per_shard: int) -> list[list[str]]:
    """Whole scenes per shard: scenes are added to a shard until it holds ``samples_per_shard``
    frames or more (a scene longer than that is a shard of its own)."""
    if samples_per_shard < 1:
        raise ValueError(f"extract.samples_per_shard must be >= 1, got {samples_per_shard}")
    shards: list[list[str]] = []
    current: list[str] = []
    for i, frame in enumerate(frames):
        current.append(frame.id)
        last_of_scene = i + 1 == len(frames) or frames[i + 1].scene != frame.scene
        if last_of_scene and len(current) >= samples_per_shard:
            shards.append(current)
            current = []
    if current:
        shards.append(current)
    return shards


def scene_centres(frames: list[scannet.ScanNetFrame]) -> dict[str, np.ndarray]:
    """scene -> (3,) its centre: the median camera position over its listed frames with a finite pose."""
    cameras: dict[str, list[np.ndarray]] = {}
    for frame in frames:
        cameras.setdefault(frame.scene, []).append(scannet.read_matrix(frame.pose_path)[:3, 3])
    out = {}
    for scene, positions in cameras.items():
        xyz = np.stack(positions)
        out[scene] = centre_scene(xyz, np.isfinite(xyz).all(axis=1))[1]
    return out


def load_unit(cfg: DictConfig):
    """frame -> (image (H, W, 3), annotation: ``scannet.load_frame``'s dict plus the scene centre)."""
    dataset = cfg.dataset
    lookup = scannet.label_lookup(dataset.root, dataset.layout)
    centres: dict[str, np.ndarray] = {}

    def load(frame: scannet.ScanNetFrame) -> tuple[np.ndarray, dict]:
        if frame.scene not in centres:  # every listed frame of the scene, whatever split part is loaded
            scene_frames = [f for f in _frames(str(dataset.root), _split_of(dataset, frame), dataset.layout,
                                               int(dataset.frame_stride), dataset.max_frames_per_scene)
                            if f.scene == frame.scene]
            centres.update(scene_centres(scene_frames or [frame]))
        data = scannet.load_frame(frame, lookup)
        return data["rgb"], {**data, "scene": frame.scene, "frame": frame.frame, "centre": centres[frame.scene]}
    return load


def _split_of(dataset: DictConfig, frame: scannet.ScanNetFrame) -> str:
    for split in (dataset.train_split, dataset.val_split):
        if frame.scene in scannet.read_split(dataset.root, split):
            return split
    raise ValueError(f"scene {frame.scene} is in neither split {dataset.train_split} nor {dataset.val_split}")


def check_unit(key: str, rgb: np.ndarray, annotation: dict) -> None:
    if annotation["label"].shape != rgb.shape[:2]:
        raise ValueError(f"label of frame '{key}' is {annotation['label'].shape} but its image is {rgb.shape[:2]}")


def unit_members(extractor, key: str, masks: np.ndarray, annotation: dict,
                 crops=None) -> tuple[dict, dict]:
    """Segmentation's hist.npy and label.png, and the regions' 2D and 3D positions."""
    label, c = annotation["label"], extractor.num_classes
    hist = class_histogram(masks, label, c, extractor.ignore_index, crops)
    pos3d, valid = region_positions_3d(masks, annotation["depth"], annotation["K_color"], annotation["K_depth"],
                                       annotation["pose"])
    pos3d[valid, :3] -= annotation["centre"].astype(np.float32)
    members = {"hist.npy": hist.astype(np.int32), "label.png": label, "pos2d.npy": region_positions_2d(masks),
               "pos3d.npy": pos3d, "valid3d.npy": valid}
    return members, {"scene": annotation["scene"], "frame": annotation["frame"],
                     "pose_valid": annotation["pose_valid"]}


def extract(cfg: DictConfig, task: Task) -> dict:
    """Train and val region shards of every selected cell (``task``: this one, or a variant of it)."""
    from bench.extraction import extract_splits

    return extract_splits(cfg, lambda c: (c.dataset.train_split, c.dataset.val_split), task)


def models() -> dict:
    from models.multiview import MODELS

    return MODELS


def training_unit(cfg: DictConfig) -> str:
    """region (shuffled regions: linear, MLP), image (a frame's regions) or scene (a scene group's)."""
    from models.decoders import decoder_class

    if cfg.model.kind != "region" or decoder_class(cfg.model.decoder).train_unit == "region":
        return "region" if cfg.model.kind == "region" else "image"
    return "scene" if cfg.multiview.context == "scene" else "image"


def build_datamodule(cfg: DictConfig):
    """The region shard datamodule with positions batched per region and, for a scene-level
    transformer, batches of ``multiview.scenes_per_batch`` scene groups (in training and evaluation)."""
    unit = training_unit(cfg)
    data = dict(cfg.data)
    if unit == "scene":
        data["batch_size"] = cfg.multiview.scenes_per_batch
    return runs.ResumableShards(shard_dir=cfg.extract.shard_dir, train_split=cfg.dataset.train_split,
                                val_split=cfg.dataset.val_split, seed=cfg.seed, members=MEMBERS, train_unit=unit,
                                region_fields=REGION_FIELDS, group_of=scene_of,
                                group_frames=cfg.multiview.scene_frames, eval_groups=unit == "scene", **data)


def build_model(cfg: DictConfig, manifest: dict):
    from models.multiview import MODELS

    params = runs.model_params(cfg, manifest, MODELS)
    kind = params.pop("kind")
    view = cfg.multiview
    return MODELS[kind](num_classes=cfg.dataset.num_classes, ignore_index=cfg.dataset.ignore_index, pos2d=view.pos2d,
                        pos3d=view.pos3d, fourier_bands=view.fourier_bands, scene_scale=view.scene_scale,
                        context=view.context, **params)


def pictures(cfg: DictConfig, model, count: int, out: Path) -> None:
    from bench.tools.visualize import draw_scene

    draw_scene(cfg, model, count, out, scene_of, REGION_FIELDS)


def summary(metrics: dict) -> str:
    return runs.summarize(metrics, metrics.get("class_names"))


def report(cfg: DictConfig) -> dict:
    return {"class_names": class_names(cfg.dataset)}


def pose_invalid(meta: dict) -> bool:
    return not meta["pose_valid"]


TASK = Task(
    name="multiview", members=MEMBERS, units=units, load_unit=load_unit, unit_members=unit_members,
    check_unit=check_unit, extract=extract, summary=summary,
    trains=True, models=models, build_datamodule=build_datamodule, check_data=runs.check_shards,
    build_model=build_model, report=report, pictures=pictures,
    plan=plan, notes={"invalid_pose": pose_invalid})
