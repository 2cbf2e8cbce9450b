"""ScanNet v2 frames (colour, depth, pose, intrinsics, labels) in the layouts they are downloaded in.

Two layouts (``LAYOUTS``), ROOT holding ``scannetv2-labels.combined.tsv``, ``scannetv2_{train,val}.txt``
and, optionally, ``classes_SemVoxLabel-nyu40id.txt``:

``scannet`` -- the raw scans exported by SensReader (``SensorData.py``: every frame ``i`` written as
``str(i)``, so names are unpadded integers, sorted numerically here):

    ROOT/scans/<scene>/color/<i>.jpg           1296x968
    ROOT/scans/<scene>/depth/<i>.png           640x480 uint16 millimetres, 0 = no depth
    ROOT/scans/<scene>/pose/<i>.txt            4x4 camera-to-world (some are all -inf/NaN)
    ROOT/scans/<scene>/intrinsic/intrinsic_color.txt, intrinsic_depth.txt     4x4
    ROOT/scans/<scene>/<scene>_2d-label-filt.zip   members label-filt/<i>.png: 16-bit ScanNet label ids
                                                   (or the zip extracted beside it: label-filt/<i>.png)

``scannet_frames_25k`` -- the 2D benchmark's subsample (about every 100th frame), names zero-padded:

    ROOT/scannet_frames_25k/<scene>/ (or ROOT/tasks/scannet_frames_25k/<scene>/, as the download puts it)
        color/000000.jpg  depth/000000.png  pose/000000.txt  label/000000.png (8-bit NYUv2-40 ids)
        intrinsics_color.txt  intrinsics_depth.txt

Labels. A label-filt image stores values of the tsv's ``id`` column (ScanNet label ids), which
BenchmarkScripts' ``2d_helpers/convert_scannet_label_image.py`` maps to ``nyu40id`` through
``util.read_label_mapping(label_from="id", label_to="nyu40id")``. That reader fills a dict row by
row, so where an id repeats the *last* row wins; the real tsv (607 rows, 549 ids) repeats 51 ids,
three with different nyu40 ids: 107 (pipe 40 / pipes 38) -> 38, 188 (shower door 8 / shower doors
38) -> 38, 385 (cabinet door 8 / cabinet doors 3) -> 3. We do the same, so our labels equal what the
official helper produces (BenchmarkScripts' README offers scannet_frames_25k's 8-bit NYUv2-40 PNGs
as that conversion, precomputed). Ids absent from the tsv (0 = unannotated) are ignored (the helper
leaves them unmapped and casts to 8 bits, so id 300 would become class 44 there). Scored are the
20 classes of ``classes_SemVoxLabel-nyu40id.txt`` (``SCANNET20`` when the file is absent): nyu40 id
-> train id 0..19 in file order, every other id -> 255 (ignore).

Resolution. Frames are scored at the label image's resolution. When the colour image has another
size it is resized (bilinear) to the label's and ``K_color`` is rescaled with it (pixel centres
kept: ``cx' = (cx + 0.5) * s - 0.5``); depth stays at its own resolution and is reached through the
intrinsics (``bench.geometry``).

mmdetection3d's ``scannet_infos.pkl`` (posed images) is read with ``load_numpy_pickle``, an
unpickler that builds numpy arrays and nothing else.
"""
from __future__ import annotations

import csv
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.geometry import as_intrinsics

IGNORE_INDEX = 255
TSV_NAME = "scannetv2-labels.combined.tsv"
CLASSES_NAME = "classes_SemVoxLabel-nyu40id.txt"
SPLITS = ("train", "val")  # test scenes (scans_test) have no labels

