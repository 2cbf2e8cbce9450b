"""Lightning's progress in a log: ``LineProgress`` prints one plain line per stage every ``every``
fraction of it or ``seconds`` of wall time, instead of a bar's carriage-return redraws (see
bench/progress.py for tqdm's side)."""
from __future__ import annotations

import sys
import time

import pytorch_lightning as pl

from bench.progress import LINE_FRACTION, LINE_SECONDS, interactive


class LineProgress(pl.callbacks.ProgressBar):
    """One line per ``every`` of an epoch (or ``seconds``), with the step and the logged loss."""

    def __init__(self, every: float = LINE_FRACTION, seconds: float = LINE_SECONDS, stream=None):
        super().__init__()
        self.every, self.seconds, self.stream = every, seconds, stream or sys.stdout
        self._enabled, self._last, self._shown = True, 0.0, -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, text: str) -> None:
        if self._enabled:
            print(text, file=self.stream, flush=True)

    def _maybe(self, stage: str, done: int, total, trainer) -> None:
        now = time.monotonic()
        total = int(total) if isinstance(total, (int, float)) and total != float("inf") else 0
        step = max(1, int(total * self.every)) if total else 0
        bucket = done // step if step else -1
        if done == total or (step and bucket != self._shown) or now - self._last >= self.seconds:
            self._shown, self._last = bucket, now
            loss = trainer.callback_metrics.get("train/loss")
            extra = f", loss {float(loss):.4f}" if loss is not None and stage.startswith("epoch") else ""
            self._line(f"{stage}: {done}/{total or '?'} batches{extra}")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._shown, self._last = -1, time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe(f"epoch {trainer.current_epoch}", batch_idx + 1, self.total_train_batches, trainer)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._shown, self._last = -1, time.monotonic()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        batches = trainer.num_test_batches
        self._maybe("test", batch_idx + 1, batches[dataloader_idx] if isinstance(batches, list) else batches, trainer)


def progress_callbacks(enabled: bool) -> list:
    """The progress bar callback to add to a Trainer: none on a terminal (Lightning's own bar), a
    ``LineProgress`` in a log."""
    return [LineProgress()] if enabled and not interactive() else []
