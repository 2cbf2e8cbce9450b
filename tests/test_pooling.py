import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.pooling import (box_matrix, empty_masks, linear_interpolation_matrix, pool_regions,
                           pool_regions_reference)

SIZES = [(37, 53, 14), (100, 75, 16), (15, 29, 14), (1, 1, 14), (60, 3, 4)]


def _grid(height: int, width: int, patch: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, -(-height // patch), -(-width // patch), generator=generator)


def _masks(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random blobs and speckle of varied density, single pixels, masks touching each border."""
    generator = torch.Generator().manual_seed(seed)
    density = torch.rand(8, 1, 1, generator=generator)
    masks = torch.rand(8, height, width, generator=generator) < density
    single = torch.zeros(6, height, width, dtype=torch.bool)
    single[0, 0, 0] = single[1, -1, -1] = single[2, height // 2, width // 2] = True
    single[3, 0, :] = single[4, :, -1] = True   # first row, last column
    single[5] = True                            # the whole image
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    blob = ((yy - height / 3) ** 2 + (xx - width / 2) ** 2) < (min(height, width) / 3) ** 2 + 1
    checker = (yy + xx) % 2 == 0
    return torch.cat([masks, single, blob[None], checker[None]])


@pytest.mark.parametrize("height, width, patch", SIZES)
def test_interpolation_matrices_are_pytorch_bilinear(height, width, patch):
    grid = _grid(height, width, patch, dim=5, seed=3)
    h, w = grid.shape[1:]
    top, left = (h * patch - height) // 2, (w * patch - width) // 2
    upsampled = F.interpolate(grid[None], size=(h * patch, w * patch), mode="bilinear", align_corners=False)[0]
    along_y = linear_interpolation_matrix(height, h, patch, top)
    along_x = linear_interpolation_matrix(width, w, patch, left)
    torch.testing.assert_close(along_y @ grid @ along_x.T, upsampled[:, top:top + height, left:left + width],
                               rtol=1e-5, atol=1e-5)
    identity = F.interpolate(torch.eye(h)[None], size=h * patch, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(along_y, identity[top:top + height], rtol=0, atol=1e-6)
    torch.testing.assert_close(along_y.sum(dim=1), torch.ones(height))


@pytest.mark.parametrize("mode", ["mean", "max", "downsample"])
@pytest.mark.parametrize("height, width, patch", SIZES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_pooling_matches_the_literal_reference(mode, height, width, patch, seed):
    grid, masks = _grid(height, width, patch, seed=seed), _masks(height, width, seed=seed)
    fast = pool_regions(grid, masks, patch, mode=mode)
    reference = pool_regions_reference(grid, masks, patch, mode=mode)
    assert fast.shape == (len(masks), grid.shape[0]) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_small_chunks_give_the_same_result():
    grid, masks = _grid(37, 53, 14), _masks(37, 53)
    for mode in ("mean", "max", "downsample"):
        torch.testing.assert_close(pool_regions(grid, masks, 14, mode=mode, chunk_elements=1),
                                   pool_regions(grid, masks, 14, mode=mode))


def test_mean_of_a_constant_grid_is_the_constant():
    masks = _masks(37, 53)
    torch.testing.assert_close(pool_regions(torch.full((3, 3, 4), 2.5), masks, 14), torch.full((len(masks), 3), 2.5))


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_a_pixel_at_a_patch_centre_takes_that_patch_feature(mode):
    # p = 7 (odd): padded pixel 7i + 3 has source coordinate exactly i. A 37x53 image pads to
    # 42x56 with top = 5 // 2 = 2 and left = 3 // 2 = 1 (the released round-half-even crop
    # would use left = 2 and miss the centre).
    grid = _grid(37, 53, 7)
    masks = torch.zeros(3, 37, 53, dtype=torch.bool)
    for r, (i, j) in enumerate([(1, 2), (0, 0), (5, 7)]):
        masks[r, 7 * i + 3 - 2, 7 * j + 3 - 1] = True
    out = pool_regions(grid, masks, 7, mode=mode)
    torch.testing.assert_close(out, torch.stack([grid[:, 1, 2], grid[:, 0, 0], grid[:, 5, 7]]))


def test_downsample_on_a_hand_computed_case():
    # p = 4; a 6x7 image pads to 8x8 with top = 1, left = 0; the grid is 2x2.
    grid = torch.tensor([[[0.0, 1.0], [10.0, 11.0]], [[0.0, -1.0], [-10.0, -11.0]]])  # (2, 2, 2)
    masks = torch.zeros(7, 6, 7, dtype=torch.bool)
    masks[0, 0:3, 0:4] = True   # padded rows 1-3 of patch row 0, all of patch col 0: coverage 12/16
    masks[1, 3:5, :] = True     # padded rows 4-5: patch (1, 0) 8/16 = 0.5 (kept), patch (1, 1) 6/16
    masks[2, 5, 6] = True       # one pixel, padded (6, 6): coverage 1/16 -> fallback to patch (1, 1)
    masks[3, 1, 3:5] = True     # one pixel in patch (0, 0), one in (0, 1): tie -> first, (0, 0)
    masks[4, 0:3, 0:4] = True   # patches (0, 0) 12/16 and (1, 1) 12/16 -> their average
    masks[4, 3:6, 4:7] = True
    masks[6, 1:5, 2:6] = True   # 2x2 in each of the four patches: nothing reaches 0.5, tie -> (0, 0)
    out = pool_regions(grid, masks, 4, mode="downsample")
    expected = torch.tensor([[0.0, 0.0], [10.0, -10.0], [11.0, -11.0], [0.0, 0.0], [5.5, -5.5],
                             [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(pool_regions_reference(grid, masks, 4, mode="downsample"), expected)
    assert box_matrix(6, 2, 4, 1).argmax(dim=1).tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("mode", ["mean", "max", "downsample"])
def test_empty_masks_give_zeros_or_an_error(mode):
    grid = _grid(37, 53, 14) + 5  # non-zero everywhere, so a zero row can only come from the policy
    masks = _masks(37, 53)
    masks[[1, 4]] = False
    assert empty_masks(masks).nonzero().flatten().tolist() == [1, 4]
    out = pool_regions(grid, masks, 14, mode=mode)
    assert out.shape == (len(masks), 32)
    assert (out[[1, 4]] == 0).all() and (out.abs().sum(dim=1) > 0).sum() == len(masks) - 2
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        pool_regions(grid, masks, 14, mode=mode, empty="error")
    assert pool_regions(grid, masks[:0], 14, mode=mode).shape == (0, 32)


@pytest.mark.parametrize("mode", ["mean", "max", "downsample"])
def test_float16_features_accumulate_in_float32(mode):
    grid, masks = _grid(100, 75, 16, seed=5).half(), _masks(100, 75, seed=5)
    out = pool_regions(grid, masks, 16, mode=mode)
    assert out.dtype == torch.float32
    reference = pool_regions_reference(grid.float(), masks, 16, mode=mode)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
    assert pool_regions(grid.bfloat16(), masks, 16, mode=mode).dtype == torch.float32


def test_mask_types_and_argument_errors():
    grid, masks = _grid(37, 53, 14), _masks(37, 53)
    expected = pool_regions(grid, masks, 14)
    torch.testing.assert_close(pool_regions(grid, masks.numpy(), 14), expected)
    torch.testing.assert_close(pool_regions(grid, masks.to(torch.uint8), 14), expected)
    with pytest.raises(TypeError, match="masks > 0.5"):
        pool_regions(grid, masks.float(), 14)
    with pytest.raises(ValueError, match="patch_size=8"):
        pool_regions(grid, masks, 8)
    with pytest.raises(ValueError, match="valid modes"):
        pool_regions(grid, masks, 14, mode="median")
    with pytest.raises(ValueError, match="valid policies"):
        pool_regions(grid, masks, 14, empty="nan")
    with pytest.raises(ValueError, match="features must be"):
        pool_regions(grid[None], masks, 14)
