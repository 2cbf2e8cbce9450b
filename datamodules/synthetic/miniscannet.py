"""MiniScanNet: RegionBench's built-in synthetic RGB-D dataset, written in ScanNet's raw-scan layout.

    python -m datamodules.synthetic.miniscannet ROOT [--num-train 6 --num-val 3 --frames 10 --seed 0]

writes what ScanNet's SensReader export and label zips look like, so a ScanNet reader takes it for
real data:

    ROOT/scannetv2-labels.combined.tsv        the real rows (17 columns, CRLF) of the ids used, id 29
                                              twice as in the real file
    ROOT/scannetv2_{train,val}.txt            scene ids, one a line: scene0000_00, scene0001_00, ...
    ROOT/classes_SemVoxLabel-nyu40id.txt      the 20 benchmark classes, "nyu40id<TAB>name"
    ROOT/scans/<scene>/<scene>.txt            meta: sizes, intrinsics, axisAlignment, sceneType
    ROOT/scans/<scene>/color/<i>.jpg          colour, width x height (default 320x240)
    ROOT/scans/<scene>/depth/<i>.png          uint16 millimetres, depth_width x depth_height, 0 = missing
    ROOT/scans/<scene>/pose/<i>.txt           4x4 camera-to-world ("%f", like SensReader)
    ROOT/scans/<scene>/intrinsic/{intrinsic,extrinsic}_{color,depth}.txt   4x4
    ROOT/scans/<scene>/<scene>_2d-label-filt.zip   label-filt/<i>.png: uint16 ScanNet ids, colour size

Cameras are ScanNet's: x right, y down, z forward; poses map camera to world; world z is up with
the floor at z = 0. The colour and depth cameras share centre and orientation, but the depth
camera has a wider field of view and another principal point (``DEPTH_INTRINSICS``); label
images have the colour size (real ones too: 1296x968). As in raw ScanNet, the world frame is
turned about z and shifted per scene; the meta file's ``axisAlignment`` maps it onto the room's axes.

Scenes are box-shaped rooms (bedroom, office, living room, kitchen, bathroom; scene i is
``ROOM_TYPES[i % 5]``) furnished with boxes and cylinders of all 20 benchmark classes, plus ceiling
(ScanNet id 41) and pillows (13), whose nyu40 classes are not benchmark classes, and small
unannotated clutter on floors and tables (label 0). Every pixel is ray cast in numpy, from a
camera 1.25-1.6 m high walking round the middle of the room and looking across it. Position is
informative the way it is in real rooms:

  picture / window    drawn alike (same frame and panel palettes and pattern, same sizes);
                      windows hang high (bottom 1.2-1.5 m), pictures low (0.55-0.9 m);
  kitchen cabinet / kitchen counter   one material per kitchen; cabinets on the wall at
                      1.45-2.2 m, counters on the floor up to 0.9 m;
  desk / table        same wood and legs; desks stand against a wall, tables in the room.

Depth has the quirks of the real sensor: Kinect-like noise growing with distance, and 0 outside
``MIN_DEPTH``..``MAX_DEPTH``, on patches of window glass, at depth edges and on random pixels.
Frame ``frames // 2`` of the first val scene has a pose file of -inf (a known ScanNet defect)
while its colour, depth and labels are normal (``invalid_pose=False`` turns this off).

Scene i is laid out from a generator seeded by (seed, i) and its frame f drawn with noise from
(seed, i, f), so the same parameters give byte-identical files (with the same numpy and Pillow).
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.atomic import write_atomic
from datamodules.synthetic.cli import generator_main

GENERATOR_VERSION = 1  # bump when drawing changes, so old stamps stop matching
STAMP = ".regionbench_miniscannet.json"
JPEG_QUALITY = 90
MAX_DEPTH, MIN_DEPTH = 4.5, 0.4  # m; the depth sensor returns 0 outside this range
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member times, so the zips are byte-identical
# (fx / width, fy / width, cx / width, cy / height): colour as a real ScanNet scene's 1296x968
# camera; depth a little wider (every colour pixel has a depth pixel) and off-centre.
COLOR_INTRINSICS = (0.9029, 0.9029, 0.4998, 0.4997)
DEPTH_INTRINSICS = (0.86, 0.86, 0.4983, 0.5056)

# ScanNet label ids used (the tsv `id` column) and their real tsv rows.
WALL, CHAIR, FLOOR, TABLE, DOOR, SOFA, CABINET, DESK, BED, PILLOW, SINK, PICTURE, WINDOW = (
    1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15, 16)
TOILET, BOOKSHELF, CURTAIN, COFFEE_TABLE, FRIDGE, KITCHEN_CABINET, CEILING, BATHTUB = 17, 18, 21, 24, 27, 29, 41, 42
SHOWER_CURTAIN, TRASH_CAN, KITCHEN_COUNTER, BATHROOM_COUNTER = 55, 56, 159, 1156
UNANNOTATED = 0
TSV_HEADER = ("id raw_category category count nyu40id eigen13id nyuClass nyu40class eigen13class ModelNet40 "
              "ModelNet10 ShapeNetCore55 synsetoffset wnsynsetid wnsynsetkey mpcat40 mpcat40index").split()
TSV_ROWS = [  # in the real file's order (by count); id 29 twice, as in the real file
    "1|wall|wall|8277|1|12|wall|wall|Wall|||||n04546855|wall.n.01|wall|1",
    "2|chair|chair|4646|5|4|chair|chair|Chair|chair|chair|chair|3001627|n03001627|chair.n.01|chair|3",
    "3|floor|floor|1553|2|5|floor|floor|Floor|||||n03365592|floor.n.01|floor|2",
    "5|door|door|1483|8|12|door|door|Wall|door||||n03221720|door.n.01|door|4",
    "16|window|window|1209|9|13|window|window|Window|||||n04587648|window.n.01|window|9",
    "4|table|table|1170|7|10|table|table|Table|table|table|table|4379243|n04379243|table.n.02|table|5",
    "56|trash can|trash can|1090|39|6|garbage bin|otherfurniture|Furniture|||trash_bin|2747177|n02747177"
    "|ashcan.n.01|objects|39",
    "13|pillow|pillow|937|18|7|pillow|pillow|Objects|||pillow|3938244|n03938244|pillow.n.01|cushion|8",
    "15|picture|picture|862|11|8|picture|picture|Picture|||||n03931044|picture.n.01|picture|6",
    "41|ceiling|ceiling|806|22|3|ceiling|ceiling|Ceiling|||||n02990373|ceiling.n.01|ceiling|17",
    "7|cabinet|cabinet|731|3|6|cabinet|cabinet|Furniture|||cabinet|2933112|n02933112|cabinet.n.01|cabinet|7",
    "9|desk|desk|680|14|10|desk|desk|Table|desk|desk|table|4379243|n03179701|desk.n.01|table|5",
    "6|couch|couch|502|6|9|sofa|sofa|Sofa|sofa|sofa|sofa|4256520|n04256520|sofa.n.01|sofa|10",
    "14|sink|sink|488|34|7|sink|sink|Objects|sink||||n04223580|sink.n.01|sink|15",
    "11|bed|bed|370|4|1|bed|bed|Bed|bed|bed|bed|2818832|n02818832|bed.n.01|bed|11",
    "18|bookshelf|bookshelf|360|10|6|bookshelf|bookshelf|Furniture|bookshelf||bookshelf|2871439|n02871439"
    "|bookshelf.n.01|shelving|31",
    "21|curtain|curtain|347|16|13|curtain|curtain|Window|curtain||||n03151077|curtain.n.01|curtain|12",
    "29|kitchen cabinet|kitchen cabinet|310|3|6|cabinet|cabinet|Furniture|||||n02933112|cabinet.n.01|cabinet|7",
    "29|kitchen cabinets|kitchen cabinet|289|3|6|cabinet|cabinet|Furniture|||cabinet|2933112|n02933112"
    "|cabinet.n.01|cabinet|7",
    "24|coffee table|coffee table|258|7|10|coffee table|table|Table|table|table|table|4379243|n03063968"
    "|coffee_table.n.01|table|5",
    "17|toilet|toilet|256|33|7|toilet|toilet|Objects|toilet|toilet|||n04446276|toilet.n.01|toilet|18",
    "27|refrigerator|refrigerator|154|24|6|refridgerator|refridgerator|Furniture|||||n04070727"
    "|refrigerator.n.01|appliances|37",
    "55|shower curtain|shower curtain|144|28|7|shower curtain|shower curtain|Objects|curtain||||n04209239"
    "|shower_curtain.n.01|curtain|12",
    "42|bathtub|bathtub|144|36|7|bathtub|bathtub|Objects|bathtub|bathtub|tub|2808440|n02808440|bathtub.n.01"
    "|bathtub|25",
    "159|kitchen counter|kitchen counter|140|12|6|counter|counter|Furniture|table|table|table|4379243"
    "|n03116530|counter.n.01|counter|26",
    "1156|bathroom counter|bathroom counter|24|12|6|counter|counter|Furniture|table|table|table|4379243"
    "|n03116530|counter.n.01|counter|26",
]
BENCHMARK_CLASSES = ((1, "wall"), (2, "floor"), (3, "cabinet"), (4, "bed"), (5, "chair"), (6, "sofa"), (7, "table"),
                     (8, "door"), (9, "window"), (10, "bookshelf"), (11, "picture"), (12, "counter"), (14, "desk"),
                     (16, "curtain"), (24, "refridgerator"), (28, "shower curtain"), (33, "toilet"), (34, "sink"),
                     (36, "bathtub"), (39, "otherfurniture"))  # spelt as in the real file
ROOM_TYPES = ("bedroom", "office", "living", "kitchen", "bathroom")
SCENE_TYPES = {"bedroom": "Bedroom / Hotel", "office": "Office", "living": "Living room / Lounge",
               "kitchen": "Kitchen", "bathroom": "Bathroom"}
MATERIALS = ("plain", "wood", "planks", "tiles", "carpet", "fabric", "books", "panel", "ceramic", "metal", "folds",
             "doors")

# Shared by pictures and windows, so that only position tells them apart.
PANEL_COLOURS = np.array([(150, 190, 230), (205, 215, 228), (95, 140, 85), (225, 195, 150), (120, 130, 150),
                          (232, 232, 222), (190, 120, 90)], np.float32)
FRAME_COLOURS = np.array([(238, 238, 232), (60, 55, 50), (140, 100, 60), (182, 182, 188)], np.float32)
WOOD_COLOURS = np.array([(150, 105, 65), (185, 145, 100), (110, 75, 50), (205, 180, 140)], np.float32)
FABRIC_COLOURS = np.array([(120, 125, 135), (70, 90, 140), (150, 60, 60), (95, 120, 90), (200, 190, 170)],
                          np.float32)
WALL_COLOURS = np.array([(225, 220, 205), (205, 215, 220), (230, 225, 230), (215, 205, 180)], np.float32)
BOOK_COLOURS = np.array([(170, 40, 40), (40, 70, 140), (220, 200, 120), (40, 110, 60), (230, 230, 225),
                         (90, 50, 90), (200, 110, 40)], np.float32)


@dataclass
class Part:
    """One axis-aligned box (or vertical cylinder in lo..hi) in room coordinates (m)."""
    label: int
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    colours: tuple  # up to three RGB colours, how they are used depends on the material
    material: str = "plain"
    cylinder: bool = False
    frame: float = 0.0            # panels: frame width (m)
    dropout: float = np.inf       # windows: depth is missing where a smooth field exceeds this


@dataclass
class Scene:
    """A room (size (3,) m, corner at the origin) with its parts and camera trajectory."""
    room_type: str
    size: np.ndarray
    parts: list[Part]
    poses: np.ndarray     # (F, 4, 4) camera-to-room
    to_world: np.ndarray  # (4, 4) room frame -> the world frame of the pose files


def scene_id(index: int) -> str:
    return f"scene{index:04d}_00"


def intrinsics(fractions: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole matrix; pixel (row i, column j) has its centre at (u, v) = (j, i)."""
    fx, fy, cx, cy = fractions
    return np.array([[fx * width, 0, cx * width], [0, fy * width, cy * height], [0, 0, 1]])


