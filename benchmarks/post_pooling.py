"""The per-image CPU work of extraction after pooling (issue 17): ours vs the pre-issue-17 code.

    python -m benchmarks.post_pooling [--runs 5]

What ``bench.extraction.Extractor.sample`` does once the region features are pooled, for a
segmentation unit: the task's ``unit_members`` (the class histogram, ``hist.npy`` and ``label.png``),
the masks' COCO RLEs, their areas, and ``bench.shards.encode_sample`` (.npy, PNG and JSON bytes).

The masks' bounding boxes: the extraction finds them once per unit (``bench.mask_crops.bounding_boxes``)
and hands them to pooling, which read them before issue 17 too (it found them itself, ~5.5 ms at ADE
size with the code kept here as ``bounding_boxes_reference``), and to ``Extractor.encode``. The target
row, "post-pooling CPU work", is ``Extractor.encode`` given those boxes, as in the extraction; the row
"... with the boxes" also times finding them, and "bounding boxes" compares the two box finders, so
that no work is moved out of the timed rows into pooling unseen.

Input (``make_inputs``), at ADE20K size (512x683, 150 classes, a label map of flat regions of 25
classes with ~6% ignore pixels, 106 pooled 1024-d features):
  ``sam_slic``   the ADE20K case of every benchmark (``benchmarks.inputs``): SAM-like blobs, which
                 overlap and leave gaps, then SLIC superpixels filling what they leave uncovered;
  ``slic``       disjoint masks: fast-slic superpixels, the first 106 (a few superpixels left out).
Ours: ``bench.labels.class_histogram``, ``bench.rle.encode_rles``, ``bench.shards.encode_sample``.
Reference: the ``*_reference`` functions below, the pre-issue-17 implementation kept for the ratio
(a one-hot (H*W, C+1) float32 matrix product; pycocotools on an (H, W, R) Fortran copy of the stack).
Check: every member's bytes equal; a difference raises, so the table never shows a ratio of
different answers.

Threads: the reference's matrix product runs on OpenBLAS's threads (numpy's default, as extraction
ran it), which ``--threads 1`` (torch's) does not limit; on a CPU shared with other jobs it stalls on
thread barriers and the ratio overstates. ``OPENBLAS_NUM_THREADS=1`` gives per-core ratios.
"""
from __future__ import annotations

import argparse
import io
import json
import os
from types import SimpleNamespace

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from bench import shards
from bench.labels import class_histogram
from bench.mask_crops import bounding_boxes
from bench.rle import encode_rles
from bench.tasks import segmentation
from benchmarks.inputs import make_case
from benchmarks.measure import median_seconds

NUM_CLASSES, IGNORE_INDEX = 150, 255
GENERATORS = ("sam_slic", "slic")


# ----------------------------------------------------------------------------- pre-issue-17 code
def class_histogram_reference(masks, label, num_classes, ignore_index=255):
    """bench.labels.class_histogram before issue 17."""
    flat = label.reshape(-1).astype(np.int64)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= num_classes))
    if bad.any():
        raise ValueError(f"label values {sorted(set(flat[bad].tolist()))[:10]} are outside [0, {num_classes}) "
                         f"and not the ignore index {ignore_index}: check dataset.num_classes")
    flat = np.where(flat == ignore_index, num_classes, flat)
    onehot = np.zeros((flat.size, num_classes + 1), dtype=np.float32)
    onehot[np.arange(flat.size), flat] = 1.0
    counts = masks.reshape(len(masks), -1).astype(np.float32) @ onehot  # exact: counts < 2**24
    return np.rint(counts).astype(np.int32)


def bounding_boxes_reference(masks):
    """bench.pooling.bounding_boxes before issue 17 (pooling found the boxes itself)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = masks.shape[1:]
    boxes = np.stack([rows.argmax(axis=1), height - rows[:, ::-1].argmax(axis=1),
                      cols.argmax(axis=1), width - cols[:, ::-1].argmax(axis=1)], axis=1)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def encode_rles_reference(masks):
    """bench.rle.encode_rles before issue 17."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _npy_reference(array):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _png_reference(label):
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def encode_sample_reference(key, feats, rles, areas, meta, members):
    """bench.shards.encode_sample before issue 17, for a segmentation sample without patches."""
    sample = {"__key__": shards.check_key(key),
              "feats.npy": _npy_reference(shards.finite_half(feats, key, "region features")),
              "rle.json": json.dumps(rles).encode(), "areas.npy": _npy_reference(areas.astype(np.int64)),
              "meta.json": json.dumps(meta, sort_keys=True).encode()}
    sample["hist.npy"] = _npy_reference(np.asarray(members["hist.npy"]))
    sample["label.png"] = _png_reference(members["label.png"])
    return sample


