"""MiniKinetics: RegionBench's built-in synthetic video dataset, written in the Kinetics-400 layout.

    python -m datamodules.synthetic.minikinetics ROOT [--num-train 12 --num-val 4 --frames 30 --fps 15 --seed 0]

writes what the flat Kinetics-400 release looks like, so a Kinetics reader takes it for real data:

    ROOT/annotations/kinetics-400_{train,val}.csv   label,youtube_id,time_start,time_end,split,is_cc;
                                                   labels with a space in double quotes (as the real files)
    ROOT/{train,val}/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4   H.264 (libx264; mpeg4 if PyAV has
                                                   no libx264), yuv420p, `frames` frames at `fps`
    ROOT/label_map.txt                              the classes, one a line; class id = line index

``num_train`` and ``num_val`` count clips *per class* (so every class is in both splits). youtube
ids are 11 characters of [A-Za-z0-9_-]; time_end = time_start + 10 as in the real csv, although a
clip lasts frames / fps seconds (2 s by default), not 10.

A clip shows textured shapes on a textured background that pans slightly (random direction), with
0-2 small distractor shapes that stay put in the scene, camera blur and sensor noise. Colours,
textures, background and shapes are random per clip and not tied to the class, except for the two
frame-separable classes. The 12 classes (``CLASSES``, alphabetical like Kinetics' label map):

  time-defined pairs (``TIME_PAIRS``): clip b of a pair is clip a played backwards
      "moving right" / "moving left"             one shape crossing 35-60 % of the width
      "shapes approaching" / "shapes separating" two shapes, far apart <-> nearly touching
      growing / shrinking                        one shape, radius x3.5-9
      "rotating clockwise" / "rotating counterclockwise"   2.5-6 degrees a frame (on screen)
      appearing / disappearing                   one shape fading in over part of the clip
  frame-separable (``FRAME_CLASSES``): "ring drifting", "star drifting" -- the only classes with a
      ring or a star, which drift slowly in any direction

A pair's second class draws exactly the parameters of its first and reverses the frames, so the
two have the same distribution of frame sets: the frame average, or any statistic of a randomly
picked frame or of the unordered frames, cannot tell them apart (``render_clip(s, i, label=a)`` reversed equals
``render_clip(s, i, label=b)``). A model that ignores time can reach about 7/12 accuracy (the
pairs at chance, the groups and the frame-separable classes right); only temporal order gives the rest.

Clip i is drawn from a generator seeded by (seed, i), its class is i % 12 unless forced, so any
clip can be rendered alone (``render_clip``) and the same parameters give identical decoded frames.
The mp4 bytes are identical too with the same PyAV / FFmpeg / x264 build: x264 runs single-threaded
and without macroblock-tree rate control, which made it nondeterministic (``encode_clip``); its
version and options are written into the stream, so another build gives other bytes.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import string
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from bench.atomic import write_atomic
from datamodules.synthetic.cli import generator_main

GENERATOR_VERSION = 1  # bump when drawing or encoding changes, so old stamps stop matching
STAMP = ".regionbench_minikinetics.json"
CLASSES = ("appearing", "disappearing", "growing", "moving left", "moving right", "ring drifting",
           "rotating clockwise", "rotating counterclockwise", "shapes approaching", "shapes separating",
           "shrinking", "star drifting")
# (drawn forward, its time reverse)
TIME_PAIRS = (("moving right", "moving left"), ("shapes approaching", "shapes separating"), ("growing", "shrinking"),
              ("rotating clockwise", "rotating counterclockwise"), ("appearing", "disappearing"))
FRAME_CLASSES = ("ring drifting", "star drifting")
CSV_HEADER = ("label", "youtube_id", "time_start", "time_end", "split", "is_cc")
ID_ALPHABET = string.ascii_letters + string.digits + "-_"
CLIP_SECONDS_IN_CSV = 10  # time_end - time_start, as in the real annotations
CRF = 20  # libx264 quality (lower = better); mpeg4 gets 2 Mb/s instead
PAN = 6  # px: the background canvas is this much larger on every side than the frame

SHAPES = ("disk", "square", "triangle", "hexagon", "cross", "ellipse")  # ring and star: only their classes
TEXTURES = ("stripes", "checker", "dots", "grid", "noise", "gradient")

_FORWARD = {b: a for a, b in TIME_PAIRS}  # reversed class -> the class it is drawn as


@dataclass
class Sprite:
    """A shape with its own texture, drawn at any centre (px), radius (px), angle (rad) and opacity."""
    shape: str
    aspect: float           # ellipse: minor / major axis; cross: arm half-width
    colour: np.ndarray      # (3,) RGB
    contrast: float         # texture amplitude, grey levels
    texture: str
    frequency: float        # texture cycles per radius
    noise: np.ndarray       # (8, 8) for the noise texture


def _random_sprite(rng: np.random.Generator, shape: str | None = None) -> Sprite:
    return Sprite(shape or str(rng.choice(SHAPES)), float(rng.uniform(0.3, 0.6)),
                  rng.uniform(25, 230, 3).astype(np.float32), float(rng.uniform(20, 45)), str(rng.choice(TEXTURES)),
                  float(rng.uniform(1.2, 2.5)), rng.uniform(-1, 1, (8, 8)).astype(np.float32))


def _polygon(u, v, sides: int, inradius: float):
    angles = np.pi / 2 + 2 * np.pi * np.arange(sides) / sides
    return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], axis=0) <= inradius


def _inside(sprite: Sprite, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape mask at object-frame points (u, v), radius 1."""
    rho = np.hypot(u, v)
    shape = sprite.shape
    if shape == "disk":
        return rho <= 1
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        return _polygon(u, v, 3, 0.5)
    if shape == "hexagon":
        return _polygon(u, v, 6, 0.87)
    if shape == "cross":  # arms of unequal length, so it has no 90-degree symmetry
        arm = sprite.aspect / 2 + 0.05
        return ((np.abs(u) <= arm) & (np.abs(v) <= 1)) | ((np.abs(v) <= arm) & (np.abs(u) <= 0.7))
    if shape == "ellipse":
        return u ** 2 + (v / sprite.aspect) ** 2 <= 1
    if shape == "ring":
        return (rho <= 1) & (rho >= 0.55)
    if shape == "star":
        return rho <= 0.45 + 0.55 * np.abs(np.cos(2.5 * np.arctan2(v, u))) ** 2
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES + ('ring', 'star')}")