# --- layout ---

def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 10) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3), 0, 255)


def _overlaps(lo, hi, boxes, margin=0.03) -> bool:
    return any(all(lo[a] < b_hi[a] + margin and b_lo[a] < hi[a] + margin for a in range(3)) for b_lo, b_hi in boxes)


def _wall_box(size, wall: int, along: float, width: float, depth: float, z0: float, z1: float):
    """Box against wall 0 (x=0), 1 (x=max), 2 (y=0) or 3 (y=max), starting `along` m along it."""
    lx, ly, _ = size
    if wall == 0:
        return (0.0, along, z0), (depth, along + width, z1)
    if wall == 1:
        return (lx - depth, along, z0), (lx, along + width, z1)
    if wall == 2:
        return (along, 0.0, z0), (along + width, depth, z1)
    return (along, ly - depth, z0), (along + width, ly, z1)


class _Layout:
    """Places objects without overlap; `boxes` holds the space each one claims."""

    def __init__(self, rng: np.random.Generator, size: np.ndarray):
        self.rng, self.size, self.parts, self.boxes = rng, size, [], []

    def on_wall(self, width, depth, z0, z1, clearance=0.0, tries=30):
        """(lo, hi, wall) of a free spot against a wall, or None; `clearance` m in front stays free."""
        for _ in range(tries):
            wall = int(self.rng.integers(4))
            length = self.size[1] if wall < 2 else self.size[0]
            if length - width < 0.2:
                continue
            along = float(self.rng.uniform(0.1, length - width - 0.1))
            lo, hi = _wall_box(self.size, wall, along, width, depth, z0, z1)
            claim = _wall_box(self.size, wall, along, width, depth + clearance, z0, z1)
            if not _overlaps(*claim, self.boxes):
                self.boxes.append(claim)
                return lo, hi, wall
        return None

    def free(self, lo, hi) -> bool:
        inside = all(lo[a] > 0.05 and hi[a] < self.size[a] - 0.05 for a in range(2))
        if inside and not _overlaps(lo, hi, self.boxes):
            self.boxes.append((lo, hi))
            return True
        return False

    def add(self, label, lo, hi, colours, material="plain", **kwargs) -> None:
        self.parts.append(Part(label, tuple(map(float, lo)), tuple(map(float, hi)), tuple(colours), material,
                               **kwargs))


