"""Extract region shards: image -> regions -> patch features -> pooled region vectors.

    python -m bench.extract experiment=quickstart [key=value ...]

Checks the inputs (dataset root, checkpoint files) before any file is written, then runs the task's
extraction (``TASKS[cfg.task].extract``; the shared stage is ``bench.extraction``). Killed at any
point, a re-run keeps verified shards and redoes the rest; under torchrun, a SLURM array or
``extract.index``/``extract.count`` each process writes its own shards.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help is answered before torch is imported
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python -m bench.extract experiment=quickstart",
                            "python -m bench.extract experiment=table7_multiview cell='*/miniscannet'",
                            "python -m bench.extract experiment=table6_decoders extract.index=0 extract.count=4"])

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from bench import pseudo_labels
from bench.cli import handled_elsewhere, print_paths, run
from bench.config import cell_configs, load_config, teacher_config
from bench.preflight import check_inputs
from bench.tasks import get_task


def extract(cfg: DictConfig) -> dict:
    """Everything the selected cells need, as their task extracts it; returns what the task returns
    (segmentation: {shard_dir/split: manifest})."""
    check_inputs(cfg)  # missing checkpoints or dataset root: an error before any file is written
    cells = cell_configs(cfg)
    students = [c for c in cells.values() if c.pseudo_labels.teacher is not None]
    for ccfg in students:  # every teacher refused or accepted before any work
        pseudo_labels.check_teacher(ccfg)
        check_inputs(teacher_config(ccfg))
    if students:  # each labels its student's train split first (made once, then reused)
        from eval import eval_cell

        for ccfg in students:
            pseudo_labels.ensure_teacher(ccfg, extract=extract, predict=eval_cell)
    if {c.task for c in cells.values()} == {cfg.task}:
        task = get_task(cfg.task)
        return task.extract(cfg, task)
    done = {}  # rows of other tasks than the table's (a trained row in a zero-shot table): each as its task
    for ccfg in cells.values():
        task = get_task(ccfg.task)
        done.update(task.extract(ccfg, task))
    return done


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(argv)
    elsewhere = handled_elsewhere(cfg, "extract", argv)  # print_config=true, or a cluster launcher
    if elsewhere is not None:
        return elsewhere
    done = extract(cfg)
    print_paths("written", [Path(where) for where in done if "/" in str(where)])
    return done


if __name__ == "__main__":
    run(main)
