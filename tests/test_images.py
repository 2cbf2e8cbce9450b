import numpy as np
import pytest

from bench.images import to_rgb8


def _check_layout(out: np.ndarray, height: int, width: int) -> None:
    assert out.shape == (height, width, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


def test_rgb_uint8_values_kept_and_made_contiguous():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    flipped = rgb[:, ::-1]  # a non-contiguous view
    out = to_rgb8(flipped)
    _check_layout(out, 7, 9)
    np.testing.assert_array_equal(out, flipped)


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 1)])
def test_gray_is_replicated(shape):
    gray = np.arange(30, dtype=np.uint8).reshape(shape)
    out = to_rgb8(gray)
    _check_layout(out, 5, 6)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray.reshape(5, 6))


def test_rgba_drops_alpha_and_gray_alpha_keeps_gray():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (4, 5, 1), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([rgb, alpha], axis=2)), rgb)
    gray = rgb[:, :, :1]
    np.testing.assert_array_equal(to_rgb8(np.concatenate([gray, alpha], axis=2)), np.repeat(gray, 3, axis=2))


def test_uint16_inverts_the_8_to_16_bit_expansion_and_rounds():
    values = np.arange(256, dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb8(values.reshape(16, 16) * 257)[:, :, 0].ravel(), values)
    odd = np.array([[0, 128, 129, 385, 386, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb8(odd)[0, :, 0], [0, 0, 1, 1, 2, 255])


def test_float_and_bool():
    image = np.array([[0.0, 0.2, 0.5, 1.0, 1.0 + 1e-4, -1e-4]], dtype=np.float32)
    np.testing.assert_array_equal(to_rgb8(image)[0, :, 0], [0, 51, 128, 255, 255, 0])
    np.testing.assert_array_equal(to_rgb8(np.array([[True, False]]))[0, :, 1], [255, 0])


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((3, 8, 8), np.uint8), ValueError, ["(3, 8, 8)", "transpose"]),
    (np.zeros((8, 8, 5), np.uint8), ValueError, ["(8, 8, 5)"]),
    (np.zeros((2, 2, 2, 3), np.uint8), ValueError, ["(2, 2, 2, 3)"]),
    (np.zeros((0, 4, 3), np.uint8), ValueError, ["empty"]),
    (np.zeros((8, 8), np.int32), TypeError, ["int32"]),
    (np.full((4, 4, 3), 255.0), ValueError, ["[0, 1]", "255"]),
    (np.full((4, 4), np.nan), ValueError, ["NaN"]),
])
def test_unsupported_inputs_raise_naming_the_problem(bad, error, words):
    with pytest.raises(error) as info:
        to_rgb8(bad)
    for word in words:
        assert word in str(info.value)
