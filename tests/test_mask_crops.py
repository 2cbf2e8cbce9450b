"""Masks as bounding-box crops (bench.mask_crops) against direct numpy readings of the stack."""
from __future__ import annotations

import numpy as np
import torch

from bench.mask_crops import MaskCrops, bounding_boxes
from bench.pooling import pool_regions


def boxes_reference(masks: np.ndarray) -> np.ndarray:
    out = np.zeros((len(masks), 4), dtype=np.int64)
    for r, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(ys):
            out[r] = [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1]
    return out


def runs_reference(masks: np.ndarray) -> tuple[list[int], list[int]]:
    """Runs of ones of each mask's column-major pixels, as flat indices r*H*W + x*H + y."""
    starts, ends = [], []
    area = masks.shape[1] * masks.shape[2]
    for r, mask in enumerate(masks):
        column_major = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
        change = np.diff(column_major)
        starts += (np.flatnonzero(change == 1) + r * area).tolist()
        ends += (np.flatnonzero(change == -1) - 1 + r * area).tolist()
    return starts, ends


def random_stacks(seed: int, count: int = 300):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(int(n) for n in rng.integers(1, 15, size=3))
        masks = rng.random(shape) < rng.random() ** 2
        masks[rng.random(shape[0]) < 0.25] = False  # empty masks, also first and last
        yield masks


def test_bounding_boxes_equal_the_extent_of_each_masks_pixels():
    for masks in random_stacks(0):
        assert np.array_equal(bounding_boxes(masks), boxes_reference(masks)), masks.shape
    for shape in [(0, 4, 5), (3, 0, 5), (3, 4, 0)]:
        assert bounding_boxes(np.zeros(shape, bool)).tolist() == [[0, 0, 0, 0]] * shape[0]


def test_crops_hold_each_box_column_major_with_spacers_and_their_runs_and_areas_are_the_stacks():
    for masks in random_stacks(1):
        crops = MaskCrops.of(masks)
        expected = [np.pad(masks[r, y0:y1, x0:x1].T, [(0, 0), (0, 1)]).reshape(-1)  # a False after each column
                    for r, (y0, y1, x0, x1) in enumerate(crops.boxes)]
        assert np.array_equal(crops.values, np.concatenate(expected)), masks.shape
        assert np.array_equal(np.diff(crops.offsets), [len(e) for e in expected])
        assert crops.areas.tolist() == masks.sum(axis=(1, 2)).tolist()
        starts, ends = crops.runs
        assert (starts.tolist(), ends.tolist()) == runs_reference(masks), masks.shape


def test_a_run_down_a_full_height_column_continues_into_the_next_column():
    masks = np.zeros((2, 4, 3), dtype=bool)
    masks[0, 2:, 0] = masks[0, :, 1] = masks[0, :1, 2] = True  # one column-major run over three columns
    masks[1, 3, 0] = True                                      # ends at the bottom: the next mask is not joined
    starts, ends = MaskCrops.of(masks).runs
    assert starts.tolist() == [2, 12 + 3] and ends.tolist() == [8, 12 + 3]


def test_gather_and_selected_follow_the_crops_order():
    rng = np.random.default_rng(2)
    masks = rng.random((6, 9, 11)) < 0.3
    image = rng.integers(0, 255, (9, 11)).astype(np.uint8)
    crops = MaskCrops.of(masks)
    assert np.array_equal(crops.selected(image),
                          np.concatenate([image.T[mask.T] for mask in masks]))  # column-major, mask by mask


def test_pooling_with_given_boxes_equals_pooling_that_finds_them():
    rng = np.random.default_rng(3)
    masks = rng.random((7, 30, 45)) < 0.2
    masks[2] = False
    grid = torch.randn(8, 3, 4)
    for mode in ("mean", "max", "downsample"):
        ours = pool_regions(grid, masks, 14, mode=mode, boxes=bounding_boxes(masks))
        assert torch.equal(ours, pool_regions(grid, masks, 14, mode=mode)), mode
