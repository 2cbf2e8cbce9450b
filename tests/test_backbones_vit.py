"""ViT backbones: tiny random checkpoints in each official format, loaded through the real path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from bench.backbones.vit import (DINOV2_REG_FAMILY, TINY, VIT_BACKBONES, VIT_FAMILY, create_vit,
                                 interpolate_patch_pos_embed, load_vit_backbone, save_random_checkpoint)

NAMES = list(VIT_BACKBONES)
REG_NAMES = [name for name in NAMES if name.endswith("_reg")]


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


@pytest.mark.parametrize("name", ["dinov2_vitb14", "imagenet_vitl", "dinov2_vitb14_reg"])
def test_add_pos_embed_adds_interpolated_grid(name, checkpoints):
    plain = load_vit_backbone(name, checkpoints[name], layers=[0, 1])
    with_pos = load_vit_backbone(name, checkpoints[name], layers=[0, 1], add_pos_embed=True)
    image = _image(37, 53)
    base, shifted = plain.features(image), with_pos.features(image)
    d, h, w = TINY["embed_dim"], *base.shape[1:]
    pos = plain.pos_embed_grid(h, w)
    assert pos.shape == (d, h, w)
    assert torch.equal(shifted, base + torch.cat([pos, pos]))
    table = plain.model.pos_embed if name.endswith("_reg") else plain.model.pos_embed[:, 1:]  # reg: patches only
    if name.startswith("dinov2"):
        assert table.shape[1] == 37 * 37
    expected = interpolate_patch_pos_embed(table, (h, w), VIT_BACKBONES[name].pos_interp)
    assert torch.equal(pos, expected[0].T.reshape(d, h, w))


@pytest.mark.parametrize("name", ["dinov2_vitl14", "dinov2_vitg14", "dinov2_vits14_reg", "dinov2_vitg14_reg"])
def test_official_and_timm_format_agree(name, checkpoints, tmp_path):
    official = torch.load(checkpoints[name], weights_only=True)
    assert official["mask_token"].shape == (1, TINY["embed_dim"])
    assert official["pos_embed"].shape == (1, 1 + 37 * 37, TINY["embed_dim"])
    assert ("blocks.0.mlp.w12.weight" in official) == name.startswith("dinov2_vitg14")
    assert ("register_tokens" in official) == name.endswith("_reg")
    if name.endswith("_reg"):
        assert official["register_tokens"].shape == (1, 4, TINY["embed_dim"])
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


def test_registers_are_their_own_architecture(checkpoints):
    assert set(DINOV2_REG_FAMILY) == set(REG_NAMES) == {f"dinov2_vit{s}14_reg" for s in "sblg"}
    assert not set(REG_NAMES) & set(VIT_FAMILY) and set(VIT_FAMILY) | set(REG_NAMES) == set(VIT_BACKBONES)
    backbone = DINOV2_REG_FAMILY["dinov2_vitb14_reg"](checkpoint=checkpoints["dinov2_vitb14_reg"])
    assert backbone.model.num_prefix_tokens == 5 and backbone.pos_interp == "timm"
    with pytest.raises(ValueError, match="needs .*register tokens.*this is tiny dinov2_vits14 ") as error:
        load_vit_backbone("dinov2_vitl14_reg", checkpoints["dinov2_vitl14"])
    assert "dinov2_vitl14_reg4_pretrain.pth" in str(error.value)
    with pytest.raises(ValueError, match="this is tiny dinov2_vitg14_reg"):
        load_vit_backbone("dinov2_vitg14", checkpoints["dinov2_vitg14_reg"])


def test_missing_file_names_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dinov2_vitg14_pretrain.pth") as error:
        load_vit_backbone("dinov2_vitg14", tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(error.value) and "dl.fbaipublicfiles.com" in str(error.value)
    with pytest.raises(ValueError, match="valid names"):
        load_vit_backbone("dinov3_vitl16", tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError,
                       match="dinov2_vitb14_reg4_pretrain.pth, from https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"):
        load_vit_backbone("dinov2_vitb14_reg", tmp_path / "nope.pth")


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


# ----------------------------------------------------------------------------------------------
# DINOv2 with registers against the official forward (facebookresearch/dinov2, hub ``dinov2_*14_reg``)

def official_dinov2_reg_forward(sd: dict, x: torch.Tensor, num_heads: int, variant: str = "") -> torch.Tensor:
    """The official DinoVisionTransformer with 4 registers in eval, from its own state dict: (1, 3, Hp, Wp)
    -> (d, h, w) patch tokens of the last block after the final norm. Position table: the hub's reg models
    set ``interpolate_antialias=True, interpolate_offset=0.0``: bicubic to size (h, w), antialiased; the
    class token gets row 0; registers are inserted after the class token with no position.
    ``variant`` breaks one detail on purpose: "dino_interp" (scale factor (n + 0.1)/M, no antialias, as the
    models without registers), "registers_first" (drop the first h*w tokens), "no_cls_pos"."""
    sd = {k: v.float() for k, v in sd.items()}
    dim, p = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)  # (1, d, h, w)
    _, _, h, w = t.shape
    side = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
    table = sd["pos_embed"][:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if variant == "dino_interp":
        table = F.interpolate(table, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
    else:
        table = F.interpolate(table, size=(h, w), mode="bicubic", antialias=True)
    patches = t.flatten(2).transpose(1, 2) + table.flatten(2).transpose(1, 2)
    cls = sd["cls_token"] + (0 if variant == "no_cls_pos" else sd["pos_embed"][:, :1])
    t = torch.cat([cls, sd["register_tokens"], patches], dim=1)  # (1, 1 + 4 + hw, d)
    head, n = dim // num_heads, t.shape[1]

    def norm(u, key):
        return F.layer_norm(u, (dim,), sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6)

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        qkv = F.linear(norm(t, b + "norm1"), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(1, n, 3, num_heads, head).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head), dim=-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(1, n, dim), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        t = t + sd[b + "ls1.gamma"] * attn
        y = norm(t, b + "norm2")
        if b + "mlp.w12.weight" in sd:  # SwiGLUFFNFused: w3(silu(x1) * x2), (x1, x2) = w12(x).chunk(2)
            x1, x2 = F.linear(y, sd[b + "mlp.w12.weight"], sd[b + "mlp.w12.bias"]).chunk(2, dim=-1)
            mlp = F.linear(F.silu(x1) * x2, sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"])
        else:
            mlp = F.linear(F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                           sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        t = t + sd[b + "ls2.gamma"] * mlp
    t = norm(t, "norm")
    tokens = t[0, :h * w] if variant == "registers_first" else t[0, 5:]
    return tokens.T.reshape(dim, h, w)


def _reference_input(image: np.ndarray, p: int) -> torch.Tensor:
    """ToTensor -> zero centre-padding to a multiple of p (pad-before = pad // 2) -> Normalize, written out."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    ph, pw = -x.shape[1] % p, -x.shape[2] % p
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    mean, std = torch.tensor(VIT_BACKBONES["dinov2_vits14_reg"].mean), torch.tensor(VIT_BACKBONES["dinov2_vits14_reg"].std)
    return ((x - mean.view(3, 1, 1)) / std.view(3, 1, 1))[None]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", REG_NAMES)
def test_reg_official_file_matches_official_forward(name, checkpoints):
    """Ours (official ``*_reg4_pretrain.pth`` layout through the real loader) vs the official forward: < 1e-4."""
    backbone = load_vit_backbone(name, checkpoints[name])
    sd = torch.load(checkpoints[name], weights_only=True)
    errors = []
    for h, w in [(37, 53), (50, 41), (28, 42), (600, 300)]:  # the last grows the 37 x 37 table on one side
        image = _image(h, w)
        grid = backbone.features(image)
        assert grid.shape == (TINY["embed_dim"], -(-h // 14), -(-w // 14))
        errors.append(_rel(grid, official_dinov2_reg_forward(sd, _reference_input(image, 14), TINY["num_heads"])))
    print(f"{name}: max relative error vs official forward {max(errors):.2e}")
    assert max(errors) < 1e-4, errors
    images = [_image(37, 53, 1), _image(50, 41, 2), _image(40, 55, 3)]  # 1st and 3rd pad to one size
    for image, grid in zip(images, backbone.features_batch(images)):
        assert torch.allclose(grid, backbone.features(image), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["dino_interp", "registers_first", "no_cls_pos"])
def test_reg_reference_notices_a_wrong_implementation(variant, checkpoints):
    backbone = load_vit_backbone("dinov2_vits14_reg", checkpoints["dinov2_vits14_reg"])
    sd = torch.load(checkpoints["dinov2_vits14_reg"], weights_only=True)
    image = _image(37, 53)
    wrong = official_dinov2_reg_forward(sd, _reference_input(image, 14), TINY["num_heads"], variant=variant)
    error = _rel(backbone.features(image), wrong)
    print(f"{variant}: relative error {error:.2e}")
    assert error > 2e-4
