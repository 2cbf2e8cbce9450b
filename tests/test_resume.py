"""Training runs survive faults (issue 12, items 1-4): a SIGKILLed run resumes and ends bit-identical to an
uninterrupted one; damaged checkpoints are moved aside; rerun/resume=false train afresh; eval scores the
recorded checkpoint; how a run executes stays out of the config hash (DDP evaluation end to end:
tests/test_pipeline.py::test_two_rank_ddp_eval_equals_one_rank_and_keeps_the_training_record).

Faults are real: a train.py process is SIGKILLed (inside a chosen checkpoint write, or at a random moment
while it writes a checkpoint every step), checkpoint files are truncated and byte-flipped on disk.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.config import cell_config, config_hash
from bench.config import run_dir
from tests.conftest import tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
CELL = "region_linear/minivoc"
# 3197 training regions in batches of 256: 13 optimizer steps per epoch, 39 in all.
RUN = [f"cell={CELL}", "data.region_batch_size=256", "trainer.max_epochs=3"]
STEPS_PER_EPOCH = 13

# train.py, SIGKILLed (no handler runs) in the middle of its $KILL_IN_WRITE-th checkpoint write: the new state
# is complete in last.<host>-<pid>.ckpt.tmp and fsynced, not yet renamed over last.ckpt.
KILL_HARNESS = """
import os, signal, sys
import train
from bench.config import load_config

writes, fsync = 0, os.fsync

def fsync_then_die(fd):
    global writes
    fsync(fd)
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if name.startswith("last.") and name.endswith(".ckpt.tmp"):
        writes += 1
        if writes == int(os.environ["KILL_IN_WRITE"]):
            os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync_then_die
train.train(load_config(sys.argv[1:]))
"""


def config(tiny_root: Path, results: Path, *extra: str):
    return tiny_config(tiny_root, *RUN, f"paths.results_root={results}", *extra)


def cell_dir(tiny_root: Path, results: Path) -> Path:
    return run_dir(cell_config(config(tiny_root, results), CELL))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(directory / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def assert_same_result(directory: Path, metrics: dict, reference: tuple[Path, dict], context: str = "") -> None:
    """Bit-identical weights and confusion matrix to the uninterrupted run."""
    ref_dir, ref_metrics = reference
    assert metrics["confusion"] == ref_metrics["confusion"], context
    mine, theirs = weights(directory), weights(ref_dir)
    assert mine.keys() == theirs.keys(), context
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), f"{key} {context}"


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run: 3 epochs, a checkpoint at every epoch end only."""
    from train import train

    results = tmp_path_factory.mktemp("reference")
    metrics = train(config(tiny_root, results))[CELL]
    return cell_dir(tiny_root, results), metrics


@pytest.fixture(scope="module")
def killed(tiny_root, tmp_path_factory) -> Path:
    """A results root whose run, checkpointing every 5 steps, was SIGKILLed while writing its 5th checkpoint
    (step 20, in epoch 1: saves at steps 5, 10, 13 = the end of epoch 0, 15, 20): last.ckpt holds step 15,
    previous.ckpt step 13, and the step-20 state lies complete in a .tmp file that was never renamed."""
    results = tmp_path_factory.mktemp("killed")
    args = [*tiny_overrides(tiny_root), "experiment=quickstart", *RUN, f"paths.results_root={results}",
            "checkpoint.every_n_steps=5"]
    out = subprocess.run([sys.executable, "-c", KILL_HARNESS, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**child_env(), "KILL_IN_WRITE": "5"})
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert not (cell_dir(tiny_root, results) / "metrics.json").exists()
    return results


def resume(tiny_root: Path, results: Path, *extra: str) -> dict:
    from train import train

    return train(config(tiny_root, results, *extra))[CELL]