def _pattern(sprite: Sprite, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture in about [-1, 1] at object-frame points (u, v): it moves, turns and scales with the shape."""
    k, name = sprite.frequency, sprite.texture
    if name == "stripes":
        return np.tanh(2.5 * np.sin(2 * np.pi * k * u))
    if name == "checker":
        return np.sign(np.sin(np.pi * k * u) * np.sin(np.pi * k * v))
    if name == "dots":
        off_u, off_v = (k * u) % 1 - 0.5, (k * v) % 1 - 0.5
        return np.where(off_u ** 2 + off_v ** 2 <= 0.09, 1.0, -0.5)
    if name == "grid":
        return np.where(((k * u) % 1 < 0.25) | ((k * v) % 1 < 0.25), 1.0, -0.4)
    if name == "noise":  # bilinear lookup in the sprite's 8x8 grid
        x, y = np.clip((u + 1) * 3.5, 0, 7), np.clip((v + 1) * 3.5, 0, 7)
        x0, y0 = np.minimum(x.astype(int), 6), np.minimum(y.astype(int), 6)
        fx, fy = x - x0, y - y0
        g = sprite.noise
        top = g[y0, x0] * (1 - fx) + g[y0, x0 + 1] * fx
        bottom = g[y0 + 1, x0] * (1 - fx) + g[y0 + 1, x0 + 1] * fx
        return 1.4 * (top * (1 - fy) + bottom * fy)
    if name == "gradient":
        return np.clip(u, -1, 1)
    raise ValueError(f"unknown texture {name!r}; known: {TEXTURES}")


def _paint(frame: np.ndarray, sprite: Sprite, cx: float, cy: float, radius: float, angle: float,
           alpha: float = 1.0) -> None:
    """Composite `sprite` into frame (H, W, 3) float32, antialiased by 2x2 supersampling."""
    if alpha <= 0:
        return
    height, width, _ = frame.shape
    reach = radius * 1.05 + 1
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
    if y0 >= y1 or x0 >= x1:
        return
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    coverage = np.zeros(y.shape, np.float32)
    colour = np.zeros(y.shape + (3,), np.float32)
    for dy in (-0.25, 0.25):
        for dx in (-0.25, 0.25):
            px, py = x + dx - cx, y + dy - cy
            u, v = (px * cos + py * sin) / radius, (-px * sin + py * cos) / radius
            inside = _inside(sprite, u, v).astype(np.float32)
            coverage += inside / 4
            colour += (inside / 4)[..., None] * (sprite.colour + sprite.contrast * _pattern(sprite, u, v)[..., None])
    weight = (alpha * coverage)[..., None]
    patch = frame[y0:y1, x0:x1]
    patch *= 1 - weight
    patch += alpha * colour


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) float32 noise in about [-1, 1] varying over ~1/cells of the image."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB: two random colours mixed in one of five patterns."""
    colours = rng.uniform(20, 235, (2, 3)).astype(np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    kind = rng.choice(["smooth", "gradient", "stripes", "tiles", "grain"])
    if kind == "smooth":
        mix = 0.5 + 0.6 * _smooth_noise(rng, height, width, int(rng.integers(3, 7)))
    elif kind == "gradient":
        mix = (along - along.min()) / (along.max() - along.min())
    elif kind == "stripes":
        mix = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * along / rng.uniform(6, 30)))
    elif kind == "tiles":
        period = rng.uniform(12, 35)
        mix = ((np.floor(along / period) + np.floor(across / period)) % 2).astype(np.float32)
    else:  # grain: grass- or sand-like fine noise over slow variation
        mix = 0.5 + 0.3 * _smooth_noise(rng, height, width, 4) + rng.normal(0, 0.25, (height, width))
    mix = np.clip(mix, 0, 1)[..., None]
    return (colours[0] * (1 - mix) + colours[1] * mix).astype(np.float32)


