"""ADE20K (SceneParsing, ADEChallengeData2016) in the layout it is downloaded in.

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   L-mode, 0 = other, 1..150
    objectInfo150.csv (optional, beside or inside ADEChallengeData2016): class names

Labels are reduced to RegionBench's convention: class k (1..150) -> k-1, "other" (0) -> 255
(ignore), as mmseg's ``reduce_zero_label``. Splits are the directory names; image order is sorted.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from datamodules.voc import VocSample

NUM_CLASSES = 150
IGNORE_INDEX = 255


def ade_paths(root: str | Path) -> Path:
    """The ADEChallengeData2016 directory under (or at) ``root``."""
    root = Path(root)
    for candidate in (root / "ADEChallengeData2016", root):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(f"{root} is not an ADE20K directory: expected {root}/ADEChallengeData2016/"
                            "{images,annotations}/{training,validation}/ (the SceneParsing download)")


def iter_samples(root: str | Path, split: str) -> Iterator[VocSample]:
    base = ade_paths(root)
    image_dir, label_dir = base / "images" / split, base / "annotations" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ADE20K split directory {image_dir} not found (splits: training, validation)")
    for image_path in sorted(image_dir.glob("*.jpg")):
        label_path = label_dir / f"{image_path.stem}.png"
        if not label_path.is_file():
            raise FileNotFoundError(f"{label_path} is missing for image {image_path}: restore it or remove the image")
        yield VocSample(image_path.stem, image_path, label_path)


def load_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8 in 0..149 with 255 = ignore ("other")."""
    raw = np.array(Image.open(path))
    if raw.ndim != 2 or raw.max(initial=0) > NUM_CLASSES:
        raise ValueError(f"{path}: expected an L-mode ADE20K annotation with values 0..150, "
                         f"got shape {raw.shape} and max {raw.max(initial=0)}")
    raw = raw.astype(np.int16)
    return np.where(raw == 0, IGNORE_INDEX, raw - 1).astype(np.uint8)


def class_names(root: str | Path | None = None) -> list[str]:
    """The 150 names from objectInfo150.csv if it is beside the data, else class_1..class_150."""
    if root is not None:
        for path in (Path(root) / "objectInfo150.csv", Path(root).parent / "objectInfo150.csv",
                     Path(root) / "ADEChallengeData2016" / "objectInfo150.csv"):
            if path.is_file():
                with open(path, newline="") as f:
                    return [row["Name"].split(";")[0] for row in csv.DictReader(f)]
    return [f"class_{i}" for i in range(1, NUM_CLASSES + 1)]


def save_prediction(directory: str | Path, image_id: str, pred: np.ndarray) -> Path:
    """A prediction (H, W) int (reduced class 0..149, -1 = no region covered the pixel) in the
    SceneParsing submission format: <directory>/<id>.png, L-mode, shifted back to 1..150, with
    undecided pixels written as 0 ("other")."""
    pred = np.asarray(pred)
    if pred.size and pred.max() >= NUM_CLASSES:
        raise ValueError(f"prediction for {image_id} has class {pred.max()}; ADE20K has {NUM_CLASSES} (0..149)")
    path = Path(directory) / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(pred < 0, 0, pred + 1).astype(np.uint8), mode="L").save(path, format="PNG")
    return path
