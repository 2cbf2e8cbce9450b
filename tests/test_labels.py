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