def _legged(layout: _Layout, label, lo, hi, colour) -> None:
    """A table-like object: a 4 cm top over four 5 cm legs, and 0-2 unannotated things on it."""
    (x0, y0, _), (x1, y1, top) = lo, hi
    layout.add(label, (x0, y0, top - 0.04), (x1, y1, top), [colour], "wood")
    for x in (x0 + 0.03, x1 - 0.08):
        for y in (y0 + 0.03, y1 - 0.08):
            layout.add(label, (x, y, 0), (x + 0.05, y + 0.05, top - 0.04), [colour * 0.85], "wood")
    rng = layout.rng
    for _ in range(int(rng.integers(0, 3))):
        w, d, h = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.3), rng.uniform(0.03, 0.25)
        if x1 - x0 > w + 0.1 and y1 - y0 > d + 0.1:
            x, y = rng.uniform(x0 + 0.05, x1 - w - 0.05), rng.uniform(y0 + 0.05, y1 - d - 0.05)
            layout.add(UNANNOTATED, (x, y, top), (x + w, y + d, top + h), [_pick(rng, BOOK_COLOURS, 20)])


def _chair(layout: _Layout, cx, cy, facing: int, colour, check: bool = True) -> bool:
    """A chair centred at (cx, cy) whose sitter looks along axis `facing` (0 +x, 1 -x, 2 +y, 3 -y);
    `check=False` places it in space claimed for it (in front of a desk)."""
    half = 0.23
    lo, hi = (cx - half, cy - half, 0.0), (cx + half, cy + half, 0.95)
    if check and not layout.free(lo, hi):
        return False
    layout.add(CHAIR, (cx - half, cy - half, 0.42), (cx + half, cy + half, 0.47), [colour], "fabric")
    for x in (cx - half + 0.02, cx + half - 0.06):
        for y in (cy - half + 0.02, cy + half - 0.06):
            layout.add(CHAIR, (x, y, 0), (x + 0.04, y + 0.04, 0.42), [colour * 0.6])
    axis, sign = facing // 2, (-1 if facing % 2 == 0 else 1)  # the back is behind the sitter
    b_lo, b_hi = [cx - half, cy - half, 0.47], [cx + half, cy + half, 0.95]
    edge = (cx, cy)[axis] + sign * half
    b_lo[axis], b_hi[axis] = min(edge, edge - sign * 0.05), max(edge, edge - sign * 0.05)
    layout.add(CHAIR, b_lo, b_hi, [colour], "fabric")
    return True


def _front(wall: int) -> int:
    """The `facing` code of a sitter looking at wall `wall`."""
    return (1, 0, 3, 2)[wall]


def _in_front(lo, hi, wall, distance):
    """Centre of the floor `distance` m in front of a wall object (lo, hi)."""
    cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
    if wall == 0:
        return hi[0] + distance, cy
    if wall == 1:
        return lo[0] - distance, cy
    if wall == 2:
        return cx, hi[1] + distance
    return cx, lo[1] - distance


def _panel(layout: _Layout, label, bottom: tuple[float, float]) -> None:
    """A picture or window: same sizes and look, only the height range `bottom` differs."""
    rng = layout.rng
    width, height = rng.uniform(0.5, 1.2), rng.uniform(0.5, 0.9)
    z0 = rng.uniform(*bottom)
    spot = layout.on_wall(width, 0.03, z0, min(z0 + height, layout.size[2] - 0.08))
    if spot is None:
        return
    lo, hi, wall = spot
    colours = [_pick(rng, PANEL_COLOURS), _pick(rng, FRAME_COLOURS, 5), _pick(rng, PANEL_COLOURS)]
    dropout = rng.uniform(-0.6, 1.6) if label == WINDOW else np.inf
    layout.add(label, lo, hi, colours, "panel", frame=float(rng.uniform(0.03, 0.08)), dropout=float(dropout))
    if label == WINDOW and rng.random() < 0.5:  # a curtain beside it
        width = rng.uniform(0.2, 0.35)
        along = (lo[1] if wall < 2 else lo[0]) - width - 0.01
        c_lo, c_hi = _wall_box(layout.size, wall, along, width, 0.08, lo[2] - 0.2, min(hi[2] + 0.15, layout.size[2]))
        if along > 0.05 and not _overlaps(c_lo, c_hi, layout.boxes, margin=0):
            layout.boxes.append((c_lo, c_hi))
            layout.add(CURTAIN, c_lo, c_hi, [_pick(rng, FABRIC_COLOURS)], "folds")


def _desk(layout: _Layout) -> None:
    """A desk against a wall (a table in all but place) with a chair in front."""
    rng = layout.rng
    spot = layout.on_wall(rng.uniform(1.0, 1.5), rng.uniform(0.55, 0.7), 0, rng.uniform(0.72, 0.76), clearance=0.6)
    if spot is not None:
        lo, hi, wall = spot
        _legged(layout, DESK, lo, hi, _pick(rng, WOOD_COLOURS))
        _chair(layout, *_in_front(lo, hi, wall, 0.2), _front(wall), _pick(rng, FABRIC_COLOURS), check=False)


def _table_with_chairs(layout: _Layout, chairs: int) -> None:
    """A table near the middle of the room with up to 4 chairs round it."""
    rng, (lx, ly, _) = layout.rng, layout.size
    top = rng.uniform(0.72, 0.76)
    w, d = rng.uniform(0.8, 1.4), rng.uniform(0.7, 0.9)
    for _ in range(10):
        cx, cy = lx / 2 + rng.uniform(-0.6, 0.6), ly / 2 + rng.uniform(-0.6, 0.6)
        lo, hi = (cx - w / 2, cy - d / 2, 0), (cx + w / 2, cy + d / 2, top)
        if layout.free(lo, hi):
            _legged(layout, TABLE, lo, hi, _pick(rng, WOOD_COLOURS))
            colour = _pick(rng, FABRIC_COLOURS)
            seats = [(cx - w / 2 - 0.3, cy, 0), (cx + w / 2 + 0.3, cy, 1), (cx, cy - d / 2 - 0.3, 2),
                     (cx, cy + d / 2 + 0.3, 3)]
            for k in rng.permutation(4)[:chairs]:
                _chair(layout, *seats[k], colour)
            return


def _wall_unit(layout: _Layout, label, width, depth, height, colours, material, clearance=0.3):
    """One box standing against a wall; returns on_wall's (lo, hi, wall) or None."""
    spot = layout.on_wall(width, depth, 0, height, clearance=clearance)
    if spot is not None:
        layout.add(label, spot[0], spot[1], colours, material)
    return spot


