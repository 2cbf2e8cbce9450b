"""bench.geometry: colour -> depth pixels, back-projection, 2D/3D region positions, scene centring."""
from __future__ import annotations

import numpy as np
import pytest

from bench.geometry import (as_intrinsics, backproject_depth, centre_scene, color_to_depth_pixels,
                            nearest_depth_index, region_positions_2d, region_positions_3d)
from benchmarks.geometry import K_COLOR, K_DEPTH, make_inputs, reference_positions_3d

# A depth camera of 4x6 pixels and a registered colour camera of twice its resolution: colour
# pixels 2j and 2j + 1 see depth pixel j (pixel centres: cx_colour = 2 * cx_depth + 0.5).
K_D = np.array([[10.0, 0, 2], [0, 10, 1], [0, 0, 1]])
K_C = np.array([[20.0, 0, 4.5], [0, 20, 2.5], [0, 0, 1]])
# camera-to-world: 90 degrees about z (x -> y, y -> -x), then a shift of (1, 2, 3)
POSE = np.array([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])


def test_backprojection_of_one_depth_pixel_by_hand():
    depth = np.zeros((4, 6), dtype=np.float32)
    depth[3, 4] = 2.0
    points, valid = backproject_depth(depth, K_D, POSE)
    # camera: x = (4 - 2) / 10 * 2 = 0.4, y = (3 - 1) / 10 * 2 = 0.4, z = 2
    # world:  R (0.4, 0.4, 2) + t = (-0.4, 0.4, 2) + (1, 2, 3) = (0.6, 2.4, 5.0)
    np.testing.assert_allclose(points[3 * 6 + 4], [0.6, 2.4, 5.0], atol=1e-12)
    assert valid.sum() == 1 and valid[3 * 6 + 4]


def test_region_position_3d_of_the_colour_pixels_that_see_one_depth_pixel():
    depth = np.zeros((4, 6), dtype=np.float32)
    depth[3, 4] = 2.0
    masks = np.zeros((1, 8, 12), dtype=bool)
    masks[0, 6:8, 8:10] = True  # colour rows 6, 7 -> depth row 3; columns 8, 9 -> depth column 4
    positions, valid = region_positions_3d(masks, depth, K_C, K_D, POSE)
    assert valid.tolist() == [True]
    np.testing.assert_allclose(positions[0], [0.6, 2.4, 5.0, 0, 0, 0], atol=1e-6)


