"""MiniCOCO: the built-in scene generator written as a COCO instances dataset.

    python -m datamodules.synthetic.minicoco ROOT [--num-train 300 --num-val 100 --width 320 --height 240 --seed 0]

writes ROOT/{train,val}/mini_<6-digit index>.jpg and ROOT/annotations/instances_{train,val}.json, read
by ``datamodules.coco`` exactly like COCO 2017. Scenes are MiniVOC's
(``datamodules.synthetic.minivoc.render_scene_instances``): one annotation per visible object, its category id
the MiniVOC (= VOC) class index, so ids have gaps as COCO's do. Every encoding COCO uses occurs:

  polygons (several parts when occlusion splits an object), from the object's outer contours;
  compressed RLE (a string) for objects with holes (rings, or occluded from inside), for
      objects too small for a polygon, and for RLE_FRACTION of the others;
  uncompressed RLE (a list of ints, column-major) with iscrowd=1 for CROWD_FRACTION of objects;
  images without annotations: every EMPTY_EVERY-th image is background only.

Objects drawn but fully hidden get no annotation. Image i (ids 1.. in train then val order) is
drawn from seeds (seed, i), its encodings from (seed, i, 1): the same parameters give the same
files (with the same numpy, Pillow and OpenCV builds).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.synthetic.minivoc import CLASSES, JPEG_QUALITY, announce_generation, image_id, render_scene_instances
from datamodules.voc import VOC_CLASSES
from datamodules.synthetic.cli import generator_main

GENERATOR_VERSION = 1
STAMP = ".regionbench_minicoco.json"
EMPTY_EVERY = 25       # images 24, 49, ... are background only
CROWD_FRACTION = 0.05
RLE_FRACTION = 0.25
CATEGORIES = [{"id": int(c), "name": VOC_CLASSES[c], "supercategory": "minivoc"} for c in CLASSES]


def polygons(mask: np.ndarray) -> list[list[float]]:
    """(H, W) bool -> COCO polygon parts (outer contours through pixel centres + 0.5), >= 3 points each."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[round(float(v) + 0.5, 2) for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def has_holes(mask: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0, :, 3] >= 0).any())


def encode(mask: np.ndarray, rng: np.random.Generator) -> tuple[list | dict, bool]:
    """(segmentation, iscrowd) of one object's visible mask, the encoding chosen as the module says."""
    height, width = mask.shape
    draw = rng.random()
    if draw < CROWD_FRACTION:  # uncompressed: runs of the column-major flattening, starting with 0s
        flat = mask.T.reshape(-1).astype(np.int8)
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        return {"size": [height, width], "counts": ([0] + runs) if flat[0] else runs}, True
    parts = [] if has_holes(mask) or draw < CROWD_FRACTION + RLE_FRACTION else polygons(mask)
    if parts and mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, height, width))).any():
        return parts, False
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, False


def scene_annotations(instance: np.ndarray, classes: list[int], image: int, first_id: int,
                      rng: np.random.Generator) -> list[dict]:
    """COCO annotations of a scene's visible objects; ids from ``first_id``."""
    out = []
    for k, category in enumerate(classes, 1):
        mask = instance == k
        if not mask.any():
            continue
        segmentation, crowd = encode(mask, rng)
        ys, xs = np.nonzero(mask)
        out.append({"id": first_id + len(out), "image_id": image, "category_id": int(category),
                    "segmentation": segmentation, "iscrowd": int(crowd), "area": int(mask.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    return out


def generate_minicoco(root: str | Path, num_train: int = 300, num_val: int = 100, width: int = 320,
                      height: int = 240, seed: int = 0, progress: bool = True) -> Path:
    """Write MiniCOCO under ``root`` (train: images 0..num_train-1, val: the next num_val).

    Returns ``root``. Does nothing if its stamp records the same parameters; the stamp is
    written last, so an interrupted run is redone.
    """
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "width": width, "height": height, "seed": seed}
    root = Path(root)
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    if num_train < 1 or num_val < 1 or width < 32 or height < 32:
        raise ValueError(f"MiniCOCO needs num_train, num_val >= 1 and width, height >= 32; got {params}")
    announce_generation("MiniCOCO", root, params)
    stamp.unlink(missing_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    start, next_id = time.perf_counter(), 1
    for split, indices in (("train", range(num_train)), ("val", range(num_train, num_train + num_val))):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in indices:
            count = 0 if index % EMPTY_EVERY == EMPTY_EVERY - 1 else None
            image, _, instance, classes = render_scene_instances(seed, index, width, height, count=count)
            name = f"{image_id(index)}.jpg"
            Image.fromarray(image).save(root / split / name, quality=JPEG_QUALITY)
            images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
            found = scene_annotations(instance, classes, index + 1, next_id, np.random.default_rng([seed, index, 1]))
            annotations += found
            next_id += len(found)
            if progress and ((index + 1) % 50 == 0 or index + 1 == num_train + num_val):
                print(f"minicoco: {index + 1}/{num_train + num_val} images ({time.perf_counter() - start:.1f}s)",
                      file=sys.stderr)
        data = {"info": {"description": "RegionBench MiniCOCO", "generator": params},
                "images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    stamp.write_text(json.dumps(params, indent=1) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    generator_main(generate_minicoco, argv, __doc__)


if __name__ == "__main__":
    main()
