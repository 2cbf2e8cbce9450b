import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from bench.backbones import (BACKBONES, ColorTextureBackbone, build_backbone, center_pad, center_pad_amounts,
                             padded_size)


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_center_pad_amounts_put_the_smaller_half_first():
    assert center_pad_amounts(37, 14) == (2, 3)    # 42 - 37 = 5
    assert center_pad_amounts(28, 14) == (0, 0)
    assert center_pad_amounts(1, 14) == (6, 7)
    assert center_pad_amounts(100, 16) == (6, 6)   # 112 - 100 = 12
    for size in range(1, 60):
        for multiple in (1, 2, 14, 16):
            before, after = center_pad_amounts(size, multiple)
            pad = padded_size(size, multiple) - size
            assert padded_size(size, multiple) % multiple == 0 and 0 <= pad < multiple
            assert (before, after) == (pad // 2, pad - pad // 2)


def test_center_pad_places_the_image_at_the_offset_on_black():
    image = np.full((37, 53, 3), 7, dtype=np.uint8)
    padded = center_pad(image, 14)
    assert padded.shape == (42, 56, 3)
    np.testing.assert_array_equal(padded[2:39, 1:54], image)
    assert padded.sum() == image.sum()  # everything else is zero


@pytest.mark.parametrize("height, width, patch", [(37, 53, 14), (1, 1, 14), (15, 29, 14), (100, 75, 16), (240, 320, 14)])
def test_feature_grid_shape(height, width, patch):
    backbone = ColorTextureBackbone(patch_size=patch)
    grid = backbone.features(_random_image(height, width))
    assert grid.shape == (backbone.embed_dim, -(-height // patch), -(-width // patch))
    assert grid.dtype == torch.float32 and torch.isfinite(grid).all()
    assert backbone.embed_dim == 7 + 4 * 9 + 10


def test_padding_is_black_at_the_center_offset():
    image = _random_image(37, 53)
    backbone = ColorTextureBackbone()
    torch.testing.assert_close(backbone.features(image), backbone.features(center_pad(image, 14)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell", [(1, 2), (0, 0), (2, 3)])  # (0, 0) and (2, 3) contain padding
def test_a_patch_descriptor_depends_only_on_its_own_pixels(cell):
    image = _random_image(37, 53, seed=1)
    backbone = ColorTextureBackbone()
    before = backbone.features(image)
    top, left = center_pad_amounts(37, 14)[0], center_pad_amounts(53, 14)[0]
    i, j = cell
    rows = slice(max(14 * i - top, 0), min(14 * (i + 1) - top, 37))
    cols = slice(max(14 * j - left, 0), min(14 * (j + 1) - left, 53))
    changed = image.copy()
    changed[rows, cols] = _random_image(37, 53, seed=2)[rows, cols]
    after = backbone.features(changed)
    differs = (after != before).any(dim=0)
    expected = torch.zeros_like(differs)
    expected[i, j] = True
    assert torch.equal(differs, expected)


def test_uniform_colour_patch_has_the_documented_layout():
    colour = np.array([200, 30, 60], dtype=np.uint8)
    grid = ColorTextureBackbone().features(np.tile(colour, (28, 28, 1)))
    lab = rgb2lab(colour[None, None].astype(np.float32) / 255)[0, 0]
    expected = np.concatenate([(lab - [50, 0, 0]) / 50, np.zeros(3 + 1 + 36), np.eye(10)[8]])  # LBP: all 8 neighbours >= centre
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(grid[:, i, j].numpy(), expected, atol=1e-4)


def test_descriptor_separates_textures_of_the_same_colours():
    yy, xx = np.mgrid[:56, :56] % 14  # the same 14x14 tile in each of the 4x4 patches
    red, blue = np.array([200, 60, 40], np.uint8), np.array([40, 120, 200], np.uint8)

    def stripes(selected):
        return np.where(selected[..., None], red, blue).astype(np.uint8)

    backbone = ColorTextureBackbone()
    vertical = backbone.features(stripes(xx % 4 < 2))
    mirrored = backbone.features(stripes((13 - xx) % 4 < 2))  # the same texture, mirrored
    horizontal = backbone.features(stripes(yy % 4 < 2))
    checker = backbone.features(stripes((xx // 2 + yy // 2) % 2 == 0))
    torch.testing.assert_close(vertical[:6], horizontal[:6])  # same Lab mean and std in every patch
    torch.testing.assert_close(vertical[:6], mirrored[:6])
    same_texture = (vertical - mirrored).norm(dim=0)
    assert ((vertical - horizontal).norm(dim=0) > 4 * same_texture).all()
    assert ((vertical - checker).norm(dim=0) > 4 * same_texture).all()
    assert (vertical - horizontal).norm(dim=0).min() > 0.5


def test_deterministic_and_accepts_gray():
    image = _random_image(30, 40)
    backbone = ColorTextureBackbone()
    assert torch.equal(backbone.features(image), backbone.features(image.copy()))
    gray = image[:, :, 0]
    assert torch.equal(backbone.features(gray), backbone.features(np.repeat(gray[:, :, None], 3, axis=2)))


def test_registry():
    assert BACKBONES["colortexture"] is ColorTextureBackbone
    assert set(BACKBONES) == {"colortexture", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14",
                              "dino_vitb16", "imagenet_vitl", "clip_vitb32", "maskclip_vitl14", "clip_vitb16", "maskclip_vitb16",
                              "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg", "dinov2_vitg14_reg",
                              "dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus",
                              "dinov3_vit7b16", "siglip2_vitb16", "siglip2_vitb16_256", "siglip2_vitb16_384",
                              "siglip2_vitb16_512", "siglip2_vitl16_256", "siglip2_vitl16_384", "siglip2_vitl16_512",
                              "siglip2_so400m14", "siglip2_so400m14_378", "siglip2_so400m16_256", "siglip2_so400m16_384",
                              "siglip2_so400m16_512", "siglip2_gopt16_256", "siglip2_gopt16_384", "radio_v3_vitb16",
                              "radio_v3_vitl16", "radio_v3_vith16", "radio_v3_vitg16", "radio_v4_so400m16",
                              "radio_v4_vith16", "dinotxt_vitl16", "radio_v25_vitb16", "radio_v25_vitl16",
                              "radio_v25_vith16"}
    backbone = build_backbone("colortexture", patch_size=16, orientation_bins=6)
    assert (backbone.patch_size, backbone.embed_dim) == (16, 7 + 4 * 6 + 10)
    assert backbone.features(_random_image(33, 17)).shape == (backbone.embed_dim, 3, 2)
    with pytest.raises(ValueError, match="valid names.*colortexture"):
        build_backbone("dinov4_vitl16")
    with pytest.raises(ValueError, match="patch_size"):
        ColorTextureBackbone(patch_size=1)