def test_run_sigkilled_while_writing_a_checkpoint_resumes_mid_epoch_and_ends_identical_to_an_uninterrupted_run(
        tiny_root, killed, reference, tmp_path, caplog):
    """Before: no checkpoint existed until training ended, and the re-run silently started from epoch 0."""
    caplog.set_level("INFO")
    results = tmp_path / "results"
    shutil.copytree(killed, results)
    checkpoints = cell_dir(tiny_root, results) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.suffix != ".tmp") == ["last.ckpt", "previous.ckpt"]
    assert len(list(checkpoints.glob("last.*.ckpt.tmp"))) == 1  # the write the kill cut short
    metrics = resume(tiny_root, results, "checkpoint.every_n_steps=5")
    assert "an unfinished checkpoint write of a killed run" in caplog.text and not list(checkpoints.glob("*.tmp"))
    assert f"resuming {CELL} from epoch 1, step 15" in caplog.text
    assert_same_result(checkpoints.parent, metrics, reference)
    assert metrics["epochs"] == 3 and metrics["training"]["global_step"] == 3 * STEPS_PER_EPOCH
    assert [(r["epoch"], r["step"]) for r in metrics["training"]["resumed"]] == [(1, 15)]


def test_run_killed_at_a_random_moment_resumes_to_the_same_result(tiny_root, reference, tmp_path, caplog):
    """A checkpoint every step, SIGKILL at a random moment after the first appears (often inside a write)."""
    caplog.set_level("INFO")
    results = tmp_path / "results"
    args = [*tiny_overrides(tiny_root), "experiment=quickstart", *RUN, f"paths.results_root={results}",
            "checkpoint.every_n_steps=1"]
    child = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = cell_dir(tiny_root, results) / "checkpoints"
    deadline = time.monotonic() + 120
    while not checkpoints.is_dir() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    delay = random.SystemRandom().uniform(0, 1.0)  # not the random module: train() seeds it
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    metrics = resume(tiny_root, results, "checkpoint.every_n_steps=1")
    assert_same_result(cell_dir(tiny_root, results), metrics, reference,
                       f"killed {delay:.3f} s after the first checkpoint; resumed at {metrics['training']['resumed']}")
    assert not list(checkpoints.glob("*.tmp")), "an unfinished checkpoint write was left behind"


