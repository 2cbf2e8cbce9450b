"""Evaluate every trained cell of an experiment from its checkpoint and render the table.

    python eval.py experiment=quickstart [trainer.devices=2 trainer.strategy=ddp] [save_predictions=true]

Writes each cell's metrics.json (atomically) and results/<experiment>/table.{md,csv}.
With save_predictions=true, predicted label maps go to
<run dir>/results/VOC2012/Segmentation/comp5_val_cls/<id>.png (VOC palette PNGs).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from bench.config import cell_configs, load_config, save_config
from bench.runs import (build_datamodule, build_model, build_trainer, check_shards, data_report, run_dir, summarize,
                        write_json)
from bench.tables import write_tables
from datamodules.datasets import class_names
from models.segmenter import MODELS

log = logging.getLogger("regionbench.eval")


def eval_cell(cfg: DictConfig) -> dict:
    directory = run_dir(cfg)
    checkpoint = directory / "checkpoints" / "last.ckpt"
    if MODELS[cfg.model.kind].trainable and not checkpoint.is_file():
        raise FileNotFoundError(f"cell {cfg.cell} has no checkpoint at {checkpoint}: "
                                f"run python train.py experiment={cfg.experiment} cell={cfg.cell}")
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build_datamodule(cfg)
    manifest = check_shards(cfg, datamodule, cfg.dataset.val_split)
    if MODELS[cfg.model.kind].trainable:
        model = MODELS[cfg.model.kind].load_from_checkpoint(checkpoint, map_location="cpu",
                                                            uncovered=cfg.model.uncovered)
    else:
        model = build_model(cfg, manifest)
    model.expected_test_images = manifest["num_samples"]
    if cfg.save_predictions:
        model.prediction_dir = directory / "results" / "VOC2012" / "Segmentation" / "comp5_val_cls"
    trainer = build_trainer(cfg, directory / "eval", checkpoints=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {**model.test_results, "experiment": cfg.experiment, "cell": cfg.cell,
               "class_names": class_names(cfg.dataset),
               "checkpoint": str(checkpoint) if model.trainable else None,
               "world_size": trainer.world_size,
               **data_report(datamodule, cfg)}
    if trainer.is_global_zero:
        write_json(directory / "metrics.json", metrics)
        save_config(cfg, directory / "eval" / "config.yaml")
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Every selected cell; prints one line per cell and the table (rank 0)."""
    results = {cell: eval_cell(ccfg) for cell, ccfg in cell_configs(cfg).items()}
    if pl.utilities.rank_zero.rank_zero_only.rank == 0:
        for cell, metrics in results.items():
            print(f"{cell}: {summarize(metrics, metrics['class_names'])}")
        if cfg.table.rows:
            out = Path(cfg.paths.results_root) / str(cfg.experiment)
            print(write_tables(cfg, run_dir, out))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    evaluate(load_config(sys.argv[1:]))