def test_each_depth_pixel_is_seen_by_a_2x2_block_of_colour_pixels():
    index = nearest_depth_index((8, 12), (4, 6), K_C, K_D)
    expected = (np.arange(8)[:, None] // 2) * 6 + np.arange(12)[None, :] // 2
    np.testing.assert_array_equal(index, expected)


def test_colour_to_depth_with_scannet_sizes_and_intrinsics():
    # the principal points correspond; a colour corner lands where the ray ratio says
    ud, vd = color_to_depth_pixels(np.array([646.295044, 0.0, 1295.0]), np.array([489.927032, 0.0, 967.0]),
                                   K_COLOR, K_DEPTH)
    np.testing.assert_allclose([ud[0], vd[0]], [318.905426, 242.683609], atol=1e-9)
    np.testing.assert_allclose(ud[1], 577.590698 * (0 - 646.295044) / 1169.621094 + 318.905426, atol=1e-9)
    np.testing.assert_allclose(vd[2], 578.729797 * (967 - 489.927032) / 1167.105103 + 242.683609, atol=1e-9)
    index = nearest_depth_index((968, 1296), (480, 640), K_COLOR, K_DEPTH)
    assert index.min() >= 0 and index.max() < 480 * 640  # every colour pixel has a depth pixel
    assert np.unique(index).size > 0.99 * 480 * 640  # ... and (nearly) every depth pixel is seen


def test_colour_pixels_outside_the_depth_image_get_minus_one():
    K_shifted = K_C.copy()
    K_shifted[0, 2] = 0.5  # colour principal point at its left edge: its right half sees past the depth image
    index = nearest_depth_index((8, 12), (4, 6), K_shifted, K_D)
    ud, _ = color_to_depth_pixels(np.arange(12), np.zeros(12), K_shifted, K_D)
    outside = np.floor(ud + 0.5) >= 6
    assert outside.any() and not outside.all()
    assert (index[:, outside] == -1).all() and (index[:, ~outside] >= 0).all()


def test_missing_depth_is_left_out_and_an_all_missing_region_is_invalid():
    depth = np.full((4, 6), 1.0, dtype=np.float32)
    depth[:, :3] = 0  # left half of the depth image: no measurement
    masks = np.zeros((3, 8, 12), dtype=bool)
    masks[0, :, :6] = True   # only missing depth
    masks[1, :, :] = True    # half missing
    positions, valid = region_positions_3d(masks, depth, K_C, K_D, np.eye(4))
    assert valid.tolist() == [False, True, False]  # region 2 is empty
    assert (positions[[0, 2]] == 0).all() and np.isfinite(positions).all()
    assert positions[1, 2] == 1.0  # median z of the measured half
    xs = (np.arange(3, 6) - 2) / 10  # camera x of depth columns 3..5 at z = 1
    np.testing.assert_allclose(positions[1, 0], np.median(xs), atol=1e-6)
    seen = np.repeat(xs, 16)  # each measured depth pixel: 4 depth rows x a 2x2 block of colour pixels
    np.testing.assert_allclose(positions[1, 3], np.percentile(seen, 90) - np.percentile(seen, 10), atol=1e-6)


@pytest.mark.parametrize("bad", [-np.inf, np.nan])
def test_a_non_finite_pose_makes_every_region_invalid_with_zeros(bad):
    inputs = make_inputs(masks=5, color_hw=(48, 64), depth_hw=(24, 32), seed=1)
    pose = np.full((4, 4), bad)
    positions, valid = region_positions_3d(inputs["masks"], inputs["depth"], inputs["K_color"], inputs["K_depth"], pose)
    assert not valid.any() and (positions == 0).all()


def test_region_positions_3d_equals_the_per_pixel_reference_on_a_random_case():
    inputs = make_inputs(masks=12, color_hw=(97, 130), depth_hw=(48, 64), seed=2)
    inputs["depth"][:, :20] = 0  # regions entirely on missing depth exist too
    ours = region_positions_3d(**inputs)
    reference = reference_positions_3d(**inputs)
    np.testing.assert_array_equal(ours[1], reference[1])
    assert ours[1].any()
    np.testing.assert_allclose(ours[0], reference[0], atol=1e-6)


def test_region_positions_2d_of_a_box_an_empty_and_a_full_mask():
    masks = np.zeros((3, 10, 20), dtype=bool)
    masks[0, 2:5, 3:8] = True  # rows 2..4, columns 3..7
    masks[2] = True
    out = region_positions_2d(masks)
    assert out.dtype == np.float32 and out.shape == (3, 6)
    np.testing.assert_allclose(out[0], [5.5 / 20, 3.5 / 10, 3 / 20, 2 / 10, 8 / 20, 5 / 10], atol=1e-7)
    assert (out[1] == 0).all()
    np.testing.assert_allclose(out[2], [0.5, 0.5, 0, 0, 1, 1], atol=1e-7)


def test_region_positions_2d_equals_a_per_mask_reference():
    masks = make_inputs(masks=6, color_hw=(40, 50), depth_hw=(20, 25), seed=3)["masks"]
    out = region_positions_2d(masks)
    for r, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        expected = [(xs + 0.5).mean() / 50, (ys + 0.5).mean() / 40, xs.min() / 50, ys.min() / 40,
                    (xs.max() + 1) / 50, (ys.max() + 1) / 40]
        np.testing.assert_allclose(out[r], expected, atol=1e-6)


def test_centre_scene_uses_the_median_of_valid_rows_and_zeros_the_rest():
    xyz = np.array([[1.0, 2, 3], [3, 2, 1], [100, 100, 100], [2, 5, 2]])
    valid = np.array([True, True, False, True])
    centred, centre = centre_scene(xyz, valid)
    np.testing.assert_allclose(centre, [2, 2, 2])
    np.testing.assert_allclose(centred, [[-1, 0, 1], [1, 0, -1], [0, 0, 0], [0, 3, 0]])
    centred, centre = centre_scene(xyz, np.zeros(4, dtype=bool))
    assert (centre == 0).all() and (centred == 0).all()


def test_intrinsics_accept_scannet_4x4_and_refuse_skew():
    K4 = np.eye(4)
    K4[:3, :3] = K_D
    np.testing.assert_array_equal(as_intrinsics(K4), K_D)
    skewed = K_D.copy()
    skewed[0, 1] = 0.1
    with pytest.raises(ValueError, match="no skew"):
        as_intrinsics(skewed)


def test_benchmark_row_runs_at_scannet_size_and_formats():
    from benchmarks.geometry import row
    from benchmarks.run import format_row

    result = row(runs=1, masks=3)
    assert result["check"]["ok"], result["check"]
    assert result["reference_masks"] == 3 and result["speedup"] > 0
    assert len(format_row(result)) == 9