def test_truncated_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous_one(
        tiny_root, killed, reference, tmp_path, caplog):
    caplog.set_level("INFO")
    results = tmp_path / "results"
    shutil.copytree(killed, results)
    checkpoints = cell_dir(tiny_root, results) / "checkpoints"
    last = checkpoints / "last.ckpt"
    with open(last, "r+b") as f:  # what a kill during a non-atomic copy to another filesystem leaves
        f.truncate(last.stat().st_size // 2)
    metrics = resume(tiny_root, results, "checkpoint.every_n_steps=5")
    damaged = list(checkpoints.glob("last.ckpt.damaged-*"))
    assert len(damaged) == 1 and f"moved to {damaged[0]}" in caplog.text
    assert f"resuming {CELL} from epoch 1, step 13" in caplog.text  # the end of epoch 0
    assert_same_result(cell_dir(tiny_root, results), metrics, reference)


def test_byte_flipped_checkpoints_are_detected_and_the_run_restarts_from_scratch(
        tiny_root, killed, reference, tmp_path, caplog):
    caplog.set_level("INFO")
    results = tmp_path / "results"
    shutil.copytree(killed, results)
    checkpoints = cell_dir(tiny_root, results) / "checkpoints"
    for name in ("last.ckpt", "previous.ckpt"):  # one bit inside the weights: same size, still a valid zip
        data = bytearray((checkpoints / name).read_bytes())
        data[len(data) // 2] ^= 0x04
        (checkpoints / name).write_bytes(bytes(data))
    metrics = resume(tiny_root, results, "checkpoint.every_n_steps=5")
    assert len(list(checkpoints.glob("*.damaged-*"))) == 2
    assert f"no usable checkpoint left: training {CELL} from scratch" in caplog.text
    assert "resuming" not in caplog.text
    assert_same_result(cell_dir(tiny_root, results), metrics, reference)


def test_damaged_final_checkpoint_is_named_by_eval_and_train_repairs_it(tiny_root, reference, tmp_path, caplog):
    """Before: eval.py and train.py died with torch's zip error on every later run."""
    from eval import evaluate

    caplog.set_level("INFO")
    results = tmp_path / "results"
    shutil.copytree(reference[0].parents[2], results)
    last = cell_dir(tiny_root, results) / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=r"is damaged .*moved to .*python train.py experiment=quickstart"):
        evaluate(config(tiny_root, results))
    assert not last.exists()
    metrics = resume(tiny_root, results)  # the epoch-end state before it is still there: one epoch retrained
    assert f"resuming {CELL} from epoch 2, step 26" in caplog.text
    assert_same_result(cell_dir(tiny_root, results), metrics, reference)
    assert evaluate(config(tiny_root, results))[CELL]["confusion"] == reference[1]["confusion"]


def test_rerun_trains_afresh_and_keeps_the_old_run_aside(tiny_root, reference, tmp_path, caplog):
    """Before: rerun=true restored the finished checkpoint and stopped at once ("max_epochs reached")."""
    caplog.set_level("INFO")
    results = tmp_path / "results"
    shutil.copytree(reference[0].parents[2], results)
    directory = cell_dir(tiny_root, results)
    old = json.loads((directory / "metrics.json").read_text())
    metrics = resume(tiny_root, results, "rerun=true")
    assert "resuming" not in caplog.text
    assert metrics["training"]["resumed"] == [] and metrics["training"]["global_step"] == 3 * STEPS_PER_EPOCH
    aside = [p for p in directory.parent.iterdir() if p.name.startswith("minivoc@")]
    assert len(aside) == 1 and json.loads((aside[0] / "metrics.json").read_text()) == old
    assert_same_result(directory, metrics, reference)  # training is deterministic


def test_resume_false_trains_afresh_and_eval_scores_exactly_the_recorded_checkpoint(
        tiny_root, reference, tmp_path):
    """Before: resume=false wrote last-v1.ckpt and eval.py went on scoring the stale last.ckpt."""
    from eval import evaluate

    results = tmp_path / "results"
    shutil.copytree(reference[0].parents[2], results)
    directory = cell_dir(tiny_root, results)
    one_epoch = resume(tiny_root, results, "resume=false", "trainer.max_epochs=1")
    assert sorted(p.name for p in (directory / "checkpoints").iterdir()) == ["last.ckpt"]
    assert one_epoch["epochs"] == 1 and one_epoch["confusion"] != reference[1]["confusion"]
    scored = evaluate(config(tiny_root, results, "trainer.max_epochs=1"))[CELL]
    assert scored["confusion"] == one_epoch["confusion"] and scored["epochs"] == 1
    # another checkpoint in its place (here: the 3-epoch run's) is not what the record names: refused
    aside = next(p for p in directory.parent.iterdir() if p.name.startswith("minivoc@"))
    shutil.copy(aside / "checkpoints" / "last.ckpt", directory / "checkpoints" / "last.ckpt")
    with pytest.raises(RuntimeError, match="is not the checkpoint this cell's result was computed from"):
        evaluate(config(tiny_root, results, "trainer.max_epochs=1"))


def test_how_a_run_executes_does_not_enter_the_config_hash(tiny_root, tmp_path):
    cfg = cell_config(config(tiny_root, tmp_path), CELL)
    same = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.num_nodes=2", "trainer.accelerator=gpu",
            "data.num_workers=2", "trainer.enable_progress_bar=false", "extract.progress=false",
            "checkpoint.every_n_steps=7", "checkpoint.every_minutes=30", "logger.kind=csv"]
    for override in same:
        assert config_hash(cell_config(config(tiny_root, tmp_path, override), CELL)) == config_hash(cfg), override
    for override in ("trainer.max_epochs=4", "model.lr=0.5", "trainer.precision=bf16-mixed"):
        assert config_hash(cell_config(config(tiny_root, tmp_path, override), CELL)) != config_hash(cfg), override


def test_time_based_checkpoints_are_written_mid_epoch(tiny_root, tmp_path):
    """checkpoint.every_minutes (cluster wall-time limits): here every 0.6 ms, so after every step."""
    from bench.checkpoints import read_checkpoint, resume_point

    resume(tiny_root, tmp_path, "trainer.max_epochs=1", "checkpoint.every_minutes=0.00001")
    checkpoints = cell_dir(tiny_root, tmp_path) / "checkpoints"
    last_step = STEPS_PER_EPOCH - 1  # the epoch-end checkpoint replaced it as last.ckpt
    assert resume_point(read_checkpoint(checkpoints / "previous.ckpt")) == (0, last_step, last_step)
    assert resume_point(read_checkpoint(checkpoints / "last.ckpt")) == (1, STEPS_PER_EPOCH, 0)
