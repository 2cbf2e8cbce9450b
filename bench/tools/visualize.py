"""Region pictures like the paper's Figures 3 and 7, and a CLI that draws them from shards.

    render_regions(image (H,W,3), masks (R,H,W))   -> (H,W,3) uint8 overlay
    render_labels(label (H,W))                     -> (H,W,3) uint8 in VOC colours
    contact_sheet([[panel, ...], ...], titles)     -> one RGB image of captioned panels

    python -m bench.tools.visualize experiment=NAME [cell=row/col] [split=val] [num_images=4] [out=DIR] [key=value ...]

The CLI reads the first ``num_images`` samples of each selected cell's shard set
``<extract.shard_dir>/<split>``, loads the original images from the dataset and writes
``<out>/<row>/<col>/regions/<id>.png`` (``out`` defaults to ``<results_root>/<experiment>``, so
the pictures land in the cell's run directory): image | regions | ground truth, plus the model's
prediction when ``eval.py save_predictions=true`` saved one. ``eval.py pictures=N`` draws the
same pictures with fresh predictions for the first N val images of every cell it scores. ``split``, ``num_images`` and
``out`` are options of this tool only; every other ``key=value`` is a config override.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont

from bench.images import to_rgb8
from bench.rle import decode_rles

UNCOVERED_RGB = np.array([255, 0, 255], dtype=np.float32)  # magenta: never a region colour (hues stop at 270°)
UNCOVERED_ALPHA = 0.35
HATCH_PERIOD = 6  # px between diagonal hatch lines on uncovered pixels
BOUNDARY_RGB = np.array([255, 255, 255], dtype=np.float32)
CAPTION_PX = 14  # caption font size


def region_colours(count: int, seed: int = 0) -> np.ndarray:
    """(count, 3) uint8 distinct colours: golden-ratio hue steps from a seeded start, hue in
    [0°, 270°) so no region is magenta, saturation and value varied so neighbours in hue differ."""
    from skimage.color import hsv2rgb

    start = np.random.default_rng(seed).random()
    i = np.arange(count)
    hsv = np.stack([0.75 * ((start + i * 0.6180339887) % 1.0),
                    np.array([0.85, 0.65, 1.0])[i % 3],
                    np.array([0.95, 0.8, 0.7])[(i // 3) % 3]], axis=-1)
    return (hsv2rgb(hsv.reshape(-1, 1, 3)).reshape(-1, 3) * 255).round().astype(np.uint8)


def region_boundaries(masks: np.ndarray) -> np.ndarray:
    """(R, H, W) bool -> (H, W) bool: a 1 px line along every mask's edge, drawn inside a mask.

    For each pair of 4-neighbours (p, q), q right of or below p, whose mask memberships
    differ: if some mask contains p but not q, the line goes on p (inside that mask);
    otherwise some mask contains q but not p, and it goes on q. So two touching regions
    share one 1 px line, a region inside another is outlined, and no line pixel is
    uncovered. The image border is not an edge.
    """
    lines = np.zeros(masks.shape[1:], dtype=bool)
    for axis in (1, 2):  # rows (vertical neighbours), then columns
        first = masks[:, :-1] if axis == 1 else masks[:, :, :-1]
        second = masks[:, 1:] if axis == 1 else masks[:, :, 1:]
        ends = (first & ~second).any(axis=0)  # some mask stops between p and its next pixel
        starts = (~first & second).any(axis=0) & ~ends
        if axis == 1:
            lines[:-1] |= ends
            lines[1:] |= starts
        else:
            lines[:, :-1] |= ends
            lines[:, 1:] |= starts
    return lines


def uncovered_marking(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the diagonal hatch lines drawn in solid magenta on uncovered pixels."""
    yy, xx = np.indices(shape)
    return (yy + xx) % HATCH_PERIOD == 0


