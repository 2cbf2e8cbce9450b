"""COCO instances (``instances_<split>.json`` + image folders), read with pycocotools' mask API.

Layout (the 2017 download; RegionBench's mini set, ``python -m datamodules.synthetic.minicoco ROOT``, is the same)::

    <root>/annotations/instances_<split>.json   (or annotations/<split>.json)
    <root>/<split>/<file_name>                  (or images/<split>/, images/, or <root> itself)

Sample keys are the image file stems (``000000128372``). As a dataset layout (``dataset.layout:
coco``) each image's label map is *semantic*: category ids mapped to contiguous indices
0..C-1 in id order (COCO's 80 ids 1..90 -> 0..79), 255 = ignore. Non-crowd instances are painted
largest first, so a small object on top of a large one keeps its pixels; pixels of no instance,
and crowd pixels no non-crowd instance covers, are 255.

Edge cases (pycocotools itself fails silently or cryptically on most of them). Every error is a
``CocoError`` naming the file and the image or annotation:

  polygons            a list of parts ``[x0, y0, x1, y1, ...]``, merged into one mask;
                      coordinates outside the image are clipped (pycocotools' behaviour)
    odd length        error (pycocotools silently gives area 0)
    < 3 points        the part is a zero-area line: dropped (as detectron2 does); pycocotools
                      would take a 4-number part for a box and raise a TypeError
    [] (no parts)     error (pycocotools raises IndexError)
  uncompressed RLE    ``counts`` a list of ints, column-major (iscrowd=1 in COCO); counts must
                      sum to h*w: pycocotools decodes a short list into uninitialised memory
                      (random values) and rejects a long one
  compressed RLE      ``counts`` a str; its counts are decoded here (``rle_counts``) and must
                      sum to h*w too; a corrupt string is an error
  RLE ``size``        must equal the image's [height, width] (pycocotools ignores h, w for RLEs)
  decoded masks       asserted to hold only 0 and 1
  empty masks         (all parts dropped, or outside the image) are allowed: such an annotation
                      still marks its category present in the image, but paints nothing and is
                      never a retrieval query
  ``area`` field      never used (it is the polygon area; the fixture's crowd RLE says 890 for
                      791 pixels): pixel counts come from decoded masks
  iscrowd=1           ignore (255) in label maps, never a query, but marks its category present
  no annotations      a valid image: label map all 255, no category present
  ids                 duplicate image/annotation ids, or an annotation whose image or category
                      is unknown, are errors; more than 255 categories is an error (uint8 labels)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.voc import VocSample

IGNORE_INDEX = 255


class CocoError(ValueError):
    """A malformed COCO annotation file; the message names the file and the entry."""


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int

    @property
    def key(self) -> str:
        """The sample key: the file stem (``000000128372``)."""
        return Path(self.file_name).stem


@dataclass(frozen=True)
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    iscrowd: bool
    segmentation: list | dict


@dataclass(frozen=True)
class CocoLabel:
    """What ``iter_samples`` puts where the VOC layout has a label PNG: an image of an annotation file."""
    annotations: Path
    image_id: int

    def __str__(self) -> str:
        return f"{self.annotations}#image {self.image_id}"


# ----------------------------------------------------------------------------- RLE
def rle_counts(counts: str) -> list[int]:
    """COCO's compressed RLE string -> the run lengths (pycocotools' ``rleFrString``): each count
    is 5-bit groups + 48, 0x20 = more groups follow, 0x10 in the last group = negative; counts
    from the fourth on are stored as differences to the count two before."""
    out: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("string ends inside a count")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[pos]!r} at {pos} is not an RLE character")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def decode_segmentation(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> (H, W) bool,
    validated as the module docstring says; ``where`` names the entry in errors."""
    if isinstance(segmentation, list):
        return _decode_polygons(segmentation, height, width, where)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise CocoError(f"{where}: segmentation must be a list of polygons or an RLE "
                        f"{{'size', 'counts'}}, got {type(segmentation).__name__}")
    size, counts = segmentation["size"], segmentation["counts"]
    if list(size) != [height, width]:
        raise CocoError(f"{where}: RLE size {list(size)} differs from the image's [height, width] "
                        f"[{height}, {width}] (a rotated or resized image?)")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise CocoError(f"{where}: uncompressed RLE counts must be non-negative integers")
        runs = counts
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str):
        try:
            runs = rle_counts(counts)
        except ValueError as err:
            raise CocoError(f"{where}: corrupt compressed RLE string: {err}") from None
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    else:
        raise CocoError(f"{where}: RLE counts must be a list of ints or a string, got {type(counts).__name__}")
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise CocoError(f"{where}: RLE counts sum to {sum(runs)} but the image has {height}x{width} = "
                        f"{height * width} pixels (pycocotools would decode random memory or fail)")
    return _checked(mask_utils.decode(rle), where)