# (nyu40 id, name) of the 20 scored classes, as in classes_SemVoxLabel-nyu40id.txt (its spelling kept)
SCANNET20 = ((1, "wall"), (2, "floor"), (3, "cabinet"), (4, "bed"), (5, "chair"), (6, "sofa"), (7, "table"),
             (8, "door"), (9, "window"), (10, "bookshelf"), (11, "picture"), (12, "counter"), (14, "desk"),
             (16, "curtain"), (24, "refridgerator"), (28, "shower curtain"), (33, "toilet"), (34, "sink"),
             (36, "bathtub"), (39, "otherfurniture"))
NUM_CLASSES = len(SCANNET20)


@dataclass(frozen=True)
class Layout:
    scene_dirs: tuple[str, ...]   # where scenes live under ROOT, first existing wins
    intrinsic_color: str          # relative to the scene directory
    intrinsic_depth: str
    labels: str                   # "scannet_id" (16-bit, through the tsv) or "nyu40" (8-bit)


LAYOUTS = {
    "scannet": Layout(("scans",), "intrinsic/intrinsic_color.txt", "intrinsic/intrinsic_depth.txt", "scannet_id"),
    "scannet_frames_25k": Layout(("scannet_frames_25k", "tasks/scannet_frames_25k"), "intrinsics_color.txt",
                                 "intrinsics_depth.txt", "nyu40"),
}


@dataclass(frozen=True)
class ScanNetFrame:
    layout: str
    scene: str
    frame: str                       # file stem: "120" (scannet) or "001200" (scannet_frames_25k)
    id: str                          # f"{scene}_{frame}": a shard key (no "/" or ".")
    image_path: Path
    depth_path: Path
    pose_path: Path
    label: Path | tuple[Path, str]   # a PNG, or (zip path, member name)
    intrinsic_color: Path
    intrinsic_depth: Path


