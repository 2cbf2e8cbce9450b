"""The cluster path for real, with submitit's local executor (subprocesses, not a mock): the
quickstart cells as array tasks of train.py, then their status."""
from __future__ import annotations

import json

from tests.conftest import tiny_overrides


def test_quickstart_cells_run_as_local_array_tasks_end_to_end(tiny_root, tmp_path, capsys):
    from bench.launcher import main as launcher_main
    from train import main

    argv = ["experiment=quickstart", *tiny_overrides(tiny_root), f"paths.results_root={tmp_path}",
            "trainer.max_epochs=1", "launcher.kind=local", "launcher.timeout_min=10", "launcher.cpus_per_task=1"]
    jobs = main(argv)
    assert sorted(jobs) == ["patch_linear/minivoc", "region_linear/minivoc"]
    for job in jobs.values():
        job.result()  # waits; raises the task's error if it failed
    for cell in jobs:
        metrics = json.loads((tmp_path / "quickstart" / cell / "metrics.json").read_text())
        assert 0 < metrics["miou"] <= 1 and metrics["training"]["epochs"] == 1
    folder = tmp_path / "quickstart" / "submitit"
    record = json.loads((folder / "jobs.json").read_text())
    assert {cell: info["argv"][-1] for cell, info in record.items()} == {c: f"cell={c}" for c in jobs}
    capsys.readouterr()
    assert launcher_main(["status", str(folder)]) == {c: "done" for c in jobs}
    assert "region_linear/minivoc  done" in capsys.readouterr().out


def test_the_plain_sbatch_script_runs_the_cell_of_its_array_index(tmp_path):
    """bench/tools/sbatch_cells.sh outside SLURM: SLURM_ARRAY_TASK_ID picks the cell, here with
    print_config=true so that nothing trains."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_SUBMIT_DIR": str(repo), "PY": os.sys.executable}
    out = subprocess.run(["bash", str(repo / "bench/tools/sbatch_cells.sh"), "train.py", "experiment=table6_decoders",
                          "print_config=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cells = subprocess.run([os.sys.executable, "-m", "bench.launcher", "cells", "experiment=table6_decoders"], cwd=repo,
                           capture_output=True, text=True, timeout=60).stdout.split()
    assert out.stdout.startswith(f"# cell {cells[1]}\n")


def tar_digests(root) -> list[str]:
    """sha256 of every shard tar under ``root`` (sorted): the shard bytes, whatever the folder names."""
    import hashlib

    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("shard-*.tar"))


def test_extraction_runs_as_shard_group_tasks_and_writes_the_bytes_of_one_process(tiny_root, tmp_path):
    """bench.extract with launcher.shard_groups=2: the quickstart's two shard directories become two
    tasks each (extract.index/count), and together they write the same shards as one process."""
    from bench.extract import main
    from tests.conftest import TINY

    argv = ["experiment=quickstart", *TINY, f"paths.data_root={tmp_path / 'data'}",
            f"paths.results_root={tmp_path / 'results'}", "launcher.kind=local", "launcher.timeout_min=10",
            "launcher.cpus_per_task=1", "launcher.shard_groups=2"]
    jobs = main(argv)
    assert sorted(jobs) == ["patch_linear/minivoc#0of2", "patch_linear/minivoc#1of2",
                            "region_linear/minivoc#0of2", "region_linear/minivoc#1of2"]
    for job in jobs.values():
        job.result()
    record = json.loads((tmp_path / "results" / "quickstart" / "submitit" / "jobs.json").read_text())
    assert record["region_linear/minivoc#1of2"]["argv"][-2:] == ["extract.index=1", "extract.count=2"]
    manifests = sorted((tmp_path / "data" / "shards").rglob("manifest.json"))
    assert len(manifests) == 4  # two shard directories x (train, val), each merged by its last task
    assert tar_digests(tmp_path / "data" / "shards") == tar_digests(tiny_root / "data" / "shards")


def task_process(job, timeout: float = 120.0) -> int:
    """The pid of the task process that submitit's local controller started for ``job``."""
    import time
    from pathlib import Path

    children = Path(f"/proc/{job._process.pid}/task/{job._process.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.1)
    raise TimeoutError(f"job {job.job_id} started no task process in {timeout} s")


def test_a_preempted_task_is_requeued_and_its_run_resumes_to_the_uninterrupted_result(tiny_root, tmp_path):
    """A preemption for real: SIGUSR2 (what SLURM sends before preempting or timing out a submitit job)
    to the training process once it has checkpointed. submitit calls CellTask.checkpoint, the local
    controller requeues the task, the run resumes from its checkpoint and ends with the metrics of an
    uninterrupted run."""
    import os
    import signal
    import sys
    import time

    import pytest

    from train import main

    if not sys.platform.startswith("linux"):
        pytest.skip("finds the task process through /proc")
    args = ["experiment=quickstart", "cell=region_linear/minivoc", *tiny_overrides(tiny_root),
            "trainer.max_epochs=40", "checkpoint.every_n_steps=5"]
    jobs = main([*args, f"paths.results_root={tmp_path / 'cut'}", "launcher.kind=local", "launcher.timeout_min=10",
                 "launcher.cpus_per_task=1"])
    job = jobs["region_linear/minivoc"]
    pid = task_process(job)
    last = tmp_path / "cut" / "quickstart" / "region_linear" / "minivoc" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file():
        assert time.monotonic() < deadline and job.state == "RUNNING", job.stderr()
        time.sleep(0.05)
    os.kill(pid, signal.SIGUSR2)
    job.result()
    assert "Requeued job" in job.stderr() or "Requeued job" in job.stdout()
    cut = json.loads((tmp_path / "cut" / "quickstart" / "region_linear" / "minivoc" / "metrics.json").read_text())
    assert cut["training"]["resumed"], "the requeued task trained from scratch instead of resuming"
    whole = main([*args, f"paths.results_root={tmp_path / 'whole'}"])["region_linear/minivoc"]
    assert cut["miou"] == whole["miou"] and cut["training"]["global_step"] == whole["training"]["global_step"]
    import torch

    weights = [torch.load(root / "quickstart/region_linear/minivoc/checkpoints/last.ckpt", weights_only=False)["state_dict"]
               for root in (tmp_path / "cut", tmp_path / "whole")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_status_asks_sacct_for_slurm_tasks_without_a_result(tmp_path, monkeypatch, capsys):
    """SLURM tasks still without a result file report sacct's state, read by submitit's sacct parser.
    There is no SLURM here: a stand-in ``sacct`` on PATH prints what sacct prints for such an array."""
    import pickle

    from bench.launcher import main as launcher_main

    folder = tmp_path / "submitit"
    names = {"a/x": "77_0", "b/x": "77_1", "c/x": "77_2", "d/x": "77_3"}
    folder.mkdir()
    (folder / "jobs.json").write_text(json.dumps({n: {"job_id": j, "kind": "slurm"} for n, j in names.items()}))
    (folder / "77_3").mkdir()
    (folder / "77_3" / "77_3_0_result.pkl").write_bytes(pickle.dumps(("error", "Traceback ...\nValueError: bad shard\n")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\nprintf 'JobID|State|NodeList\\n77_0|RUNNING|node1\\n"
                                   "77_0.batch|RUNNING|node1\\n77_1|PREEMPTED|node2\\n'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    states = launcher_main(["status", str(folder)])
    assert states == {"a/x": "RUNNING", "b/x": "PREEMPTED", "c/x": "queued or running",
                      "d/x": "failed: ValueError: bad shard"}
    assert capsys.readouterr().out.splitlines()[0].split() == ["task", "state"]
