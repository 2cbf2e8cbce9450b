"""MiniADE: the built-in scene generator written in the real ADE20K (SceneParsing) layout.

    python -m datamodules.synthetic.miniade ROOT [--num-train 200 --num-val 60 --width 320 --height 240 --seed 1]

writes ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png} and
ROOT/objectInfo150.csv, so `datamodules.ade20k` reads it exactly like the real download. Scenes
are MiniVOC's (`datamodules.synthetic.minivoc.render_scene`) with their labels in ADE20K's raw convention:
L-mode PNGs, 0 = "other" (the void band along object boundaries, ignored after the reader's
shift), 1..150 = classes. The eleven scene classes map to eleven of the 150 ADE20K ids in
`ADE_IDS`; the other 139 never occur, as rare classes never occur in a small real subset.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.synthetic.minivoc import JPEG_QUALITY, announce_generation, render_scene
from datamodules.synthetic.cli import generator_main

GENERATOR_VERSION = 1
STAMP = ".regionbench_miniade.json"
OWNER = ".regionbench_miniade"

# MiniVOC class (VOC index) -> ADE20K id (1..150, objectInfo150.csv order) and its name there.
ADE_IDS = {
    0: (1, "wall"), 1: (91, "airplane"), 3: (127, "animal"), 5: (99, "bottle"), 7: (21, "car"),
    8: (40, "cushion"), 12: (24, "sofa"), 15: (13, "person"), 16: (18, "plant"), 19: (81, "bus"),
    20: (90, "television receiver"),
}


def to_ade_raw(label: np.ndarray) -> np.ndarray:
    """A MiniVOC label (H, W) uint8 (VOC ids, 255 void) -> ADE20K raw annotation (0 other, 1..150)."""
    lut = np.zeros(256, np.uint8)  # 255 (void) and anything unmapped -> 0 ("other")
    for voc, (ade, _) in ADE_IDS.items():
        lut[voc] = ade
    return lut[label]


def image_name(split: str, index: int) -> str:
    return f"ADE_{'train' if split == 'training' else 'val'}_{index + 1:08d}"


def _write_object_info(path: Path) -> None:
    names = {ade: name for ade, name in ADE_IDS.values()}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Idx", "Ratio", "Train", "Val", "Stuff", "Name"])
        for idx in range(1, 151):
            writer.writerow([idx, 0, 0, 0, 0, names.get(idx, f"class_{idx}")])


def generate_miniade(root: str | Path, num_train: int = 200, num_val: int = 60, width: int = 320,
                     height: int = 240, seed: int = 1, progress: bool = True) -> Path:
    """Write MiniADE under `root`; returns root/ADEChallengeData2016. Idempotent (stamp written last)."""
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "width": width, "height": height, "seed": seed}
    base = Path(root) / "ADEChallengeData2016"
    stamp = base / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return base
    owner = base / OWNER  # written before the first image: a half-written MiniADE is ours to redo
    if (base / "images").is_dir() and not owner.is_file():
        raise FileExistsError(f"{base} holds another ADE20K dataset (no {OWNER}); choose an empty root for MiniADE")
    if num_train < 1 or num_val < 1 or width < 32 or height < 32:
        raise ValueError(f"MiniADE needs num_train, num_val >= 1 and width, height >= 32; got {params}")
    announce_generation("MiniADE", base, params)
    stamp.unlink(missing_ok=True)
    base.mkdir(parents=True, exist_ok=True)
    owner.touch()
    total, start, done = num_train + num_val, time.perf_counter(), 0
    for split, indices in (("training", range(num_train)), ("validation", range(num_train, total))):
        for sub in ("images", "annotations"):
            (base / sub / split).mkdir(parents=True, exist_ok=True)
        for number, index in enumerate(indices):
            image, label = render_scene(seed, index, width, height)
            name = image_name(split, number)
            Image.fromarray(image).save(base / "images" / split / f"{name}.jpg", quality=JPEG_QUALITY)
            Image.fromarray(to_ade_raw(label), mode="L").save(base / "annotations" / split / f"{name}.png")
            done += 1
            if progress and (done % 50 == 0 or done == total):
                print(f"miniade: {done}/{total} images ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    _write_object_info(Path(root) / "objectInfo150.csv")
    stamp.write_text(json.dumps(params, indent=1) + "\n")
    return base


def main(argv: list[str] | None = None) -> None:
    generator_main(generate_miniade, argv, __doc__)


if __name__ == "__main__":
    main()
