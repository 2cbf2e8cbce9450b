"""MaskCLIP+-style training: a segmentation student trained on a zero-shot teacher's predictions.

    pseudo_labels.teacher: {backbone.name: maskclip_vitl14, model.kind: patch, regions.source: none,
                            extract.patches: true, zeroshot.prompt_denoising: 0.5}

The teacher's config (``bench.config.teacher_config``) is the student's with ``task=zeroshot``, these
overrides (checked as any layer: an unknown key is an error naming it) and the dataset's val split set
to its train split. ``python -m bench.extract`` on the student first makes the teacher
(``ensure_teacher``, given the extraction and eval.py's ``eval_cell``): the zeroshot task's extraction
of that split, then ``eval_cell`` with save_predictions=true, which predicts every train image and writes
its PNG in the layout's prediction format:

    <pseudo_labels.dir>/<teacher hash>/teacher/<layout prediction subdir>/<id>.png
    <pseudo_labels.dir>/<teacher hash>/teacher/metrics.json   the teacher's mIoU against the real train labels
    <pseudo_labels.dir>/<teacher hash>/done.json              written last, atomically: the teacher is finished

A finished teacher (done.json) is reused, never recomputed; a killed one is redone (its shards resume).
The student's train units read their label maps from those PNGs (``dataset_items(labels=...)``) with
the layout's own ``load_label``: VOC predictions are its label palette (undecided pixels written as
class 0, background), ADE20K's are its annotations (undecided written as 0, "other", read as ignore).
Val keeps the real labels. Student shards go to ``<extract.shard_dir>-teacher-<hash>``, and the teacher
hash enters the student's config hash (``bench.config.student_config``, ``config_hash``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from bench.atomic import locked, write_atomic
from bench.config import teacher_config, teacher_hash
from bench.config_checks import ConfigError

log = logging.getLogger("regionbench.pseudo_labels")

STAMP = "done.json"


def teacher_dir(cfg: DictConfig) -> Path:
    return Path(cfg.pseudo_labels.dir) / teacher_hash(cfg)


def check_teacher(cfg: DictConfig) -> None:
    """Before any work: the dataset's predictions can be read as its labels, and the teacher's
    backbone is text-aligned (the zeroshot task's own checks)."""
    from bench.openvocab import check_region_space, load_tokenizer
    from datamodules.datasets import layout

    if not layout(cfg.dataset).predictions_are_labels:
        raise ConfigError(f"pseudo_labels.teacher: dataset.layout={cfg.dataset.layout} writes predictions in another "
                          "format than its label maps, so they cannot be its train labels (voc and ade20k can)")
    teacher = teacher_config(cfg)
    name = teacher.backbone.name
    params = teacher.backbone.params[name]
    try:
        check_region_space(name, OmegaConf.select(params, "project"))
        load_tokenizer(name, OmegaConf.select(params, "checkpoint"))  # refuses a backbone without a text tower
    except ValueError as err:
        raise ConfigError(f"pseudo_labels.teacher cannot label by class-name texts: {err}") from None


def ensure_teacher(cfg: DictConfig, extract: Callable[[DictConfig], dict],
                   predict: Callable[[DictConfig], dict]) -> dict:
    """The teacher's labels of ``cfg``'s train split, made unless done.json says they are; returns the
    record in done.json. ``extract``: ``bench.extract.extract``; ``predict``: eval.py's ``eval_cell``
    (scores a zero-shot cell and, with save_predictions, writes its label PNGs)."""
    directory = teacher_dir(cfg)
    if (directory / STAMP).is_file():
        log.info("teacher %s finished before, reused: %s", directory.name, directory)
        return record(cfg)
    from bench.extraction import process_index

    if process_index(cfg)[1] > 1:
        raise ConfigError(f"the teacher's pseudo labels ({directory}) are made by one process: run python -m bench.extract "
                          "for this cell once without extract.count (torchrun, an array job), then share the rest")
    with locked(directory / ".lock"):  # a second extraction waits for the first one's teacher
        if (directory / STAMP).is_file():
            return record(cfg)
        teacher = teacher_config(cfg)  # its run directory is directory/teacher
        teacher.paths.results_root, teacher.experiment = str(directory.parent), directory.name
        teacher.cell, teacher.save_predictions = "teacher", True
        log.info("teacher %s: labelling split %s of %s", directory.name, teacher.dataset.val_split, teacher.dataset.name)
        extract(teacher)  # the zeroshot task's extraction of its val split (= the student's train split)
        metrics = predict(teacher)  # every image's label PNG, and its mIoU against the real labels
        labels = label_dir(cfg)
        from datamodules.datasets import dataset_items

        dataset_items(teacher.dataset, teacher.dataset.val_split, labels={teacher.dataset.val_split: str(labels)})
        done = {"teacher": OmegaConf.to_container(cfg.pseudo_labels.teacher, resolve=True),
                "teacher_hash": directory.name, "label_dir": str(labels),
                "train_images_labelled": metrics["num_images"],
                "teacher_agreement_with_train_labels": metrics["miou"],
                "teacher_metrics": str(directory / "teacher" / "metrics.json")}
        write_atomic(directory / STAMP, json.dumps(done, indent=1).encode())
    log.info("teacher %s: %d train images labelled, agreement with the train labels: mIoU %.4f", directory.name,
             done["train_images_labelled"], done["teacher_agreement_with_train_labels"])
    return done


def label_dir(cfg: DictConfig) -> Path:
    from datamodules.datasets import layout

    return teacher_dir(cfg) / "teacher" / layout(cfg.dataset).prediction_subdir


def record(cfg: DictConfig) -> dict:
    """done.json of ``cfg``'s teacher, or an error saying how to make it."""
    stamp = teacher_dir(cfg) / STAMP
    if not stamp.is_file():
        raise FileNotFoundError(f"{stamp} is missing: the teacher's pseudo labels are not finished. Run: python -m "
                                f"bench.extract experiment={cfg.experiment}" + (f" cell={cfg.cell}" if cfg.cell else ""))
    return json.loads(stamp.read_text())


def report(cfg: DictConfig) -> dict:
    """What a student's metrics.json says of its teacher (empty without one)."""
    return {} if cfg.pseudo_labels.teacher is None else {"pseudo_labels": record(cfg)}