# ----------------------------------------------------------------------------- label tables
def read_label_mapping(tsv_path: str | Path, label_from: str = "id", label_to: str = "nyu40id") -> dict[int, int]:
    """{label_from value: label_to value} from scannetv2-labels.combined.tsv; a repeated key takes
    its last row's value, as BenchmarkScripts' util.read_label_mapping does."""
    mapping = {}
    with open(tsv_path, newline="") as f:  # the real file has CRLF line ends; csv handles them
        reader = csv.DictReader(f, delimiter="\t")
        missing = {label_from, label_to} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{tsv_path} has no column(s) {sorted(missing)}; columns: {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                mapping[int(row[label_from])] = int(row[label_to])
            except (TypeError, ValueError):
                raise ValueError(f"{tsv_path} line {line}: {label_from}={row[label_from]!r}, "
                                 f"{label_to}={row[label_to]!r} are not integers") from None
    return mapping


def read_scored_classes(path: str | Path | None = None) -> tuple[tuple[int, str], ...]:
    """(nyu40 id, name) pairs from a classes_SemVoxLabel-nyu40id.txt ("id<whitespace>name" per line),
    or ``SCANNET20`` when ``path`` is None or absent."""
    if path is None or not Path(path).is_file():
        return SCANNET20
    pairs = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            nyu40, name = line.split(maxsplit=1)
            pairs.append((int(nyu40), name.strip()))
    return tuple(pairs)


def nyu40_to_train(classes: tuple[tuple[int, str], ...] = SCANNET20) -> np.ndarray:
    """(256,) uint8: nyu40 id -> train id 0..len(classes)-1 in ``classes`` order, else 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (nyu40, _) in enumerate(classes):
        table[nyu40] = train_id
    return table


def scannet_id_to_train(mapping: dict[int, int], classes: tuple[tuple[int, str], ...] = SCANNET20) -> np.ndarray:
    """(65536,) uint8: 16-bit ScanNet label id -> train id through ``mapping`` (id -> nyu40), else 255."""
    to_train = nyu40_to_train(classes)
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for scannet_id, nyu40 in mapping.items():
        if 0 <= scannet_id < 65536 and 0 <= nyu40 < 256:
            table[scannet_id] = to_train[nyu40]
    return table


def label_lookup(root: str | Path, layout: str) -> np.ndarray:
    """The table ``load_frame`` indexes with a raw label value of ``layout``: (65536,) for ``scannet``
    (needs ROOT/scannetv2-labels.combined.tsv), (256,) for ``scannet_frames_25k``."""
    root, spec = Path(root), _layout(layout)
    classes = read_scored_classes(root / CLASSES_NAME)
    if spec.labels == "nyu40":
        return nyu40_to_train(classes)
    tsv = root / TSV_NAME
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} not found: layout 'scannet' maps label-filt ids through it "
                                "(it ships with the ScanNet download; put it in the data root)")
    return scannet_id_to_train(read_label_mapping(tsv), classes)


# ----------------------------------------------------------------------------- listing frames
def _layout(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ScanNet layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def read_split(root: str | Path, split: str) -> list[str]:
    """Scene ids of ROOT/scannetv2_<split>.txt, in file order."""
    if split not in SPLITS:
        raise ValueError(f"ScanNet split {split!r}; valid: {', '.join(SPLITS)} (test scenes have no labels)")
    path = Path(root) / f"scannetv2_{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found: copy scannetv2_{split}.txt (ScanNet's "
                                "Tasks/Benchmark) into the data root")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def scenes_dir(root: str | Path, layout: str) -> Path:
    root = Path(root)
    for name in _layout(layout).scene_dirs:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no ScanNet {layout} scenes under {root}: expected one of "
                            f"{[str(root / d) for d in _layout(layout).scene_dirs]}")


def _numeric_stems(directory: Path, suffix: str, scene: str) -> dict[str, Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"scene {scene}: {directory} is missing (export it with SensReader, or "
                                "re-extract the scene)")
    stems = {p.stem: p for p in directory.iterdir() if p.suffix == suffix}
    bad = [s for s in stems if not s.isdigit()]
    if bad:
        raise ValueError(f"scene {scene}: {directory} has non-numeric frame names {sorted(bad)[:5]}")
    return stems


def _label_files(scene_dir: Path, scene: str, layout: str) -> dict[str, Path | tuple[Path, str]]:
    """{frame stem: label PNG or (zip, member)} of one scene."""
    if _layout(layout).labels == "nyu40":
        return dict(_numeric_stems(scene_dir / "label", ".png", scene))
    extracted = scene_dir / "label-filt"
    if extracted.is_dir():
        return dict(_numeric_stems(extracted, ".png", scene))
    archive = scene_dir / f"{scene}_2d-label-filt.zip"
    if not archive.is_file():
        raise FileNotFoundError(f"scene {scene}: no labels: expected {archive} (download it with "
                                "--type _2d-label-filt.zip) or its extracted label-filt/ directory")
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.namelist() if m.endswith(".png") and Path(m).parent.name == "label-filt"]
    return {Path(m).stem: (archive, m) for m in members}


def _missing(frames: list[str], present: dict, scene: str, what: str) -> None:
    absent = [f for f in frames if f not in present]
    if absent:
        raise ValueError(f"scene {scene}: {len(absent)} colour frame(s) have no {what} file (e.g. frame "
                         f"{', '.join(absent[:5])}): re-export or re-extract the scene, or remove those "
                         "colour frames")


def _subsample(frames: list[str], stride: int, cap: int | None) -> list[str]:
    frames = frames[::stride]
    if cap is not None and len(frames) > cap:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, cap).round().astype(int)]
    return frames


def iter_frames(root: str | Path, split: str, layout: str = "scannet", frame_stride: int = 1,
                max_frames_per_scene: int | None = None) -> list[ScanNetFrame]:
    """Every ``frame_stride``-th frame of every scene of ``split``, at most ``max_frames_per_scene``
    (evenly spaced over the strided ones) per scene; scenes in split-file order, frames numerically.

    Checks, naming scene and frame: every split scene is present; its intrinsics files exist;
    depth and pose frames are exactly the colour frames; every colour frame has a label."""
    if frame_stride < 1 or (max_frames_per_scene is not None and max_frames_per_scene < 1):
        raise ValueError(f"frame_stride={frame_stride} and max_frames_per_scene={max_frames_per_scene} must be >= 1")
    spec, base = _layout(layout), scenes_dir(root, layout)
    out = []
    for scene in read_split(root, split):
        scene_dir = base / scene
        if not scene_dir.is_dir():
            raise FileNotFoundError(f"scene {scene} of split {split} is missing: expected {scene_dir} "
                                    f"(download it, or remove it from scannetv2_{split}.txt)")
        intrinsics = scene_dir / spec.intrinsic_color, scene_dir / spec.intrinsic_depth
        for path in intrinsics:
            if not path.is_file():
                raise FileNotFoundError(f"scene {scene}: intrinsics file {path} is missing (SensReader "
                                        "export_intrinsics writes it)")
        color = _numeric_stems(scene_dir / "color", ".jpg", scene)
        depth = _numeric_stems(scene_dir / "depth", ".png", scene)
        pose = _numeric_stems(scene_dir / "pose", ".txt", scene)
        frames = sorted(color, key=int)
        for what, present in (("depth", depth), ("pose", pose)):
            _missing(frames, present, scene, what)
            extra = sorted(set(present) - set(color), key=int)
            if extra:
                raise ValueError(f"scene {scene}: {len(color)} colour but {len(present)} {what} frames; {what} "
                                 f"frame(s) {', '.join(extra[:5])} have no colour frame: re-export the scene")
        labels = _label_files(scene_dir, scene, layout)
        _missing(frames, labels, scene, "label")
        for frame in _subsample(frames, frame_stride, max_frames_per_scene):
            out.append(ScanNetFrame(layout, scene, frame, f"{scene}_{frame}", color[frame], depth[frame],
                                    pose[frame], labels[frame], *intrinsics))
    return out


# ----------------------------------------------------------------------------- loading one frame
def read_matrix(path: str | Path, shape: tuple[int, ...] = (4, 4)) -> np.ndarray:
    """A whitespace-separated text matrix (pose or intrinsics) as float64; "-inf"/"nan" are read as such."""
    matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if matrix.shape != shape:
        raise ValueError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got shape {matrix.shape}")
    return matrix


def _read_label(label: Path | tuple[Path, str]) -> np.ndarray:
    if isinstance(label, tuple):
        archive, member = label
        with zipfile.ZipFile(archive) as z:  # opened per call: a ZipFile shared across forked workers is unsafe
            data = z.read(member)
        return np.asarray(Image.open(io.BytesIO(data)))
    return np.asarray(Image.open(label))


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """(3, 3) intrinsics of an image resized from ``from_hw`` to ``to_hw`` (pixel centres kept)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K = as_intrinsics(K).copy()
    K[0, 0], K[0, 2] = K[0, 0] * sx, (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    return K


def load_frame(frame: ScanNetFrame, lookup: np.ndarray) -> dict:
    """One frame, scored at label resolution (H, W):

    rgb (H, W, 3) uint8; label (H, W) uint8 train ids 0..19 / 255 (through ``lookup``, from
    ``label_lookup``); depth (h, w) float32 metres, 0 = missing; pose (4, 4) float64 camera-to-world;
    pose_valid (False when the pose has a non-finite entry); K_color (3, 3) for the returned rgb;
    K_depth (3, 3); id "<scene>_<frame>"."""
    where = f"scene {frame.scene} frame {frame.frame}"
    raw = _read_label(frame.label)
    if raw.ndim != 2:
        raise ValueError(f"{where}: label image has shape {raw.shape}, expected a single channel")
    raw = raw.astype(np.int64)
    if raw.size and (raw.min() < 0 or raw.max() >= len(lookup)):
        raise ValueError(f"{where}: label values {raw.min()}..{raw.max()} do not fit the {len(lookup)}-entry "
                         f"lookup: is this a {frame.layout} label image?")
    label = lookup[raw]
    image = Image.open(frame.image_path).convert("RGB")
    K_color = as_intrinsics(read_matrix(frame.intrinsic_color))
    if image.size != (label.shape[1], label.shape[0]):
        K_color = scale_intrinsics(K_color, (image.height, image.width), label.shape)
        image = image.resize((label.shape[1], label.shape[0]), Image.BILINEAR)
    depth = np.asarray(Image.open(frame.depth_path))
    if depth.ndim != 2:
        raise ValueError(f"{where}: depth image {frame.depth_path} has shape {depth.shape}, "
                         "expected a 16-bit single-channel PNG")
    pose = read_matrix(frame.pose_path)
    return {"id": frame.id, "rgb": np.asarray(image), "label": label,
            "depth": (depth.astype(np.float32) / 1000.0), "pose": pose, "pose_valid": bool(np.isfinite(pose).all()),
            "K_color": K_color, "K_depth": as_intrinsics(read_matrix(frame.intrinsic_depth))}


# ----------------------------------------------------------------------------- mmdet3d posed images
def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    import codecs

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):  # pickles name either, whichever numpy wrote them
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    # protocol-2 numpy pickles carry raw array bytes as _codecs.encode(text, "latin1"): bytes only
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class NumpyUnpickler(pickle.Unpickler):
    """Builds plain Python containers and numpy arrays, dtypes and scalars; any other global
    (a class, a function) is refused before anything is called."""

    def __init__(self, file, path: str | Path):
        super().__init__(file)
        self.path, self.allowed = path, _numpy_globals()

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"{self.path}: refuses to load {module}.{name}: only numpy arrays "
                                         "and plain Python values are read from this pickle")
        return self.allowed[(module, name)]


