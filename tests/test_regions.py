import subprocess
import sys

import numpy as np
import pytest
from skimage import data, transform

from bench.regions import REGION_SOURCES, SlicRegions, build_regions, label_map_to_masks


def _natural(name: str) -> np.ndarray:
    """A bundled skimage sample image resized to 240x320 uint8 RGB."""
    image = transform.resize(getattr(data, name)(), (240, 320), anti_aliasing=True)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _natural("astronaut")


def _check_partition(masks: np.ndarray, height: int, width: int) -> None:
    assert masks.dtype == bool and masks.shape[1:] == (height, width)
    assert masks.reshape(len(masks), -1).any(axis=1).all(), "no mask may be empty"
    np.testing.assert_array_equal(masks.sum(axis=0), 1)  # every pixel in exactly one mask


def test_label_map_to_masks_sorted_by_label_no_gaps():
    assignment = np.array([[9, 9, 2], [5, 2, 2], [-1, 5, 9]])
    masks = label_map_to_masks(assignment)
    assert masks.shape == (4, 3, 3)
    for mask, label in zip(masks, [-1, 2, 5, 9]):
        np.testing.assert_array_equal(mask, assignment == label)


def test_slic_partitions_a_natural_image_into_a_plausible_number_of_regions(astronaut):
    masks = SlicRegions().generate(astronaut)
    _check_partition(masks, 240, 320)
    counts = [len(SlicRegions().generate(_natural(name))) for name in ("chelsea", "coffee")] + [len(masks)]
    assert all(25 <= count <= 75 for count in counts), counts


def test_slic_masks_follow_label_order(astronaut):
    slic = SlicRegions()
    assignment = slic.label_map(astronaut)
    np.testing.assert_array_equal(slic.generate(astronaut), label_map_to_masks(assignment))


def test_slic_is_deterministic_and_independent_of_image_order(astronaut):
    slic = SlicRegions()
    first = slic.generate(astronaut)
    slic.generate(_natural("chelsea"))  # a reused fast_slic.Slic would start from these clusters
    np.testing.assert_array_equal(first, slic.generate(astronaut))


def test_slic_accepts_gray_rgba_and_16_bit(astronaut):
    slic = SlicRegions(num_components=30)
    gray = astronaut[:, :, 1]
    gray_masks = slic.generate(gray)
    _check_partition(gray_masks, 240, 320)
    np.testing.assert_array_equal(gray_masks, slic.generate(np.repeat(gray[:, :, None], 3, axis=2)))

    alpha = np.random.default_rng(0).integers(0, 256, (240, 320, 1), dtype=np.uint8)
    np.testing.assert_array_equal(slic.generate(np.concatenate([astronaut, alpha], axis=2)),
                                  slic.generate(astronaut))
    np.testing.assert_array_equal(slic.generate(astronaut.astype(np.uint16) * 257), slic.generate(astronaut))


def test_slic_on_images_smaller_than_the_component_count():
    # fast-slic 0.4.0 dies with SIGFPE when asked for more components than pixels, so this runs
    # in a child process: a regression fails the test instead of killing pytest.
    script = (
        "import numpy as np\n"
        "from bench.regions import SlicRegions\n"
        "rng = np.random.default_rng(0)\n"
        "for shape in [(1, 1, 3), (5, 5, 3), (7, 7), (2, 24, 3), (1, 49, 4)]:\n"
        "    image = rng.integers(0, 256, shape, dtype=np.uint8)\n"
        "    masks = SlicRegions().generate(image)\n"
        "    assert masks.shape[1:] == shape[:2] and (masks.sum(axis=0) == 1).all(), shape\n"
        "    assert masks.reshape(len(masks), -1).any(axis=1).all(), shape\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])


def test_registry():
    assert set(REGION_SOURCES) == {"slic", "sam", "hq_sam", "mobile_sam", "sam2", "sam_slic", "gt"}
    slic = build_regions("slic", num_components=20, compactness=10)
    assert isinstance(slic, SlicRegions) and (slic.num_components, slic.compactness) == (20, 10)
    with pytest.raises(ValueError, match="valid names.*slic"):
        build_regions("sam3")
    with pytest.raises(TypeError):
        build_regions("slic", num_compnents=20)  # a typo fails loudly
