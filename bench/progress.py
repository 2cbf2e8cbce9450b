"""Progress for logs as well as terminals.

On a terminal the usual bars (tqdm, Lightning's TQDMProgressBar). When stdout is not a terminal
(a SLURM ``.out`` file, CI, ``make demo > log``), a bar's carriage-return redraws pile up as
megabytes of text; instead ``bar_options`` slows tqdm down to a line every LINE_SECONDS, and
Lightning's bar becomes ``bench.progress_lines.LineProgress`` (a line per tenth of an epoch). This
module does not import Lightning: extraction and its worker processes use it.
"""
from __future__ import annotations

import sys

LINE_FRACTION, LINE_SECONDS = 0.1, 30.0


def interactive(stream=None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def bar_options() -> dict:
    """tqdm keyword arguments: redraw as usual on a terminal, at most every LINE_SECONDS in a log."""
    return {} if interactive() else {"mininterval": LINE_SECONDS, "maxinterval": LINE_SECONDS * 4}