def _furnish(layout: _Layout, room_type: str) -> None:
    """Add the furniture of `room_type` (the big pieces first, so they find room)."""
    rng = layout.rng
    u = rng.uniform
    _wall_unit(layout, DOOR, u(0.8, 0.92), 0.04, u(2.0, 2.1), [_pick(rng, WOOD_COLOURS)], "doors", clearance=0.8)
    if room_type == "bedroom":
        spot = layout.on_wall(u(1.4, 1.8), u(1.9, 2.1), 0, 1.0, clearance=0.3)
        if spot is not None:  # frame, mattress, headboard and pillows; the bed is all but the pillows
            lo, hi, wall = spot
            wood, cover = _pick(rng, WOOD_COLOURS), _pick(rng, FABRIC_COLOURS)
            axis, at_hi = (0, wall == 1) if wall < 2 else (1, wall == 3)
            head_lo, head_hi, body_lo, body_hi = list(lo), list(hi), list(lo), list(hi)
            if at_hi:
                head_lo[axis], body_hi[axis] = hi[axis] - 0.06, hi[axis] - 0.06
            else:
                head_hi[axis], body_lo[axis] = lo[axis] + 0.06, lo[axis] + 0.06
            layout.add(BED, head_lo, head_hi, [wood], "wood")
            layout.add(BED, body_lo, (body_hi[0], body_hi[1], 0.3), [wood], "wood")
            layout.add(BED, (body_lo[0], body_lo[1], 0.3), (body_hi[0], body_hi[1], 0.55), [cover], "fabric")
            p_lo, p_hi = [body_lo[0] + 0.1, body_lo[1] + 0.1, 0.55], [body_hi[0] - 0.1, body_hi[1] - 0.1, 0.68]
            if at_hi:
                p_lo[axis] = p_hi[axis] - 0.4
            else:
                p_hi[axis] = p_lo[axis] + 0.4
            layout.add(PILLOW, p_lo, p_hi, [np.array((235, 232, 225), np.float32)], "fabric")
        _wall_unit(layout, CABINET, u(0.8, 1.6), u(0.5, 0.6), u(1.8, 2.1), [_pick(rng, WOOD_COLOURS)], "doors")
        _desk(layout)
        if rng.random() < 0.5:
            _wall_unit(layout, BOOKSHELF, u(0.7, 1.2), u(0.3, 0.35), u(1.6, 2.0), [_pick(rng, WOOD_COLOURS)], "books")
    elif room_type == "office":
        for _ in range(2):
            _desk(layout)
        for _ in range(int(rng.integers(1, 3))):
            _wall_unit(layout, BOOKSHELF, u(0.7, 1.2), u(0.3, 0.35), u(1.6, 2.0), [_pick(rng, WOOD_COLOURS)], "books")
        _wall_unit(layout, CABINET, u(0.6, 1.2), u(0.45, 0.6), u(1.8, 2.1), [_pick(rng, WOOD_COLOURS)], "doors")
        if rng.random() < 0.6:
            _table_with_chairs(layout, chairs=int(rng.integers(2, 5)))
    elif room_type == "living":
        spot = layout.on_wall(u(1.8, 2.4), u(0.85, 0.95), 0, 0.85, clearance=1.0)
        if spot is not None:  # seat, back against the wall, two arms; a coffee table in front
            lo, hi, wall = spot
            cover = _pick(rng, FABRIC_COLOURS)
            axis, toward = (0, -1 if wall == 1 else 1) if wall < 2 else (1, -1 if wall == 3 else 1)
            back_lo, back_hi = list(lo), list(hi)
            if toward > 0:
                back_hi[axis] = lo[axis] + 0.22
            else:
                back_lo[axis] = hi[axis] - 0.22
            layout.add(SOFA, back_lo, back_hi, [cover * 0.9], "fabric")
            layout.add(SOFA, lo, (hi[0], hi[1], 0.42), [cover], "fabric")
            other = 1 - axis
            for end in (lo[other], hi[other] - 0.16):
                a_lo, a_hi = list(lo), [hi[0], hi[1], 0.62]
                a_lo[other], a_hi[other] = end, end + 0.16
                layout.add(SOFA, a_lo, a_hi, [cover * 0.9], "fabric")
            cx, cy = _in_front(lo, hi, wall, 0.65)
            w, d = u(0.9, 1.3), u(0.5, 0.7)
            w, d = (d, w) if axis == 0 else (w, d)
            t_lo, t_hi = (cx - w / 2, cy - d / 2, 0), (cx + w / 2, cy + d / 2, u(0.4, 0.48))
            _legged(layout, COFFEE_TABLE, t_lo, t_hi, _pick(rng, WOOD_COLOURS))  # in the sofa's clearance
        _wall_unit(layout, BOOKSHELF, u(0.8, 1.4), u(0.3, 0.35), u(1.6, 2.0), [_pick(rng, WOOD_COLOURS)], "books")
        _wall_unit(layout, CABINET, u(0.8, 1.4), u(0.4, 0.5), u(1.8, 2.0), [_pick(rng, WOOD_COLOURS)], "doors")
        colour = _pick(rng, FABRIC_COLOURS)
        for _ in range(int(rng.integers(1, 3))):
            _chair(layout, layout.size[0] * u(0.3, 0.7), layout.size[1] * u(0.3, 0.7), int(rng.integers(4)), colour)
    elif room_type == "kitchen":
        # Counters and the cabinets above them share one material: only height tells them apart.
        colours = [_pick(rng, np.concatenate([WOOD_COLOURS, FRAME_COLOURS[:1]]))]
        metal = [_pick(rng, FRAME_COLOURS[3:])]
        for k in range(int(rng.integers(1, 3))):
            spot = _wall_unit(layout, KITCHEN_COUNTER, u(1.4, 2.4), 0.6, u(0.88, 0.92), colours, "doors", clearance=0.6)
            if spot is None:
                continue
            lo, hi, wall = spot
            if k == 0:  # a sink on the counter top
                mid = ((lo[1] + hi[1]) if wall < 2 else (lo[0] + hi[0])) / 2 - 0.25
                layout.add(SINK, *_wall_box(layout.size, wall, mid, 0.5, 0.5, hi[2], hi[2] + 0.04), metal, "metal")
            length = (hi[1] - lo[1]) if wall < 2 else (hi[0] - lo[0])
            along = lo[1] if wall < 2 else lo[0]
            c_lo, c_hi = _wall_box(layout.size, wall, along, length, 0.35, u(1.45, 1.55), u(2.1, 2.25))
            if not _overlaps(c_lo, c_hi, layout.boxes):
                layout.boxes.append((c_lo, c_hi))
                layout.add(KITCHEN_CABINET, c_lo, c_hi, colours, "doors")
        _wall_unit(layout, FRIDGE, u(0.65, 0.75), 0.65, u(1.75, 1.85), metal, "metal", clearance=0.6)
        _table_with_chairs(layout, chairs=int(rng.integers(2, 5)))
    else:  # bathroom
        white = [np.array((240, 240, 236), np.float32)]
        spot = _wall_unit(layout, BATHTUB, u(1.5, 1.7), u(0.7, 0.75), 0.55, white, "ceramic")
        if spot is not None and rng.random() < 0.7:  # a shower curtain along the tub's open side, half drawn
            lo, hi, wall = spot
            along, length = (lo[1], hi[1] - lo[1]) if wall < 2 else (lo[0], hi[0] - lo[0])
            depth = (hi[0] - lo[0]) if wall < 2 else (hi[1] - lo[1])
            c_lo, c_hi = map(list, _wall_box(layout.size, wall, along, length * u(0.4, 0.7), depth, 0.6, 2.0))
            normal = 0 if wall < 2 else 1
            if wall in (0, 2):
                c_lo[normal] = c_hi[normal] - 0.02
            else:
                c_hi[normal] = c_lo[normal] + 0.02
            layout.add(SHOWER_CURTAIN, c_lo, c_hi, [_pick(rng, PANEL_COLOURS[[1, 5]], 5)], "folds")
        spot = layout.on_wall(0.42, 0.7, 0, 0.8, clearance=0.5)
        if spot is not None:  # tank against the wall, bowl in front
            lo, hi, wall = spot
            t_lo, t_hi = _wall_box(layout.size, wall, (lo[1] if wall < 2 else lo[0]), 0.42, 0.2, 0.38, 0.8)
            layout.add(TOILET, t_lo, t_hi, white, "ceramic")
            cx, cy = _in_front(t_lo, t_hi, wall, 0.2)
            layout.add(TOILET, (cx - 0.2, cy - 0.2, 0), (cx + 0.2, cy + 0.2, 0.4), white, "ceramic", cylinder=True)
        spot = _wall_unit(layout, BATHROOM_COUNTER, u(0.8, 1.2), 0.5, 0.85, [_pick(rng, WOOD_COLOURS)], "doors")
        if spot is not None:
            lo, hi, wall = spot
            cx, cy = _in_front(lo, hi, wall, -0.25)
            layout.add(SINK, (cx - 0.22, cy - 0.17, 0.85), (cx + 0.22, cy + 0.17, 0.87), white, "ceramic")
    if room_type != "bathroom" or rng.random() < 0.5:
        _panel(layout, WINDOW, (1.2, 1.5))
    for _ in range(int(rng.integers(1, 3)) if room_type != "bathroom" else 1):
        _panel(layout, WINDOW, (1.2, 1.5))
        _panel(layout, PICTURE, (0.55, 0.9))
    for _ in range(int(rng.integers(0, 2)) + (room_type == "bathroom")):
        _panel(layout, PICTURE, (0.55, 0.9))
    r, h = u(0.13, 0.18), u(0.3, 0.45)
    spot = layout.on_wall(2 * r, 2 * r, 0, h)
    if spot is not None:
        lo, hi, _ = spot
        layout.add(TRASH_CAN, lo, hi, [_pick(rng, FABRIC_COLOURS)], "plain", cylinder=True)
    for _ in range(int(rng.integers(1, 4))):  # unannotated clutter on the floor
        s = u(0.15, 0.4, 3)
        x, y = u(0.2, layout.size[0] - 0.6), u(0.2, layout.size[1] - 0.6)
        if layout.free((x, y, 0), (x + s[0], y + s[1], s[2])):
            layout.add(UNANNOTATED, (x, y, 0), (x + s[0], y + s[1], s[2]), [_pick(rng, BOOK_COLOURS, 20)])


