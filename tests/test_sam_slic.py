from pathlib import Path

import numpy as np
import pytest
from skimage import data, transform

from bench.regions import SlicRegions, build_regions
from bench.regions.sam_slic import GtRegions, SamSlicRegions, merge_sam_slic

SHARED = Path(__file__).resolve().parents[2] / "shared"
VOC_IMAGE = SHARED / "fixtures/data/voc/VOCdevkit/VOC2012/JPEGImages/2007_000063.jpg"


def reference_merge(sam_masks, labels, min_pixels, min_proportion):
    """The released merge_sam_and_slic_regions.py loop, literally, with ascending candidate order."""
    uncovered = ~sam_masks.any(axis=0) if len(sam_masks) else np.ones(labels.shape, dtype=bool)
    kept = []
    for value in sorted(set(labels[uncovered].tolist())):
        region = labels == value
        inter = region & uncovered
        if inter.sum() >= min_pixels and inter.sum() / region.sum() >= min_proportion:
            kept.append(inter)
    return np.concatenate([sam_masks, np.stack(kept)]) if kept else sam_masks


def random_labels(rng, height, width, cells=6):
    """A blocky label map with ragged edges and unused label values (gaps)."""
    coarse = rng.choice(np.arange(0, 4 * cells * cells, 2), size=(cells, cells))
    labels = np.kron(coarse, np.ones((height // cells + 1, width // cells + 1), dtype=np.int64))[:height, :width]
    noise = rng.random((height, width)) < 0.05
    labels[noise] = rng.integers(0, 4 * cells * cells, size=noise.sum())
    return labels


def disks(height, width, specs):
    """(R, H, W) bool disks from (centre y, centre x, radius) fractions of the image size."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([(yy - cy * height) ** 2 + (xx - cx * width) ** 2 <= (r * min(height, width)) ** 2
                     for cy, cx, r in specs]).astype(bool)


def random_sam(rng, height, width, count):
    specs = [(rng.random(), rng.random(), rng.uniform(0.1, 0.4)) for _ in range(count)]
    return disks(height, width, specs) if count else np.zeros((0, height, width), dtype=bool)


def check_merge(merged, sam_masks, labels, min_pixels):
    R = len(sam_masks)
    np.testing.assert_array_equal(merged[:R], sam_masks)
    fill = merged[R:]
    uncovered = ~sam_masks.any(axis=0) if R else np.ones(labels.shape, dtype=bool)
    assert not (fill & ~uncovered).any(), "a superpixel overlaps a SAM mask"
    assert (fill.sum(axis=0) <= 1).all(), "superpixels overlap each other"
    assert (fill.sum(axis=(1, 2)) >= max(min_pixels, 1)).all()
    # each fill mask is one superpixel clipped to the uncovered area
    for mask in fill:
        (value,) = np.unique(labels[mask])
        np.testing.assert_array_equal(mask, (labels == value) & uncovered)


@pytest.mark.parametrize("min_pixels", [0, 1, 25, 120])
@pytest.mark.parametrize("min_proportion", [0.0, 0.3, 0.9, 1.0])
def test_merge_matches_literal_reference(min_pixels, min_proportion):
    rng = np.random.default_rng(min_pixels * 10 + int(10 * min_proportion))
    for trial in range(4):
        height, width = rng.integers(40, 90, size=2)
        labels = random_labels(rng, height, width)
        sam = random_sam(rng, height, width, count=int(rng.integers(0, 6)))
        merged = merge_sam_slic(sam, labels, min_pixels, min_proportion)
        np.testing.assert_array_equal(merged, reference_merge(sam, labels, min_pixels, min_proportion))
        check_merge(merged, sam, labels, min_pixels)


def test_zero_sam_masks_keeps_every_large_superpixel():
    labels = np.zeros((30, 40), dtype=np.int64)
    labels[:, 20:] = 3  # 600 pixels each
    labels[:2, :2] = 7  # 4 pixels: below min_pixels
    for empty in (np.zeros((0, 30, 40), bool), np.zeros((0, 0, 0), bool), []):
        merged = merge_sam_slic(empty, labels, min_pixels=300)
        assert merged.shape == (2, 30, 40)
        np.testing.assert_array_equal(merged[0], labels == 0)
        np.testing.assert_array_equal(merged[1], labels == 3)


def test_fully_covered_image_adds_no_superpixel():
    labels = random_labels(np.random.default_rng(0), 50, 60)
    sam = np.zeros((2, 50, 60), dtype=bool)
    sam[0, :30], sam[1, 20:] = True, True  # overlapping, covering everything
    merged = merge_sam_slic(sam, labels, min_pixels=0)
    np.testing.assert_array_equal(merged, sam)


def test_merge_rejects_mismatched_shapes_and_negative_labels():
    with pytest.raises(ValueError, match="match slic_labels"):
        merge_sam_slic(np.zeros((1, 5, 5), bool), np.zeros((5, 6), int))
    with pytest.raises(ValueError, match=">= 0"):
        merge_sam_slic(np.zeros((0, 2, 2), bool), -np.ones((2, 2), int))


def _natural(name: str, shape=(240, 320)) -> np.ndarray:
    image = transform.resize(getattr(data, name)(), shape, anti_aliasing=True)
    return (image * 255).round().astype(np.uint8)


def _check_real_image(image):
    height, width = image.shape[:2]
    labels = SlicRegions(num_threads=1).label_map(image)
    sam = disks(height, width, [(0.35, 0.3, 0.3), (0.6, 0.55, 0.35), (0.3, 0.8, 0.2)])
    merged = merge_sam_slic(sam, labels, min_pixels=300)
    np.testing.assert_array_equal(merged, reference_merge(sam, labels, 300, 0.0))
    check_merge(merged, sam, labels, 300)
    assert len(merged) > len(sam), "SLIC added no region"
    covered_before, covered_after = sam.any(axis=0).mean(), merged.any(axis=0).mean()
    assert covered_after > covered_before
    # what stays uncovered are only the remnants (< 300 px) of superpixels SAM mostly covers
    holes = ~merged.any(axis=0)
    assert all((holes & (labels == value)).sum() < 300 for value in np.unique(labels[holes]))
    return covered_before, covered_after


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_slic_merge_on_natural_photos(name):
    before, after = _check_real_image(_natural(name))
    assert after > 0.9 > before, (before, after)


@pytest.mark.fixtures
def test_slic_merge_on_voc_photo():
    if not SHARED.is_dir():
        pytest.skip(f"real dataset samples not found at {SHARED} (../shared beside the repository)")
    from datamodules.voc import load_image

    image = load_image(VOC_IMAGE)
    assert image.shape == (375, 500, 3)
    before, after = _check_real_image(image)
    assert after > 0.9 > before, (before, after)


class FakeSam:
    """A stand-in SAM source: three fixed disks."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def generate(self, image):
        height, width = image.shape[:2]
        return disks(height, width, [(0.3, 0.3, 0.25 * self.scale), (0.6, 0.6, 0.3 * self.scale)])


def test_sam_slic_regions_builds_sam_by_name_and_merges():
    built = {}

    def build(name, **params):
        built[name] = params
        return FakeSam(**params)

    source = SamSlicRegions(sam="fake", sam_params={"scale": 1.2}, min_pixels=100, build_sam=build)
    assert built == {"fake": {"scale": 1.2}}
    image = _natural("astronaut", (120, 160))
    masks = source.generate(image)
    expected = merge_sam_slic(FakeSam(1.2).generate(image), SlicRegions().label_map(image), 100)
    np.testing.assert_array_equal(masks, expected)
    np.testing.assert_array_equal(source.from_masks(FakeSam(1.2).generate(image), image), expected)


def test_sam_slic_regions_unknown_sam_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names"):
        build_regions("sam_slic", sam="no_such_sam")
    with pytest.raises(TypeError, match="build_regions"):
        SamSlicRegions(sam="sam")


def test_gt_regions_one_mask_per_class_component():
    label = np.array([
        [0, 0, 5, 5, 255, 5],
        [0, 0, 5, 5, 255, 5],
        [255, 0, 0, 0, 255, 0],
        [3, 0, 0, 0, 0, 0],
        [0, 3, 0, 0, 0, 0],
    ], dtype=np.uint8)
    masks = GtRegions().generate(np.zeros((5, 6, 3), np.uint8), label)
    # class 0: one component; class 3: one (diagonal, 8-neighbour); class 5: two
    assert masks.shape == (4, 5, 6)
    np.testing.assert_array_equal(masks[0], label == 0)
    np.testing.assert_array_equal(masks[1], label == 3)
    np.testing.assert_array_equal(masks[2], (label == 5) & (np.arange(6) < 4))
    np.testing.assert_array_equal(masks[3], (label == 5) & (np.arange(6) == 5))
    assert not masks.any(axis=0)[label == 255].any(), "ignore pixels must stay uncovered"
    assert (masks.sum(axis=0) == (label != 255)).all()

    four = GtRegions(connectivity=1).generate(np.zeros((5, 6)), label)
    # 4-neighbour: the diagonal class-3 pixels split in two, and so does the class-0 pixel they cut off
    assert len(four) == 6
    np.testing.assert_array_equal(four[0] | four[1], label == 0)
    assert four[1].sum() == 1 and four[1][4, 0]
    np.testing.assert_array_equal(four[2] | four[3], label == 3)
    with pytest.raises(ValueError, match="must be"):
        GtRegions().generate(np.zeros((4, 6)), label)
