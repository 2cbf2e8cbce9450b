"""Progress in a log (stdout not a terminal): plain lines, not carriage-return redraws."""
from __future__ import annotations

from bench.progress import bar_options, interactive
from bench.progress_lines import LineProgress
from tests.conftest import tiny_config


def test_a_training_run_logged_to_a_file_prints_a_few_plain_lines(tiny_root, capsys, tmp_path):
    from train import train

    assert not interactive()  # pytest captures stdout: the log case
    cfg = tiny_config(tiny_root, f"paths.results_root={tmp_path / 'results'}", "cell=region_linear/minivoc",
                      "trainer.enable_progress_bar=true", "trainer.max_epochs=2")
    train(cfg)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert lines and lines[-1].startswith("epoch 1: ") and "loss" in lines[-1]
    assert len(lines) <= 2 * 11  # at most one line per tenth of each epoch (and its last batch)
    assert any(line.startswith("test: ") for line in out.splitlines())


def test_tqdm_in_a_log_redraws_at_most_every_half_minute():
    assert bar_options()["mininterval"] >= 30 and isinstance(LineProgress().every, float)