def _trajectory(rng: np.random.Generator, size: np.ndarray, parts: list[Part], frames: int) -> np.ndarray:
    """(F, 4, 4) camera-to-room poses walking round the room's middle, each looking at something:
    a part of a random furnishing class (so small classes get seen too), or now and then a wall.

    The camera stays >= 0.85 m from the walls and >= 1.25 m high, so it is never inside furniture
    (tall pieces stand against walls and are <= 0.75 m deep; free-standing ones are < 1.1 m)."""
    lx, ly, _ = size
    rx, ry = max(lx / 2 - rng.uniform(0.85, 1.2), 0.2), max(ly / 2 - rng.uniform(0.85, 1.2), 0.2)
    start, sweep = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.0) * 2 * np.pi * rng.choice([-1, 1])
    things = [p for p in parts if p.label not in (WALL, FLOOR, CEILING)]
    classes = sorted({p.label for p in things})
    poses = []
    for k in range(frames):
        theta = start + sweep * k / frames
        pos = np.array([lx / 2 + rx * np.cos(theta), ly / 2 + ry * np.sin(theta), rng.uniform(1.25, 1.6)])
        for _ in range(10):  # something far enough away to frame
            if classes and rng.random() < 0.85:
                label = classes[rng.integers(len(classes))]
                mine = [p for p in things if p.label == label]
                part = mine[rng.integers(len(mine))]
                target = (np.array(part.lo) + np.array(part.hi)) / 2 + rng.normal(0, 0.25, 3)
            else:
                target = np.array([rng.uniform(0, lx), rng.uniform(0, ly), rng.uniform(0.8, 1.8)])
            if np.hypot(*(target - pos)[:2]) > 1.0:
                break
        look = target - pos
        yaw = np.arctan2(look[1], look[0])
        pitch = np.clip(np.arctan2(look[2], np.hypot(look[0], look[1])), np.radians(-50), np.radians(10))
        roll = np.radians(rng.normal(0, 2))
        forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
        right = np.cross(forward, [0, 0, 1])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        right, down = np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, down, forward], axis=1)
        pose[:3, 3] = pos
        poses.append(pose)
    return np.stack(poses)


