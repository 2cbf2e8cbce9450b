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
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from bench.checkpoints import (LAST, PREVIOUS, AtomicCheckpointIO, ReplayLoader, RunCheckpoints, damage, move_aside,
                               read_checkpoint, remove_stale_writes, resume_point, usable_checkpoint)
from bench.atomic import file_sha256 as sha256, write_atomic
from bench.config import config_hash
from bench.progress_lines import progress_callbacks
from bench.shards import ShardError
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


class ResumableShards(RegionShardDataModule):
    """The shard datamodule whose training loader a killed run resumes mid-epoch, exactly
    (bench.checkpoints.ReplayLoader)."""

    def train_dataloader(self) -> ReplayLoader:
        _, world = self._rank_world()
        return ReplayLoader(super().train_dataloader(), self.current_epoch,
                            layout={"world_size": world, "num_workers": self.num_workers})

    def current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0


def build_datamodule(cfg: DictConfig, members: tuple[str, ...] = ()) -> RegionShardDataModule:
    """The region shard datamodule; ``members``: what its samples must hold beyond the common ones."""
    return ResumableShards(shard_dir=cfg.extract.shard_dir, train_split=cfg.dataset.train_split,
                           val_split=cfg.dataset.val_split, seed=cfg.seed, members=tuple(members),
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


def model_params(cfg: DictConfig, manifest: dict, models: dict) -> dict:
    """The ``model:`` keys as constructor arguments (``kind`` among them, checked against ``models``),
    with ``in_dim`` from the shard manifest."""
    params = OmegaConf.to_container(cfg.model, resolve=True)
    if params["kind"] not in models:
        raise ValueError(f"model.kind={params['kind']!r} is unknown for task {cfg.task}; valid: {', '.join(models)}")
    dim = manifest["feature_dim"]
    if params["in_dim"] is not None and params["in_dim"] != dim:
        raise ValueError(f"shards in {cfg.extract.shard_dir} have feature dim {dim} but model.in_dim is "
                         f"{params['in_dim']}: re-extract or set model.in_dim={dim}")
    params["in_dim"] = dim
    return params


def build_model(cfg: DictConfig, manifest: dict, models: dict = MODELS) -> pl.LightningModule:
    params = model_params(cfg, manifest, models)
    kind = params.pop("kind")
    return models[kind](num_classes=cfg.dataset.num_classes, ignore_index=cfg.dataset.ignore_index, **params)


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
    """``pl.Trainer(**cfg.trainer)``; with ``checkpoints``, RunCheckpoints writes ``directory/checkpoints/``
    atomically (Lightning's own checkpointing is off: it writes only at the end, non-atomically)."""
    _quiet_lightning()
    args = {**OmegaConf.to_container(cfg.trainer, resolve=True), "enable_checkpointing": False}
    callbacks = progress_callbacks(bool(args.get("enable_progress_bar", True)))  # a log gets lines, not bars
    if checkpoints:
        callbacks.append(RunCheckpoints(directory / "checkpoints", cfg.seed,
                                        every_n_steps=cfg.checkpoint.every_n_steps or None,
                                        every_minutes=cfg.checkpoint.every_minutes or None))
        args.setdefault("plugins", []).append(AtomicCheckpointIO())
    return pl.Trainer(**args, logger=build_logger(cfg, directory), callbacks=callbacks, default_root_dir=directory)


def data_report(datamodule: RegionShardDataModule, cfg: DictConfig, trains: bool = True) -> dict:
    """What every metrics.json says about its data: images extraction could not read (counted and
    named, per split) and the val split's region statistics (regions/image, coverage, s/image).
    The splits: train and val, or val alone for a task that ``trains`` nothing (zero-shot)."""
    splits = [cfg.dataset.train_split] * trains + [cfg.dataset.val_split]
    stats = datamodule.manifest(cfg.dataset.val_split)["region_stats"]
    return {"skipped": {split: datamodule.manifest(split)["skipped"] for split in splits},
            "notes": {split: datamodule.manifest(split).get("notes", {}) for split in splits},
            "region_stats": stats, "feature_cache": datamodule.manifest(cfg.dataset.val_split).get("feature_cache"), **{k: stats.get(k) for k in ("regions_per_image", "seconds_per_image", "coverage",
                                          "backbone_seconds_per_image", "feature_cache_hit_rate")}}


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a reader never sees half a metrics.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1, allow_nan=True).encode())


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
    """What every metrics.json says about the run that scored it (the leaderboard's columns)."""
    return {"experiment": cfg.experiment, "cell": cfg.cell, "config_hash": config_hash(cfg),
            "dataset": cfg.dataset.name, "task": cfg.task, "world_size": world_size,
            "hardware": hardware(world_size), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def training_record(cfg: DictConfig, trainer: pl.Trainer, directory: Path, test_seconds: float) -> dict:
    """metrics.json's ``training``: what train.py trained (config, the checkpoint by name and sha256,
    epochs, steps), how (devices, hardware) and how long: ``train_seconds`` sums the processes whose
    progress was checkpointed, ``resumed`` lists where a killed run was picked up."""
    callback = next(c for c in trainer.callbacks if isinstance(c, RunCheckpoints))
    checkpoint = directory / "checkpoints" / LAST
    return {"config_hash": config_hash(cfg), "checkpoint": f"checkpoints/{LAST}",
            "checkpoint_sha256": sha256(checkpoint), "epochs": trainer.current_epoch, "global_step": trainer.global_step,
            "train_seconds": round(callback.train_seconds, 1), "eval_seconds": round(test_seconds, 1),
            "world_size": trainer.world_size, "hardware": hardware(trainer.world_size),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": callback.resumed}


def read_metrics(directory: Path) -> dict | None:
    path = directory / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def training_of(metrics: dict | None) -> dict | None:
    """The training record of a metrics.json (results written before records existed: rebuilt from
    their top level, without a checksum), or None when train.py has not finished this cell."""
    if not metrics:
        return None
    if "training" in metrics:
        return metrics["training"]
    if "train_seconds" not in metrics:
        return None
    return {"config_hash": metrics.get("config_hash"), "checkpoint": f"checkpoints/{LAST}",
            **{k: metrics.get(k) for k in ("epochs", "train_seconds", "eval_seconds", "world_size", "hardware",
                                           "finished_at")}}


def finished_metrics(cfg: DictConfig, directory: Path) -> dict | None:
    """The cell's metrics.json if it holds a finished training run of this very config, scored with this
    config, and the checkpoint it names is still there, unchanged (sha256)."""
    metrics = read_metrics(directory)
    record, ours = training_of(metrics), config_hash(cfg)
    if record is None or record["config_hash"] != ours or metrics.get("config_hash") != ours:
        return None
    checkpoint = directory / record["checkpoint"]
    if not checkpoint.is_file() or record.get("checkpoint_sha256") not in (None, sha256(checkpoint)):
        return None  # lost, damaged, or overwritten by a later run (which prepare_run then judges)
    return metrics


def recorded_checkpoint(cfg: DictConfig, directory: Path) -> Path:
    """The checkpoint the cell's training record names, checked to be intact and to be that very file
    (sha256); otherwise an error saying what to run. A damaged file is moved aside first."""
    fix = f"python train.py experiment={cfg.experiment} cell={cfg.cell}"
    record = training_of(read_metrics(directory))
    if record is None:
        raise FileNotFoundError(f"cell {cfg.cell} has no checkpoint of a finished training run in {directory}: "
                                f"run {fix}")
    path = directory / record["checkpoint"]
    if not path.is_file():
        raise FileNotFoundError(f"cell {cfg.cell} has no checkpoint at {path}, which its metrics.json names: "
                                f"run {fix}")
    problem = damage(path)
    if problem is not None:
        aside = move_aside(path, problem) if rank_zero_only.rank == 0 else path
        raise RuntimeError(f"checkpoint {path} is damaged ({problem}); moved to {aside}. Run {fix}: it resumes "
                           "from the last intact checkpoint and scores the cell again")
    if record.get("checkpoint_sha256") not in (None, sha256(path)):
        epoch, step, _ = resume_point(read_checkpoint(path))
        raise RuntimeError(
            f"{path} is not the checkpoint this cell's result was computed from: metrics.json records "
            f"{record['epochs']} epochs, step {record['global_step']}, sha256 {record['checkpoint_sha256'][:12]}…; "
            f"the file holds a state at epoch {epoch}, step {step} (a later training run of this cell, interrupted?). "
            f"Run {fix}: it brings checkpoint and result back to this config")
    return path


# Settings a run may change and still continue from its checkpoint (train longer).
RESUMABLE_CHANGES = ("trainer.max_epochs",)


def set_aside(directory: Path, theirs: str | None) -> Path:
    """Rename a run directory to ``<name>@<its hash>[.n]`` (nothing is deleted); returns the new path."""
    aside = directory.with_name(f"{directory.name}@{theirs or 'unknown'}")
    n = 1
    while aside.exists():
        aside, n = directory.with_name(f"{directory.name}@{theirs or 'unknown'}.{n}"), n + 1
    directory.rename(aside)
    return aside


def _not_resumed(cfg: DictConfig, theirs: str | None) -> str | None:
    """Why the run in a cell's directory (resume hash ``theirs``) must not be continued, or None."""
    if cfg.rerun:
        return "rerun=true"
    if not cfg.resume:
        return "resume=false"
    if theirs != config_hash(cfg, RESUMABLE_CHANGES):
        return f"it holds a run of another config ({theirs})"
    return None


def prepare_run(cfg: DictConfig, directory: Path) -> Path | None:
    """The checkpoint this cell's training resumes from, or None to train afresh.

    The cell's previous run is moved aside to ``<column>@<its hash>`` (nothing is deleted) and the cell
    trains afresh when ``rerun=true``, when ``resume=false``, when the run is of another config (a changed
    ``trainer.max_epochs`` excepted: training longer is a resume) or went past ``trainer.max_epochs``.
    Otherwise the newest intact checkpoint is resumed (damaged ones are moved aside, ``usable_checkpoint``).
    Only rank 0 moves files; under DDP the other ranks start after it and find what it left."""
    leader = rank_zero_only.rank == 0
    saved = directory / "run.json"
    theirs = json.loads(saved.read_text()).get("resume_hash") if saved.is_file() else None
    reason = _not_resumed(cfg, theirs)
    if reason is not None:
        if leader and ((directory / "checkpoints").is_dir() or (directory / "metrics.json").is_file()):
            aside = set_aside(directory, theirs)
            log.warning("%s: %s; the previous run was moved to %s, training %s afresh", directory, reason, aside,
                        cfg.cell)
        return None
    checkpoints, path, damaged = directory / "checkpoints", None, 0
    if checkpoints.is_dir() and leader:
        remove_stale_writes(checkpoints)
        path, damaged = usable_checkpoint(checkpoints)
    elif checkpoints.is_dir():
        path = next((checkpoints / n for n in (LAST, PREVIOUS) if (checkpoints / n).is_file()), None)
    if path is None:
        if leader and damaged:
            log.warning("no usable checkpoint left: training %s from scratch", cfg.cell)
        elif leader and saved.is_file():
            log.info("%s: its earlier run left no checkpoint (killed in its first epoch?): training from scratch",
                     cfg.cell)
        return None
    epoch, step, batches = resume_point(read_checkpoint(path))
    if epoch + (batches > 0) > cfg.trainer.max_epochs:
        if leader:
            aside = set_aside(directory, theirs)
            log.warning("%s went past trainer.max_epochs=%d (epoch %d, step %d); moved to %s, training %s afresh",
                        directory, cfg.trainer.max_epochs, epoch, step, aside, cfg.cell)
        return None
    if leader:
        log.info("resuming %s from epoch %d, step %d (%s)", cfg.cell, epoch, step, path)
    return path


def write_run_file(cfg: DictConfig, directory: Path) -> None:
    """run.json: the hashes a later train.py compares before resuming from this run's checkpoint."""
    write_json(directory / "run.json", {"config_hash": config_hash(cfg),
                                        "resume_hash": config_hash(cfg, RESUMABLE_CHANGES)})
