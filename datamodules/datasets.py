"""Raw datasets as lists of (id, image path, label path), by directory layout."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from datamodules import voc

LAYOUTS = {"voc": voc.iter_samples}


def prepare_dataset(dataset: DictConfig) -> None:
    """Generate the built-in mini dataset if the config asks for it (idempotent)."""
    if dataset.generate is not None:
        from bench.minivoc import generate_minivoc

        generate_minivoc(Path(dataset.root), **dataset.generate)


def dataset_items(dataset: DictConfig, split: str) -> list[voc.VocSample]:
    """The split's samples in file order, capped at ``dataset.max_images``."""
    if dataset.layout not in LAYOUTS:
        raise ValueError(f"dataset.layout={dataset.layout!r} is unknown; valid: {', '.join(LAYOUTS)}")
    items = list(LAYOUTS[dataset.layout](dataset.root, split))
    return items[: dataset.max_images] if dataset.max_images else items


CLASS_NAMES = {"voc": voc.VOC_CLASSES}


def class_names(dataset: DictConfig) -> list[str]:
    names = list(CLASS_NAMES[dataset.layout])
    if len(names) != dataset.num_classes:
        return [str(i) for i in range(dataset.num_classes)]
    return names
