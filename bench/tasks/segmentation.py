"""Semantic segmentation (VOC, ADE20K, MiniVOC, MiniADE): the paper's Tables 1-6.

Unit: one image with its (H, W) label map. Shard members beyond the common region members:
``hist.npy`` (R, C+1) int32 class pixel counts per region and ``label.png`` (H, W) uint8.
Trains decoders on region (or patch) vectors (``models.segmenter.MODELS``) from the region shard
datamodule (``datamodules.region_shards``); scored by mIoU over one dataset-level confusion matrix.
Predictions are written in the dataset's server format (``Layout.save_prediction``).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bench import pseudo_labels, runs
from bench.labels import class_histogram
from bench.tasks.base import Task
from datamodules.datasets import class_names, dataset_items, layout
from datamodules.voc import load_image_for_label

MEMBERS = ("hist.npy", "label.png")


def load_unit(cfg: DictConfig):
    """unit -> (image, (H, W) label map): the image read to fit its label map (EXIF, see datamodules.voc)."""
    load_label = layout(cfg.dataset).load_label
    if load_label is None:
        raise ValueError(f"dataset.layout={cfg.dataset.layout} holds frames with depth and poses, not images with "
                         f"label maps: use task=multiview (or a dataset of images)")

    def load(item) -> tuple[np.ndarray, np.ndarray]:
        label = load_label(item.label_path)
        return load_image_for_label(item.image_path, label.shape), label
    return load


def check_unit(key: str, rgb: np.ndarray, label: np.ndarray) -> None:
    if label.shape != rgb.shape[:2]:
        raise ValueError(f"label of '{key}' is {label.shape} but its image is {rgb.shape[:2]}")


def unit_members(extractor, key: str, masks: np.ndarray, label: np.ndarray,
                 crops=None) -> tuple[dict, dict]:
    """hist.npy: (R, C+1) class pixel counts of each region (last column: ignore); label.png."""
    c = extractor.num_classes
    hist = class_histogram(masks, label, c, extractor.ignore_index, crops)
    return {"hist.npy": hist.astype(np.int32), "label.png": label}, {}


def extract(cfg: DictConfig, task: Task) -> dict:
    """Train and val region shards of every selected cell (``task``: this one, or a variant of it). A
    cell with ``pseudo_labels.teacher`` reads its train labels from its teacher's PNGs (bench/pseudo_labels.py;
    ``python -m bench.extract`` makes the teacher first)."""
    from bench.config import cell_configs
    from bench.extraction import extract_splits

    def splits(c):
        return c.dataset.train_split, c.dataset.val_split

    cells = cell_configs(cfg).values()
    if all(c.pseudo_labels.teacher is None for c in cells):
        return extract_splits(cfg, splits, task)
    done = {}
    for ccfg in cells:
        student = task
        if ccfg.pseudo_labels.teacher is not None:
            labels = {ccfg.dataset.train_split: pseudo_labels.record(ccfg)["label_dir"]}
            student = dataclasses.replace(task, units=functools.partial(dataset_items, labels=labels))
        done.update(extract_splits(ccfg, splits, student))
    return done


def models() -> dict:
    from models.segmenter import MODELS

    return MODELS


def prediction_writer(cfg: DictConfig, directory: Path):
    fmt = layout(cfg.dataset)
    if fmt.save_prediction is None:
        raise ValueError(f"dataset.layout={cfg.dataset.layout} has no prediction file format: set save_predictions=false")
    return functools.partial(fmt.save_prediction, directory / fmt.prediction_subdir)


def pictures(cfg: DictConfig, model, count: int, out: Path) -> None:
    from bench.tools.visualize import draw_predictions

    draw_predictions(cfg, model, count, out)


def summary(metrics: dict) -> str:
    return runs.summarize(metrics, metrics.get("class_names"))


def report(cfg: DictConfig) -> dict:
    return {"class_names": class_names(cfg.dataset), **pseudo_labels.report(cfg)}


def check_data(cfg: DictConfig, datamodule, split: str) -> dict:
    """The split's manifest (runs.check_shards); a student's teacher must be finished before it trains."""
    if split == cfg.dataset.train_split:
        pseudo_labels.report(cfg)  # its done.json, or an error saying how to make it
    return runs.check_shards(cfg, datamodule, split)


TASK = Task(
    name="segmentation", members=MEMBERS, units=dataset_items, load_unit=load_unit, unit_members=unit_members,
    check_unit=check_unit, extract=extract, summary=summary,
    trains=True, models=models, build_datamodule=functools.partial(runs.build_datamodule, members=MEMBERS),
    check_data=check_data, build_model=runs.build_model,
    report=report,
    prediction_writer=prediction_writer, pictures=pictures)