def build_scene(seed: int, index: int, frames: int) -> Scene:
    """Scene `index` of the set made with `seed`: room, parts (room surfaces first) and trajectory."""
    rng = np.random.default_rng([seed, index])
    room_type = ROOM_TYPES[index % len(ROOM_TYPES)]
    small = room_type == "bathroom"
    size = np.array([rng.uniform(3.6, 4.3 if small else 6.0), rng.uniform(3.6, 4.0 if small else 5.5),
                     rng.uniform(2.7, 3.0)])
    layout = _Layout(rng, size)
    lx, ly, lz = size
    wall = _pick(rng, WALL_COLOURS, 6)
    floor_material = {"bathroom": "tiles", "kitchen": "tiles", "office": "carpet"}.get(room_type, "planks")
    floor_colour = _pick(rng, FRAME_COLOURS[[0, 3]] if floor_material == "tiles" else WOOD_COLOURS)
    if floor_material == "carpet":
        floor_colour = _pick(rng, FABRIC_COLOURS)
    t = 0.1  # the room's surfaces are slabs just outside it, so every ray ends on one
    layout.add(FLOOR, (-t, -t, -t), (lx + t, ly + t, 0), [floor_colour], floor_material)
    layout.add(CEILING, (-t, -t, lz), (lx + t, ly + t, lz + t), [np.array((245, 245, 242), np.float32)])
    layout.add(WALL, (-t, -t, 0), (0, ly + t, lz), [wall])
    layout.add(WALL, (lx, -t, 0), (lx + t, ly + t, lz), [wall * 0.97])
    layout.add(WALL, (-t, -t, 0), (lx + t, 0, lz), [wall * 0.99])
    layout.add(WALL, (-t, ly, 0), (lx + t, ly + t, lz), [wall * 0.98])
    _furnish(layout, room_type)
    poses = _trajectory(rng, size, layout.parts, frames)
    yaw, shift = rng.uniform(0, 2 * np.pi), rng.uniform(-3, 3, 2)
    to_world = np.eye(4)
    to_world[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    to_world[:2, 3] = shift
    return Scene(room_type, size, layout.parts, poses, to_world)


# --- ray casting ---

@dataclass
class _Arrays:
    lo: np.ndarray        # (P, 3)
    hi: np.ndarray        # (P, 3)
    cylinder: np.ndarray  # (P,) bool
    label: np.ndarray     # (P,) uint16
    colours: np.ndarray   # (P, 3, 3)
    material: np.ndarray  # (P,) int
    frame: np.ndarray     # (P,)
    dropout: np.ndarray   # (P,)


def _arrays(scene: Scene) -> _Arrays:
    colours = np.zeros((len(scene.parts), 3, 3), np.float32)
    for k, part in enumerate(scene.parts):
        cs = list(part.colours) + [part.colours[0]] * (3 - len(part.colours))
        colours[k] = np.stack(cs)
    return _Arrays(np.array([p.lo for p in scene.parts], np.float32), np.array([p.hi for p in scene.parts], np.float32),
                   np.array([p.cylinder for p in scene.parts]), np.array([p.label for p in scene.parts], np.uint16),
                   colours, np.array([MATERIALS.index(p.material) for p in scene.parts]),
                   np.array([p.frame for p in scene.parts], np.float32),
                   np.array([p.dropout for p in scene.parts], np.float32))


def _rays(pose: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 room-frame ray directions whose camera z is 1 (so ray length t = depth)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    dirs = (cam @ pose[:3, :3].T).astype(np.float32)
    return np.where(np.abs(dirs) < 1e-7, np.float32(1e-7), dirs)


def _window(lo, hi, pose, K, width, height):
    """Pixel rectangle (r0, r1, c0, c1) that can see the box lo..hi, or None when it is out of view."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cam = (corners - pose[:3, 3]) @ pose[:3, :3]
    if (cam[:, 2] < 0.01).all():
        return None
    if (cam[:, 2] < 0.01).any():
        return 0, height, 0, width
    u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]
    v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
    c0, c1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, width)
    r0, r1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, height)
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def cast(scene: Scene, arrays: _Arrays, pose: np.ndarray, K: np.ndarray, width: int, height: int):
    """Ray cast one view (pose: camera-to-room). Returns directions (H, W, 3), depth t (H, W) m,
    the part hit (H, W) int and its face (H, W) int8: 2 * axis + (ray goes up that axis), 6 = cylinder side."""
    dirs = _rays(pose, K, width, height)
    inv = 1 / dirs
    origin = pose[:3, 3].astype(np.float32)
    best = np.full((height, width), np.inf, np.float32)
    part = np.zeros((height, width), np.int32)
    face = np.zeros((height, width), np.int8)
    for k in range(len(arrays.lo)):
        lo, hi = arrays.lo[k], arrays.hi[k]
        box = _window(lo, hi, pose, K, width, height)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        d, iv, tb = dirs[r0:r1, c0:c1], inv[r0:r1, c0:c1], best[r0:r1, c0:c1]
        if arrays.cylinder[k]:
            centre, radius = (lo[:2] + hi[:2]) / 2, (hi[:2] - lo[:2]).min() / 2
            off = origin[:2] - centre
            a = d[..., 0] ** 2 + d[..., 1] ** 2
            b = d[..., 0] * off[0] + d[..., 1] * off[1]
            disc = b * b - a * (off @ off - radius ** 2)
            side = (-b - np.sqrt(np.maximum(disc, 0))) / a
            z = origin[2] + side * d[..., 2]
            side = np.where((disc >= 0) & (z >= lo[2]) & (z <= hi[2]) & (side > 0), side, np.inf)
            cap = (hi[2] - origin[2]) * iv[..., 2]
            px, py = off[0] + cap * d[..., 0], off[1] + cap * d[..., 1]
            cap = np.where((px * px + py * py <= radius ** 2) & (cap > 0), cap, np.inf)
            near = np.minimum(side, cap)
            hit_face = np.where(side <= cap, 6, 4).astype(np.int8)  # 4: the top, seen from above
            hit = near < tb
        else:
            near = np.full(d.shape[:2], -np.inf, np.float32)
            far = np.full(d.shape[:2], np.inf, np.float32)
            hit_face = np.zeros(d.shape[:2], np.int8)
            for ax in range(3):
                t0, t1 = (lo[ax] - origin[ax]) * iv[..., ax], (hi[ax] - origin[ax]) * iv[..., ax]
                enter = np.minimum(t0, t1)
                later = enter > near
                near = np.where(later, enter, near)
                hit_face = np.where(later, 2 * ax + (d[..., ax] > 0), hit_face).astype(np.int8)
                far = np.minimum(far, np.maximum(t0, t1))
            hit = (near <= far) & (near > 0) & (near < tb)
        tb[hit] = near[hit]
        part[r0:r1, c0:c1][hit] = k
        face[r0:r1, c0:c1][hit] = hit_face[hit]
    return dirs, best, part, face


def _hash(*cells: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) of integer cells (world-fixed texture noise)."""
    h = np.zeros(np.shape(cells[0]), np.int64)
    for prime, c in zip((73856093, 19349663, 83492791), cells):
        h = (h ^ (np.asarray(c, np.int64) * prime)) % 2147483647
    h = (h * 2654435761) % 4294967296
    return ((h >> 8) & 0xFFFF).astype(np.float32) / 65536


def _panel_coords(p, lo, hi):
    """(along, up, width, height) in m on a wall panel: along its wide horizontal axis, and up."""
    wide_x = (hi[:, 0] - lo[:, 0]) > (hi[:, 1] - lo[:, 1])
    along = np.where(wide_x, p[:, 0] - lo[:, 0], p[:, 1] - lo[:, 1])
    width = np.where(wide_x, hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1])
    return along, p[:, 2] - lo[:, 2], width, hi[:, 2] - lo[:, 2]


def shade(scene: Scene, arrays: _Arrays, pose, dirs, t, part, face, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 colour of a cast view: material colour and texture, a ceiling light, noise."""
    p = pose[:3, 3].astype(np.float32) + t[..., None] * dirs          # (H, W, 3) room points
    axis, ups = np.minimum(face, 5) // 2, face % 2 == 1
    normal = np.zeros_like(p)
    np.put_along_axis(normal, axis[..., None].astype(np.int64), np.where(ups, -1.0, 1.0)[..., None].astype(np.float32),
                      axis=-1)
    side = face == 6
    if side.any():
        centre = (arrays.lo[part[side], :2] + arrays.hi[part[side], :2]) / 2
        radial = p[side][:, :2] - centre
        normal[side] = np.concatenate([radial / np.linalg.norm(radial, axis=1, keepdims=True),
                                       np.zeros((len(radial), 1), np.float32)], axis=1)
    colour = arrays.colours[part, 0].copy()
    tex = np.zeros(t.shape, np.float32)
    material = arrays.material[part]
    for code in np.unique(material):
        m = material == code
        q, name = p[m], MATERIALS[code]
        lo, hi = arrays.lo[part[m]], arrays.hi[part[m]]
        if name == "wood":
            long_x = (hi[:, 0] - lo[:, 0]) >= (hi[:, 1] - lo[:, 1])
            a, b = np.where(long_x, q[:, 0], q[:, 1]), np.where(long_x, q[:, 1], q[:, 0])
            tex[m] = 0.12 * np.sin(2 * np.pi * (b * 9 + 0.6 * np.sin(a * 3 + q[:, 2] * 4)))
        elif name == "planks":
            cell = np.floor(q[:, 1] / 0.18)
            gap = (q[:, 1] / 0.18 - cell) < 0.05
            tex[m] = np.where(gap, -0.5, 0.3 * (_hash(cell) - 0.5) + 0.08 * np.sin(q[:, 0] * 25 + cell))
        elif name == "tiles":
            f = (q[:, :2] / 0.3) % 1
            grout = ((f < 0.04) | (f > 0.96)).any(axis=1)
            tex[m] = np.where(grout, -0.35, 0.1 * (_hash(*np.floor(q[:, :2] / 0.3).T) - 0.5))
        elif name == "carpet":
            tex[m] = 0.3 * (_hash(*np.floor(q / 0.012).T) - 0.5)
        elif name == "fabric":
            tex[m] = 0.08 * np.sin(q[:, 0] * 90) * np.sin(q[:, 1] * 90) + 0.1 * (_hash(*np.floor(q / 0.02).T) - 0.5)
        elif name == "folds":
            tex[m] = 0.3 * np.sin((q[:, 0] + q[:, 1]) * 40)
        elif name == "metal":
            tex[m] = 0.05 * np.sin(q[:, 2] * 400)
        elif name == "doors":  # vertical seams between door fronts every ~45 cm, and a dark gap near the top
            along, up, width, height = _panel_coords(q, lo, hi)
            seam = (along % 0.45 < 0.012) | (np.abs(up - height + 0.06) < 0.01)
            tex[m] = np.where(seam, -0.45, 0.04 * np.sin(up * 30))
        elif name == "books":  # spines of random colours on shelves 33 cm apart; wood elsewhere
            along, up, _, _ = _panel_coords(q, lo, hi)
            front = axis[m] < 2
            book = _hash(np.floor(along / 0.035), np.floor(up / 0.33), part[m])
            board = (up % 0.33 < 0.03) | ~front | (book > 0.9)
            spines = BOOK_COLOURS[(book * 7.7).astype(int) % len(BOOK_COLOURS)]
            colour[m] = np.where(board[:, None], colour[m], spines)
            tex[m] = np.where(board, 0, 0.15 * (book - 0.5))
        elif name == "panel":  # picture or window: frame, and a two-colour gradient with soft blotches
            along, up, width, height = _panel_coords(q, lo, hi)
            border = np.minimum.reduce([along, width - along, up, height - up]) < arrays.frame[part[m]]
            cs = arrays.colours[part[m]]
            mix = np.clip(up / height, 0, 1)[:, None]
            inner = cs[:, 0] * mix + cs[:, 2] * (1 - mix)
            blotch = 0.12 * np.sin(along * 7 + part[m]) * np.sin(up * 5 + 2 * part[m])
            colour[m] = np.where(border[:, None], cs[:, 1], inner * (1 + blotch[:, None]))
    light = np.array([scene.size[0] / 2, scene.size[1] / 2, scene.size[2] - 0.3], np.float32)
    to_light = light - p
    dist = np.linalg.norm(to_light, axis=-1)
    lambert = np.maximum((normal * to_light).sum(-1) / dist, 0)
    brightness = 0.5 + 0.6 * lambert / (1 + 0.04 * dist ** 2)
    image = colour * ((1 + tex) * brightness * rng.uniform(0.85, 1.1))[..., None]
    height, width = t.shape
    v, u = np.mgrid[0:height, 0:width]
    image *= (1 - 0.25 * (((u - width / 2) / width) ** 2 + ((v - height / 2) / height) ** 2))[..., None]
    image[1:-1] = 0.25 * image[:-2] + 0.5 * image[1:-1] + 0.25 * image[2:]  # lens blur, as in MiniVOC
    image[:, 1:-1] = 0.25 * image[:, :-2] + 0.5 * image[:, 1:-1] + 0.25 * image[:, 2:]
    image += rng.normal(0, 2.5, image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def sense_depth(arrays: _Arrays, pose, dirs, t, part, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint16 mm depth with the sensor's noise and holes (see the module docstring)."""
    z = t + rng.normal(0, 1, t.shape).astype(np.float32) * (0.001 + 0.0019 * (t - 0.4) ** 2)
    missing = (t > MAX_DEPTH) | (t < MIN_DEPTH) | (rng.random(t.shape) < 0.003)
    glass = np.isfinite(arrays.dropout[part])
    if glass.any():  # windows: a smooth field fixed on the glass, so holes stay put from frame to frame
        q = pose[:3, 3] + t[glass][:, None] * dirs[glass]
        k = part[glass]
        field_ = np.sin(q[:, 0] * 7 + q[:, 2] * 5 + k) + np.sin(q[:, 1] * 6 - q[:, 2] * 8 + 2 * k)
        missing[glass] |= field_ > arrays.dropout[k]
    jump = np.zeros(t.shape, bool)  # the far side of a depth edge is often lost
    for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[:, :-1], np.s_[:, 1:]), (np.s_[1:], np.s_[:-1]),
                 (np.s_[:-1], np.s_[1:])):
        jump[a] |= t[a] - t[b] > 0.05 + 0.03 * t[a]
    missing |= jump & (rng.random(t.shape) < 0.7)
    return np.where(missing, 0, np.round(z * 1000)).astype(np.uint16)


