"""Run an experiment's cells as cluster jobs with submitit: one array task per cell.

    python train.py experiment=table6_decoders launcher.kind=slurm launcher.partition=gpu launcher.gpus_per_node=8
    python -m bench.extract experiment=table6_decoders launcher.kind=slurm launcher.partition=cpu
    python -m bench.launcher status results/table6_decoders/submitit
    python -m bench.launcher cells experiment=table6_decoders   # one cell per line (plain sbatch arrays)

``launcher.kind``: ``none`` (run here), ``slurm`` (sbatch through submitit), ``local`` (submitit's
local executor: real subprocesses on this machine, how the test suite runs it). Each selected cell
becomes one task of a job array running the same entry point with ``cell=<row/column>``; time,
memory, GPUs, nodes, partition and account come from ``launcher.*``. A task that SLURM preempts or
times out is requeued by submitit (``CellTask.checkpoint``) with the same command: the run resumes
from its own checkpoints (bench/checkpoints.py). Logs and the submission record
(``jobs.json``: cell -> job id) go to ``launcher.folder``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

ENTRIES = ("train", "eval", "extract")


class CellTask:
    """One cell's command, picklable; submitit calls it in the job and, on preemption or timeout,
    its ``checkpoint`` to requeue the same call (the run resumes from its checkpoints)."""

    def __init__(self, entry: str, argv: list[str]):
        if entry not in ENTRIES:
            raise ValueError(f"entry {entry!r}; valid: {', '.join(ENTRIES)}")
        self.entry, self.argv = entry, list(argv)

    def __call__(self):
        import importlib

        module = {"train": "train", "eval": "eval", "extract": "bench.extract"}[self.entry]
        return importlib.import_module(module).main(self.argv)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(CellTask(self.entry, self.argv))


def executor(cfg: DictConfig):
    """A submitit executor for ``cfg.launcher`` (slurm or local)."""
    import submitit

    launcher = cfg.launcher
    folder = Path(str(launcher.folder))
    cluster = {"slurm": "slurm", "local": "local"}[launcher.kind]
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    params = {"timeout_min": int(launcher.timeout_min), "mem_gb": launcher.mem_gb, "nodes": int(launcher.nodes),
              "gpus_per_node": int(launcher.gpus_per_node), "cpus_per_task": int(launcher.cpus_per_task),
              "tasks_per_node": int(launcher.tasks_per_node), "name": f"regionbench-{cfg.experiment}"}
    if launcher.kind == "slurm":
        params.update({k: v for k, v in {"slurm_partition": launcher.partition, "slurm_account": launcher.account,
                                         "slurm_array_parallelism": launcher.max_parallel}.items() if v})
    ex.update_parameters(**params)
    return ex


def submit(cfg: DictConfig, entry: str, argv: list[str]) -> dict[str, object]:
    """Submit one task per selected cell (a job array); returns {cell: submitit job} and writes
    ``<launcher.folder>/jobs.json``."""
    from bench.config import selected_cells, table_rows

    cells = selected_cells(cfg) if table_rows(cfg) else ["default/default"]
    base = [a for a in argv if not a.startswith(("cell=", "launcher.kind="))] + ["launcher.kind=none"]
    tasks = [CellTask(entry, base + ([f"cell={cell}"] if cell != "default/default" else [])) for cell in cells]
    ex = executor(cfg)
    with ex.batch():
        jobs = [ex.submit(task) for task in tasks]
    folder = Path(str(cfg.launcher.folder))
    folder.mkdir(parents=True, exist_ok=True)
    record = {cell: {"job_id": job.job_id, "entry": entry, "argv": task.argv}
              for cell, job, task in zip(cells, jobs, tasks)}
    from bench.atomic import write_atomic

    write_atomic(folder / "jobs.json", json.dumps(record, indent=1).encode())
    for cell, job in zip(cells, jobs):
        print(f"submitted {cell}: job {job.job_id} ({cfg.launcher.kind})")
    print(f"logs and jobs.json: {folder}\nstatus: python -m bench.launcher status {folder}")
    return dict(zip(cells, jobs))


def status(folder: str | Path) -> dict[str, str]:
    """{cell: state} of a submission: done / failed (from the task's result file), else queued or running
    (SLURM's state when sacct answers)."""
    import pickle

    folder = Path(folder)
    record = json.loads((folder / "jobs.json").read_text())
    out = {}
    for cell, info in record.items():
        job_id = str(info["job_id"])
        result = folder / job_id / f"{job_id}_0_result.pkl"
        results = [result] if result.is_file() else sorted((folder / job_id).glob("*_result.pkl"))
        if results:
            outcome, _ = pickle.loads(results[0].read_bytes())
            out[cell] = "done" if outcome == "success" else "failed"
        else:
            out[cell] = "queued or running"
    return out


def main(argv: list[str] | None = None):
    """``status FOLDER``: the state of each submitted cell; ``cells key=value ...``: the selected cells,
    one per line (what a plain sbatch array indexes: bench/tools/sbatch_cells.sh)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cells"]:
        from bench.config import load_config, selected_cells, table_rows

        cfg = load_config(argv[1:])
        cells = selected_cells(cfg) if table_rows(cfg) else ["default/default"]
        print("\n".join(cells))
        return cells
    if len(argv) != 2 or argv[0] != "status":
        sys.exit("usage: python -m bench.launcher status FOLDER | cells experiment=NAME [key=value ...]")
    states = status(argv[1])
    width = max((len(c) for c in states), default=4)
    print(f"{'cell'.ljust(width)}  state")
    for cell, state in states.items():
        print(f"{cell.ljust(width)}  {state}")
    return states


if __name__ == "__main__":
    main()
