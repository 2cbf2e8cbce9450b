"""Region search over a folder of your own images: "find every step ladder on this job site".

    python -m bench.tools.search build images=DIR index=INDEX [key=value ...]
    python -m bench.tools.search query index=INDEX image=IMG (mask=PNG | box=x0,y0,x1,y1) [top=10] [out=DIR]
    python -m bench.tools.search query index=INDEX text="a step ladder" [templates=none] [top=10] [out=DIR]
    python -m bench.tools.search query index=INDEX text="..." image=IMG box=... [text_weight=0.5]

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
``out`` (default INDEX/queries/<image stem>, or INDEX/queries/text-<the words> for text=) it writes
ranking.json and, for each of the ``top`` results, rankNN_<key>.png like the paper's Figure 4: the
query with its object highlighted | the result | each of its regions coloured by its similarity to
the query (one colour scale for all results: dark = least similar shown, bright = most; hatched
grey = pixels no region covers).

``text=`` asks in words, on an index built with a text-aligned backbone whose region vectors are
in CLIP's joint image-text space: MaskCLIP (``backbone.name=maskclip_vitl14``, projected by default)
or CLIP with ``proj`` (``backbone.name=clip_vitb32 backbone.params.clip_vitb32.project=true``; its
default is the paper's 768-d tokens before ``proj``, which text cannot be compared with: such an
index is refused with this fix; SigLIP 2 likewise needs ``project=true``; dino.txt's are in its text
space). The text tower comes from the backbone's own local file (``bench.openvocab``; nothing is
downloaded); the vision-only backbones have none (``openvocab.check_region_space`` and the tower
lookup say so before any work). The text is embedded and every image scored by its best region's cosine similarity to it.
``templates``: none (default) embeds the text as typed; simple / imagenet ensemble it through
open_clip's 7 / 80 ImageNet templates ("a photo of a {}.", ...; each prompt normalised, averaged,
renormalised). None is the default because the templates were written around bare class names:
a phrase becomes "a photo of a a step ladder.", and free text already says what it wants; use
an ensemble for a bare noun ("ladder"). With ``text=`` and an example object (image= with mask=
or box=) together, the query is combine_queries' mix of the two unit vectors,
normalise(text_weight * t/|t| + (1 - text_weight) * r/|r|), t the text embedding, r the pooled
example region; text_weight=0.5 (default) ranks by the sum of the cosines to text and example.
Text and mixed queries always rank by cosine, also on an index built with
``retrieval.similarity=ip`` (then scored exactly from its stored vectors, or from the shards
for ivfpq), since a text embedding's length means nothing. The query panel of each picture
shows the text (and the example object, when given).
"""

from __future__ import annotations

EXAMPLES = ["python -m bench.tools.search build images=DIR index=INDEX",
            "python -m bench.tools.search query index=INDEX image=IMG box=x0,y0,x1,y1",
            "python -m bench.tools.search build images=DIR index=INDEX backbone.name=maskclip_vitl14",
            'python -m bench.tools.search query index=INDEX text="a step ladder"',
            'python -m bench.tools.search query index=INDEX text="a step ladder" image=IMG box=x0,y0,x1,y1 '
            "text_weight=0.7"]

if __name__ == "__main__":  # --help is answered before torch is imported
    from bench.cli import help_and_exit

    help_and_exit(__doc__, EXAMPLES)

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
from bench.config_checks import ConfigError
from bench.images import to_rgb8
from bench.pooling import pool_regions
from bench.retrieval.index import RegionIndex
from bench.retrieval.metrics import ranking
from bench.rle import decode_rles
from bench.tools.visualize import contact_sheet, region_boundaries, uncovered_marking
from datamodules.voc import load_image

