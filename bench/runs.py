"""Building blocks shared by train.py and eval.py: run directories, builders, result files."""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from bench.config import config_hash
from bench.shards import ShardError, load_manifest
from datamodules.region_shards import RegionShardDataModule
from models.segmenter import MODELS, training_unit

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
                                 train_unit=training_unit(cfg.model.kind, cfg.model.decoder), **cfg.data)


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


def hardware(world_size: int = 1) -> str:
    """What ran the job, for the leaderboard: '2x NVIDIA A100-SXM4-80GB' or '1x CPU <model> (2 cores)'."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        model = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")]
            model = names[0] if names else model
        device = f"CPU {model} ({os.cpu_count()} cores)"
    return f"{world_size}x {device}"


def run_record(cfg: DictConfig, world_size: int) -> dict:
    """What every metrics.json says about the run itself (the leaderboard's columns)."""
    return {"experiment": cfg.experiment, "cell": cfg.cell, "config_hash": config_hash(cfg),
            "dataset": cfg.dataset.name, "task": "segmentation", "world_size": world_size,
            "hardware": hardware(world_size), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def finished_metrics(cfg: DictConfig, directory: Path) -> dict | None:
    """The cell's metrics.json if it holds a finished training run of this very config."""
    path = directory / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("config_hash") == config_hash(cfg) and "train_seconds" in metrics else None


# Settings a run may change and still continue from its checkpoint (train longer).
RESUMABLE_CHANGES = ("trainer.max_epochs",)


def check_resumable(cfg: DictConfig, directory: Path) -> Path | None:
    """The checkpoint to resume from, if any. A run directory trained with another config is never
    resumed: it is moved aside to ``<cell dir>@<its hash>`` (nothing is deleted) and the cell starts afresh."""
    last = directory / "checkpoints" / "last.ckpt"
    if not (cfg.resume and last.is_file()):
        return None
    saved = directory / "run.json"
    theirs = json.loads(saved.read_text()).get("resume_hash") if saved.is_file() else None
    if theirs == config_hash(cfg, RESUMABLE_CHANGES):
        return last
    aside = directory.with_name(f"{directory.name}@{theirs or 'unknown'}")
    n = 1
    while aside.exists():
        aside, n = directory.with_name(f"{directory.name}@{theirs or 'unknown'}.{n}"), n + 1
    directory.rename(aside)
    log.warning("%s holds a run of another config (%s); moved to %s, training %s afresh", directory, theirs,
                aside, cfg.cell)
    return None


def write_run_file(cfg: DictConfig, directory: Path) -> None:
    """run.json: the hashes a later train.py compares before resuming from this run's checkpoint."""
    write_json(directory / "run.json", {"config_hash": config_hash(cfg),
                                        "resume_hash": config_hash(cfg, RESUMABLE_CHANGES)})
