"""One-shot retrieval queries: per category, N ground-truth objects from N different images.

    queries, shortfall = select_queries(coco, per_class=50, seed=0)
    save_queries(path, queries, shortfall, about)  /  load_queries(path)

Selection, for category c (in id order), with ``rng = default_rng([seed, c])``: the images
holding a non-crowd annotation of c, sorted by id, are visited in ``rng.permutation`` order;
in each, c's non-crowd annotations are tried in ``rng.permutation`` order and the first whose
decoded mask has more than ``min_area`` pixels becomes the query (an image gives at most one);
stop at ``per_class``. Only the masks tried are decoded (COCO train has 860k annotations).
Crowd annotations and empty masks are never queries. A category with fewer usable images
gets fewer queries; ``shortfall`` records it ({category name: queries found}).

``query_vectors`` turns them into vectors: the ground-truth mask pooled from the image's patch
grid (region and class-token methods), or the class token of a crop around the object (crop).

The query file is JSON: the annotation file and selection parameters, then one
``{"category_id", "category", "image_id", "key", "annotation_id"}`` per query, by category.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bench.atomic import write_atomic
from bench.images import to_rgb8
from bench.pooling import pool_regions
from bench.progress import bar_options
from datamodules.coco import CocoDataset, annotation_file, image_path, load_coco
from datamodules.voc import load_image_for_label


@dataclass(frozen=True)
class Query:
    category_id: int
    category: str
    image_id: int
    key: str
    annotation_id: int


def select_queries(coco: CocoDataset, per_class: int, seed: int, min_area: int = 0) -> tuple[list[Query], dict]:
    """(queries grouped by category id, {category name: count} of categories short of per_class)."""
    if per_class < 1:
        raise ValueError(f"retrieval.queries_per_class must be >= 1, got {per_class}")
    by_category: dict[int, dict[int, list]] = {c["id"]: {} for c in coco.categories}
    for image_id, anns in coco.annotations.items():
        for ann in anns:
            if not ann.iscrowd:
                by_category[ann.category_id].setdefault(image_id, []).append(ann)
    names = {c["id"]: c["name"] for c in coco.categories}
    queries, shortfall = [], {}
    for category, images in by_category.items():
        rng = np.random.default_rng([seed, category])
        ids = sorted(images)
        found = 0
        for i in rng.permutation(len(ids)):
            if found == per_class:
                break
            anns = images[ids[i]]
            for j in rng.permutation(len(anns)):
                if int(coco.mask(anns[j]).sum()) > min_area:
                    image = coco.images[ids[i]]
                    queries.append(Query(category, names[category], image.id, image.key, anns[j].id))
                    found += 1
                    break
        if found < per_class:
            shortfall[names[category]] = found
    return queries, shortfall


def save_queries(path: str | Path, queries: list[Query], shortfall: dict, about: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({**about, "shortfall": shortfall, "queries": [asdict(q) for q in queries]},
                                  indent=1).encode())


def load_queries(path: str | Path) -> tuple[list[Query], dict]:
    """(queries, the whole file's content)."""
    data = json.loads(Path(path).read_text())
    return [Query(**q) for q in data["queries"]], data


def global_vector(backbone, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (d,) float32: the backbone's class token (``global_feature``)."""
    if not hasattr(backbone, "global_feature"):
        raise ValueError(f"backbone {type(backbone).__name__} has no global (class-token) vector: "
                         "retrieval.method=cls or crop needs a ViT or CLIP backbone")
    return backbone.global_feature(rgb).numpy().astype(np.float32)


def crop_around(rgb: np.ndarray, mask: np.ndarray, margin: float, size: int) -> np.ndarray:
    """The mask's box grown by ``margin`` x its height/width per side (clipped to the image),
    resized (bicubic) so the longer side is ``size`` px."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("cannot crop around an empty mask")
    (y0, y1), (x0, x1) = (ys.min(), ys.max() + 1), (xs.min(), xs.max() + 1)
    dy, dx = round(margin * (y1 - y0)), round(margin * (x1 - x0))
    crop = rgb[max(0, y0 - dy):y1 + dy, max(0, x0 - dx):x1 + dx]
    scale = size / max(crop.shape[:2])
    width, height = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    return np.array(Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC))  # writable


def query_vectors(queries: list[Query], root: str | Path, split: str, extractor, pooling: str,
                  crop: tuple[float, int] | None = None, progress: bool = True) -> np.ndarray:
    """(Q, d) float32: each query's ground-truth mask pooled (``pooling``) from the extractor's
    patch grid of its image; with ``crop`` = (margin, size), the class token of a crop around it."""
    coco = load_coco(annotation_file(root, split))
    out = []
    for q in tqdm(queries, desc="query vectors", unit="query", disable=not progress, file=sys.stdout, **bar_options()):
        image = coco.images[q.image_id]
        rgb = to_rgb8(load_image_for_label(image_path(root, split, image.file_name), (image.height, image.width)))
        mask = coco.mask(next(a for a in coco.annotations[q.image_id] if a.id == q.annotation_id))
        if crop is not None:
            out.append(global_vector(extractor.backbone, crop_around(rgb, mask, *crop)))
        else:
            grid, _, _ = extractor.grid(q.key, rgb)
            out.append(pool_regions(grid, torch.from_numpy(mask[None]), extractor.patch_size, mode=pooling)[0].numpy())
    return np.stack(out).astype(np.float32) if out else np.zeros((0, extractor.embed_dim), np.float32)