# --- files ---

def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _matrix_text(matrix: np.ndarray) -> bytes:
    """A 4x4 matrix the way SensReader writes it: rows of "%f", space-separated."""
    return "".join(" ".join(f"{v:f}" for v in row) + "\n" for row in matrix).encode()


def _meta_text(scene: Scene, frames: int, width, height, depth_width, depth_height, K, Kd) -> bytes:
    def flat(matrix):
        return " ".join(f"{v:f}" for v in matrix.reshape(-1))

    lines = [f"axisAlignment = {flat(np.linalg.inv(scene.to_world))}", f"colorHeight = {height}",
             f"colorToDepthExtrinsics = {flat(np.eye(4))}", f"colorWidth = {width}", f"depthHeight = {depth_height}",
             f"depthWidth = {depth_width}", f"fx_color = {K[0, 0]:f}", f"fx_depth = {Kd[0, 0]:f}",
             f"fy_color = {K[1, 1]:f}", f"fy_depth = {Kd[1, 1]:f}", f"mx_color = {K[0, 2]:f}",
             f"mx_depth = {Kd[0, 2]:f}", f"my_color = {K[1, 2]:f}", f"my_depth = {Kd[1, 2]:f}",
             f"numColorFrames = {frames}", f"numDepthFrames = {frames}", "numIMUmeasurements = 0",
             f"sceneType = {SCENE_TYPES[scene.room_type]}"]
    return ("\n".join(lines) + "\n").encode()


