"""Zero-shot semantic segmentation (VOC, ADE20K, COCO, their mini versions): no training.

Unit and shards: segmentation's (``hist.npy``, ``label.png``), of the val split only, so a shard
set extracted for segmentation serves here too. The class names (``zeroshot.class_names`` or the
dataset's) are embedded by the backbone's own text tower (``bench.openvocab``: CLIP / MaskCLIP, SigLIP 2,
dino.txt, from the same local checkpoint file; vectors outside the image-text space, CLIP's or SigLIP 2's
without ``project=true``, are refused: ``openvocab.check_region_space``) with prompt ensembling; each region vector (``model.kind=region``)
or patch vector (``model.kind=patch``, shards with ``extract.patches=true``) gets the softmax of its
scaled cosine similarities to them (``models.zeroshot``), painted and scored with segmentation's
exact mIoU. ``eval.py`` runs it; ``train.py`` has nothing to fit.
"""
from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

from bench import runs
from bench.tasks import segmentation
from bench.tasks.base import Task
from datamodules.datasets import class_names, dataset_items

def extract(cfg: DictConfig, task: Task) -> dict:
    from bench.extraction import extract_splits
    from bench.openvocab import check_region_space

    name = cfg.backbone.name  # before any work: text cannot score region vectors outside the joint space
    check_region_space(name, OmegaConf.select(cfg, f"backbone.params.{name}.project"))
    check_key_smoothing(cfg)

    return extract_splits(cfg, lambda c: (c.dataset.val_split,), task)


def check_key_smoothing(cfg: DictConfig) -> None:
    """zeroshot.key_smoothing reads MaskCLIP's attention keys, which only a MaskCLIP backbone with
    ``attention_keys: true`` puts beside each vector; and its scores are not probabilities."""
    from bench.config_checks import ConfigError

    if cfg.zeroshot.key_smoothing is None:
        return
    name = cfg.backbone.name
    if not OmegaConf.select(cfg, f"backbone.params.{name}.attention_keys", default=False):
        raise ConfigError(f"zeroshot.key_smoothing needs MaskCLIP's attention keys beside each vector, which "
                          f"backbone.name={name} does not give: use a MaskCLIP backbone (maskclip_vitl14, "
                          f"maskclip_vitb16) with backbone.params.<name>.attention_keys=true")
    if cfg.zeroshot.threshold is not None:
        raise ConfigError("zeroshot.key_smoothing gives weighted sums of probabilities, which a probability "
                          "threshold cannot apply to: set zeroshot.threshold=null (zeroshot.background class or none)")


def models() -> dict:
    from models.zeroshot import MODELS

    return MODELS


def text_names(cfg: DictConfig) -> list[str]:
    """The texts: one per dataset class (without class 0 when zeroshot.background=threshold)."""
    names = list(cfg.zeroshot.class_names) if cfg.zeroshot.class_names is not None else class_names(cfg.dataset)
    if len(names) != cfg.dataset.num_classes:
        raise ValueError(f"zeroshot.class_names has {len(names)} names but dataset.num_classes is "
                         f"{cfg.dataset.num_classes}: give one name per class")
    return names[1:] if cfg.zeroshot.background == "threshold" else names


def text_embeddings(cfg: DictConfig):
    """(T, D) class text embeddings from the backbone's text tower (its checkpoint file)."""
    from bench.openvocab import backbone_text_embeddings

    name = cfg.backbone.name
    params = OmegaConf.to_container(cfg.backbone.params[name], resolve=True)
    return backbone_text_embeddings(name, params, text_names(cfg), cfg.zeroshot.templates)


def build_model(cfg: DictConfig, manifest: dict):
    from models.zeroshot import MODELS

    model = runs.build_model(cfg, manifest, MODELS)
    model.set_text(text_embeddings(cfg), cfg.zeroshot.background, cfg.zeroshot.threshold, cfg.zeroshot.logit_scale,
                   cfg.zeroshot.prompt_denoising, cfg.zeroshot.key_smoothing)
    return model


def report(cfg: DictConfig) -> dict:
    return {**segmentation.report(cfg), "texts": text_names(cfg),
            "zeroshot": {k: cfg.zeroshot[k] for k in ("templates", "background", "threshold", "logit_scale",
                                                      "prompt_denoising", "key_smoothing")}}


TASK = Task(
    name="zeroshot", members=segmentation.MEMBERS, units=dataset_items, load_unit=segmentation.load_unit,
    unit_members=segmentation.unit_members, check_unit=segmentation.check_unit, extract=extract,
    summary=segmentation.summary, trains=False, models=models,
    build_datamodule=functools.partial(runs.build_datamodule, members=segmentation.MEMBERS),
    check_data=runs.check_shards, build_model=build_model, report=report,
    prediction_writer=segmentation.prediction_writer, pictures=segmentation.pictures)
