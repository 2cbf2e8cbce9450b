"""COCO RLEs (bench.rle) against pycocotools' own encoder, byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bench.mask_crops import MaskCrops
from bench.rle import decode_rles, encode_rles, mask_areas, rle_strings


def pycocotools_rles(masks: np.ndarray) -> list[dict]:
    """The reference: pycocotools.mask.encode on the (H, W, R) Fortran-order copy it asks for."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def test_random_masks_of_odd_sizes_and_densities_match_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width, count = rng.integers(1, 14, size=3)
        masks = rng.random((count, height, width)) < rng.random()
        assert encode_rles(masks) == pycocotools_rles(masks), (height, width, count)
        assert encode_rles(masks.astype(np.uint8)) == pycocotools_rles(masks)


def test_blobs_overlapping_and_touching_the_borders_match_pycocotools():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:37, :29]
    centres = rng.uniform(-5, 40, (40, 2))
    masks = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 200) for cy, cx in centres])
    assert encode_rles(masks) == pycocotools_rles(masks)
    assert np.array_equal(decode_rles(encode_rles(masks)), masks)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (9, 1), (4, 5), (5, 4)])
def test_edge_cases_match_pycocotools(height, width):
    area = height * width
    masks = np.zeros((8, height, width), dtype=bool)
    masks[1] = True                                       # full
    masks[2].flat[0] = True                               # starts with 1
    masks[3].flat[-1] = True                              # ends with 1 (a column-major last pixel below)
    masks[3, -1, -1] = True
    masks[4, :, 0] = True                                 # the first column: one run ending at a column's bottom
    masks[5, 0, :] = True                                 # the top row: a run per column unless H = 1
    masks[6, -1, :-1] = masks[6, 0, 1:] = True            # bottom of a column joins the top of the next
    masks[7].T.flat[area // 2:] = True                    # the second half in column-major order
    # masks[0] stays empty
    assert encode_rles(masks) == pycocotools_rles(masks)
    assert all(encode_rles(masks[i:i + 1]) == pycocotools_rles(masks[i:i + 1]) for i in range(len(masks)))


def test_runs_longer_than_2_to_the_20_match_pycocotools():
    masks = np.zeros((3, 2, 2**20 + 7), dtype=bool)
    masks[0, :, 3:] = True                              # one run of 2**21 + 8 pixels
    masks[1, :, : 2**20] = True                         # a long run then a long gap
    masks[2, 1, 5:] = masks[2, 0, 9:] = True            # long alternating counts: large deltas either way
    assert encode_rles(masks) == pycocotools_rles(masks)


def test_no_masks_and_zero_pixel_images():
    assert encode_rles(np.zeros((0, 4, 5), dtype=bool)) == []
    for shape in [(2, 0, 3), (2, 3, 0)]:
        masks = np.zeros(shape, dtype=bool)
        assert encode_rles(masks) == pycocotools_rles(masks)


def test_string_encoding_matches_pycocotools_for_large_and_negative_deltas():
    rng = np.random.default_rng(2)
    for _ in range(50):
        lengths = rng.integers(1, 9, size=rng.integers(1, 6))
        counts = rng.integers(0, 2**31, size=lengths.sum()) >> rng.integers(0, 31, size=lengths.sum())
        counts[np.cumsum(lengths)[:-1]] = rng.integers(0, 3)  # first counts of 0, 1, 2 as well
        ours = rle_strings(counts, lengths)
        start = 0
        for n, string in zip(lengths, ours):
            part = counts[start:start + n].tolist()
            start += n
            height = int(sum(part))  # pycocotools only checks the counts against size when decoding
            reference = mask_utils.frPyObjects({"size": [height, 1], "counts": part}, height, 1)["counts"]
            assert string == reference.decode("ascii"), part


def test_mask_areas_equal_pixel_counts():
    rng = np.random.default_rng(4)
    masks = rng.random((9, 13, 7)) < rng.random((9, 1, 1))
    masks[3] = False
    assert mask_areas(masks).tolist() == masks.sum(axis=(1, 2)).tolist()
    assert mask_areas(masks, MaskCrops.of(masks)).dtype == np.int64
    assert mask_areas(np.zeros((2, 0, 3), bool)).tolist() == [0, 0]