def load_numpy_pickle(path: str | Path):
    with open(path, "rb") as f:
        return NumpyUnpickler(f, path).load()


@dataclass(frozen=True, eq=False)
class PosedImage:
    scene: str
    frame: str
    image_path: Path
    K_color: np.ndarray   # (3, 3)
    pose: np.ndarray      # (4, 4) camera-to-world
    pose_valid: bool


def read_posed_images(pkl_path: str | Path, data_root: str | Path | None = None) -> list[PosedImage]:
    """The posed colour frames of mmdetection3d's scannet_infos*.pkl (a list of per-scene dicts with
    'intrinsics' (4, 4), 'extrinsics' [(4, 4) camera-to-world] and 'img_paths' relative to
    ``data_root``, by default the pickle's directory)."""
    pkl_path = Path(pkl_path)
    root = Path(data_root) if data_root is not None else pkl_path.parent
    infos = load_numpy_pickle(pkl_path)
    if isinstance(infos, dict) and "data_list" in infos:  # mmdet3d >= 1.1 wraps the list
        infos = infos["data_list"]
    out = []
    for i, info in enumerate(infos):
        missing = {"intrinsics", "extrinsics", "img_paths"} - set(info)
        if missing:
            raise ValueError(f"{pkl_path} entry {i} has no {sorted(missing)}: not a posed-images info file "
                             "(create it with mmdet3d's create_data.py scannet)")
        if len(info["extrinsics"]) != len(info["img_paths"]):
            raise ValueError(f"{pkl_path} entry {i}: {len(info['img_paths'])} images but "
                             f"{len(info['extrinsics'])} poses")
        K = as_intrinsics(info["intrinsics"])
        for rel, pose in zip(info["img_paths"], info["extrinsics"]):
            pose = np.asarray(pose, dtype=np.float64)
            if pose.shape != (4, 4):
                raise ValueError(f"{pkl_path} entry {i}: pose of {rel} has shape {pose.shape}, expected (4, 4)")
            path = root / rel
            out.append(PosedImage(path.parent.name, path.stem, path, K, pose, bool(np.isfinite(pose).all())))
    return out
