"""Region search over a folder of your own images: "find every step ladder on this job site".

    python -m bench.tools.search build images=DIR index=INDEX [key=value ...]
    python -m bench.tools.search query index=INDEX image=IMG (mask=PNG | box=x0,y0,x1,y1) [top=10] [out=DIR]

``build`` runs the extraction pipeline on every image under DIR (``dataset.layout: folder``;
regions, backbone and pooling from the usual config keys, default SLIC + the no-weights
colour-texture descriptor, e.g. ``backbone.name=dinov2_vitl14 regions.source=sam``), writes
region shards to INDEX/shards/all (a killed build resumes) and a FAISS index of every region
vector (``retrieval.similarity`` / ``retrieval.index`` as for Table 8) to INDEX/index, plus
INDEX/config.yaml (the resolved config the query side reuses) and INDEX/images.json. The mask
cache goes to INDEX/cache; patch grids are not cached (``extract.feature_cache=DIR`` to keep them).
Similarity is cosine here unless ``retrieval.similarity=ip`` (the paper's raw inner product):
unnormalised, regions with large feature norms outrank similar ones (on the fixture photos with
the colour-texture descriptor, a query's own image ranked 5th of 6 by inner product, 2nd by cosine).

``query`` pools the backbone's features inside the query object — a mask PNG of the query
image's size (non-zero = object) or a box in pixels (x0, y0 inclusive, x1, y1 exclusive) — scores
every indexed image by its best region (max inner product, or cosine) and prints the ranking. In
``out`` (default INDEX/queries/<image stem>) it writes ranking.json and, for each of the ``top``
results, rankNN_<key>.png like the paper's Figure 4: the query with its object highlighted | the
result | each of its regions coloured by its similarity to the query (one colour scale for all
results: dark = least similar shown, bright = most; hatched grey = pixels no region covers).
"""
from __future__ import annotations

if __name__ == "__main__":  # --help is answered before torch is imported
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python -m bench.tools.search build images=DIR index=INDEX",
                            "python -m bench.tools.search query index=INDEX image=IMG box=x0,y0,x1,y1"])

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from bench.backbones import build_backbone
from bench.config import load_config, save_config
from bench.images import to_rgb8
from bench.pooling import pool_regions
from bench.retrieval.index import RegionIndex
from bench.retrieval.metrics import ranking
from bench.rle import decode_rles
from bench.tools.visualize import contact_sheet, region_boundaries, uncovered_marking
from datamodules.voc import load_image

OPTIONS = {"images": None, "index": None, "image": None, "mask": None, "box": None, "top": "10", "out": None}
SPLIT = "all"
# A perceptually ordered dark -> bright ramp (anchors of matplotlib's "inferno"), no matplotlib needed.
RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """(...) floats in [0, 1] -> (..., 3) uint8 along RAMP."""
    x = np.clip(values, 0, 1) * (len(RAMP) - 1)
    low = np.minimum(np.floor(x).astype(int), len(RAMP) - 2)
    t = (x - low)[..., None]
    return (RAMP[low] * (1 - t) + RAMP[low + 1] * t).round().astype(np.uint8)


