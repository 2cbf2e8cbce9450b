"""MiniVOC: RegionBench's built-in synthetic dataset, written in the real Pascal VOC 2012 layout.

    python -m datamodules.synthetic.minivoc ROOT [--num-train 300 --num-val 100 --width 320 --height 240 --seed 0]

writes ROOT/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}
so that `datamodules.voc` reads it exactly like the real dataset. Each scene has
1-5 objects of the ten classes in `CLASS_STYLES` on a textured background; every
class has its own shape, colour and texture, and no single cue is enough:
colours are jittered and backgrounds borrow object colours, several classes share
a hue family, and objects overlap (later ones on top) over a 15-150 px range of
sizes. As in VOC, a void band (label 255, `VOID_WIDTH` px) runs along every
object boundary, against the background and against other objects.

The point is a dataset where boundaries matter: a classifier on coarse
14x14-patch descriptors mixes classes at object edges, which superpixels follow.

Image i is drawn from its own generator seeded by (seed, i), so any image can be
regenerated alone and the same parameters give byte-identical files (with the
same numpy and Pillow builds).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.voc import IGNORE_INDEX, IMAGE_DIR, LABEL_DIR, SPLIT_DIR, save_label_png
from datamodules.synthetic.cli import generator_main

GENERATOR_VERSION = 2  # bump when drawing changes, so old stamps stop matching
STAMP = ".regionbench_minivoc.json"
VOID_WIDTH = 3  # px; VOC's own band is about this wide
MIN_SIZE, MAX_SIZE = 15, 160  # object diameter in px; median about 100 (see render_scene)
JPEG_QUALITY = 90

# VOC class index -> (shape, base colour RGB, texture). Hue families overlap on
# purpose (cat/dog/person warm, bottle/pottedplant green) so that colour alone
# does not separate classes.
CLASS_STYLES = {
    1: ("cross", (185, 190, 205), "stripes"),       # aeroplane
    3: ("triangle", (230, 190, 40), "dots"),        # bird
    5: ("ellipse", (45, 145, 70), "gradient"),      # bottle
    7: ("square", (200, 35, 35), "checker"),        # car
    8: ("disk", (215, 125, 45), "stripes"),         # cat
    12: ("blob", (130, 85, 45), "noise"),           # dog
    15: ("capsule", (225, 170, 135), "shading"),    # person
    16: ("star", (50, 110, 40), "noise"),           # pottedplant
    19: ("hexagon", (40, 70, 160), "grid"),         # train
    20: ("ring", (40, 40, 45), "scanlines"),        # tvmonitor
}
CLASSES = tuple(CLASS_STYLES)

# Background colours; scenes also borrow class colours (see _background).
BACKGROUND_COLOURS = np.array([
    (110, 150, 200), (90, 130, 70), (160, 140, 110), (120, 120, 120), (200, 195, 180),
    (70, 60, 55), (150, 170, 190), (180, 160, 120), (60, 80, 100), (140, 110, 90),
], dtype=np.float32)


# --- shapes: normalised object-frame coordinates (u, v), object radius = 1 -> bool mask ---

def _polygon(u, v, sides, inradius):
    angles = np.pi / 2 + 2 * np.pi * np.arange(sides) / sides
    projections = [u * np.cos(a) + v * np.sin(a) for a in angles]
    return np.max(projections, axis=0) <= inradius


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "disk":
        return rho <= 1
    if shape == "ellipse":
        return u ** 2 + (v / rng.uniform(0.3, 0.55)) ** 2 <= 1
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8 * rng.uniform(0.55, 1.0))
    if shape == "triangle":
        return _polygon(u, v, 3, 0.5)
    if shape == "hexagon":
        return _polygon(u, v, 6, 0.87)
    if shape == "star":
        return rho <= 0.45 + 0.55 * np.abs(np.cos(2.5 * phi)) ** 2
    if shape == "ring":
        return (rho <= 1) & (rho >= rng.uniform(0.45, 0.65))
    if shape == "cross":
        arm = rng.uniform(0.2, 0.32)
        return ((np.abs(u) <= arm) & (np.abs(v) <= 1)) | ((np.abs(v) <= arm) & (np.abs(u) <= 0.8))
    if shape == "capsule":  # a vertical segment thickened by 0.4
        return np.hypot(u, v - np.clip(v, -0.55, 0.55)) <= 0.42
    if shape == "blob":  # a wobbly disk: radius with random low harmonics
        radius = np.full_like(rho, 0.75)
        for k in (2, 3, 4):
            radius += rng.uniform(0.05, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        return rho <= radius
    raise ValueError(f"unknown shape {shape!r}")


# --- textures: object-frame pixel offsets (du, dv) -> luminance pattern in about [-1, 1] ---

def _texture(name: str, du: np.ndarray, dv: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    if name == "stripes":
        return np.tanh(2.5 * np.sin(2 * np.pi * du / rng.uniform(3.5, 5.5)))
    if name == "scanlines":
        return np.sin(2 * np.pi * dv / 3.0)
    if name == "checker":
        period = rng.uniform(2.5, 4)
        return np.sign(np.sin(np.pi * du / period) * np.sin(np.pi * dv / period))
    if name == "dots":
        period = rng.uniform(4, 6)
        off_u, off_v = du % period - period / 2, dv % period - period / 2
        return np.where(off_u ** 2 + off_v ** 2 <= (0.3 * period) ** 2, 1.0, -0.4)
    if name == "grid":
        period = rng.uniform(5, 7)
        return np.where((du % period < 1.5) | (dv % period < 1.5), 1.0, -0.3)
    if name == "noise":
        return np.clip(rng.normal(0, 0.7, du.shape), -1.5, 1.5)
    if name == "gradient":
        return np.clip(dv / radius, -1, 1)
    if name == "shading":  # lit from one side, like a rounded body
        return 0.8 - 1.6 * np.clip((du / radius - 0.4) ** 2 + (dv / radius + 0.3) ** 2, 0, 1)
    raise ValueError(f"unknown texture {name!r}")


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) float32 noise in about [-1, 1] that varies over ~1/cells of the image."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def _background(rng: np.random.Generator, height: int, width: int, classes: list[int]) -> np.ndarray:
    """(H, W, 3) float32 RGB background of one of five kinds."""
    colours = BACKGROUND_COLOURS[rng.choice(len(BACKGROUND_COLOURS), 2, replace=False)]
    if classes and rng.random() < 0.4:  # borrow an object's colour so colour alone cannot find objects
        colours[rng.integers(2)] = CLASS_STYLES[classes[rng.integers(len(classes))]][1]
    colours += rng.normal(0, 12, colours.shape)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    kind = rng.choice(["smooth", "gradient", "stripes", "tiles", "grain"])
    if kind == "smooth":
        mix = 0.5 + 0.6 * _smooth_noise(rng, height, width, int(rng.integers(3, 7)))
    elif kind == "gradient":
        mix = (along - along.min()) / (along.max() - along.min())
    elif kind == "stripes":
        mix = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * along / rng.uniform(6, 30)))
    elif kind == "tiles":
        period = rng.uniform(15, 40)
        across = -x * np.sin(angle) + y * np.cos(angle)
        mix = ((np.floor(along / period) + np.floor(across / period)) % 2).astype(np.float32)
    else:  # grain: grass- or sand-like fine noise over slow variation
        mix = 0.5 + 0.3 * _smooth_noise(rng, height, width, 4) + rng.normal(0, 0.25, (height, width))
    mix = np.clip(mix, 0, 1)[..., None]
    return (colours[0] * (1 - mix) + colours[1] * mix).astype(np.float32)


def _draw_object(rng, image, label, instance, instance_id, class_id, size) -> None:
    """Paint one object of `size` px diameter into image (H, W, 3), label and instance (H, W)."""
    height, width = label.shape
    shape, base, texture = CLASS_STYLES[class_id]
    radius = size / 2
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, height)
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, width)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    if shape == "capsule":  # people stand roughly upright
        angle = rng.normal(0, 0.25)
    cos, sin = np.cos(angle), np.sin(angle)
    du = (x - cx) * cos + (y - cy) * sin  # object frame, px
    dv = -(x - cx) * sin + (y - cy) * cos
    mask = _shape_mask(shape, du / radius, dv / radius, rng)
    colour = np.array(base, np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 12, 3)
    pattern = _texture(texture, du, dv, radius, rng)
    pixels = colour + rng.uniform(18, 30) * pattern[..., None]
    image[y0:y1, x0:x1][mask] = pixels[mask]
    label[y0:y1, x0:x1][mask] = class_id
    instance[y0:y1, x0:x1][mask] = instance_id


def void_band(instance: np.ndarray, width: int = VOID_WIDTH) -> np.ndarray:
    """(H, W) bool: pixels within a `width`-px band around every change of instance id."""
    edge = np.zeros(instance.shape, dtype=bool)
    edge[:, 1:] |= instance[:, 1:] != instance[:, :-1]  # marks the pixel right of the change
    edge[1:, :] |= instance[1:, :] != instance[:-1, :]
    band = edge.copy()
    for _ in range(width // 2):  # grow by one pixel in the 8 directions per step
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        band = grown
    return band


def render_scene(seed: int, index: int, width: int = 320, height: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Draw image `index` of the set made with `seed`.

    Returns the image (H, W, 3) uint8 and its label (H, W) uint8 (0 = background,
    VOC class indices, 255 = void band along object boundaries).
    """
    image, label, _, _ = render_scene_instances(seed, index, width, height)
    return image, label


