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
