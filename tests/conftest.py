"""Shared fixtures: a tiny MiniVOC + shard set built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import cell_config, load_config

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "data"

# A tiny but complete configuration: 12 train / 6 val images of 160x120, 4 images per shard.
TINY = ["dataset.generate.num_train=12", "dataset.generate.num_val=6", "dataset.generate.width=160",
        "dataset.generate.height=120", "extract.samples_per_shard=4", "extract.progress=false",
        "data.batch_size=4", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        "logger.kind=none"]


def tiny_overrides(root: Path) -> list[str]:
    return TINY + [f"paths.data_root={root / 'data'}", f"paths.results_root={root / 'results'}"]


def tiny_config(root: Path, *extra: str, experiment: str = "quickstart"):
    return load_config([f"experiment={experiment}", *tiny_overrides(root), *extra])


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """MiniVOC + both quickstart shard sets (SLIC regions, patch grids), extracted once."""
    from bench.extract import extract

    root = tmp_path_factory.mktemp("tiny")
    extract(tiny_config(root))
    return root


@pytest.fixture(scope="session")
def region_cfg(tiny_root):
    return cell_config(tiny_config(tiny_root), "region_linear/minivoc")


def shared_or_skip() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"real dataset samples not found at {FIXTURES} (../shared beside the repository)")
    return FIXTURES


def eval_on_one_and_two_ranks(args: list[str], results: Path, cell: str, tmp: Path) -> dict[int, dict]:
    """``eval.py`` of a trained ``cell`` (config ``args``, runs under ``results``) on a copy of its
    results, in this process (1 rank) and as a 2-rank gloo DDP subprocess: {ranks: metrics.json}."""
    import json
    import shutil
    import subprocess
    import sys

    from eval import evaluate

    experiment = next(a.split("=", 1)[1] for a in args if a.startswith("experiment="))
    out = {}
    for devices in (1, 2):
        where = tmp / f"results_{devices}"
        shutil.copytree(results, where)
        run = [*args, f"paths.results_root={where}", f"cell={cell}", "trainer.accelerator=cpu",
               f"trainer.devices={devices}", "trainer.strategy=" + ("ddp" if devices > 1 else "auto")]
        if devices == 1:
            evaluate(load_config(run))
        else:
            done = subprocess.run([sys.executable, "eval.py", *run], cwd=Path(__file__).resolve().parents[1],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
        out[devices] = json.loads((where / experiment / cell / "metrics.json").read_text())
    return out