def post_pooling_reference(inputs: dict) -> dict:
    """Extractor.sample after pooling, with segmentation's unit_members, before issue 17."""
    masks = inputs["masks"]
    hist = class_histogram_reference(masks, inputs["label"], NUM_CLASSES, IGNORE_INDEX)
    members = {"hist.npy": hist.astype(np.int32), "label.png": inputs["label"]}
    return encode_sample_reference(inputs["key"], inputs["feats"], encode_rles_reference(masks),
                                   masks.sum(axis=(1, 2)), inputs["meta"], members)


# ----------------------------------------------------------------------------- ours
def post_pooling(inputs: dict, boxes: np.ndarray | None = None) -> dict:
    """Extractor.sample after pooling (``Extractor.encode``) for a segmentation unit, given the masks'
    bounding boxes (found before pooling, as the extraction does) or finding them (None)."""
    from bench.extraction import Extractor

    extractor = SimpleNamespace(num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX, task=segmentation.TASK)
    return Extractor.encode(extractor, inputs["key"], inputs["feats"], inputs["masks"], inputs["label"],
                            inputs["meta"], None, boxes)[0]


# ----------------------------------------------------------------------------- inputs and rows
def ade_label(slic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8: each superpixel of ``slic`` one of 25 classes drawn from 150, ~6% ignore."""
    classes = rng.choice(NUM_CLASSES, 25, replace=False).astype(np.uint8)
    label = classes[slic % 25]
    label[slic % 17 == 3] = IGNORE_INDEX
    return label


def partition_masks(image: np.ndarray, regions: int) -> np.ndarray:
    """(regions, H, W) bool, disjoint: fast-slic superpixels (compactness 8), asked for more components
    until it gives ``regions`` or more (it merges and splits clusters), the first ``regions`` kept."""
    from bench.regions import SlicRegions

    asked, masks = regions, np.zeros((0,) + image.shape[:2], dtype=bool)
    while len(masks) < regions:
        labels = SlicRegions(num_components=asked, compactness=8, num_threads=1).label_map(image)
        masks, asked = labels[None] == np.unique(labels)[:, None, None], asked + 8
    return masks[:regions]


def make_inputs(generator: str = "sam_slic", case=None, seed: int = 0) -> dict:
    """masks (R, H, W) bool, label (H, W) uint8, feats (R, d) float32, key, meta: one unit built from
    ``case`` (a ``benchmarks.inputs.Case``; default: the ADE20K case)."""
    case = case or make_case("ade20k", seed)
    rng = np.random.default_rng(seed)
    masks = case.masks if generator == "sam_slic" else partition_masks(case.image, len(case.masks))
    height, width = masks.shape[1:]
    feats = rng.standard_normal((len(masks), case.grid.shape[0])).astype(np.float32)
    meta = {"id": "ade_00000001", "height": height, "width": width, "patch_size": 14, "grid": list(case.grid.shape[1:]),
            "pad": [0, 0], "regions": len(masks), "coverage": float(masks.any(axis=0).mean())}
    return {"masks": masks, "label": ade_label(case.slic, rng), "feats": feats, "key": "ade_00000001",
            "meta": meta, "generator": generator}


def workloads(inputs: dict) -> dict[str, dict]:
    """{part: {"ours": fn, "reference": fn}} for the histogram, the RLEs, the sample encoding, the
    bounding boxes and all of it (given the boxes, as in the extraction, and with finding them)."""
    masks, label = inputs["masks"], inputs["label"]
    boxes = bounding_boxes(masks)  # what the extraction found before pooling
    rles = encode_rles_reference(masks)
    members = {"hist.npy": class_histogram_reference(masks, label, NUM_CLASSES, IGNORE_INDEX), "label.png": label}
    encode = (inputs["key"], inputs["feats"], rles, masks.sum(axis=(1, 2)), inputs["meta"], members)
    return {
        "histogram": {"ours": lambda: _npy_reference(class_histogram(masks, label, NUM_CLASSES, IGNORE_INDEX)),
                      "reference": lambda: _npy_reference(
                          class_histogram_reference(masks, label, NUM_CLASSES, IGNORE_INDEX))},
        "rle": {"ours": lambda: json.dumps(encode_rles(masks)).encode(),
                "reference": lambda: json.dumps(encode_rles_reference(masks)).encode()},
        "encoding": {"ours": lambda: shards.encode_sample(*encode[:5], members=members),
                     "reference": lambda: encode_sample_reference(*encode)},
        "boxes": {"ours": lambda: bounding_boxes(masks).tobytes(),
                  "reference": lambda: bounding_boxes_reference(masks).tobytes()},
        "total": {"ours": lambda: post_pooling(inputs, boxes), "reference": lambda: post_pooling_reference(inputs)},
        "total_with_boxes": {"ours": lambda: post_pooling(inputs), "reference": lambda: post_pooling_reference(inputs)},
    }


def check(ours, reference) -> dict:
    """Byte equality of two outputs (bytes, or samples: {member: bytes}); raises if they differ."""
    if isinstance(ours, dict):
        differ = sorted(k for k in {*ours, *reference} if ours.get(k) != reference.get(k))
    else:
        differ = [] if ours == reference else ["bytes"]
    if differ:
        raise AssertionError(f"post-pooling output differs from the pre-issue-17 bytes: {', '.join(differ)}")
    size = sum(len(v) for v in ours.values() if isinstance(v, bytes)) if isinstance(ours, dict) else len(ours)
    return {"ok": True, "text": f"identical bytes ({size / 1e3:.0f} kB)"}


TITLES = {"histogram": "class histogram", "rle": "COCO RLEs", "encoding": "sample encoding (npy, PNG, JSON)",
          "boxes": "bounding boxes (pooling's, shared)", "total": "post-pooling CPU work",
          "total_with_boxes": "post-pooling CPU work with the boxes"}
TARGET = 20  # the whole post-pooling work, reference seconds / ours


def rows(runs: int = 5, generators: tuple[str, ...] = GENERATORS,
         parts: dict[str, tuple[str, ...]] | None = None, case=None) -> list[dict]:
    """Rows for ``benchmarks.run``: every part for the SAM+SLIC masks, the total for the SLIC partition
    (``case``: the input size, default ADE20K's)."""
    parts = parts or {"sam_slic": tuple(TITLES), "slic": ("total", "total_with_boxes")}
    out = []
    for generator in generators:
        inputs = make_inputs(generator, case)
        masks = inputs["masks"]
        overlap = int((masks.sum(axis=0) > 1).sum())
        kind = "SAM-like + SLIC fill" if generator == "sam_slic" else "SLIC, disjoint"
        described = (f"{masks.shape[1]}x{masks.shape[2]}, {len(masks)} masks ({kind}, {overlap} pixels in two "
                     f"or more), {NUM_CLASSES} classes")
        jobs = workloads(inputs)
        for part in parts[generator]:
            ours, ours_runs, ours_out = median_seconds(jobs[part]["ours"], runs)
            reference, ref_runs, ref_out = median_seconds(jobs[part]["reference"], runs)
            row = {"id": f"post_pooling_{part}_{generator}", "hot_path": TITLES[part], "input": described,
                   "ours_s": ours, "ours_runs": ours_runs, "reference_s": reference, "reference_runs": ref_runs,
                   "speedup": reference / ours, "check": check(ours_out, ref_out),
                   "load_average": os.getloadavg()[0]}
            if part.startswith("total"):
                row["target"], row["met"] = f">={TARGET}x", bool(reference / ours >= TARGET)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.post_pooling", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    result = rows(args.runs)
    for row in result:
        print(f"{row['hot_path']:34s} {row['input']}\n    ours {row['ours_s'] * 1e3:7.2f} ms, reference "
              f"{row['reference_s'] * 1e3:7.2f} ms, ratio {row['speedup']:5.1f}x; {row['check']['text']}")
    return result


if __name__ == "__main__":
    main()