def _place(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform coordinate in [lo, hi], or their middle when the range is empty (small frames)."""
    return float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2


def _motion(rng: np.random.Generator, kind: str, width: int, height: int, t: np.ndarray):
    """The moving shapes of a clip of class `kind` (a forward or frame-separable class) at times
    t (T,) in [0, 1]: a list of (sprite, cx, cy, radius, angle, alpha), each value a scalar or (T,)."""
    scale = min(width, height) / 120
    if kind == "moving right":
        r = rng.uniform(12, 20) * scale
        shift = rng.uniform(0.35, 0.6) * width
        x0, y0 = _place(rng, r, width - r - shift), _place(rng, r, height - r)
        y1 = _place(rng, max(r, y0 - 0.1 * height), min(height - r, y0 + 0.1 * height))
        return [(_random_sprite(rng), x0 + shift * t, y0 + (y1 - y0) * t, r, rng.uniform(0, 2 * np.pi), 1.0)]
    if kind == "shapes approaching":
        radii = rng.uniform(10, 16, 2) * scale
        direction = rng.uniform(-0.6, 0.6) + np.pi * rng.integers(2)
        far, near = rng.uniform(0.55, 0.75) * width, radii.sum() + rng.uniform(1, 6) * scale
        half_x, half_y = far / 2 * abs(np.cos(direction)), far / 2 * abs(np.sin(direction))
        cx = _place(rng, half_x + radii.max(), width - half_x - radii.max())
        cy = _place(rng, half_y + radii.max(), height - half_y - radii.max())
        distance = far + (near - far) * t
        shapes = []
        for side, r in zip((-1, 1), radii):
            offset = side * distance / 2
            shapes.append((_random_sprite(rng), cx + offset * np.cos(direction), cy + offset * np.sin(direction), r,
                           rng.uniform(0, 2 * np.pi), 1.0))
        return shapes
    if kind == "growing":
        small, large = rng.uniform(5, 9) * scale, rng.uniform(32, 45) * scale
        cx, cy = _place(rng, large, width - large), _place(rng, large, height - large)
        return [(_random_sprite(rng), cx, cy, small * (large / small) ** t, rng.uniform(0, 2 * np.pi), 1.0)]
    if kind == "rotating clockwise":  # the angle grows: x right, y down, so clockwise on screen
        r = rng.uniform(18, 32) * scale
        cx, cy = _place(rng, r, width - r), _place(rng, r, height - r)
        turn = np.radians(rng.uniform(2.5, 6)) * (len(t) - 1)  # per frame: far below any shape's symmetry
        return [(_random_sprite(rng), cx, cy, r, rng.uniform(0, 2 * np.pi) + turn * t, 1.0)]
    if kind == "appearing":
        r = rng.uniform(14, 26) * scale
        cx, cy = _place(rng, r, width - r), _place(rng, r, height - r)
        start, duration = rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.4)
        return [(_random_sprite(rng), cx, cy, r, rng.uniform(0, 2 * np.pi), np.clip((t - start) / duration, 0, 1))]
    if kind in FRAME_CLASSES:
        r = rng.uniform(14, 24) * scale
        heading = rng.uniform(0, 2 * np.pi)
        step = rng.uniform(0, 0.2) * width * np.array([np.cos(heading), np.sin(heading)])
        cx = _place(rng, r + max(0, -step[0]), width - r - max(0, step[0]))
        cy = _place(rng, r + max(0, -step[1]), height - r - max(0, step[1]))
        spin = np.radians(rng.uniform(-1, 1)) * (len(t) - 1)
        sprite = _random_sprite(rng, shape=kind.split()[0])
        return [(sprite, cx + step[0] * t, cy + step[1] * t, r, rng.uniform(0, 2 * np.pi) + spin * t, 1.0)]
    raise ValueError(f"unknown class {kind!r}; known: {CLASSES}")


def render_clip(seed: int, index: int, label: int | None = None, frames: int = 30, width: int = 160,
                height: int = 120) -> tuple[np.ndarray, int]:
    """Draw clip `index` of the set made with `seed`: (frames (T, H, W, 3) uint8, class id).

    The class is ``index % len(CLASSES)`` unless `label` forces it; the two classes of a time pair
    then draw the same clip, one the other's reverse. Pure: the same arguments give the same frames.
    """
    label = index % len(CLASSES) if label is None else label
    name = CLASSES[label]
    rng = np.random.default_rng([seed, index])
    t = np.linspace(0, 1, frames) if frames > 1 else np.zeros(1)
    canvas = _background(rng, height + 2 * PAN, width + 2 * PAN)
    # Camera blur on the still scene only (the moving shapes are antialiased), to save time.
    canvas[1:-1] = 0.25 * canvas[:-2] + 0.5 * canvas[1:-1] + 0.25 * canvas[2:]
    canvas[:, 1:-1] = 0.25 * canvas[:, :-2] + 0.5 * canvas[:, 1:-1] + 0.25 * canvas[:, 2:]
    pan = rng.uniform(0, 2 * PAN, (2, 2))  # (start, end) x (x, y) offsets of the frame in the canvas
    for _ in range(int(rng.integers(0, 3))):  # small distractors, still in the world: they pan with the background
        r = rng.uniform(5, 9) * min(width, height) / 120
        _paint(canvas, _random_sprite(rng), rng.uniform(r, width + 2 * PAN - r), rng.uniform(r, height + 2 * PAN - r),
               r, rng.uniform(0, 2 * np.pi))
    moving = _motion(rng, _FORWARD.get(name, name), width, height, t)
    clip = np.empty((frames, height, width, 3), np.float32)
    for f in range(frames):
        ox, oy = np.rint(pan[0] + (pan[1] - pan[0]) * t[f]).astype(int)
        frame = canvas[oy:oy + height, ox:ox + width].copy()
        for sprite, *values in moving:
            _paint(frame, sprite, *(float(np.broadcast_to(v, t.shape)[f]) for v in values))
        clip[f] = frame
    clip += 2.5 * rng.standard_normal(clip.shape[:3] + (1,), dtype=np.float32)  # sensor noise (grey, to save time)
    clip = np.clip(clip + 0.5, 0, 255).astype(np.uint8)
    return (clip[::-1].copy() if name in _FORWARD else clip), label


def video_codec() -> str:
    """libx264 when this PyAV has it, else mpeg4."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_clip(frames: np.ndarray, fps: int, codec: str | None = None) -> bytes:
    """frames (T, H, W, 3) uint8, H and W even -> mp4 bytes (yuv420p, single-threaded so repeatable)."""
    import av

    codec = codec or video_codec()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # Single-threaded and without macroblock-tree rate control: with mbtree on, this x264 (core 165,
            # via PyAV 18) gives different bytes *and pixels* for the same frames in about half the clips.
            stream.options = {"crf": str(CRF), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        else:
            stream.codec_context.thread_count = 1
            stream.codec_context.bit_rate = 2_000_000  # mpeg4's default (200 kb/s) smears textures
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def clip_record(seed: int, index: int, split: str, label: int) -> dict:
    """The csv row of clip `index`: a youtube-like id, a start second and is_cc (3 % are 1, as in the real file)."""
    rng = np.random.default_rng([seed, index, 1])  # apart from the drawing, so ids never change a clip
    youtube_id = "".join(ID_ALPHABET[i] for i in rng.integers(len(ID_ALPHABET), size=11))
    start = int(rng.integers(0, 300))
    return {"label": CLASSES[label], "youtube_id": youtube_id, "time_start": start,
            "time_end": start + CLIP_SECONDS_IN_CSV, "split": split, "is_cc": int(rng.random() < 0.03)}


def clip_filename(record: dict) -> str:
    return f"{record['youtube_id']}_{record['time_start']:06d}_{record['time_end']:06d}.mp4"


def csv_text(records: list[dict]) -> str:
    """The annotation csv as the real one writes it: labels with a space quoted, nothing else; "\\n" line ends."""
    lines = [",".join(CSV_HEADER)]
    for record in sorted(records, key=lambda r: (r["label"], r["youtube_id"].lower())):
        label = f'"{record["label"]}"' if " " in record["label"] else record["label"]
        lines.append(",".join([label] + [str(record[key]) for key in CSV_HEADER[1:]]))
    return "\n".join(lines) + "\n"


def announce_generation(where: Path, params: dict) -> None:
    """Say loudly that MiniKinetics is being written and where (a misspelt root would fill a new directory)."""
    logging.getLogger("regionbench.data").warning(
        "generating MiniKinetics (%d classes x (%d train + %d val) clips of %d frames at %d fps, %dx%d, %s, seed %d) "
        "at %s, which holds no MiniKinetics with these parameters. For a downloaded Kinetics set dataset.root to it "
        "and dataset.generate=null", len(CLASSES), params["num_train"], params["num_val"], params["frames"],
        params["fps"], params["width"], params["height"], params["codec"], params["seed"], where)


def _refuse_foreign_dataset(root: Path) -> None:
    """Never write over a real Kinetics download: without a stamp of ours, its files must be absent."""
    if (root / STAMP).is_file():
        return
    found = [name for name in ("annotations", "train", "val", "label_map.txt") if (root / name).exists()]
    if found:
        raise FileExistsError(f"{root} holds another Kinetics dataset ({', '.join(found)} but no {STAMP}); "
                              "choose an empty root for MiniKinetics")


def generate_minikinetics(root: str | Path, num_train: int = 12, num_val: int = 4, frames: int = 30, fps: int = 15,
                          width: int = 160, height: int = 120, seed: int = 0, progress: bool = True) -> Path:
    """Write MiniKinetics under `root`: `num_train` and `num_val` clips per class (train: clips
    0..12*num_train-1, val: the next 12*num_val).

    Returns root. Does nothing if its stamp records the same parameters (and codec); the stamp is
    written last (an unfinished run leaves one marked incomplete, so it is redone and still known as ours).
    """
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "frames": frames,
              "fps": fps, "width": width, "height": height, "seed": seed, "codec": video_codec()}
    root = Path(root)
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    if num_train < 1 or num_val < 1 or frames < 2 or fps < 1 or min(width, height) < 32 or width % 2 or height % 2:
        raise ValueError("MiniKinetics needs >= 1 train and val clip per class, >= 2 frames, fps >= 1 and even "
                         f"width and height >= 32 (yuv420p); got {params}")
    _refuse_foreign_dataset(root)
    announce_generation(root, params)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(stamp, (json.dumps({**params, "complete": False}, indent=1) + "\n").encode())
    for split in ("train", "val"):  # ours (stamped): drop clips of earlier parameters
        if (root / split).exists():
            shutil.rmtree(root / split)
        (root / split).mkdir()
    (root / "annotations").mkdir(exist_ok=True)
    splits = {"train": range(len(CLASSES) * num_train),
              "val": range(len(CLASSES) * num_train, len(CLASSES) * (num_train + num_val))}
    total, done, start = len(CLASSES) * (num_train + num_val), 0, time.perf_counter()
    for split, indices in splits.items():
        records, names = [], set()
        for index in indices:
            clip, label = render_clip(seed, index, None, frames, width, height)
            record = clip_record(seed, index, split, label)
            name = clip_filename(record)
            if name in names:  # 64^11 ids: never seen, but a silent overwrite would lose a clip
                raise RuntimeError(f"MiniKinetics drew file name {name} twice; choose another seed")
            names.add(name)
            write_atomic(root / split / name, encode_clip(clip, fps, params["codec"]))
            records.append(record)
            done += 1
            if progress and (done % 50 == 0 or done == total):
                print(f"minikinetics: {done}/{total} clips ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
        write_atomic(root / "annotations" / f"kinetics-400_{split}.csv", csv_text(records).encode())
    write_atomic(root / "label_map.txt", "".join(name + "\n" for name in CLASSES).encode())
    write_atomic(stamp, (json.dumps(params, indent=1) + "\n").encode())
    return root


def read_annotations(path: str | Path) -> list[dict]:
    """Rows of a Kinetics annotation csv (ours or the real one), time_start, time_end and is_cc as int."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("time_start", "time_end", "is_cc"):
            if key in row:
                row[key] = int(row[key])
    return rows


def main(argv: list[str] | None = None) -> None:
    generator_main(generate_minikinetics, argv, __doc__)


if __name__ == "__main__":
    main()
