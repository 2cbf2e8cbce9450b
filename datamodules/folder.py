"""A folder of one's own images as an unlabelled dataset (``dataset.layout: folder``), for the
region search tool (``python -m bench.tools.search``).

Every file under ``root`` (recursively) with a suffix in ``IMAGE_SUFFIXES`` is a sample, in
sorted path order; ``split`` is ignored. The sample key is the path relative to ``root`` without
its suffix, '/' written '__' and '.' written '_' (shard keys may hold neither); two files with
the same key are an error. The label map is all 255 (ignore) at the stored pixel size, so images
are used as stored (EXIF orientation is not applied), as every other layout does. A file that is
not an image despite its suffix is skipped and counted by extraction (see ``load_label``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from datamodules.voc import VocSample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IGNORE_INDEX = 255


def image_key(root: Path, path: Path) -> str:
    return str(path.relative_to(root).with_suffix("")).replace("/", "__").replace(".", "_")


def iter_samples(root: str | Path, split: str = "all") -> Iterator[VocSample]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    seen: dict[str, Path] = {}
    for path in paths:
        key = image_key(root, path)
        if key in seen:
            raise ValueError(f"{path} and {seen[key]} both become sample key '{key}': rename one of them")
        seen[key] = path
        yield VocSample(key, path, path)


def load_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8, all ignore: the image's size without decoding its pixels.

    A file PIL cannot identify (a ``.jpg`` that is no image) gets a (0, 0) label: the image read
    that follows then raises ``CorruptImageError``, so extraction skips and counts it like any
    unreadable image instead of stopping on the label.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError):  # PIL.UnidentifiedImageError is an OSError
        width = height = 0
    return np.full((height, width), IGNORE_INDEX, dtype=np.uint8)


def class_names(root: str | Path) -> list[str]:
    return ["object"]
