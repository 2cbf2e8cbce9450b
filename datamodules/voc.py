"""Pascal VOC 2012 segmentation: layout, split files, images and label PNGs.

The same code reads the real dataset and RegionBench's mini set
(`python -m datamodules.synthetic.minivoc ROOT`), which is written in the real layout::

    VOCdevkit/VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          labels 0..20, 255 = void
        ImageSets/Segmentation/<split>.txt  one id per line (train, val, trainval); an id listed
                                            twice is an error naming both lines
        SegmentationClassAug/<id>.png       optional: SBD "aug" labels (dataset.train_split=train_aug
                                            with the list as ImageSets/Segmentation/train_aug.txt,
                                            in either the id or the DeepLab pair format)

Predictions for the official evaluation go to
`results/VOC2012/Segmentation/comp5_val_cls/<id>.png` (see `save_label_png`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from bench.images import pil_to_rgb8

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)  # 21
IGNORE_INDEX = 255  # "void": object boundaries and difficult regions
_VALID_LABELS = np.array([*range(NUM_CLASSES), IGNORE_INDEX])

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClass"
AUG_LABEL_DIR = "SegmentationClassAug"  # SBD "aug" labels as PNGs (train_aug, 10,582 ids)
SPLIT_DIR = "ImageSets/Segmentation"


def _voc_palette() -> np.ndarray:
    """The devkit's colour map (VOCcode/VOClabelcolormap.m): the bits of the
    label index are dealt out to R, G, B from the most significant bit down.

    Returns (256, 3) uint8; row i is the colour of label i.
    """
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


VOC_PALETTE = _voc_palette()  # (256, 3) uint8; VOC_PALETTE[255] = (224, 224, 192)


class CorruptImageError(Exception):
    """An image or label file that PIL cannot decode completely."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(str(path), reason)  # args kept so it pickles across DataLoader workers
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return (f"{self.path} is corrupt or truncated ({self.reason}); "
                "re-download it, or remove its id from the split file")


@dataclass(frozen=True)
class VocSample:
    id: str
    image_path: Path
    label_path: Path


def voc_paths(root: str | Path) -> Path:
    """Locate the VOC2012 directory.

    `root` may be the folder that contains `VOCdevkit`, `VOCdevkit` itself or
    `VOC2012` itself. Returns the path of `.../VOCdevkit/VOC2012`.
    """
    root = Path(root)
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root} is not a Pascal VOC 2012 directory: expected "
        f"{root / 'VOCdevkit' / 'VOC2012'}/{{{IMAGE_DIR},{LABEL_DIR},{SPLIT_DIR}}}. "
        "Pass the folder that contains VOCdevkit (or VOCdevkit, or VOC2012 itself), "
        "or write the mini set there with: python -m datamodules.synthetic.minivoc ROOT")


def is_list_file(split: str) -> bool:
    """Whether a split is given as the path of a list file (``lists/mine.txt``) rather than by name."""
    return split.endswith(".txt") or "/" in split


def split_file(voc_dir: str | Path, split: str) -> Path:
    """``ImageSets/Segmentation/<split>.txt``, or ``split`` itself when it is a path to a list file."""
    if is_list_file(split):
        return Path(split)
    return voc_paths(voc_dir) / SPLIT_DIR / f"{split}.txt"


def _parse_line(path: Path, line_no: int, line: str) -> tuple[str, str, str]:
    """One split line -> (id, image path, label path) relative to VOC2012/.

    Two formats: a bare id (``2007_000032``: JPEGImages/, then SegmentationClass/ or, for SBD
    "aug" ids, SegmentationClassAug/), or the DeepLab list format
    ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` in which the SBD train_aug list ships.
    """
    fields = line.split()
    if len(fields) == 2 and fields[0].endswith(".jpg") and fields[1].endswith(".png"):
        image, label = (f.lstrip("/") for f in fields)
        return Path(image).stem, image, label
    if len(fields) == 1 and "." not in fields[0] and "/" not in fields[0]:
        return fields[0], f"{IMAGE_DIR}/{fields[0]}.jpg", ""
    raise ValueError(
        f"{path}: entry {line_no} {line.strip()!r} is not a bare image id; VOC split files list ids "
        "like 2007_000032, one per line, or image/label pairs like "
        "'/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png' (the SBD aug list format)")


def split_entries(voc_dir: str | Path, split: str) -> list[tuple[str, str, str]]:
    """(id, image, label) per line of the split file, paths relative to VOC2012/ ('' = find the label)."""
    path = split_file(voc_dir, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {path} not found; create it with one image id per line "
            f"(e.g. 2007_000032, the file names in {IMAGE_DIR} without .jpg)")
    entries, first_line = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        entry = _parse_line(path, n, line)
        if entry[0] in first_line:  # it would be scored twice, or be two members of one shard tar
            raise ValueError(f"{path}: image id '{entry[0]}' is listed twice, on lines {first_line[entry[0]]} "
                             f"and {n}; remove one")
        first_line[entry[0]] = n
        entries.append(entry)
    if not entries:
        raise ValueError(f"split file {path} is empty; list one image id per line")
    return entries


def read_split(voc_dir: str | Path, split: str) -> list[str]:
    """Ids listed in the split file, in file order."""
    return [image_id for image_id, _, _ in split_entries(voc_dir, split)]


def _label_path(voc_dir: Path, image_id: str) -> Path:
    """SegmentationClass/<id>.png, else SegmentationClassAug/<id>.png (SBD-converted labels)."""
    path = voc_dir / LABEL_DIR / f"{image_id}.png"
    aug = voc_dir / AUG_LABEL_DIR / f"{image_id}.png"
    return aug if not path.is_file() and aug.is_file() else path


