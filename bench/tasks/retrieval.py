"""One-shot object retrieval on COCO-format data (the paper's Table 8): ``bench.retrieval.evaluate``.

Unit: one image of the database split (``dataset.val_split``) with its COCO annotations rasterised to
a label map; its shards hold the same members as segmentation's (``hist.npy``, ``label.png``), so a
database shard set reads like any other. Nothing trains: ``python -m bench.extract`` writes query
and database vectors, ``eval.py`` builds the index, searches and scores mAP / P@50
(``bench.retrieval.evaluate.evaluate_retrieval``).
"""
from __future__ import annotations

from omegaconf import DictConfig

from bench.tasks import segmentation
from bench.tasks.base import Task


def extract(cfg: DictConfig, task: Task) -> dict:
    from bench.retrieval.evaluate import extract_retrieval

    return extract_retrieval(cfg, task)


def evaluate(cfg: DictConfig) -> dict:
    from bench.retrieval.evaluate import evaluate_retrieval

    return evaluate_retrieval(cfg)


def summary(metrics: dict) -> str:
    from bench.retrieval.evaluate import summary_line

    return summary_line(metrics)


def run(cfg: DictConfig) -> dict:
    """``python -m bench.retrieval``: extract, then evaluate."""
    if cfg.task != TASK.name:
        raise ValueError(f"experiment {cfg.experiment} has task={cfg.task}; python -m bench.retrieval runs task=retrieval")
    extract(cfg, TASK)
    return evaluate(cfg)


TASK = Task(
    name="retrieval", members=segmentation.MEMBERS, units=segmentation.dataset_items,
    load_unit=segmentation.load_unit, unit_members=segmentation.unit_members, check_unit=segmentation.check_unit,
    extract=extract, summary=summary, trains=False, evaluate=evaluate)
