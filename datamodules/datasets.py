"""Raw datasets by directory layout: sample lists, label readers and class names."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from omegaconf import DictConfig

from datamodules import ade20k, coco, folder, kinetics, scannet, voc


@dataclass(frozen=True)
class Layout:
    iter_samples: Callable[[Path, str], Iterator[voc.VocSample]]
    load_label: Callable[[Path], np.ndarray] | None  # None: units are not an image and a label map
    class_names: Callable[[Path], list[str]]
    # (directory, image id, prediction (H, W) int, -1 = undecided) -> the PNG written
    save_prediction: Callable[[Path, str, np.ndarray], Path] | None = None
    prediction_subdir: str = "predictions"  # under the run directory
    generate: Callable[..., Path] | None = None  # writes the built-in mini set: (root, **dataset.generate)
    # save_prediction's PNGs are in load_label's own format (a teacher's predictions can be train labels)
    predictions_are_labels: bool = False


def _generate_minivoc(root: Path, **params) -> Path:
    from datamodules.synthetic.minivoc import generate_minivoc

    return generate_minivoc(root, **params)


def _generate_miniade(root: Path, **params) -> Path:
    from datamodules.synthetic.miniade import generate_miniade

    return generate_miniade(root, **params)


def _generate_minicoco(root: Path, **params) -> Path:
    from datamodules.synthetic.minicoco import generate_minicoco

    return generate_minicoco(root, **params)


def _generate_miniscannet(root: Path, **params) -> Path:
    from datamodules.synthetic.miniscannet import generate_miniscannet

    return generate_miniscannet(root, **params)


def _generate_minikinetics(root: Path, **params) -> Path:
    from datamodules.synthetic.minikinetics import generate_minikinetics

    return generate_minikinetics(root, **params)


def _scannet_classes(root: Path) -> list[str]:
    return [name for _, name in scannet.read_scored_classes(Path(root) / scannet.CLASSES_NAME)]


LAYOUTS = {
    "voc": Layout(voc.iter_samples, voc.load_label, lambda root: list(voc.VOC_CLASSES), voc.save_prediction,
                  "results/VOC2012/Segmentation/comp5_val_cls", _generate_minivoc, predictions_are_labels=True),
    "ade20k": Layout(ade20k.iter_samples, ade20k.load_label, ade20k.class_names, ade20k.save_prediction,
                     "predictions", _generate_miniade, predictions_are_labels=True),
    # label_path is a coco.CocoLabel (annotation file, image id); labels: contiguous category indices
    "coco": Layout(coco.iter_samples, coco.load_label, coco.class_names, coco.save_prediction,
                   generate=_generate_minicoco),
    "folder": Layout(folder.iter_samples, folder.load_label, folder.class_names),  # own images, unlabelled
    # RGB-D frames (task: multiview, which lists and reads its frames itself: bench/tasks/multiview.py)
    "scannet": Layout(lambda root, split: scannet.iter_frames(root, split, "scannet"), None, _scannet_classes,
                      generate=_generate_miniscannet),
    # video clips (task: video, which samples their frames itself: bench/tasks/video.py)
    "kinetics": Layout(lambda root, split: sum(kinetics.list_clips(root, split), []), None, kinetics.class_names,
                       generate=_generate_minikinetics),
    "scannet_frames_25k": Layout(lambda root, split: scannet.iter_frames(root, split, "scannet_frames_25k"), None,
                                 _scannet_classes),
}


def layout(dataset: DictConfig) -> Layout:
    if dataset.layout not in LAYOUTS:
        raise ValueError(f"dataset.layout={dataset.layout!r} is unknown; valid: {', '.join(LAYOUTS)}")
    return LAYOUTS[dataset.layout]


def prepare_dataset(dataset: DictConfig) -> None:
    """Generate the built-in mini dataset if the config asks for it (idempotent). Never into a
    directory that holds files RegionBench did not generate: a downloaded dataset's root given with
    ``dataset.generate`` still set would otherwise receive a mini dataset's files."""
    if dataset.generate is not None:
        generator = layout(dataset).generate
        if generator is None:
            raise ValueError(f"dataset.layout={dataset.layout} has no built-in generator: set dataset.generate=null "
                             f"and dataset.root to the downloaded dataset")
        check_generation_root(Path(dataset.root))
        generator(Path(dataset.root), **dataset.generate)


GENERATED_MARK = ".regionbench_"  # every generator's stamp (and owner file) starts with it


def check_generation_root(root: Path) -> None:
    """Refuse a non-empty ``root`` without a generator's stamp in it or two levels down (MiniVOC's is in
    VOCdevkit/VOC2012), before anything is written."""
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    stamped = any(any(root.glob(f"{level}{GENERATED_MARK}*")) for level in ("", "*/", "*/*/"))
    if entries and not stamped:
        raise ValueError(f"dataset.root={root} holds files RegionBench did not generate ({', '.join(entries[:3])}"
                         f"{', ...' if len(entries) > 3 else ''}) and dataset.generate is set: refusing to write a "
                         "mini dataset there. For a downloaded dataset set dataset.generate=null; for a mini one "
                         "choose an empty dataset.root (or delete a half-written one)")


def dataset_items(dataset: DictConfig, split: str, labels: dict[str, str] | None = None) -> list[voc.VocSample]:
    """The split's samples in file order, capped at ``dataset.max_images``. An id met twice is an
    error: it would be scored twice, or be two members of one shard. ``labels``: {split: directory}
    whose ``<id>.png`` replace that split's label maps (a teacher's predictions, bench/pseudo_labels.py),
    read by the layout's own ``load_label``; an image without one is an error naming it."""
    items = list(layout(dataset).iter_samples(dataset.root, split))
    seen: dict[str, voc.VocSample] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(f"split {split!r} of {dataset.root} lists image id '{item.id}' twice "
                             f"({seen[item.id].image_path} and {item.image_path})")
        seen[item.id] = item
    items = items[: dataset.max_images] if dataset.max_images else items
    if labels and split in labels:
        items = [replace(item, label_path=Path(labels[split]) / f"{item.id}.png") for item in items]
        missing = [item.label_path for item in items if not item.label_path.is_file()]
        if missing:
            raise ValueError(f"{len(missing)} of the {len(items)} images of split {split!r} have no label file in "
                             f"{labels[split]} (first: {missing[0]}): the teacher did not label them")
    return items


def split_name(split: str) -> str:
    """The folder name of a split's shards: the split itself (``train``), or for a split given as a
    list file, its stem and a digest of its absolute path (``lists/mine.txt`` -> ``mine-1a2b3c4d``),
    so that two list files never share a folder and no path leaks into the shard directory."""
    if not voc.is_list_file(split):
        return split
    import hashlib
    import os

    return f"{Path(split).stem}-{hashlib.sha256(os.path.abspath(split).encode()).hexdigest()[:8]}"


def class_names(dataset: DictConfig) -> list[str]:
    names = layout(dataset).class_names(Path(dataset.root))
    return names if len(names) == dataset.num_classes else [str(i) for i in range(dataset.num_classes)]