def _pad4(K: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = K
    return out


def write_scene(root: Path, seed: int, index: int, frames: int, width: int, height: int, depth_width: int,
                depth_height: int, invalid_pose_frame: int | None = None) -> None:
    """Render scene `index` and write its directory under root/scans (replacing an old one)."""
    scene = build_scene(seed, index, frames)
    arrays = _arrays(scene)
    K, Kd = intrinsics(COLOR_INTRINSICS, width, height), intrinsics(DEPTH_INTRINSICS, depth_width, depth_height)
    name = scene_id(index)
    out = root / "scans" / name
    if out.exists():
        shutil.rmtree(out)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (out / sub).mkdir(parents=True)
    for kind, matrix in (("intrinsic_color", _pad4(K)), ("intrinsic_depth", _pad4(Kd)),
                         ("extrinsic_color", np.eye(4)), ("extrinsic_depth", np.eye(4))):
        write_atomic(out / "intrinsic" / f"{kind}.txt", _matrix_text(matrix))
    write_atomic(out / f"{name}.txt", _meta_text(scene, frames, width, height, depth_width, depth_height, K, Kd))
    labels = io.BytesIO()
    with zipfile.ZipFile(labels, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("label-filt/", ZIP_DATE), b"")
        for f, pose in enumerate(scene.poses):
            rng = np.random.default_rng([seed, index, f])
            dirs, t, part, face = cast(scene, arrays, pose, K, width, height)
            buffer = io.BytesIO()
            Image.fromarray(shade(scene, arrays, pose, dirs, t, part, face, rng)).save(buffer, format="JPEG",
                                                                                       quality=JPEG_QUALITY)
            write_atomic(out / "color" / f"{f}.jpg", buffer.getvalue())
            archive.writestr(zipfile.ZipInfo(f"label-filt/{f}.png", ZIP_DATE), _png(arrays.label[part]))
            dirs, t, part, _ = cast(scene, arrays, pose, Kd, depth_width, depth_height)
            write_atomic(out / "depth" / f"{f}.png", _png(sense_depth(arrays, pose, dirs, t, part, rng)))
            world = scene.to_world @ pose
            write_atomic(out / "pose" / f"{f}.txt",
                         _matrix_text(np.full((4, 4), -np.inf) if f == invalid_pose_frame else world))
    write_atomic(root / "scans" / name / f"{name}_2d-label-filt.zip", labels.getvalue())


def announce_generation(where: Path, params: dict) -> None:
    """Say loudly that MiniScanNet is being written and where (a misspelt root would fill a new directory)."""
    logging.getLogger("regionbench.data").warning(
        "generating MiniScanNet (%d train + %d val scenes of %d RGB-D frames, %dx%d colour, %dx%d depth, seed %d) "
        "at %s, which holds no MiniScanNet with these parameters. For a downloaded ScanNet set dataset.root to it "
        "and dataset.generate=null", params["num_train_scenes"], params["num_val_scenes"], params["frames_per_scene"],
        params["width"], params["height"], params["depth_width"], params["depth_height"], params["seed"], where)


def _refuse_foreign_dataset(root: Path) -> None:
    """Never write over a real ScanNet download: without a stamp of ours, the ScanNet files must be absent."""
    if (root / STAMP).is_file():
        return
    names = ("scans", "scannetv2_train.txt", "scannetv2_val.txt", "scannetv2-labels.combined.tsv")
    found = [name for name in names if (root / name).exists()]
    if found:
        raise FileExistsError(f"{root} holds another ScanNet dataset ({', '.join(found)} but no {STAMP}); "
                              "choose an empty root for MiniScanNet")


def generate_miniscannet(root: str | Path, num_train_scenes: int = 6, num_val_scenes: int = 3,
                         frames_per_scene: int = 10, width: int = 320, height: int = 240, depth_width: int = 160,
                         depth_height: int = 120, seed: int = 0, progress: bool = True,
                         invalid_pose: bool = True) -> Path:
    """Write MiniScanNet under `root` (train: scenes 0..num_train_scenes-1, val: the next num_val_scenes).

    Returns root. Does nothing if its stamp records the same parameters; the stamp is written
    last (an unfinished run leaves one marked incomplete, so it is redone and still known as ours).
    """
    params = {"generator_version": GENERATOR_VERSION, "num_train_scenes": num_train_scenes,
              "num_val_scenes": num_val_scenes, "frames_per_scene": frames_per_scene, "width": width,
              "height": height, "depth_width": depth_width, "depth_height": depth_height, "seed": seed,
              "invalid_pose": invalid_pose}
    root = Path(root)
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    if num_train_scenes < 1 or num_val_scenes < 1 or frames_per_scene < 1 or min(width, height) < 32 \
            or min(depth_width, depth_height) < 16:
        raise ValueError("MiniScanNet needs >= 1 train and val scene and frame, colour >= 32 px and depth >= 16 px "
                         f"a side; got {params}")
    _refuse_foreign_dataset(root)
    announce_generation(root, params)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(stamp, (json.dumps({**params, "complete": False}, indent=1) + "\n").encode())
    if (root / "scans").exists():  # ours (stamped): drop scenes of earlier parameters
        shutil.rmtree(root / "scans")
    total, start = num_train_scenes + num_val_scenes, time.perf_counter()
    for index in range(total):
        bad = frames_per_scene // 2 if invalid_pose and index == num_train_scenes else None
        write_scene(root, seed, index, frames_per_scene, width, height, depth_width, depth_height, bad)
        if progress:
            print(f"miniscannet: {index + 1}/{total} scenes ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    rows = ["\t".join(TSV_HEADER)] + [row.replace("|", "\t") for row in TSV_ROWS]
    write_atomic(root / "scannetv2-labels.combined.tsv", "".join(r + "\r\n" for r in rows).encode())
    write_atomic(root / "classes_SemVoxLabel-nyu40id.txt",
                 "\n".join(f"{i}\t{name}" for i, name in BENCHMARK_CLASSES).encode())  # no final newline, as real
    for split, indices in (("train", range(num_train_scenes)), ("val", range(num_train_scenes, total))):
        write_atomic(root / f"scannetv2_{split}.txt", "".join(scene_id(i) + "\n" for i in indices).encode())
    write_atomic(stamp, (json.dumps(params, indent=1) + "\n").encode())
    return root


def main(argv: list[str] | None = None) -> None:
    generator_main(generate_miniscannet, argv, __doc__)


if __name__ == "__main__":
    main()
