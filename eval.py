"""Evaluate every trained cell of an experiment from its checkpoint and render the table.

    python eval.py experiment=quickstart [trainer.devices=2 trainer.strategy=ddp] [save_predictions=true] [pictures=4]
    python eval.py leaderboard [leaderboard.sort=oracle_miou]   # every result under results_root on one page

Scores exactly the checkpoint that the cell's training record (metrics.json, written by train.py) names,
after checking its sha256; a damaged or replaced checkpoint is an error saying what to run. Rewrites
each cell's metrics.json (atomically) with the new scores and an ``eval`` record, keeping the training
record, and renders results/<experiment>/table.{md,csv,tex}.
With save_predictions=true, predicted label maps go under the run directory in the format of the
dataset's evaluation server: VOC results/VOC2012/Segmentation/comp5_val_cls/<id>.png (palette PNGs),
ADE20K predictions/<id>.png (L-mode, classes shifted back to 1..150, 0 where undecided).
"""
from __future__ import annotations

if __name__ == "__main__":  # --help is answered before torch and Lightning are imported
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python eval.py experiment=quickstart",
                            "python eval.py experiment=table6_decoders cell=sam_slic_mlp/minivoc pictures=4",
                            "python eval.py leaderboard"])

import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from bench.cli import handled_elsewhere, print_paths, run
from bench.config import cell_configs, config_hash, load_config, run_dir, save_config, table_rows
from bench.leaderboard import write_leaderboard
from bench.runs import (build_trainer, data_report, read_metrics, recorded_checkpoint, run_record, training_of,
                        write_json)
from bench.tables import write_tables
from bench.tasks import get_task

log = logging.getLogger("regionbench.eval")


def untrained(cfg: DictConfig) -> bool:
    """A trainable cell that train.py has not finished (no training record in its metrics.json)."""
    return get_task(cfg.task).models()[cfg.model.kind].trainable and training_of(read_metrics(run_dir(cfg))) is None


def eval_cell(cfg: DictConfig) -> dict:
    task = get_task(cfg.task)
    directory = run_dir(cfg)
    module = task.models()[cfg.model.kind]
    trainable = module.trainable
    checkpoint = recorded_checkpoint(cfg, directory) if trainable else None
    training = training_record(cfg, directory) if trainable else {}
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = task.build_datamodule(cfg)
    manifest = task.check_data(cfg, datamodule, cfg.dataset.val_split)
    if trainable:
        model = module.load_from_checkpoint(checkpoint, map_location="cpu", uncovered=cfg.model.uncovered)
    else:
        model = task.build_model(cfg, manifest)
    model.expected_test_images = manifest["num_samples"]
    if cfg.save_predictions:
        model.prediction_writer = task.prediction_writer(cfg, directory)
    trainer = build_trainer(cfg, directory / "eval", checkpoints=False)
    start = time.perf_counter()
    trainer.test(model, datamodule=datamodule, verbose=False)
    record = {**run_record(cfg, trainer.world_size), "eval_seconds": round(time.perf_counter() - start, 1)}
    kept = {"training": training, **{k: training.get(k) for k in ("train_seconds", "epochs")}} if training else {}
    metrics = {**model.test_results, **record, **task.report(cfg),
               "checkpoint": str(checkpoint.relative_to(directory)) if trainable else None,
               **data_report(datamodule, cfg, task.trains), **kept,
               "eval": {k: record[k] for k in ("config_hash", "world_size", "hardware", "finished_at", "eval_seconds")}}
    if trainer.is_global_zero:
        write_json(directory / "metrics.json", metrics)
        save_config(cfg, directory / "eval" / "config.yaml")
        if cfg.pictures:
            task.pictures(cfg, model, cfg.pictures, Path(cfg.paths.results_root) / str(cfg.experiment or "adhoc"))
    return metrics


def training_record(cfg: DictConfig, directory: Path) -> dict:
    """The cell's training record, kept as it is in the metrics.json eval.py rewrites; a warning when
    the checkpoint was trained with another config than the one scoring it."""
    training = training_of(read_metrics(directory)) or {}
    if training.get("config_hash") not in (None, config_hash(cfg)) and rank_zero_only.rank == 0:
        log.warning("%s: the checkpoint was trained with config %s, scored now with %s", cfg.cell,
                    training["config_hash"], config_hash(cfg))
    return training


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Every selected cell; prints one line per cell and the table (rank 0)."""
    task = get_task(cfg.task)
    if task.evaluate is not None:  # a task with an evaluator of its own (retrieval: index + search + mAP)
        return task.evaluate(cfg)
    cells = cell_configs(cfg)
    explicit = cfg.cell and not any(c in str(cfg.cell) for c in "*?[")  # one named cell: missing is an error
    results = {}
    for cell, ccfg in cells.items():
        if untrained(ccfg) and not explicit:
            log.warning("%s: not trained yet, left out (listed under the table as missing)", cell)
            continue
        results[cell] = eval_cell(ccfg)
    if pl.utilities.rank_zero.rank_zero_only.rank == 0:
        for cell, metrics in results.items():
            print(f"{cell}: {task.summary(metrics)}")
        if table_rows(cfg):
            out = Path(cfg.paths.results_root) / str(cfg.experiment)
            print(write_tables(cfg, out, next_steps(cfg)))
    return results


def next_steps(cfg: DictConfig):
    """cell -> the command that fills it after extraction: train.py for a cell whose task trains, else
    eval.py. A cell's task is the one its layers set last (command line, cell, row, column, experiment), so a
    trained row in a zero-shot table (a pseudo-label student) is told to train."""
    rows, columns, cells = table_rows(cfg), cfg.table.columns or {}, cfg.table.cells or {}
    command_line = any(str(o).split("=", 1)[0] == "task" for o in cfg.overrides or [])

    def step(cell: str) -> str:
        row, column = cell.split("/", 1)
        layers = () if command_line else (cells.get(cell) or {}, rows.get(row) or {}, columns.get(column) or {})
        task = next((layer["task"] for layer in layers if "task" in layer), cfg.task)
        return "train.py" if get_task(task).trains else "eval.py"
    return step


def main(argv: list[str]) -> dict | str:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["leaderboard"]:
        cfg = load_config(argv[1:])
        print(write_leaderboard(cfg))
        print_paths("written", [Path(cfg.paths.results_root) / f"leaderboard.{ext}" for ext in ("md", "csv")])
        return {}
    cfg = load_config(argv)
    elsewhere = handled_elsewhere(cfg, "eval", argv)  # print_config=true, or a cluster launcher
    if elsewhere is not None:
        return elsewhere
    results = evaluate(cfg)
    table = Path(cfg.paths.results_root) / str(cfg.experiment)
    cells = [run_dir(c) for cell, c in cell_configs(cfg).items() if cell in results]
    if rank_zero_only.rank == 0:
        print_paths("written", [d / "metrics.json" for d in cells] + [d / sub for d in cells for sub in
                                                                     ("predictions", "regions", "scene", "clips")]
                    + [table / f"table.{ext}" for ext in ("md", "csv", "tex")])
    return results


if __name__ == "__main__":
    run(main, sys.argv[1:])