def render_regions(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """(H, W[, C]) image, (R, H, W) bool masks -> (H, W, 3) uint8 picture of the regions.

    - each region gets a distinct colour (``region_colours``) blended at ``alpha`` over the image;
      where masks overlap, the later mask's colour is shown;
    - every region's outline is drawn in white, 1 px wide (touching regions share one line),
      for all masks, including outlines that fall under later masks (``region_boundaries``);
    - uncovered pixels (in no mask) are marked in magenta: blended at 0.35 plus a solid
      diagonal hatch every 6 px. Outlines lie inside masks, so the marking covers exactly the
      uncovered pixels.
    """
    rgb = to_rgb8(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.size == 0:
        masks = np.zeros((0, *rgb.shape[:2]), dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"masks {masks.shape} must be (R, {rgb.shape[0]}, {rgb.shape[1]}) for image {rgb.shape}")
    out = rgb.astype(np.float32)
    covered = masks.any(axis=0)  # (H, W)
    if len(masks):
        top = len(masks) - 1 - np.argmax(masks[::-1], axis=0)  # (H, W) index of the last mask on each pixel
        colours = region_colours(len(masks), seed).astype(np.float32)
        out[covered] = (1 - alpha) * out[covered] + alpha * colours[top[covered]]
        out[region_boundaries(masks)] = BOUNDARY_RGB
    hole = ~covered
    out[hole] = (1 - UNCOVERED_ALPHA) * out[hole] + UNCOVERED_ALPHA * UNCOVERED_RGB
    out[hole & uncovered_marking(hole.shape)] = UNCOVERED_RGB
    return out.round().astype(np.uint8)


def render_labels(label: np.ndarray) -> np.ndarray:
    """(H, W) int labels in 0..255 -> (H, W, 3) uint8 in the VOC palette (255 void: cream)."""
    from datamodules.voc import VOC_PALETTE

    label = np.asarray(label)
    if label.ndim != 2 or (label.size and (label.min() < 0 or label.max() > 255)):
        raise ValueError(f"label must be (H, W) in 0..255, got {label.shape} "
                         f"{'' if not label.size else (label.min(), label.max())}")
    return VOC_PALETTE[label.astype(np.int64)]


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut (with '..') to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def contact_sheet(rows: list[list[np.ndarray]], titles: list[list[str]] | None = None,
                  pad: int = 4, caption_height: int = 18) -> np.ndarray:
    """Panels tiled on a white grid -> (H', W', 3) uint8.

    Every cell is as large as the largest panel (max height x max width); panels sit at the
    top left of their cell, each under its caption (``titles[i][j]``, cut to the panel width;
    no caption row when ``titles`` is None). Size: height = pad + rows * (caption + H + pad),
    width = pad + columns * (W + pad).
    """
    panels = [[to_rgb8(p) for p in row] for row in rows]
    if not panels or not any(panels):
        raise ValueError("contact_sheet needs at least one panel")
    cell_h = max(p.shape[0] for row in panels for p in row)
    cell_w = max(p.shape[1] for row in panels for p in row)
    cap = caption_height if titles is not None else 0
    columns = max(len(row) for row in panels)
    sheet = Image.new("RGB", (pad + columns * (cell_w + pad), pad + len(panels) * (cap + cell_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=CAPTION_PX)
    for i, row in enumerate(panels):
        for j, panel in enumerate(row):
            x, y = pad + j * (cell_w + pad), pad + i * (cap + cell_h + pad)
            if cap and i < len(titles) and j < len(titles[i]) and titles[i][j]:
                draw.text((x, y), _fit(draw, str(titles[i][j]), font, panel.shape[1]), fill="black", font=font)
            sheet.paste(Image.fromarray(panel), (x, y + cap))
    return np.asarray(sheet).copy()


def render_legend(classes: list[int], names: list[str], height: int, width: int = 170) -> np.ndarray:
    """A key to the label colours: a swatch and the name of each class id in ``classes`` (those
    present in the truth or the prediction), in the VOC palette ``render_labels`` uses -> (height, width, 3)."""
    from datamodules.voc import VOC_PALETTE

    row = CAPTION_PX + 4
    panel = Image.new("RGB", (width, max(height, row * len(classes) + 4)), "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=CAPTION_PX - 2)
    for i, c in enumerate(classes):
        y = 2 + i * row
        draw.rectangle((2, y, 2 + CAPTION_PX, y + CAPTION_PX), fill=tuple(int(v) for v in VOC_PALETTE[c]),
                       outline=(60, 60, 60))
        name = names[c] if c < len(names) else str(c)
        draw.text((CAPTION_PX + 8, y), _fit(draw, f"{c} {name}", font, width - CAPTION_PX - 10), fill="black", font=font)
    return np.asarray(panel).copy()


def image_miou(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255) -> float:
    """The mean IoU of one image over the classes present in its truth or its prediction (the
    dataset-level metric restricted to this image; undecided pixels count as misses)."""
    import torch

    from bench.metrics import confusion_matrix, iou_from_confusion

    confmat = confusion_matrix(torch.from_numpy(np.asarray(pred, dtype=np.int64)),
                               torch.from_numpy(np.asarray(label, dtype=np.int64)), num_classes, ignore_index)
    return float(iou_from_confusion(confmat)["miou"])


# ----------------------------------------------------------------------------- CLI
CLI_OPTIONS = {"split": None, "num_images": "4", "out": None}  # not config keys


def split_cli_options(argv: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Take this tool's own ``split=``, ``num_images=``, ``out=`` out of argv; the rest is config."""
    options, rest = dict(CLI_OPTIONS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in CLI_OPTIONS:
            options[key] = value
        else:
            rest.append(arg)
    if not str(options["num_images"]).isdigit():
        raise ValueError(f"num_images={options['num_images']} is not a non-negative integer")
    return options, rest


def patch_grid_masks(meta: dict) -> np.ndarray:
    """(h*w, H, W) bool: the backbone's patches, cropped to the image, as regions (patch baselines)."""
    from bench.regions import label_map_to_masks

    p, (top, left), w = meta["patch_size"], meta["pad"], meta["grid"][1]
    yy, xx = np.indices((meta["height"], meta["width"]))
    return label_map_to_masks(((yy + top) // p) * w + (xx + left) // p)


def read_samples(split_dir: Path, count: int) -> list[dict]:
    """The first ``count`` decoded samples of a shard set, in shard order."""
    from bench import shards

    samples, _ = shards.read_split(split_dir, verify="exists")
    return list(itertools.islice(samples, count))


def render_cell(cfg: DictConfig, cell: str, split: str, num_images: int, out: Path,
                predictions: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write one picture per sample of the cell's shard set; returns the paths. The prediction
    panel shows ``predictions[id]`` ((H, W) int, -1 undecided) when given, else the PNG that
    ``eval.py save_predictions=true`` wrote, if any."""
    from bench.config import run_dir
    from datamodules.datasets import class_names, dataset_items, layout, split_name
    from datamodules.voc import load_image

    samples = read_samples(Path(cfg.extract.shard_dir) / split_name(split), num_images)  # first: says how to extract
    items = {item.id: item for item in dataset_items(cfg.dataset, split)}
    fmt = layout(cfg.dataset)
    saved = run_dir(cfg) / fmt.prediction_subdir
    written = []
    for sample in samples:
        key = sample["key"]
        if key not in items:
            raise KeyError(f"shard sample '{key}' is not in {cfg.dataset.root} split '{split}': "
                           "the shards were extracted from another dataset; re-extract")
        image = to_rgb8(load_image(items[key].image_path))
        if image.shape[:2] != sample["label"].shape:
            raise ValueError(f"image {items[key].image_path} is {image.shape[:2]} but its shard label is "
                             f"{sample['label'].shape}: the dataset changed since extraction; re-extract")
        if sample["rle"]:
            masks, what = decode_rles(sample["rle"]), "regions"
        elif cfg.regions.source == "none":
            masks, what = patch_grid_masks(sample["meta"]), "patches"
        else:
            masks, what = np.zeros((0, *image.shape[:2]), dtype=bool), "regions"
        coverage = 100 * masks.any(axis=0).mean() if len(masks) else 0.0
        panels = [image, render_regions(image, masks), render_labels(sample["label"])]
        titles = [key, f"{len(masks)} {what}, {coverage:.0f}% covered", "ground truth"]
        shown = None
        if predictions is not None and key in predictions:
            shown = predictions[key]
        elif predictions is None and (saved / f"{key}.png").is_file():
            shown = fmt.load_label(saved / f"{key}.png")
        if shown is not None:
            num_classes, ignore = int(cfg.dataset.num_classes), int(cfg.dataset.ignore_index)
            panels.append(render_labels(np.where(shown < 0, 255, shown)))
            titles.append(f"prediction, image mIoU {100 * image_miou(shown, sample['label'], num_classes, ignore):.1f}")
        present = sorted({int(c) for c in np.unique(sample["label"]) if c != cfg.dataset.ignore_index}
                         | ({int(c) for c in np.unique(shown) if 0 <= c < cfg.dataset.num_classes}
                            if shown is not None else set()))
        panels.append(render_legend(present, class_names(cfg.dataset), image.shape[0], image.shape[1]))
        titles.append("classes")
        path = out / cell / "regions" / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(contact_sheet([panels], [titles])).save(path)
        written.append(path)
    return written


def draw_predictions(cfg: DictConfig, model, num_images: int, out: Path) -> list[Path]:
    """The paper's Figure 8 for one trained cell: image | regions | ground truth | prediction for
    the first ``num_images`` val samples, predicted again here (in shard order, on this process)."""
    import torch

    from datamodules.datasets import split_name
    from datamodules.region_shards import collate_regions

    split = cfg.dataset.val_split
    samples = read_samples(Path(cfg.extract.shard_dir) / split_name(split), num_images)
    if not samples:
        return []
    batch = collate_regions(samples)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        preds = model.predict_pixels(batch)
    model.train(was_training)
    predictions = {key: pred.cpu().numpy() for key, pred in zip(batch["keys"], preds)}
    return render_cell(cfg, cfg.cell or "default/default", split, num_images, out, predictions)


def render_top_down(xy: np.ndarray, classes: np.ndarray, sizes: np.ndarray, canvas: int = 320,
                    margin: int = 12) -> np.ndarray:
    """A scene seen from above: one disc per region at its world (x, y), coloured by its class in the
    VOC palette, radius growing with ``sizes`` (e.g. pixel areas). xy (N, 2) metres, classes (N,) int,
    sizes (N,) -> (canvas, canvas, 3) uint8, x to the right and y up, both axes at one scale."""
    from datamodules.voc import VOC_PALETTE

    sheet = Image.new("RGB", (canvas, canvas), "white")
    draw = ImageDraw.Draw(sheet)
    if len(xy):
        low, high = xy.min(axis=0), xy.max(axis=0)
        scale = (canvas - 2 * margin) / max(float((high - low).max()), 1e-6)
        radius = 2 + 6 * np.sqrt(sizes / max(float(sizes.max()), 1.0))
        for (x, y), c, r in sorted(zip(xy.tolist(), classes.tolist(), radius.tolist()), key=lambda t: -t[2]):
            u, v = margin + (x - low[0]) * scale, canvas - margin - (y - low[1]) * scale
            draw.ellipse((u - r, v - r, u + r, v + r), fill=tuple(int(q) for q in VOC_PALETTE[int(c)]),
                         outline=(60, 60, 60))
    return np.asarray(sheet).copy()


def draw_scene(cfg: DictConfig, model, num_frames: int, out: Path, scene_of,
               region_fields: tuple[str, ...]) -> list[Path]:
    """The paper's Figure 9 for one trained multi-view cell and the first val scene: for up to
    ``num_frames`` of its frames image | regions | ground truth | prediction, and a top-down view of
    every region of the scene at its 3D centroid, coloured by its predicted class (regions without
    depth or pose are left out). Predicted here, with the scene as one group. ``scene_of``: a sample
    key -> its scene; ``region_fields``: the per-region members the model reads. Returns the path."""
    import torch

    from bench import shards
    from datamodules.datasets import dataset_items, split_name
    from datamodules.region_shards import collate_groups

    split = cfg.dataset.val_split
    samples, _ = shards.read_split(Path(cfg.extract.shard_dir) / split_name(split), verify="size")
    scene: list[dict] = []  # the first scene's frames (a shard holds whole scenes)
    for sample in samples:
        if scene and scene_of(sample["key"]) != scene_of(scene[0]["key"]):
            break
        scene.append(sample)
    if not scene:
        return []
    batch = collate_groups([scene], region_fields)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = model.decoder(model.tokens(batch), model.groups(batch)).softmax(dim=1) \
            if hasattr(model, "tokens") else None
        preds = model.predict_pixels(batch)
    model.train(was_training)
    items = {item.id: item for item in dataset_items(cfg.dataset, split)}
    rows, titles = [], []
    for sample, pred in list(zip(scene, preds))[:num_frames]:
        label = sample["label"]
        image = np.asarray(Image.open(items[sample["key"]].image_path).convert("RGB").resize(label.shape[::-1]))
        masks = decode_rles(sample["rle"]) if sample["rle"] else np.zeros((0, *label.shape), dtype=bool)
        pred = pred.cpu().numpy()
        rows.append([image, render_regions(image, masks), render_labels(label),
                     render_labels(np.where(pred < 0, 255, pred))])
        titles.append([sample["key"], f"{len(masks)} regions", "ground truth", "prediction"])
    panels = contact_sheet(rows, titles)
    valid = batch["valid3d"].numpy()
    classes = (probs.argmax(dim=1) if probs is not None else batch["hist"][:, :-1].argmax(dim=1)).numpy()
    top = render_top_down(batch["pos3d"].numpy()[valid, :2], classes[valid], batch["areas"].numpy()[valid],
                          canvas=min(panels.shape[0], 480))
    top = contact_sheet([[top]], [[f"{scene_of(scene[0]['key'])} from above: {int(valid.sum())} regions, "
                                   "predicted class"]])
    picture = np.full((max(panels.shape[0], top.shape[0]), panels.shape[1] + top.shape[1], 3), 255, np.uint8)
    picture[:panels.shape[0], :panels.shape[1]] = panels
    picture[:top.shape[0], panels.shape[1]:] = top
    path = out / (cfg.cell or "default/default") / "scene" / f"{scene_of(scene[0]['key'])}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return [path]


def draw_clips(cfg: DictConfig, model, num_clips: int, out: Path, region_fields: tuple[str, ...],
               unit_fields: tuple[str, ...]) -> list[Path]:
    """For the first ``num_clips`` val clips of a trained video cell: the clip's frames, each with its
    regions, titled with the true label and the model's top-5 (predicted here). Returns the paths."""
    import torch

    from bench import shards
    from datamodules import kinetics
    from datamodules.datasets import split_name
    from datamodules.region_shards import collate_regions

    split = cfg.dataset.val_split
    samples, _ = shards.read_split(Path(cfg.extract.shard_dir) / split_name(split), verify="size")
    samples = list(itertools.islice(samples, num_clips))
    if not samples:
        return []
    batch = collate_regions(samples, region_fields, unit_fields)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = model.logits(batch).softmax(dim=1)
    model.train(was_training)
    names = kinetics.class_names(cfg.dataset.root)
    clips = {clip.id: clip for clip in kinetics.list_clips(cfg.dataset.root, split)[0]}
    written = []
    for i, sample in enumerate(samples):
        frames, _ = kinetics.sample_frames(clips[sample["key"]].path, int(cfg.dataset.num_frames),
                                           cfg.dataset.short_side)
        masks = decode_rles(sample["rle"]) if sample["rle"] else np.zeros((0, *frames.shape[1:3]), dtype=bool)
        panels = [render_regions(frame, masks[sample["frame"] == t]) for t, frame in enumerate(frames)]
        top = torch.topk(probs[i], k=min(5, probs.shape[1]))
        guesses = ", ".join(f"{names[c]} {100 * p:.0f}%" for p, c in zip(top.values.tolist(), top.indices.tolist()))
        titles = [f"t={t}: {int((sample['frame'] == t).sum())} regions" for t in range(len(frames))]
        sheet = contact_sheet([panels[:4], panels[4:]], [titles[:4], titles[4:]])
        caption = contact_sheet([[np.full((1, sheet.shape[1] - 8, 3), 255, np.uint8)]],
                                [[f"{sample['key']}: true {sample['meta']['label_name']}; top-5 {guesses}"]])
        path = out / (cfg.cell or "default/default") / "clips" / f"{sample['key']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate([caption, sheet])).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    """Draw the first images of every selected cell; prints and returns the written paths."""
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python -m bench.tools.visualize experiment=quickstart num_images=4",
                            "python -m bench.tools.visualize experiment=table7_multiview cell=linear/miniscannet"], argv)
    from bench.config import cell_configs, load_config

    options, overrides = split_cli_options(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(overrides)
    out = Path(options["out"]) if options["out"] else Path(cfg.paths.results_root) / str(cfg.experiment or "adhoc")
    written = []
    for cell, cell_cfg in cell_configs(cfg).items():
        split = options["split"] or cell_cfg.dataset.val_split
        written += render_cell(cell_cfg, cell, split, int(options["num_images"]), out)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
