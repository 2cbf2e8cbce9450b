"""Train every cell of an experiment (or one: cell=row/column), then score it on the val split.

    python train.py experiment=quickstart [key=value ...]

Each cell's run directory, results/<experiment>/<row>/<column>/, receives config.yaml, run.json,
checkpoints/last.ckpt and previous.ckpt (every epoch end, and every checkpoint.every_n_steps steps or
checkpoint.every_minutes minutes: a killed run resumes there and ends as an uninterrupted one would,
bench/checkpoints.py), logs/ and metrics.json (the scores and the training record).
A cell whose metrics.json records the same config hash is finished and is skipped; rerun=true and
resume=false move its run aside and train afresh. At the end the experiment table
(results/<experiment>/table.{md,csv,tex}) is rendered as it stands.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help is answered before torch and Lightning are imported
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python train.py experiment=quickstart",
                            "python train.py experiment=table6_decoders cell='*/minivoc' trainer.max_epochs=2",
                            "torchrun --nproc_per_node=2 train.py experiment=table6_decoders trainer.devices=2 "
                            "trainer.strategy=ddp"])

import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from bench.cli import handled_elsewhere, print_paths, run
from bench.config import cell_configs, load_config, run_dir, save_config, table_rows
from bench.runs import (build_trainer, data_report, finished_metrics, prepare_run, run_record, training_record,
                        write_json, write_run_file)
from bench.tables import write_tables
from bench.tasks import get_task

log = logging.getLogger("regionbench.train")


def train_cell(cfg: DictConfig) -> dict:
    """Fit one cell's model (or resume its killed run) and return its val metrics (also written to
    metrics.json). A cell already finished with the same config hash is not recomputed (rerun=true forces it)."""
    directory = run_dir(cfg)
    done = None if cfg.rerun else finished_metrics(cfg, directory)
    if done is not None:
        log.info("%s: finished before (config %s), not recomputed; rerun=true retrains it", cfg.cell,
                 done["config_hash"])
        return done
    task = get_task(cfg.task)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = task.build_datamodule(cfg)
    task.check_data(cfg, datamodule, cfg.dataset.train_split)
    manifest = task.check_data(cfg, datamodule, cfg.dataset.val_split)
    model = task.build_model(cfg, manifest)
    trainer = build_trainer(cfg, directory)
    resume_from = prepare_run(cfg, directory)
    if trainer.is_global_zero:
        save_config(cfg, directory / "config.yaml")
        write_run_file(cfg, directory)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    start = time.perf_counter()
    model.expected_test_images = manifest["num_samples"]
    trainer.test(model, datamodule=datamodule, verbose=False)
    training = training_record(cfg, trainer, directory, time.perf_counter() - start)
    metrics = {**model.test_results, **run_record(cfg, trainer.world_size), **task.report(cfg),
               "train_seconds": training["train_seconds"], "eval_seconds": training["eval_seconds"],
               "epochs": training["epochs"], "checkpoint": training["checkpoint"], "training": training,
               **data_report(datamodule, cfg)}
    if trainer.is_global_zero:
        write_json(directory / "metrics.json", metrics)
    log.info("%s: %s", cfg.cell, task.summary(metrics))
    return metrics


def train(cfg: DictConfig) -> dict[str, dict]:
    """Every selected cell; returns {cell: metrics}."""
    cells = cell_configs(cfg)
    trained = {cell: ccfg for cell, ccfg in cells.items() if get_task(ccfg.task).trains}  # a table may mix tasks
    if not trained:
        raise ValueError(f"experiment {cfg.experiment} is a {cfg.task} task: nothing to train; "
                         f"run python eval.py experiment={cfg.experiment}")
    if len(trained) < len(cells):
        log.info("not trained (scored by python eval.py): %s", ", ".join(c for c in cells if c not in trained))
    results = {cell: train_cell(ccfg) for cell, ccfg in trained.items()}
    if table_rows(cfg) and pl.utilities.rank_zero.rank_zero_only.rank == 0:  # the table as it stands now
        print(write_tables(cfg, Path(cfg.paths.results_root) / str(cfg.experiment)))
    return results


def main(argv: list[str]) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(argv)
    elsewhere = handled_elsewhere(cfg, "train", argv)  # print_config=true, or a cluster launcher
    if elsewhere is not None:
        return elsewhere
    results = train(cfg)
    table = Path(cfg.paths.results_root) / str(cfg.experiment)
    if pl.utilities.rank_zero.rank_zero_only.rank == 0:
        print_paths("written", [run_dir(c) for c in cell_configs(cfg).values()]
                    + [table / f"table.{ext}" for ext in ("md", "csv", "tex")])
    return results


if __name__ == "__main__":
    run(main, sys.argv[1:])
