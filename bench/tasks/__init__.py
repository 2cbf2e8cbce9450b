"""The task registry: the only place that knows which tasks exist.

    TASKS[cfg.task] -> bench.tasks.base.Task

``python -m bench.extract``, ``train.py`` and ``eval.py`` look the task up here and call its fields
(``bench.tasks.base.Task``); no other module branches on the task, and the config check of ``task``
reads this dict. Adding a task = one module beside these (its ``TASK``: the shard members it adds to
the common region members, how a unit is read and which members and meta it gets, its extraction,
datamodule and LightningModule or evaluator, report and summary) and one line below.
"""
from __future__ import annotations

from bench.tasks import multiview, retrieval, segmentation, video, zeroshot
from bench.tasks.base import Task

TASKS: dict[str, Task] = {
    "segmentation": segmentation.TASK,
    "retrieval": retrieval.TASK,
    "multiview": multiview.TASK,
    "video": video.TASK,
    "zeroshot": zeroshot.TASK,
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; valid: {', '.join(TASKS)}")
    return TASKS[name]
