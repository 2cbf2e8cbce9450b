"""Optional loggers: TensorBoard writes event files; wandb stays offline unless asked."""
from __future__ import annotations

import os

from bench.config import cell_config
from tests.conftest import tiny_config


def test_wandb_runs_offline_by_default_and_tensorboard_writes_events(tiny_root, tmp_path, monkeypatch):
    from train import train

    monkeypatch.delenv("WANDB_MODE", raising=False)
    for kind in ("wandb", "tensorboard"):
        cfg = tiny_config(tiny_root, "cell=region_linear/minivoc", "trainer.max_epochs=1", f"logger.kind={kind}",
                          f"paths.results_root={tmp_path / kind}")
        train(cfg)
    run = tmp_path / "wandb" / "quickstart" / "region_linear" / "minivoc"
    assert os.environ["WANDB_MODE"] in ("offline", "dryrun")  # wandb's two names for it
    assert list((run / "wandb").glob("offline-run-*")), "wandb did not write an offline run"
    events = tmp_path / "tensorboard" / "quickstart" / "region_linear" / "minivoc" / "logs"
    assert list(events.rglob("events.out.tfevents.*"))
    assert cell_config(cfg, "region_linear/minivoc").logger.wandb_mode == "offline"