def _decode_polygons(parts: list, height: int, width: int, where: str) -> np.ndarray:
    if not parts:
        raise CocoError(f"{where}: segmentation is an empty polygon list; give the object a polygon "
                        "or an RLE, or remove the annotation")
    kept = []
    for i, part in enumerate(parts):
        if not isinstance(part, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in part):
            raise CocoError(f"{where}: polygon part {i} is not a flat list of finite numbers [x0, y0, x1, y1, ...]")
        if len(part) % 2:
            raise CocoError(f"{where}: polygon part {i} has an odd number of coordinates ({len(part)}); "
                            "it must be x, y pairs")
        if len(part) >= 6:  # fewer than 3 points: a zero-area line (see the module docstring)
            kept.append([float(v) for v in part])
    if not kept:
        return np.zeros((height, width), dtype=bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(kept, height, width))
    return _checked(mask_utils.decode(rle), where)


def _checked(mask: np.ndarray, where: str) -> np.ndarray:
    if mask.size and mask.max() > 1:
        raise CocoError(f"{where}: decoded mask holds values other than 0 and 1")
    return mask.astype(bool)


# ----------------------------------------------------------------------------- the annotation file
class CocoDataset:
    """One instances JSON: images, categories and annotations, indexed and validated.

      images        {image id: CocoImage}, in file-name order
      categories    [{"id", "name", ...}] sorted by id; ``category_index[id]`` is its 0-based index
      annotations   {image id: [CocoAnnotation]} (every image present, maybe with [])
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise CocoError(f"{self.path} is not valid JSON: {err}") from None
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise CocoError(f"{self.path} lacks {missing}: not a COCO instances file")
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        ids = [c["id"] for c in self.categories]
        if len(set(ids)) != len(ids) or len(ids) > IGNORE_INDEX:
            raise CocoError(f"{self.path}: category ids must be unique and at most {IGNORE_INDEX} "
                            f"categories (got {len(ids)})")
        self.category_index = {cid: i for i, cid in enumerate(ids)}
        images = [CocoImage(int(im["id"]), str(im["file_name"]), int(im["height"]), int(im["width"]))
                  for im in data["images"]]
        self.images = {im.id: im for im in sorted(images, key=lambda im: im.file_name)}
        if len(self.images) != len(images):
            raise CocoError(f"{self.path}: duplicate image ids")
        keys = [im.key for im in self.images.values()]
        if len(set(keys)) != len(keys):
            raise CocoError(f"{self.path}: two images share a file stem (sample keys must be unique)")
        self.annotations: dict[int, list[CocoAnnotation]] = {i: [] for i in self.images}
        seen: set[int] = set()
        for ann in data["annotations"]:
            where = f"{self.path}: annotation {ann.get('id')}"
            if ann.get("id") in seen:
                raise CocoError(f"{where} appears twice")
            seen.add(ann.get("id"))
            if ann.get("image_id") not in self.images:
                raise CocoError(f"{where} refers to image {ann.get('image_id')}, which is not in 'images'")
            if ann.get("category_id") not in self.category_index:
                raise CocoError(f"{where} has category {ann.get('category_id')}, which is not in 'categories'")
            if "segmentation" not in ann:
                raise CocoError(f"{where} has no segmentation (RegionBench needs masks)")
            self.annotations[ann["image_id"]].append(CocoAnnotation(
                int(ann["id"]), int(ann["image_id"]), int(ann["category_id"]), bool(ann.get("iscrowd", 0)),
                ann["segmentation"]))

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def mask(self, ann: CocoAnnotation) -> np.ndarray:
        """(H, W) bool mask of an annotation on its image."""
        image = self.images[ann.image_id]
        where = f"{self.path}: annotation {ann.id} (image {image.id}, {image.file_name})"
        return decode_segmentation(ann.segmentation, image.height, image.width, where)

    def label_map(self, image_id: int) -> np.ndarray:
        """(H, W) uint8 semantic labels: contiguous category indices, 255 = ignore (see module docstring)."""
        image = self.images[image_id]
        label = np.full((image.height, image.width), IGNORE_INDEX, dtype=np.uint8)
        masks = [(self.mask(a), self.category_index[a.category_id])
                 for a in self.annotations[image_id] if not a.iscrowd]
        for mask, index in sorted(masks, key=lambda m: -int(m[0].sum())):  # stable: file order on ties
            label[mask] = index
        return label

    def image_categories(self, image_id: int) -> set[int]:
        """Category ids with at least one annotation (crowd and empty-mask ones included) in the image."""
        return {a.category_id for a in self.annotations[image_id]}


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> CocoDataset:
    return CocoDataset(path)


def load_coco(path: str | Path) -> CocoDataset:
    """The parsed annotation file, cached while the file is unchanged (COCO train is 450 MB)."""
    stat = Path(path).stat()
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


# ----------------------------------------------------------------------------- the layout
def annotation_file(root: str | Path, split: str) -> Path:
    root = Path(root)
    candidates = [root / "annotations" / f"instances_{split}.json", root / "annotations" / f"{split}.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no COCO annotation file for split '{split}': looked for "
                            f"{' and '.join(map(str, candidates))}")


def image_path(root: str | Path, split: str, file_name: str) -> Path:
    root = Path(root)
    candidates = [root / split / file_name, root / "images" / split / file_name, root / "images" / file_name,
                  root / file_name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"COCO image {file_name} of split '{split}' not found; looked in "
                            f"{', '.join(str(p.parent) for p in candidates)}")


def iter_samples(root: str | Path, split: str) -> Iterator[VocSample]:
    """The split's images in file-name order; ``label_path`` is a ``CocoLabel``."""
    path = annotation_file(root, split)
    coco = load_coco(path)
    for image in coco.images.values():
        yield VocSample(image.key, image_path(root, split, image.file_name), CocoLabel(path, image.id))


def load_label(label: CocoLabel) -> np.ndarray:
    return load_coco(label.annotations).label_map(label.image_id)


def class_names(root: str | Path) -> list[str]:
    """Category names in id order, from the smallest annotation file (every split lists the same)."""
    files = sorted((Path(root) / "annotations").glob("*.json"), key=lambda p: p.stat().st_size)
    if not files:
        raise FileNotFoundError(f"no COCO annotation files in {Path(root) / 'annotations'}")
    return load_coco(files[0]).class_names


def save_prediction(directory: str | Path, image_id: str, pred: np.ndarray) -> Path:
    """A prediction (H, W) int (contiguous category index 0..C-1, -1 = undecided) as <directory>/<id>.png,
    L-mode, in the label maps' own convention (``load_label``): the index, 255 where undecided."""
    pred = np.asarray(pred)
    if pred.size and pred.max() >= IGNORE_INDEX:
        raise ValueError(f"prediction for {image_id} has class {pred.max()}; COCO label maps hold indices below "
                         f"{IGNORE_INDEX}")
    path = Path(directory) / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(pred < 0, IGNORE_INDEX, pred).astype(np.uint8), mode="L").save(path, format="PNG")
    return path
