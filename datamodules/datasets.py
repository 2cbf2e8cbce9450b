"""Raw datasets by directory layout: sample lists, label readers and class names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from omegaconf import DictConfig

from datamodules import ade20k, voc


@dataclass(frozen=True)
class Layout:
    iter_samples: Callable[[Path, str], Iterator[voc.VocSample]]
    load_label: Callable[[Path], np.ndarray]
    class_names: Callable[[Path], list[str]]


LAYOUTS = {
    "voc": Layout(voc.iter_samples, voc.load_label, lambda root: list(voc.VOC_CLASSES)),
    "ade20k": Layout(ade20k.iter_samples, ade20k.load_label, ade20k.class_names),
}


def layout(dataset: DictConfig) -> Layout:
    if dataset.layout not in LAYOUTS:
        raise ValueError(f"dataset.layout={dataset.layout!r} is unknown; valid: {', '.join(LAYOUTS)}")
    return LAYOUTS[dataset.layout]


def prepare_dataset(dataset: DictConfig) -> None:
    """Generate the built-in mini dataset if the config asks for it (idempotent)."""
    if dataset.generate is not None:
        from bench.minivoc import generate_minivoc

        generate_minivoc(Path(dataset.root), **dataset.generate)


def dataset_items(dataset: DictConfig, split: str) -> list[voc.VocSample]:
    """The split's samples in file order, capped at ``dataset.max_images``."""
    items = list(layout(dataset).iter_samples(dataset.root, split))
    return items[: dataset.max_images] if dataset.max_images else items


def class_names(dataset: DictConfig) -> list[str]:
    names = layout(dataset).class_names(Path(dataset.root))
    return names if len(names) == dataset.num_classes else [str(i) for i in range(dataset.num_classes)]