OPTIONS = {"images": None, "index": None, "image": None, "mask": None, "box": None, "top": "10", "out": None,
           "text": None, "text_weight": "0.5", "templates": "none"}
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
        raise ConfigError("give the query object as exactly one of mask=PNG or box=x0,y0,x1,y1")
    if mask is not None:
        array = np.asarray(Image.open(mask))
        out = (array != 0) if array.ndim == 2 else (array[..., :3] != 0).any(axis=-1)
        if out.shape != tuple(shape):
            raise ConfigError(f"mask {mask} is {out.shape[1]}x{out.shape[0]} (W x H) but the query image is "
                             f"{shape[1]}x{shape[0]}")
    else:
        try:
            x0, y0, x1, y1 = (int(round(float(v))) for v in box.split(","))
        except ValueError:
            raise ConfigError(f"box={box!r} must be four numbers x0,y0,x1,y1 (pixels)") from None
        out = np.zeros(shape, dtype=bool)
        out[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    if not out.any():
        raise ConfigError("the query object is empty (no mask pixel, or a box outside the image)")
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


def side_by_side(panels: list[np.ndarray], titles: list[str], height: int | None = None) -> np.ndarray:
    """Captioned panels in one row, each brought to ``height`` (default: the second panel's, the
    first result after the query) and kept at its own width (no white space around portrait or
    landscape images)."""
    if height is None:
        height = panels[1].shape[0] if len(panels) > 1 else panels[0].shape[0]
    cells = [contact_sheet([[_at_height(p, height)]], [[t]]) for p, t in zip(panels, titles)]
    tallest = max(c.shape[0] for c in cells)
    cells = [np.pad(c, ((0, tallest - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in cells]
    return np.concatenate(cells, axis=1)


def text_panel(text: str, height: int) -> np.ndarray:
    """``text`` word-wrapped in black on a white (height, ~height / 2, 3) uint8 panel."""
    from PIL import ImageDraw, ImageFont

    width = max(160, round(0.5 * height))
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=max(11, height // 18))
    lines, line = [], ""
    for word in text.split():
        if line and draw.textlength(f"{line} {word}", font=font) > width - 16:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    draw.multiline_text((8, 8), "\n".join(lines + [line]), fill="black", font=font)
    return np.asarray(panel).copy()


# ----------------------------------------------------------------------------- text queries
def text_embedding(cfg: DictConfig, index_dir: Path, text: str, templates: str = "none") -> torch.Tensor:
    """The (D,) unit embedding of ``text`` by the text tower of the index's backbone (from the same
    local checkpoint as its image tower). Refuses, before loading anything, a backbone without a
    text tower and region vectors outside the joint image-text space."""
    from bench.openvocab import backbone_text_embeddings, prompt_templates

    try:
        prompt_templates(templates)  # a wrong choice is the query's fault, not the index's
    except ValueError as err:
        raise ConfigError(str(err)) from None
    name = cfg.backbone.name
    params = OmegaConf.to_container(cfg.backbone.params.get(name, {}), resolve=True)
    if params.get("attention_keys"):
        raise ConfigError(f"text= compares text with region vectors, but {index_dir} was built with "
                          f"backbone.params.{name}.attention_keys=true: its vectors carry MaskCLIP's attention keys "
                          "(for zero-shot key smoothing) after the image-text channels; index vectors extracted "
                          "without them")
    try:
        return backbone_text_embeddings(name, params, [text], templates)[0]
    except ValueError as err:
        raise ConfigError(f"text= needs an index of region vectors in a text-aligned backbone's image-text space, "
                          f"but {index_dir} was built with backbone.name={name}: {err}") from None


def cosine_image_scores(index: RegionIndex, split_dir: Path, query: np.ndarray, k: int | None) -> np.ndarray:
    """(d,) query -> (M,) each indexed image's best cosine similarity (-inf: no region). A cosine
    index answers itself; an ``ip`` index holds unnormalised vectors, so their cosines are computed
    exactly here (openvocab.text_query_scores) from its stored vectors (flat) or the shards."""
    from bench.openvocab import text_query_scores

    if index.params.similarity == "cosine":
        return index.image_scores(query[None], k=k)[0]
    if index.params.kind == "flat":
        vectors = index.vectors()
        per_image = [vectors[a:b] for a, b in zip(index.offsets[:-1], index.offsets[1:])]
    else:
        samples = _read_samples(split_dir, index.keys)
        per_image = [samples[key]["feats"] for key in index.keys]
    return text_query_scores([torch.from_numpy(np.asarray(f, np.float32)) for f in per_image],
                             torch.from_numpy(query)).numpy()


def _slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())[:60] or "text"


# ----------------------------------------------------------------------------- query
def query(index_dir: str | Path, image: str | Path | None = None, mask: str | Path | None = None,
          box: str | None = None, top: int = 10, out: str | Path | None = None, text: str | None = None,
          text_weight: float = 0.5, templates: str = "none") -> list[dict]:
    """Rank the indexed images for one query — an object (``image`` with ``mask`` or ``box``), a
    ``text``, or both mixed by ``text_weight`` — write ranking.json and heatmaps; returns the ranking."""
    index_dir = Path(index_dir)
    if not (index_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{index_dir} holds no search index: python -m bench.tools.search build images=DIR "
                                f"index={index_dir}")
    if image is None and text is None:
        raise ConfigError("give the query as image=IMG with mask=PNG or box=x0,y0,x1,y1, as text=\"...\", or both")
    if image is None and (mask is not None or box is not None):
        raise ConfigError("mask= and box= outline an object of the query image: give image=IMG too")
    if image is not None and (mask is None) == (box is None):
        raise ConfigError("give the query object as exactly one of mask=PNG or box=x0,y0,x1,y1")
    if text is not None and not text.strip():
        raise ConfigError("text= is empty: say what to find, e.g. text=\"a step ladder\"")
    if not 0 <= text_weight <= 1:
        raise ConfigError(f"text_weight={text_weight} must lie in [0, 1] (the text's share of the mixed query)")
    cfg: DictConfig = OmegaConf.load(index_dir / "config.yaml")
    text_vector = None if text is None else text_embedding(cfg, index_dir, text, templates)
    split_dir = index_dir / "shards" / SPLIT
    index = RegionIndex.load(index_dir / "index")
    if text_vector is not None and len(text_vector) != index.info["dim"]:
        raise ConfigError(f"{index_dir} holds {index.info['dim']}-d region vectors but {cfg.backbone.name}'s "
                         f"text embeddings are {len(text_vector)}-d: rebuild the index")
    if image is not None:
        params = OmegaConf.to_container(cfg.backbone.params.get(cfg.backbone.name, {}), resolve=True)
        backbone = build_backbone(cfg.backbone.name, **params)
        rgb = to_rgb8(load_image(image))
        object_mask = query_mask(rgb.shape[:2], mask, box)
        with torch.inference_mode():
            grid = backbone.features(rgb).half().float()  # float16-rounded, as the indexed features were
        vector = pool_regions(grid, torch.from_numpy(object_mask[None]), backbone.patch_size, mode=cfg.pooling.mode)[0]
    if text is None:
        q, cosine = vector.numpy().astype(np.float32), cfg.retrieval.similarity == "cosine"
        scores = index.image_scores(q[None], k=cfg.retrieval.search_k)[0]
    else:
        from bench.openvocab import combine_queries

        q = (text_vector if image is None else combine_queries(text_vector, vector, 1 - text_weight)).numpy()
        cosine, scores = True, cosine_image_scores(index, split_dir, q, cfg.retrieval.search_k)
    order = ranking(scores)[:top]
    keys = [index.keys[i] for i in order]
    paths = json.loads((index_dir / "images.json").read_text())
    name = "_".join(([Path(image).stem] if image is not None else []) + ([f"text-{_slug(text)}"] if text else []))
    out = Path(out) if out else index_dir / "queries" / name
    out.mkdir(parents=True, exist_ok=True)
    samples = _read_samples(split_dir, keys)
    if cosine:
        q = q / max(np.linalg.norm(q), 1e-12)
    sims = {}
    for key in keys:
        feats = samples[key]["feats"].astype(np.float32)
        if cosine:
            feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        sims[key] = feats @ q  # exact similarity of each region (the index may be approximate)
    shown = np.concatenate(list(sims.values())) if sims else np.zeros(0)
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    results = []
    for rank, (i, key) in enumerate(zip(order, keys), 1):
        picture = out / f"rank{rank:02d}_{key}.png"
        db = to_rgb8(load_image(paths[key]))
        masks = decode_rles(samples[key]["rle"]) if samples[key]["rle"] else np.zeros((0, *db.shape[:2]), bool)
        query_panels, query_titles = [], []
        if text is not None:
            query_panels.append(text_panel(f'"{text}"', db.shape[0]))
            query_titles.append("text" + (f", weight {text_weight:g}" if image is not None else ""))
        if image is not None:
            query_panels.append(_highlight(rgb, object_mask))
            query_titles.append("query" + (f", weight {1 - text_weight:g}" if text is not None else ""))
        sheet = side_by_side([*query_panels, db, _heatmap(db, masks, sims[key], low, high),
                              colour_bar(low, high, db.shape[0])],
                             [*query_titles, f"#{rank} {key}", f"score {scores[i]:.4g}", "similarity"], db.shape[0])
        Image.fromarray(sheet).save(picture)
        results.append({"rank": rank, "key": key, "path": paths[key], "score": float(scores[i]),
                        "regions": len(masks), "heatmap": str(picture)})
    (out / "ranking.json").write_text(json.dumps(
        {"image": str(image) if image is not None else None, "mask": str(mask) if mask else None, "box": box,
         "text": text, "templates": templates if text is not None else None,
         "text_weight": text_weight if text is not None and image is not None else None,
         "similarity": "cosine" if cosine else "ip", "results": results}, indent=1))
    return results


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    from bench.cli import help_and_exit

    help_and_exit(__doc__, EXAMPLES, argv)
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
    if not options["image"] and not options["text"]:
        raise SystemExit('query needs image=IMG with mask=PNG or box=x0,y0,x1,y1, or text="...", or both')
    try:
        text_weight = float(options["text_weight"])
    except ValueError:
        raise SystemExit(f"text_weight={options['text_weight']!r} must be a number in [0, 1]") from None
    results = query(options["index"], options["image"], options["mask"], options["box"], int(options["top"]),
                    options["out"], options["text"], text_weight, options["templates"])
    print(f"{'rank':>4}  {'score':>12}  image id  image  -> picture")
    for r in results:
        print(f"{r['rank']:4d}  {r['score']:12.5g}  {r['key']}  {r['path']}  -> {r['heatmap']}")
    return results


if __name__ == "__main__":
    from bench.cli import run

    run(main)  # an error in what was asked (ConfigError, a missing file): its message alone, exit 2
