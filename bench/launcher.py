"""Run an experiment's cells as cluster jobs with submitit: one array task per cell (train, eval) or
per shard group (extract).

    python train.py experiment=table6_decoders launcher.kind=slurm launcher.partition=gpu launcher.gpus_per_node=8
    python -m bench.extract experiment=table6_decoders launcher.kind=slurm launcher.partition=cpu
    python -m bench.launcher status results/table6_decoders/submitit
    python -m bench.launcher cells experiment=table6_decoders   # one cell per line (plain sbatch arrays)

``launcher.kind``: ``none`` (run here), ``slurm`` (sbatch through submitit), ``local`` (submitit's
local executor: real subprocesses on this machine, how the test suite runs it). For train.py and
eval.py each selected cell becomes one task of a job array running the same entry point with
``cell=<row/column>``. For bench.extract the cells are grouped by the shards they need (cells that
share an ``extract.shard_dir`` are extracted once) and each shard directory is split into
``launcher.shard_groups`` tasks (``extract.index=i extract.count=n``: task i writes shards i, i+n, ...;
the last to finish writes the manifest). Built-in mini datasets are generated before submission, so
tasks never generate one concurrently. Time, memory, GPUs, nodes, partition and account come from
``launcher.*``. A task that SLURM preempts or times out gets submitit's signal (USR2); its
``CellTask.checkpoint`` requeues the same command and the run resumes from its own checkpoints
(bench/checkpoints.py). Logs and the submission record (``jobs.json``: task -> job id) go to
``launcher.folder``; ``status`` reads each task's result file and, for SLURM jobs still without one,
asks sacct (PENDING, RUNNING, PREEMPTED, OUT_OF_MEMORY, ...).
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


def array_tasks(cfg: DictConfig, entry: str) -> dict[str, list[str]]:
    """{task name: the overrides it adds}: one per selected cell for train and eval; for extract one
    per shard group of each distinct shard directory (named ``<cell>#<i>of<n>`` after its first cell)."""
    from bench.config import cell_configs, selected_cells, table_rows

    cells = selected_cells(cfg) if table_rows(cfg) else ["default/default"]
    by_cell = {cell: [] if cell == "default/default" else [f"cell={cell}"] for cell in cells}
    if entry != "extract":
        return by_cell
    groups = int(cfg.launcher.shard_groups)
    if groups < 1:
        raise ValueError(f"launcher.shard_groups={groups}: must be >= 1")
    first: dict[str, str] = {}  # shard directory -> the first cell that needs it
    for cell, ccfg in cell_configs(cfg).items():
        first.setdefault(str(ccfg.extract.shard_dir), cell)
    return {(cell if groups == 1 else f"{cell}#{i}of{groups}"):
            by_cell[cell] + ([f"extract.index={i}", f"extract.count={groups}"] if groups > 1 else [])
            for cell in first.values() for i in range(groups)}


def prepare_datasets(cfg: DictConfig) -> None:
    """Generate the selected cells' built-in mini datasets here, before any task starts (a task would
    otherwise generate one while another reads it); real datasets are left as they are."""
    from bench.config import cell_configs
    from datamodules.datasets import prepare_dataset

    seen = set()
    for ccfg in cell_configs(cfg).values():
        if ccfg.dataset.generate is not None and str(ccfg.dataset.root) not in seen:
            seen.add(str(ccfg.dataset.root))
            prepare_dataset(ccfg.dataset)


def submit(cfg: DictConfig, entry: str, argv: list[str]) -> dict[str, object]:
    """Submit one array task per cell or shard group (``array_tasks``); returns {task name: submitit
    job} and writes ``<launcher.folder>/jobs.json``."""
    named = array_tasks(cfg, entry)
    prepare_datasets(cfg)
    base = [a for a in argv if not a.startswith(("cell=", "launcher.kind=", "extract.index=", "extract.count="))]
    tasks = {name: CellTask(entry, base + ["launcher.kind=none"] + extra) for name, extra in named.items()}
    ex = executor(cfg)
    with ex.batch():
        jobs = {name: ex.submit(task) for name, task in tasks.items()}
    folder = Path(str(cfg.launcher.folder))
    folder.mkdir(parents=True, exist_ok=True)
    record = {name: {"job_id": job.job_id, "kind": str(cfg.launcher.kind), "entry": entry, "argv": tasks[name].argv}
              for name, job in jobs.items()}
    from bench.atomic import write_atomic

    write_atomic(folder / "jobs.json", json.dumps(record, indent=1).encode())
    for name, job in jobs.items():
        print(f"submitted {name}: job {job.job_id} ({cfg.launcher.kind})")
    print(f"logs and jobs.json: {folder}\nstatus: python -m bench.launcher status {folder}")
    return jobs


def finished(folder: Path, job_id: str) -> str | None:
    """"done", "failed: <the error's last line>" from a task's result file, or None without one."""
    import pickle

    result = folder / job_id / f"{job_id}_0_result.pkl"
    results = [result] if result.is_file() else sorted((folder / job_id).glob("*_result.pkl"))
    if not results:
        return None
    outcome, payload = pickle.loads(results[0].read_bytes())
    if outcome == "success":
        return "done"
    lines = [line for line in str(payload).strip().splitlines() if line.strip()]
    return f"failed: {lines[-1].strip()}" if lines else "failed"


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} from one sacct call (submitit's reader of ``sacct --parsable2``);
    UNKNOWN for a job sacct does not list (or when sacct cannot be run)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    return {job_id: watcher.get_state(job_id, mode="cache") for job_id in job_ids}


def status(folder: str | Path) -> dict[str, str]:
    """{task: state} of a submission: done / failed (from the task's result file); for a SLURM task
    without one, sacct's state (PENDING, RUNNING, PREEMPTED, TIMEOUT, OUT_OF_MEMORY, ...);
    otherwise "queued or running"."""
    folder = Path(folder)
    record = json.loads((folder / "jobs.json").read_text())
    out = {name: finished(folder, str(info["job_id"])) for name, info in record.items()}
    waiting = [str(info["job_id"]) for name, info in record.items()
               if out[name] is None and info.get("kind") == "slurm"]
    sacct = slurm_states(waiting) if waiting else {}
    for name, info in record.items():
        if out[name] is None:
            state = sacct.get(str(info["job_id"]), "UNKNOWN")
            out[name] = "queued or running" if state == "UNKNOWN" else state
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
    print(f"{'task'.ljust(width)}  state")
    for cell, state in states.items():
        print(f"{cell.ljust(width)}  {state}")
    return states


if __name__ == "__main__":
    main()
