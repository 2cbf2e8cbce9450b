"""What a task is: the fields every task module fills in (``bench.tasks.TASKS`` maps names to them).

The shared stages call these and never ask which task they run:

    python -m bench.extract   ``extract(cfg, task)`` (the shared region writer, ``bench.extraction.extract_splits``,
                              reads units with ``load_unit`` and adds ``unit_members`` to each sample;
                              ``plan`` cuts them into shards, ``notes`` are listed in the manifest)
    python train.py           ``trains``; ``build_datamodule``, ``check_data``, ``build_model``
    python eval.py            ``evaluate`` (an evaluator of its own) or, when None, the shared loop that
                              scores each cell's checkpoint with ``models[model.kind]``
    metrics.json / tables     ``report`` (what metrics.json adds), ``summary`` (one line per cell),
                              ``prediction_writer`` (save_predictions=true), ``pictures`` (pictures=N)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig


# Every field is a module-level function (no lambdas): a Task pickles by reference to them, so an
# extraction worker process receives the task it runs (bench/pipeline.py).


def _no_check(key: str, rgb: np.ndarray, annotation) -> None:
    return None


def _no_report(cfg: DictConfig) -> dict:
    return {}


@dataclass(frozen=True)
class Task:
    name: str
    # shards: what a sample holds beyond bench.shards.COMMON, and how one extraction unit is read
    members: tuple[str, ...]  # e.g. ("hist.npy", "label.png"); ("depth.npy", "pose.npy", ...) for multi-view
    units: Callable[[DictConfig, str], list]  # (cfg.dataset, split) -> the split's units (.id, .image_path)
    load_unit: Callable[[DictConfig], Callable]  # cfg -> (unit -> (image (H, W, 3), annotation))
    # (extractor, key, masks (R, H, W) bool, annotation, crops: bench.mask_crops.MaskCrops of the masks) ->
    # ({member: value}, extra meta)
    unit_members: Callable
    extract: Callable[[DictConfig, "Task"], dict]  # (cfg, the task itself): all `python -m bench.extract` does
    summary: Callable[[dict], str]  # metrics.json -> one line
    # training and evaluation with LightningModules (trains=False: evaluate is the evaluator)
    trains: bool = True
    evaluate: Callable[[DictConfig], dict] | None = None  # its own eval.py (no checkpoints), or None
    models: Callable[[], dict] | None = None  # () -> {model.kind: LightningModule class}
    build_datamodule: Callable | None = None  # cfg -> LightningDataModule
    check_data: Callable | None = None  # (cfg, datamodule, split) -> the split's manifest, or an error
    build_model: Callable | None = None  # (cfg, manifest) -> LightningModule
    report: Callable[[DictConfig], dict] = _no_report  # keys every metrics.json of the task adds
    prediction_writer: Callable[[DictConfig, Path], Callable] | None = None  # (cfg, run dir) -> writer
    pictures: Callable | None = None  # (cfg, model, count, out_dir) -> None
    check_unit: Callable = _no_check  # (key, rgb, annotation): refuse a unit before any work
    # how a split's units are cut into shards: (units, samples_per_shard) -> lists of ids; None =
    # consecutive runs of samples_per_shard (a multi-view task keeps each scene in one shard)
    plan: Callable | None = None
    # notes counted and named in the manifest and metrics.json: {name: meta -> bool or count}, e.g.
    # frames whose pose is invalid ({"invalid_pose": pose_invalid}, pose_invalid(meta) -> bool)
    notes: dict = field(default_factory=dict)
    # how a unit becomes its shard sample: (extractor, key, image, annotation) -> (stats, sample);
    # None = Extractor.sample (one image); a video task samples several frames
    sample: Callable | None = None