def render_scene_instances(seed: int, index: int, width: int = 320, height: int = 240,
                           count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """``render_scene`` plus its instances: (image, label, instance (H, W) int32, classes).

    instance: 0 = background, k = the k-th object drawn (its visible pixels; later objects lie on
    top), of VOC class ``classes[k - 1]``. ``count`` forces the number of objects (0 = background
    only); None draws it as ``render_scene`` does, so the two give identical images.
    """
    rng = np.random.default_rng([seed, index])
    drawn = int(rng.choice([1, 2, 3, 4, 5], p=[0.1, 0.2, 0.3, 0.25, 0.15]))
    count = drawn if count is None else count
    classes = [int(c) for c in rng.choice(CLASSES, count)]
    # Drawn largest first, so small objects land on top of large ones rather than vanish under them.
    # Log-scale sizes skewed towards large (median ~100 px): unskewed, objects are
    # mostly tiny and 85% of pixels are background (VOC has about 70%).
    scale = rng.uniform(0, 1, count) ** 0.3
    sizes = np.sort(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** scale)[::-1]
    image = _background(rng, height, width, classes)
    label = np.zeros((height, width), np.uint8)
    instance = np.zeros((height, width), np.int32)
    for instance_id, (class_id, size) in enumerate(zip(classes, sizes), 1):
        _draw_object(rng, image, label, instance, instance_id, class_id, float(size))
    # Camera look: slight blur (soft, not aliased, edges) and sensor noise.
    image[1:-1] = 0.25 * image[:-2] + 0.5 * image[1:-1] + 0.25 * image[2:]
    image[:, 1:-1] = 0.25 * image[:, :-2] + 0.5 * image[:, 1:-1] + 0.25 * image[:, 2:]
    image += rng.normal(0, 3, image.shape)
    label[void_band(instance)] = IGNORE_INDEX
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label, instance, classes


def announce_generation(name: str, where: Path, params: dict) -> None:
    """Say loudly (a warning, shown even without logging set up) that a mini dataset is being
    written and where: a misspelt ``dataset.root`` would otherwise silently fill a new directory."""
    logging.getLogger("regionbench.data").warning(
        "generating %s (%d train + %d val = %d images of %dx%d, seed %d) at %s, which holds no %s with "
        "these parameters. For a downloaded dataset set dataset.root to it and dataset.generate=null",
        name, params["num_train"], params["num_val"], params["num_train"] + params["num_val"], params["width"],
        params["height"], params["seed"], where, name)


def image_id(index: int) -> str:
    return f"mini_{index:06d}"


def generate_minivoc(root: str | Path, num_train: int = 300, num_val: int = 100, width: int = 320,
                     height: int = 240, seed: int = 0, progress: bool = True) -> Path:
    """Write MiniVOC under `root` (train: images 0..num_train-1, val: the next num_val).

    Returns root/VOCdevkit/VOC2012. Does nothing if a stamp there records the same
    parameters; the stamp is written last, so an interrupted run is redone.
    """
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "width": width, "height": height, "seed": seed}
    voc_dir = Path(root) / "VOCdevkit" / "VOC2012"
    stamp = voc_dir / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return voc_dir
    _refuse_foreign_dataset(voc_dir)
    if num_train < 1 or num_val < 1 or width < 32 or height < 32:
        raise ValueError(f"MiniVOC needs num_train, num_val >= 1 and width, height >= 32; got {params}")
    announce_generation("MiniVOC", voc_dir, params)
    stamp.unlink(missing_ok=True)
    for sub in (IMAGE_DIR, LABEL_DIR, SPLIT_DIR):
        (voc_dir / sub).mkdir(parents=True, exist_ok=True)
    total, start = num_train + num_val, time.perf_counter()
    for index in range(total):
        image, label = render_scene(seed, index, width, height)
        Image.fromarray(image).save(voc_dir / IMAGE_DIR / f"{image_id(index)}.jpg", quality=JPEG_QUALITY)
        save_label_png(voc_dir / LABEL_DIR / f"{image_id(index)}.png", label)
        if progress and ((index + 1) % 50 == 0 or index + 1 == total):
            print(f"minivoc: {index + 1}/{total} images ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    splits = {"train": range(num_train), "val": range(num_train, total), "trainval": range(total)}
    for split, indices in splits.items():
        (voc_dir / SPLIT_DIR / f"{split}.txt").write_text("".join(image_id(i) + "\n" for i in indices))
    stamp.write_text(json.dumps(params, indent=1) + "\n")
    return voc_dir


def _refuse_foreign_dataset(voc_dir: Path) -> None:
    """Never write MiniVOC's split files over a real VOC download's."""
    train = voc_dir / SPLIT_DIR / "train.txt"
    if train.is_file() and not all(line.startswith("mini_") for line in train.read_text().split()):
        raise FileExistsError(f"{voc_dir} holds another VOC dataset ({train} lists non-MiniVOC ids); "
                              "choose an empty root for MiniVOC")


def main(argv: list[str] | None = None) -> None:
    generator_main(generate_minivoc, argv, __doc__)


if __name__ == "__main__":
    main()
