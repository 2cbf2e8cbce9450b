"""ViT backbones: tiny random checkpoints in each official format, loaded through the real path."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from bench.backbones.vit import (TINY, VIT_BACKBONES, VIT_FAMILY, create_vit, interpolate_patch_pos_embed,
                                 load_vit_backbone, save_random_checkpoint)

NAMES = list(VIT_BACKBONES)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """name -> tiny random checkpoint in the official format (imagenet: timm's model.safetensors)."""
    root = tmp_path_factory.mktemp("vit")
    files = {name: VIT_BACKBONES[name].file for name in NAMES}
    files["imagenet_vitl"] = "model.safetensors"
    return {name: save_random_checkpoint(name, root / name / file) for name, file in files.items()}


def test_rows_agree_with_timm():
    for name, row in VIT_BACKBONES.items():
        cfg = get_pretrained_cfg(row.arch)
        assert (tuple(cfg.mean), tuple(cfg.std)) == (row.mean, row.std), name
        assert cfg.input_size[-1] == row.img_size, name
        with torch.device("meta"):
            model = create_vit(name)
        assert (model.patch_embed.patch_size[0], model.embed_dim, len(model.blocks)) == \
            (row.patch_size, row.embed_dim, row.depth), name


@pytest.mark.parametrize("name", NAMES)
def test_features_shape_layers_determinism(name, checkpoints):
    backbone = load_vit_backbone(name, checkpoints[name])
    p, d = VIT_BACKBONES[name].patch_size, TINY["embed_dim"]
    assert (backbone.patch_size, backbone.embed_dim, backbone.name) == (p, d, f"tiny {name}")
    for h, w in [(37, 53), (50, 41)]:
        grid = backbone.features(_image(h, w))
        assert grid.shape == (d, -(-h // p), -(-w // p)) and grid.dtype == torch.float32
        assert torch.isfinite(grid).all()
        assert torch.equal(grid, backbone.features(_image(h, w)))
    image = _image(37, 53)
    both = load_vit_backbone(name, checkpoints[name], layers=[0, 1])
    first = load_vit_backbone(name, checkpoints[name], layers=[0])
    stacked = both.features(image)
    assert both.embed_dim == 2 * d and stacked.shape[0] == 2 * d
    assert torch.equal(stacked[:d], first.features(image))
    assert torch.equal(stacked[d:], backbone.features(image))  # block 1 is the last
    assert not torch.allclose(stacked[:d], stacked[d:])
    reversed_ = load_vit_backbone(name, checkpoints[name], layers=[-1, 0]).features(image)
    assert torch.equal(reversed_, torch.cat([stacked[d:], stacked[:d]]))


@pytest.mark.parametrize("name", ["dinov2_vitl14", "dino_vitb16", "imagenet_vitl"])
def test_last_layer_is_normed_final_tokens(name, checkpoints):
    """Default features = patch tokens of timm's own forward_features (last block + final norm)."""
    backbone = load_vit_backbone(name, checkpoints[name])
    image = _image(50, 41)
    x = backbone.preprocess(image)[None]
    with torch.no_grad():
        tokens = backbone.model.forward_features(x)[0, 1:]  # drop cls
    h, w = x.shape[2] // backbone.patch_size, x.shape[3] // backbone.patch_size
    assert torch.allclose(backbone.features(image), tokens.T.reshape(-1, h, w), atol=1e-5)


@pytest.mark.parametrize("name", ["dinov2_vitb14", "imagenet_vitl"])
def test_add_pos_embed_adds_interpolated_grid(name, checkpoints):
    plain = load_vit_backbone(name, checkpoints[name], layers=[0, 1])
    with_pos = load_vit_backbone(name, checkpoints[name], layers=[0, 1], add_pos_embed=True)
    image = _image(37, 53)
    base, shifted = plain.features(image), with_pos.features(image)
    d, h, w = TINY["embed_dim"], *base.shape[1:]
    pos = plain.pos_embed_grid(h, w)
    assert pos.shape == (d, h, w)
    assert torch.equal(shifted, base + torch.cat([pos, pos]))
    expected = interpolate_patch_pos_embed(plain.model.pos_embed[:, 1:], (h, w), VIT_BACKBONES[name].pos_interp)
    assert torch.equal(pos, expected[0].T.reshape(d, h, w))


@pytest.mark.parametrize("name", ["dinov2_vitl14", "dinov2_vitg14"])
def test_official_and_timm_format_agree(name, checkpoints, tmp_path):
    official = torch.load(checkpoints[name], weights_only=True)
    assert official["mask_token"].shape == (1, TINY["embed_dim"])
    assert official["pos_embed"].shape == (1, 1 + 37 * 37, TINY["embed_dim"])
    assert ("blocks.0.mlp.w12.weight" in official) == (name == "dinov2_vitg14")
    backbone = load_vit_backbone(name, checkpoints[name])
    timm_file = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    state["head.weight"] = torch.zeros(5, TINY["embed_dim"])  # a classifier is ignored for features
    save_file(state, str(timm_file))
    image = _image(50, 41)
    assert torch.equal(load_vit_backbone(name, timm_file).features(image), backbone.features(image))


def test_wrong_architecture_names_both(checkpoints):
    with pytest.raises(ValueError, match="dino_vitb16") as error:
        load_vit_backbone("dinov2_vitl14", checkpoints["dino_vitb16"])
    message = str(error.value)
    assert "tiny dinov2_vitl14" in message and str(checkpoints["dino_vitb16"]) in message
    assert "patch 16" in message and "dinov2_vitl14_pretrain.pth" in message
    with pytest.raises(ValueError, match="tiny dinov2_vitg14"):  # SwiGLU vs plain MLP
        load_vit_backbone("dinov2_vits14", checkpoints["dinov2_vitg14"])
    with pytest.raises(ValueError, match="embed dim 384 with 12 blocks"):  # tiny file, full model forced
        load_vit_backbone("dinov2_vits14", checkpoints["dinov2_vits14"], tiny=False)


def test_missing_file_names_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dinov2_vitg14_pretrain.pth") as error:
        load_vit_backbone("dinov2_vitg14", tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(error.value) and "dl.fbaipublicfiles.com" in str(error.value)
    with pytest.raises(ValueError, match="valid names"):
        load_vit_backbone("dinov3_vitl16", tmp_path / "nope.pth")


def test_layers_out_of_range(checkpoints):
    with pytest.raises(ValueError, match="2 blocks"):
        load_vit_backbone("dinov2_vitl14", checkpoints["dinov2_vitl14"], layers=[23])


def test_padding_before_or_after_normalize(checkpoints):
    before = load_vit_backbone("dinov2_vits14", checkpoints["dinov2_vits14"])
    after = load_vit_backbone("dinov2_vits14", checkpoints["dinov2_vits14"], pad_after_normalize=True)
    x, y = before.preprocess(_image(37, 53)), after.preprocess(_image(37, 53))
    assert x.shape == y.shape == (3, 42, 56)  # pads 5 -> (2, 3) and 3 -> (1, 2)
    border = -torch.tensor(VIT_BACKBONES["dinov2_vits14"].mean) / torch.tensor(VIT_BACKBONES["dinov2_vits14"].std)
    assert torch.allclose(x[:, 0, 0], border) and torch.allclose(x[:, -1, -1], border)
    assert (y[:, :2] == 0).all() and (y[:, :, :1] == 0).all() and (y[:, -3:] == 0).all()
    assert torch.equal(x[:, 2:39, 1:54], y[:, 2:39, 1:54])
    exact = _image(28, 42)  # already a multiple of 14: no padding, same features
    assert torch.equal(before.features(exact), after.features(exact))


def _cubic_1d(values: np.ndarray, n: int) -> np.ndarray:
    """Reference: PyTorch's bicubic (Keys a = -0.75, edge-clamped taps) along one axis, sampled
    where DINO's scale factor (n + 0.1) / M puts each output: src = (dst + 0.5) * M / (n + 0.1) - 0.5."""
    a, m = -0.75, len(values)

    def kernel(x):
        x = abs(x)
        return ((a + 2) * x - (a + 3)) * x * x + 1 if x <= 1 else ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    out = []
    for dst in range(n):
        src = (dst + 0.5) * m / (n + 0.1) - 0.5
        base, t = int(np.floor(src)), src - np.floor(src)
        out.append(sum(values[min(max(base + k, 0), m - 1)] * kernel(t - k) for k in (-1, 0, 1, 2)))
    return np.array(out)


def test_dino_pos_interpolation():
    side, (h, w) = 37, (27, 50)  # VOC-like shrink along rows, growth along columns
    rng = np.random.default_rng(0)
    along_rows, along_cols = rng.normal(size=side), rng.normal(size=side)
    table = np.stack([np.repeat(along_rows[:, None], side, 1), np.repeat(along_cols[None, :], side, 0)], -1)
    table = torch.tensor(table, dtype=torch.float32).reshape(1, side * side, 2)
    out = interpolate_patch_pos_embed(table, (h, w), "dino").reshape(h, w, 2)
    assert np.allclose(out[:, 7, 0].numpy(), _cubic_1d(along_rows, h), atol=1e-5)
    assert np.allclose(out[4, :, 1].numpy(), _cubic_1d(along_cols, w), atol=1e-5)
    assert torch.equal(interpolate_patch_pos_embed(table, (side, side), "dino"), table)  # native grid: as stored
    timm_out = interpolate_patch_pos_embed(table, (h, w), "timm").reshape(h, w, 2)
    assert not torch.allclose(out, timm_out, atol=1e-2)  # timm: exact size, antialiased


def test_registry_factory_and_random_file_is_reproducible(checkpoints, tmp_path):
    backbone = VIT_FAMILY["dino_vitb16"](checkpoint=checkpoints["dino_vitb16"], layers=[0])
    assert backbone.embed_dim == TINY["embed_dim"] and backbone.layers == [0]
    again = save_random_checkpoint("dino_vitb16", tmp_path / "again.pth")
    first, second = torch.load(checkpoints["dino_vitb16"], weights_only=True), torch.load(again, weights_only=True)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert isinstance(backbone.model, timm.models.VisionTransformer)
    assert not any(p.requires_grad for p in backbone.model.parameters())
