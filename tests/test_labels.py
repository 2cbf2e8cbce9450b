"""Region class histograms and the labelling rule, against plain loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.labels import class_histogram, region_labels


def test_class_histogram_matches_a_loop():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (17, 23)).astype(np.uint8)
    label[rng.random(label.shape) < 0.1] = 255
    masks = rng.random((6, 17, 23)) > 0.6
    hist = class_histogram(masks, label, num_classes=5)
    for r in range(6):
        values = label[masks[r]]
        want = [int((values == c).sum()) for c in range(5)] + [int((values == 255).sum())]
        assert hist[r].tolist() == want


def test_class_histogram_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside"):
        class_histogram(np.ones((1, 2, 2), bool), np.full((2, 2), 7, np.uint8), num_classes=5)


def test_region_label_rule_counts_labelled_pixels_by_default_and_all_pixels_in_compat():
    hist = torch.tensor([
        [6, 4, 0, 0],   # 60% class 0 -> 0 under both rules
        [5, 5, 0, 0],   # exactly 50%: not strictly more -> left out
        [0, 5, 0, 5],   # class 1 is all the labelled pixels but only 50% of the region
        [0, 6, 0, 4],   # 60% class 1 with ignore in the total, 100% without -> 1
        [3, 3, 0, 4],   # 50% of labelled, 30% of all -> left out under both at 0.5
        [0, 0, 0, 9],   # all ignore -> left out (no labelled pixel)
        [0, 0, 0, 0],   # empty -> left out
    ])
    assert region_labels(hist, 0.5).tolist() == [0, -1, 1, 1, -1, -1, -1]
    assert region_labels(hist, 0.5, "labelled").tolist() == [0, -1, 1, 1, -1, -1, -1]
    assert region_labels(hist, 0.5, "all").tolist() == [0, -1, -1, 1, -1, -1, -1]
    assert region_labels(hist, 0.0, "all").tolist() == [0, 0, 1, 1, 0, -1, -1]  # ties -> lower id
    with pytest.raises(ValueError, match="model.label_denominator"):
        region_labels(hist, 0.5, "ignored")


@pytest.mark.parametrize("denominator", ["labelled", "all"])
def test_region_label_rule_matches_a_loop(denominator):
    rng = np.random.default_rng(1)
    hist = torch.from_numpy(rng.integers(0, 6, (200, 5)) * (rng.random((200, 5)) < 0.5))
    for threshold in (0.0, 0.3, 0.5, 0.7):
        want = []
        for row in hist.tolist():
            counts, ignore = row[:-1], row[-1]
            total = sum(counts) + (ignore if denominator == "all" else 0)
            best = max(range(len(counts)), key=lambda c: (counts[c], -c))
            want.append(best if counts[best] > 0 and counts[best] > threshold * total else -1)
        assert region_labels(hist, threshold, denominator).tolist() == want


def onehot_histogram(masks, label, num_classes, ignore_index=255):
    """The pre-issue-17 implementation: masks (R, H*W) float32 @ one-hot (H*W, C+1)."""
    flat = label.reshape(-1).astype(np.int64)
    flat = np.where(flat == ignore_index, num_classes, flat)
    onehot = np.zeros((flat.size, num_classes + 1), dtype=np.float32)
    onehot[np.arange(flat.size), flat] = 1.0
    return np.rint(masks.reshape(len(masks), flat.size).astype(np.float32) @ onehot).astype(np.int32)


@pytest.mark.parametrize("layout", ["overlapping", "partition", "empty stack", "empty masks"])
def test_class_histogram_equals_the_onehot_product(layout):
    rng = np.random.default_rng(2)
    height, width, classes = 31, 45, 9
    label = rng.integers(0, classes, (height, width)).astype(np.uint8)
    label[rng.random(label.shape) < 0.1] = 255
    if layout == "overlapping":  # SAM-like: pixels in several masks, some in none
        masks = rng.random((14, height, width)) < rng.random((14, 1, 1))
    elif layout == "partition":  # SLIC-like: every pixel in exactly one mask
        masks = rng.integers(0, 11, (height, width)) == np.arange(11)[:, None, None]
    elif layout == "empty stack":
        masks = np.zeros((0, height, width), dtype=bool)
    else:
        masks = np.zeros((3, height, width), dtype=bool)
    hist = class_histogram(masks, label, classes)
    want = onehot_histogram(masks, label, classes)
    assert hist.dtype == np.int32 and hist.shape == (len(masks), classes + 1)
    assert np.array_equal(hist, want)
    assert hist.tobytes() == want.tobytes()


def test_class_histogram_with_another_ignore_index_and_wide_labels():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 300, (20, 16)).astype(np.int32)
    label[label >= 150] = -1
    masks = rng.random((5, 20, 16)) < 0.5
    assert np.array_equal(class_histogram(masks, label, 150, ignore_index=-1),
                          onehot_histogram(masks, label, 150, ignore_index=-1))


def test_class_histogram_refuses_labels_outside_the_classes_with_the_same_message():
    label = np.array([[0, 7], [9, 255]], np.uint8)
    message = ("label values [7, 9] are outside [0, 5) and not the ignore index 255: check dataset.num_classes")
    with pytest.raises(ValueError) as err:
        class_histogram(np.ones((1, 2, 2), bool), label, num_classes=5)
    assert str(err.value) == message
    with pytest.raises(ValueError, match=r"masks are \(2, 3\) but the label map is \(2, 2\)"):
        class_histogram(np.ones((1, 2, 3), bool), label, num_classes=5)


@pytest.mark.parametrize("num_classes, ignore_index", [(150, 255), (9, 0), (300, 255), (9, -1), (9, 400)])
def test_class_histogram_of_byte_labels_equals_the_onehot_product_for_any_classes_and_ignore(num_classes, ignore_index):
    rng = np.random.default_rng(4)
    masks = rng.random((7, 19, 23)) < rng.random((7, 1, 1))
    label = rng.integers(0, min(num_classes, 256), (19, 23)).astype(np.uint8)
    if 0 <= ignore_index < 256:
        label[rng.random(label.shape) < 0.2] = ignore_index
    hist = class_histogram(masks, label, num_classes, ignore_index)
    assert np.array_equal(hist, onehot_histogram(masks, label, num_classes, ignore_index))
    assert np.array_equal(hist, class_histogram(masks, label.astype(np.int64), num_classes, ignore_index))


def test_byte_labels_out_of_range_anywhere_raise_the_same_message_as_wide_labels():
    label = np.zeros((6, 5), np.uint8)
    label[5, 4], label[0, 3], label[2, 2] = 200, 9, 255  # outside every mask below, ignore 255 allowed
    masks = np.zeros((2, 6, 5), bool)
    masks[:, :2, :2] = True
    with pytest.raises(ValueError) as byte_error:
        class_histogram(masks, label, num_classes=9)
    with pytest.raises(ValueError) as wide_error:
        class_histogram(masks, label.astype(np.int32), num_classes=9)
    assert str(byte_error.value) == str(wide_error.value) == (
        "label values [9, 200] are outside [0, 9) and not the ignore index 255: check dataset.num_classes")
    with pytest.raises(ValueError, match=r"label values \[255\] are outside"):
        class_histogram(masks, np.full((6, 5), 255, np.uint8), num_classes=9, ignore_index=-1)
    with pytest.raises(ValueError, match=r"label values \[9\] are outside"):  # C itself is not a class
        class_histogram(masks, np.full((6, 5), 9, np.uint8), num_classes=9)