def iter_samples(voc_dir: str | Path, split: str) -> Iterator[VocSample]:
    """Yield the samples of a split, checking that each image and label exists."""
    voc_dir = voc_paths(voc_dir)
    for image_id, image, label in split_entries(voc_dir, split):
        sample = VocSample(image_id, voc_dir / image, voc_dir / label if label else _label_path(voc_dir, image_id))
        for path in (sample.image_path, sample.label_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing but {image_id} is listed in split {split!r} "
                    f"({split_file(voc_dir, split)}); restore the file or remove the id from the split")
        yield sample


def _open_fully(path: str | Path) -> Image.Image:
    """Open and decode the whole file, so truncation fails here and not later."""
    # A library elsewhere in the process may have switched this global on; with
    # it on, PIL pads a truncated JPEG with grey instead of raising. Not
    # thread-safe, but DataLoader workers are processes.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with open(path, "rb") as file:  # a missing or unreadable file raises as usual
            try:
                image = Image.open(file)
                image.load()
            except (OSError, SyntaxError, ValueError) as error:
                raise CorruptImageError(path, f"{type(error).__name__}: {error}") from error
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return image


def load_image(path: str | Path, exif_transpose: bool = False) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB, whatever its mode: as PIL's ``convert("RGB")`` does,
    16-bit greyscale scaled to 8 bits (``bench.images.pil_to_rgb8``). A writable copy.

    ``exif_transpose`` applies the EXIF orientation tag (as viewers, and OpenCV's imread, do);
    off by default because dataset labels are drawn on the stored pixel grid.
    Raises CorruptImageError rather than returning a partial image, and ValueError (naming the
    file) for a 32-bit or float image whose values have no 8-bit reading.
    """
    image = _open_fully(path)
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    try:
        return pil_to_rgb8(image)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def load_image_for_label(path: str | Path, label_shape: tuple[int, int]) -> np.ndarray:
    """The image oriented like its label map: stored pixels, or EXIF-rotated if only that fits.

    An EXIF rotation by 90 or 270 degrees swaps height and width; a label drawn on the rotated
    view then only fits the rotated image. Neither fitting is an error naming both shapes.
    """
    image = load_image(path)
    if image.shape[:2] == tuple(label_shape):
        return image
    rotated = load_image(path, exif_transpose=True)
    if rotated.shape[:2] == tuple(label_shape):
        return rotated
    raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]} (W x H) but its label map is "
                     f"{label_shape[1]}x{label_shape[0]}: the image and label do not belong together")


def load_label(path: str | Path) -> np.ndarray:
    """Read a segmentation label PNG. Returns (H, W) uint8 in 0..20 or 255.

    Accepts a palette PNG (VOC's own format: the indices are the labels), a
    greyscale PNG holding the labels (as some mirrors store them), or an RGB
    PNG drawn in the VOC colours.
    """
    image = _open_fully(path)
    if image.mode in ("P", "L", "I", "I;16"):
        label = np.asarray(image)
    elif image.mode in ("RGB", "RGBA"):
        label = _colours_to_labels(np.asarray(image)[..., :3], path)
    else:
        raise ValueError(f"{path}: label PNG has mode {image.mode!r}; expected a palette "
                         "('P'), greyscale ('L') or VOC-coloured RGB PNG")
    bad = np.setdiff1d(np.unique(label), _VALID_LABELS)
    if bad.size:
        raise ValueError(f"{path}: label values {bad[:10].tolist()} are outside VOC's "
                         f"0..{NUM_CLASSES - 1} and {IGNORE_INDEX} (void); is this a "
                         "SegmentationObject (instance) PNG or another dataset's label?")
    return label.astype(np.uint8)


def _colours_to_labels(rgb: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 VOC colours -> (H, W) label indices (0..255)."""
    def key(colours: np.ndarray) -> np.ndarray:
        colours = colours.astype(np.int64)
        return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]

    palette_keys = key(VOC_PALETTE)  # the colour map is one-to-one, so keys are unique
    order = np.argsort(palette_keys)
    pixel_keys = key(rgb)
    slot = np.clip(np.searchsorted(palette_keys[order], pixel_keys), 0, 255)
    found = palette_keys[order][slot] == pixel_keys
    if not found.all():
        unknown = np.unique(rgb[~found], axis=0)[:5].tolist()
        raise ValueError(f"{path}: RGB label has colours {unknown} that are not in the "
                         "VOC palette; save labels as palette PNGs (save_label_png) or "
                         "check the colours were not changed by resizing or JPEG")
    return order[slot]


def save_label_png(path: str | Path, label: np.ndarray) -> None:
    """Write (H, W) integer labels in 0..255 as a palette PNG in VOC colours,
    the format of SegmentationClass and of the evaluation server. Creates parent
    directories."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label for {path} has shape {label.shape}; expected (H, W)")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label for {path} has values outside 0..255 "
                         f"({label.min()}..{label.max()}); map them to VOC indices first")
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette(VOC_PALETTE.tobytes())  # turns the 'L' image into 'P'
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def save_prediction(directory: str | Path, image_id: str, pred: np.ndarray) -> Path:
    """A prediction (H, W) int (class 0..20, -1 = no region covered the pixel) as the VOC test
    server wants it: <directory>/<id>.png in VOC colours. The server takes 0..20 only, so
    undecided pixels are written as background."""
    path = Path(directory) / f"{image_id}.png"
    save_label_png(path, np.where(pred < 0, 0, pred))
    return path