# ----------------------------------------------------------------------------- build
def build(images: str | Path, index_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Extract region shards of every image under ``images`` and index them; returns a summary."""
    from bench.extraction import Extractor, process_split
    from bench.retrieval.evaluate import index_params, read_region_shards
    from bench.tasks import get_task
    from datamodules.datasets import dataset_items

    images, index_dir = Path(images).resolve(), Path(index_dir).resolve()
    name = "folder-" + hashlib.sha256(str(images).encode()).hexdigest()[:8]
    cfg = load_config([f"dataset.name={name}", "dataset.layout=folder", f"dataset.root={images}",
                       "dataset.generate=null", f"dataset.train_split={SPLIT}", f"dataset.val_split={SPLIT}",
                       "dataset.num_classes=1", f"extract.shard_dir={index_dir / 'shards'}",
                       "extract.feature_cache=null", f"regions.cache={index_dir / 'cache'}",
                       "retrieval.similarity=cosine", *overrides])
    process_split(cfg, Extractor(cfg, get_task(cfg.task)), SPLIT, 0, 1)
    samples, manifest = read_region_shards(index_dir / "shards" / SPLIT)
    source = hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode()).hexdigest()[:16]
    meta = index_dir / "index" / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text())["source"] == source):
        vectors = np.concatenate([s["feats"] for s in samples]) if samples else np.zeros((0, manifest["feature_dim"]))
        image_of = np.repeat(np.arange(len(samples)), [len(s["feats"]) for s in samples])
        RegionIndex.build(vectors, image_of, [s["key"] for s in samples], index_params(cfg), source).save(
            index_dir / "index")
    paths = {item.id: str(item.image_path) for item in dataset_items(cfg.dataset, SPLIT)}
    (index_dir / "images.json").write_text(json.dumps(paths, indent=1))
    save_config(cfg, index_dir / "config.yaml")
    index = RegionIndex.load(index_dir / "index")
    return {"index": str(index_dir), "images": len(index.keys), "regions": index.ntotal,
            "skipped": manifest["skipped"], "build_seconds": index.info["build_seconds"]}


# ----------------------------------------------------------------------------- query
def query_mask(shape: tuple[int, int], mask: str | Path | None = None, box: str | None = None) -> np.ndarray:
    """(H, W) bool from a mask PNG (non-zero = object; must be the image's size) or a box 'x0,y0,x1,y1'."""
    if (mask is None) == (box is None):
        raise ValueError("give the query object as exactly one of mask=PNG or box=x0,y0,x1,y1")
    if mask is not None:
        array = np.asarray(Image.open(mask))
        out = (array != 0) if array.ndim == 2 else (array[..., :3] != 0).any(axis=-1)
        if out.shape != tuple(shape):
            raise ValueError(f"mask {mask} is {out.shape[1]}x{out.shape[0]} (W x H) but the query image is "
                             f"{shape[1]}x{shape[0]}")
    else:
        try:
            x0, y0, x1, y1 = (int(round(float(v))) for v in box.split(","))
        except ValueError:
            raise ValueError(f"box={box!r} must be four numbers x0,y0,x1,y1 (pixels)") from None
        out = np.zeros(shape, dtype=bool)
        out[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    if not out.any():
        raise ValueError("the query object is empty (no mask pixel, or a box outside the image)")
    return out


def _read_samples(split_dir: Path, keys: list[str]) -> dict[str, dict]:
    """The decoded samples of ``keys``, reading only the shards that hold them."""
    from bench import shards

    samples, _ = shards.read_split(split_dir, keys=keys, verify="size")
    return {s["key"]: s for s in samples}


def _highlight(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[~mask] *= 0.35
    out[region_boundaries(mask[None])] = (255, 255, 0)
    return out.astype(np.uint8)


def _heatmap(rgb: np.ndarray, masks: np.ndarray, similarity: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each pixel: the colour of the most similar region covering it (blended 80/20 over the image)."""
    best = np.full(rgb.shape[:2], -np.inf, dtype=np.float32)
    for mask, value in zip(masks, similarity):
        best[mask] = np.maximum(best[mask], value)
    covered = np.isfinite(best)
    heat = colour_ramp((np.where(covered, best, low) - low) / max(high - low, 1e-12)).astype(np.float32)
    out = 0.8 * heat + 0.2 * rgb
    out[~covered] = 0.5 * rgb[~covered] + 0.5 * np.where(uncovered_marking(rgb.shape[:2])[~covered, None], 160, 90)
    return out.round().astype(np.uint8)


def colour_bar(low: float, high: float, height: int, width: int = 64) -> np.ndarray:
    """A key to ``_heatmap``'s colours: the ramp from ``low`` (bottom) to ``high`` (top) with both values
    written on it -> (height, width, 3) uint8."""
    from PIL import ImageDraw, ImageFont

    values = np.linspace(1, 0, height)[:, None].repeat(width // 2, axis=1)
    bar = np.full((height, width, 3), 255, np.uint8)
    bar[:, :width // 2] = colour_ramp(values)
    panel = Image.fromarray(bar)
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=11)
    draw.text((width // 2 + 2, 0), f"{high:.3g}", fill="black", font=font)
    draw.text((width // 2 + 2, height - 12), f"{low:.3g}", fill="black", font=font)
    return np.asarray(panel).copy()


def _at_height(rgb: np.ndarray, height: int) -> np.ndarray:
    if rgb.shape[0] == height:
        return rgb
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def side_by_side(panels: list[np.ndarray], titles: list[str]) -> np.ndarray:
    """Captioned panels in one row, each brought to the first result's height and kept at its own
    width (no white space around portrait or landscape images)."""
    height = panels[1].shape[0] if len(panels) > 1 else panels[0].shape[0]
    cells = [contact_sheet([[_at_height(p, height)]], [[t]]) for p, t in zip(panels, titles)]
    tallest = max(c.shape[0] for c in cells)
    cells = [np.pad(c, ((0, tallest - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in cells]
    return np.concatenate(cells, axis=1)


def query(index_dir: str | Path, image: str | Path, mask: str | Path | None = None, box: str | None = None,
          top: int = 10, out: str | Path | None = None) -> list[dict]:
    """Rank the indexed images for one query object; write ranking.json and heatmaps; returns the ranking."""
    index_dir = Path(index_dir)
    if not (index_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{index_dir} holds no search index: python -m bench.tools.search build images=DIR "
                                f"index={index_dir}")
    cfg: DictConfig = OmegaConf.load(index_dir / "config.yaml")
    params = OmegaConf.to_container(cfg.backbone.params.get(cfg.backbone.name, {}), resolve=True)
    backbone = build_backbone(cfg.backbone.name, **params)
    rgb = to_rgb8(load_image(image))
    object_mask = query_mask(rgb.shape[:2], mask, box)
    with torch.inference_mode():
        grid = backbone.features(rgb).half().float()  # float16-rounded, as the indexed features were
    vector = pool_regions(grid, torch.from_numpy(object_mask[None]), backbone.patch_size, mode=cfg.pooling.mode)
    index = RegionIndex.load(index_dir / "index")
    scores = index.image_scores(vector.numpy(), k=cfg.retrieval.search_k)[0]
    order = ranking(scores)[:top]
    keys = [index.keys[i] for i in order]
    paths = json.loads((index_dir / "images.json").read_text())
    out = Path(out) if out else index_dir / "queries" / Path(image).stem
    out.mkdir(parents=True, exist_ok=True)
    samples = _read_samples(index_dir / "shards" / SPLIT, keys)
    q = vector[0].numpy().astype(np.float32)
    if cfg.retrieval.similarity == "cosine":
        q = q / max(np.linalg.norm(q), 1e-12)
    sims = {}
    for key in keys:
        feats = samples[key]["feats"].astype(np.float32)
        if cfg.retrieval.similarity == "cosine":
            feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        sims[key] = feats @ q  # exact similarity of each region (the index may be approximate)
    shown = np.concatenate(list(sims.values())) if sims else np.zeros(0)
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    results, query_panel = [], _highlight(rgb, object_mask)
    for rank, (i, key) in enumerate(zip(order, keys), 1):
        picture = out / f"rank{rank:02d}_{key}.png"
        db = to_rgb8(load_image(paths[key]))
        masks = decode_rles(samples[key]["rle"]) if samples[key]["rle"] else np.zeros((0, *db.shape[:2]), bool)
        sheet = side_by_side([query_panel, db, _heatmap(db, masks, sims[key], low, high),
                              colour_bar(low, high, db.shape[0])],
                             ["query", f"#{rank} {key}", f"score {scores[i]:.4g}", "similarity"])
        Image.fromarray(sheet).save(picture)
        results.append({"rank": rank, "key": key, "path": paths[key], "score": float(scores[i]),
                        "regions": len(masks), "heatmap": str(picture)})
    (out / "ranking.json").write_text(json.dumps({"image": str(image), "mask": str(mask) if mask else None,
                                                  "box": box, "results": results}, indent=1))
    return results


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python -m bench.tools.search build images=DIR index=INDEX",
                            "python -m bench.tools.search query index=INDEX image=IMG box=x0,y0,x1,y1"], argv)
    if not argv or argv[0] not in ("build", "query"):
        raise SystemExit(__doc__)
    options, overrides = dict(OPTIONS), []
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key in OPTIONS:
            options[key] = value
        else:
            overrides.append(arg)
    if not options["index"]:
        raise SystemExit("index=DIR is required")
    if argv[0] == "build":
        if not options["images"]:
            raise SystemExit("build needs images=DIR")
        summary = build(options["images"], options["index"], overrides)
        print(f"indexed {summary['regions']} regions of {summary['images']} images in {summary['index']}"
              + (f"; {len(summary['skipped'])} unreadable images skipped" if summary["skipped"] else ""))
        return summary
    if overrides:
        raise SystemExit(f"query takes no config overrides (the index's own config is used): {overrides}")
    if not options["image"]:
        raise SystemExit("query needs image=IMG and mask=PNG or box=x0,y0,x1,y1")
    results = query(options["index"], options["image"], options["mask"], options["box"], int(options["top"]),
                    options["out"])
    print(f"{'rank':>4}  {'score':>12}  image id  image  -> picture")
    for r in results:
        print(f"{r['rank']:4d}  {r['score']:12.5g}  {r['key']}  {r['path']}  -> {r['heatmap']}")
    return results


if __name__ == "__main__":
    main()
