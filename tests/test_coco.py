"""COCO instances reader (pycocotools edge cases, pitfalls §4) and the MiniCOCO generator."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.synthetic.minicoco import generate_minicoco
from datamodules.synthetic.minivoc import render_scene, render_scene_instances
from datamodules import coco
from datamodules.coco import CocoDataset, CocoError, decode_segmentation, rle_counts
from tests.conftest import shared_or_skip

WHERE = "test.json: annotation 1"


def fortran(mask: np.ndarray) -> np.ndarray:
    return np.asfortranarray(mask.astype(np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (8, 5), (31, 17)])
@pytest.mark.parametrize("fill", ["empty", "full", "pixel", "random"])
def test_compressed_rle_counts_match_pycocotools(shape, fill):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    mask = {"empty": np.zeros(shape), "full": np.ones(shape), "random": rng.random(shape) < 0.4}.get(fill)
    if mask is None:
        mask = np.zeros(shape)
        mask[shape[0] // 2, shape[1] // 2] = 1
    rle = mask_utils.encode(fortran(mask))
    counts = rle_counts(rle["counts"].decode())
    assert sum(counts) == shape[0] * shape[1]
    assert sum(counts[1::2]) == mask.sum()
    decoded = decode_segmentation({"size": list(shape), "counts": rle["counts"].decode()}, *shape, WHERE)
    assert np.array_equal(decoded, mask.astype(bool))


def test_polygon_parts_are_merged_and_clipped():
    square = [1, 1, 4, 1, 4, 4, 1, 4]
    far = [6, 6, 9, 6, 9, 9, 6, 9]
    both = decode_segmentation([square, far], 10, 10, WHERE)
    one = decode_segmentation([square], 10, 10, WHERE)
    assert both.sum() > one.sum() > 0 and np.array_equal(both & one, one)
    outside = decode_segmentation([[-50, -50, 50, -50, 50, 50, -50, 50]], 6, 8, WHERE)
    assert outside.all()  # clipped to the image


def test_degenerate_polygon_parts():
    square = [1, 1, 4, 1, 4, 4, 1, 4]
    # a 4-number part is a zero-area line (pycocotools would take it for a box and raise TypeError)
    assert np.array_equal(decode_segmentation([square, [0, 0, 3, 3]], 10, 10, WHERE),
                          decode_segmentation([square], 10, 10, WHERE))
    assert not decode_segmentation([[0, 0, 3, 3]], 10, 10, WHERE).any()
    with pytest.raises(CocoError, match="odd number"):
        decode_segmentation([[1, 1, 4, 1, 4]], 10, 10, WHERE)
    with pytest.raises(CocoError, match="empty polygon list"):
        decode_segmentation([], 10, 10, WHERE)
    with pytest.raises(CocoError, match="finite numbers"):
        decode_segmentation([[1, 1, 4, "x", 4, 4]], 10, 10, WHERE)


def test_uncompressed_rle_is_validated_before_decoding():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    flat = mask.T.reshape(-1)  # column-major
    runs, value, count = [], False, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    assert np.array_equal(decode_segmentation({"size": [4, 5], "counts": runs}, 4, 5, WHERE), mask)
    # short counts: pycocotools would decode uninitialised memory (random values)
    with pytest.raises(CocoError, match="sum to 18 but the image has 4x5 = 20"):
        decode_segmentation({"size": [4, 5], "counts": runs[:-1] + [runs[-1] - 2]}, 4, 5, WHERE)
    with pytest.raises(CocoError, match="sum to 22"):
        decode_segmentation({"size": [4, 5], "counts": runs[:-1] + [runs[-1] + 2]}, 4, 5, WHERE)
    with pytest.raises(CocoError, match="non-negative integers"):
        decode_segmentation({"size": [4, 5], "counts": [1.5, 18.5]}, 4, 5, WHERE)


def test_rle_size_and_corrupt_strings():
    rle = mask_utils.encode(fortran(np.ones((4, 5))))
    with pytest.raises(CocoError, match=r"RLE size \[4, 5\] differs from the image's \[height, width\] \[5, 4\]"):
        decode_segmentation({"size": [4, 5], "counts": rle["counts"].decode()}, 5, 4, WHERE)
    with pytest.raises(CocoError, match="corrupt compressed RLE"):
        decode_segmentation({"size": [4, 5], "counts": "ab\x01"}, 4, 5, WHERE)
    short = mask_utils.encode(fortran(np.ones((4, 4))))["counts"].decode()  # 16 pixels for a 4x5 image
    with pytest.raises(CocoError, match="sum to 16"):
        decode_segmentation({"size": [4, 5], "counts": short}, 4, 5, WHERE)


def _write(tmp_path, images, annotations, categories=({"id": 3, "name": "a"}, {"id": 7, "name": "b"})):
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def test_annotation_file_errors_name_the_file(tmp_path):
    image = {"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}
    box = [[1, 1, 8, 1, 8, 8, 1, 8]]
    cases = [
        ([{"id": 5, "image_id": 2, "category_id": 3, "segmentation": box}], "refers to image 2"),
        ([{"id": 5, "image_id": 1, "category_id": 4, "segmentation": box}], "has category 4"),
        ([{"id": 5, "image_id": 1, "category_id": 3, "segmentation": box}] * 2, "appears twice"),
        ([{"id": 5, "image_id": 1, "category_id": 3}], "no segmentation"),
    ]
    for anns, message in cases:
        path = _write(tmp_path, [image], anns)
        with pytest.raises(CocoError, match=message) as err:
            CocoDataset(path)
        assert str(path) in str(err.value)
    path = _write(tmp_path, [image, {**image, "id": 2}], [])
    with pytest.raises(CocoError, match="share a file stem"):
        CocoDataset(path)


def test_label_map_paint_order_crowd_and_empty_images(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10},
              {"id": 2, "file_name": "b.jpg", "height": 4, "width": 6}]
    big = [[0, 0, 10, 0, 10, 10, 0, 10]]   # whole image, category 3 -> index 0
    small = [[2, 2, 5, 2, 5, 5, 2, 5]]     # category 7 -> index 1, listed first but smaller
    crowd_mask = np.zeros((10, 10), bool)
    crowd_mask[8:, :] = True
    crowd = {"size": [10, 10], "counts": mask_utils.encode(fortran(crowd_mask))["counts"].decode()}
    path = _write(tmp_path, images, [
        {"id": 1, "image_id": 1, "category_id": 7, "segmentation": small},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": big},
        {"id": 3, "image_id": 1, "category_id": 7, "segmentation": crowd, "iscrowd": 1}])
    ds = CocoDataset(path)
    label = ds.label_map(1)
    assert set(np.unique(label)) == {0, 1}  # crowd under a non-crowd instance stays that instance
    assert (label[2:5, 2:5] == 1).all() and label[0, 0] == 0  # the small object is painted on top
    assert (ds.label_map(2) == 255).all() and ds.label_map(2).shape == (4, 6)
    assert ds.image_categories(1) == {3, 7} and ds.image_categories(2) == set()
    assert ds.class_names == ["a", "b"]


@pytest.fixture(scope="module")
def minicoco(tmp_path_factory):
    root = tmp_path_factory.mktemp("minicoco")
    generate_minicoco(root, num_train=30, num_val=6, width=96, height=72, seed=3, progress=False)
    return root


def test_minicoco_masks_are_the_scene_instances(minicoco):
    kinds, polygon_ious = set(), []
    for split in ("train", "val"):
        ds = coco.load_coco(coco.annotation_file(minicoco, split))
        for image in ds.images.values():
            index = image.id - 1
            _, _, instance, classes = render_scene_instances(3, index, 96, 72, count=0 if index % 25 == 24 else None)
            for ann in ds.annotations[image.id]:
                seg = ann.segmentation
                kind = "polygon" if isinstance(seg, list) else type(seg["counts"]).__name__
                kinds.add((kind, ann.iscrowd))
                mask = ds.mask(ann)
                k = np.bincount(instance[mask]).argmax()
                truth = instance == k
                iou = (mask & truth).sum() / (mask | truth).sum()
                assert classes[k - 1] == ann.category_id
                if kind == "polygon":  # an outline through boundary pixel centres: approximate
                    polygon_ious.append(iou)
                else:
                    assert iou == 1.0
    assert kinds == {("polygon", False), ("str", False), ("list", True)}
    assert min(polygon_ious) > 0.3 and np.mean(polygon_ious) > 0.85
    assert not coco.load_coco(coco.annotation_file(minicoco, "train")).annotations[25]  # image 24: empty


def test_minicoco_is_deterministic_and_scenes_unchanged(minicoco, tmp_path):
    again = generate_minicoco(tmp_path, num_train=30, num_val=6, width=96, height=72, seed=3, progress=False)
    for split in ("train", "val"):
        assert (again / "annotations" / f"instances_{split}.json").read_bytes() == \
               (minicoco / "annotations" / f"instances_{split}.json").read_bytes()
    image, label = render_scene(3, 0, 96, 72)  # render_scene still draws what it always drew
    image2, label2, _, _ = render_scene_instances(3, 0, 96, 72)
    assert np.array_equal(image, image2) and np.array_equal(label, label2)
    assert np.array_equal(np.asarray(Image.open(minicoco / "train" / "mini_000000.jpg")).shape, image.shape)


def test_coco_layout_reads_minicoco(minicoco):
    from datamodules.datasets import LAYOUTS

    fmt = LAYOUTS["coco"]
    items = list(fmt.iter_samples(minicoco, "val"))
    assert [i.id for i in items] == [f"mini_{i:06d}" for i in range(30, 36)]
    label = fmt.load_label(items[0].label_path)
    assert label.shape == (72, 96) and set(np.unique(label)) <= set(range(10)) | {255}
    assert fmt.class_names(minicoco)[0] == "aeroplane"


@pytest.mark.fixtures
def test_fixture_coco_sample():
    root = shared_or_skip() / "coco" / "icevision_sample"
    from datamodules.voc import load_image_for_label

    items = list(coco.iter_samples(root, "annotations"))
    ds = coco.load_coco(items[0].label_path.annotations)
    assert len(items) == 6 and sum(len(a) for a in ds.annotations.values()) == 36 and len(ds.categories) == 80
    for item in items:  # every label fits its image, every mask decodes to 0/1
        label = coco.load_label(item.label_path)
        assert load_image_for_label(item.image_path, label.shape).shape[:2] == label.shape
    assert (coco.load_label(items[0].label_path) == 255).all()  # 000000000089: no annotations
    crowd = next(a for a in ds.annotations[464689] if a.iscrowd)
    assert ds.mask(crowd).sum() == 791  # its "area" field says 890: never trusted
    assert ds.image_categories(464689) == {44}
    multi = next(a for a in ds.annotations[128372] if a.id == 257712)  # a two-part polygon
    parts = [decode_segmentation([p], 427, 640, "part") for p in multi.segmentation]
    assert np.array_equal(ds.mask(multi), parts[0] | parts[1]) and parts[0].any() and parts[1].any()
