"""Building blocks shared by train.py and eval.py: run directories, builders, result files."""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from bench.shards import ShardError, load_manifest
from datamodules.region_shards import RegionShardDataModule
from models.segmenter import MODELS

log = logging.getLogger("regionbench")


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tips and two warnings that do not apply to RegionBench."""
    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in str(record.msg)

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(NoTips())
    # Our streams compute __len__ per rank and worker exactly (datamodules/region_shards.py).
    warnings.filterwarnings("ignore", message=r".*IterableDataset.*has `__len__` defined")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Epoch-level values are synced by the metric itself before logging.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level")


def run_dir(cfg: DictConfig) -> Path:
    """results/<experiment>/<row>/<column> for a table cell, results/<experiment>/default otherwise."""
    cell = str(cfg.cell) if cfg.cell else "default/default"
    return Path(cfg.paths.results_root) / str(cfg.experiment or "adhoc") / cell


def build_datamodule(cfg: DictConfig) -> RegionShardDataModule:
    return RegionShardDataModule(shard_dir=cfg.extract.shard_dir, train_split=cfg.dataset.train_split,
                                 val_split=cfg.dataset.val_split, seed=cfg.seed,
                                 train_unit="region" if cfg.model.kind == "region" else "image", **cfg.data)


def check_shards(cfg: DictConfig, datamodule: RegionShardDataModule, split: str) -> dict:
    """The split's manifest, checked against the config, or an error saying what to run."""
    try:
        manifest = datamodule.manifest(split)
    except ShardError as err:
        cell = f" cell={cfg.cell}" if cfg.cell else ""
        raise ShardError(f"{err}\nExtract first: python -m bench.extract experiment={cfg.experiment}{cell}") from None
    if cfg.model.kind == "patch" and not manifest["has_patches"]:
        raise ShardError(f"{cfg.extract.shard_dir}/{split} has no patch grids but model.kind=patch: "
                         "re-extract with extract.patches=true")
    if manifest["num_classes"] != cfg.dataset.num_classes:
        raise ShardError(f"shards in {cfg.extract.shard_dir} were labelled with {manifest['num_classes']} classes "
                         f"but dataset.num_classes is {cfg.dataset.num_classes}: re-extract")
    return manifest


def build_model(cfg: DictConfig, manifest: dict) -> pl.LightningModule:
    params = OmegaConf.to_container(cfg.model, resolve=True)
    kind = params.pop("kind")
    if kind not in MODELS:
        raise ValueError(f"model.kind={kind!r} is unknown; valid: {', '.join(MODELS)}")
    dim = manifest["feature_dim"]
    if params["in_dim"] is not None and params["in_dim"] != dim:
        raise ValueError(f"shards in {cfg.extract.shard_dir} have feature dim {dim} but model.in_dim is "
                         f"{params['in_dim']}: re-extract or set model.in_dim={dim}")
    params["in_dim"] = dim
    return MODELS[kind](num_classes=cfg.dataset.num_classes, ignore_index=cfg.dataset.ignore_index, **params)


def build_logger(cfg: DictConfig, directory: Path):
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return pl.loggers.CSVLogger(directory, name="logs")
    if kind == "tensorboard":
        return pl.loggers.TensorBoardLogger(directory, name="logs")
    if kind == "wandb":
        # Offline unless asked: an online wandb without network stalls for minutes.
        os.environ["WANDB_MODE"] = cfg.logger.wandb_mode
        return pl.loggers.WandbLogger(project=cfg.logger.project, save_dir=str(directory),
                                      name=f"{cfg.experiment}/{cfg.cell}", offline=cfg.logger.wandb_mode != "online")
    raise ValueError(f"logger.kind={kind!r} is unknown; valid: csv, tensorboard, wandb, none")


def build_trainer(cfg: DictConfig, directory: Path, checkpoints: bool = True) -> pl.Trainer:
    _quiet_lightning()
    callbacks = []
    if checkpoints:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=directory / "checkpoints", save_last=True,
                                                      save_top_k=0, every_n_epochs=1))
    return pl.Trainer(**cfg.trainer, logger=build_logger(cfg, directory), callbacks=callbacks,
                      default_root_dir=directory)


def data_report(datamodule: RegionShardDataModule, cfg: DictConfig) -> dict:
    """What every metrics.json says about its data: images extraction could not read (counted and
    named, per split) and the val split's region statistics (regions/image, coverage, s/image)."""
    splits = [cfg.dataset.train_split, cfg.dataset.val_split]
    stats = datamodule.manifest(cfg.dataset.val_split)["region_stats"]
    return {"skipped": {split: datamodule.manifest(split)["skipped"] for split in splits},
            "region_stats": stats, "feature_cache": datamodule.manifest(cfg.dataset.val_split).get("feature_cache"), **{k: stats.get(k) for k in ("regions_per_image", "seconds_per_image", "coverage",
                                          "backbone_seconds_per_image", "feature_cache_hit_rate")}}


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a reader never sees half a metrics.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    os.replace(tmp, path)


def summarize(metrics: dict, class_names: list[str] | None = None) -> str:
    """One line per run: mIoU and the weakest classes."""
    line = f"mIoU {100 * metrics['miou']:.4f}  pixel acc {100 * metrics['pixel_acc']:.4f}"
    if class_names:
        ious = [(v, class_names[i]) for i, v in enumerate(metrics["iou_per_class"]) if not math.isnan(v)]
        worst = ", ".join(f"{n} {100 * v:.1f}" for v, n in sorted(ious)[:3])
        line += f"  (weakest: {worst})"
    return line
