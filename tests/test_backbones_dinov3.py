"""DINOv3 backbones: tiny random checkpoints in the official and timm layouts, loaded through the real path and
checked against an independent re-implementation of the official forward (facebookresearch/dinov3)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from bench.backbones.dinov3 import (DINOV3_BACKBONES, DINOV3_FAMILY, TINY, create_dinov3, load_dinov3_backbone,
                                    save_random_checkpoint, to_official_keys)

NAMES = list(DINOV3_BACKBONES)
SIZES = [(37, 53), (50, 41), (32, 48), (5, 70)]  # non-square, exact multiple of 16, a single row


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _input(image: np.ndarray, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, Hp, Wp): [0, 1], zero centre-padded to a multiple of 16 (pad-before = pad // 2),
    then normalised — written out here, not taken from the backbone."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    ph, pw = -x.shape[1] % 16, -x.shape[2] % 16
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None]


def official_forward(sd: dict, x: torch.Tensor, num_heads: int, variant: str = "") -> torch.Tensor:
    """The official DinoVisionTransformer in eval, from its own state dict: (1, 3, Hp, Wp) -> (d, h, w) patch
    tokens of the last block after the final norm (``get_intermediate_layers(norm=True)``).
    ``variant`` breaks one detail on purpose (the test must notice): "no_bias_mask", "rope_max"
    (RoPE coordinates normalised by max(h, w)), "timm_periods" (float32 periods, not the file's),
    "keep_registers_last" (drop the first h*w tokens instead of the 5 prefix tokens)."""
    sd = {k: v.float() for k, v in sd.items()}
    dim = sd["cls_token"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)  # (1, d, h, w)
    _, _, h, w = t.shape
    t = torch.cat([sd["cls_token"], sd["storage_tokens"], t.flatten(2).transpose(1, 2)], dim=1)  # (1, 5 + hw, d)
    head = dim // num_heads
    periods = sd["rope_embed.periods"]
    if variant == "timm_periods":
        periods = 100.0 ** (2 * torch.arange(head // 4, dtype=torch.float32) / (head // 2))
    if variant == "rope_max":
        ch, cw = torch.arange(0.5, h) / max(h, w), torch.arange(0.5, w) / max(h, w)
    else:
        ch, cw = torch.arange(0.5, h) / h, torch.arange(0.5, w) / w
    coords = 2 * torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).flatten(0, 1) - 1  # (hw, 2)
    angles = (2 * math.pi * coords[:, :, None] / periods).flatten(1).tile(2)  # (hw, head)
    sin, cos = angles.sin(), angles.cos()

    def rope(u):  # (1, heads, 5 + hw, head): rotate the patch tokens only
        prefix, patches = u[:, :, :-h * w], u[:, :, -h * w:]
        first, second = patches.chunk(2, dim=-1)
        return torch.cat([prefix, patches * cos + torch.cat([-second, first], dim=-1) * sin], dim=2)

    def norm(u, key):
        return F.layer_norm(u, (dim,), sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    n = t.shape[1]
    for i in range(depth):
        b = f"blocks.{i}."
        bias = sd.get(b + "attn.qkv.bias")
        if bias is not None and variant != "no_bias_mask":
            bias = bias * sd[b + "attn.qkv.bias_mask"]
        qkv = F.linear(norm(t, b + "norm1"), sd[b + "attn.qkv.weight"], bias)
        q, k, v = qkv.reshape(1, n, 3, num_heads, head).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(head), dim=-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(1, n, dim), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        t = t + sd[b + "ls1.gamma"] * attn
        y = norm(t, b + "norm2")
        if b + "mlp.w1.weight" in sd:  # SwiGLUFFN: w3(silu(w1 x) * w2 x)
            hidden = F.silu(F.linear(y, sd[b + "mlp.w1.weight"], sd[b + "mlp.w1.bias"])) \
                * F.linear(y, sd[b + "mlp.w2.weight"], sd[b + "mlp.w2.bias"])
            mlp = F.linear(hidden, sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"])
        else:
            mlp = F.linear(F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                           sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        t = t + sd[b + "ls2.gamma"] * mlp
    t = norm(t, "norm")
    patches = t[0, :h * w] if variant == "keep_registers_last" else t[0, 1 + 4:]
    return patches.T.reshape(dim, h, w)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """name -> {"official": tiny random official .pth, "timm": tiny random timm model.safetensors}."""
    root = tmp_path_factory.mktemp("dinov3")
    return {name: {"official": save_random_checkpoint(name, root / name / row.file),
                   "timm": save_random_checkpoint(name, root / name / "model.safetensors")}
            for name, row in DINOV3_BACKBONES.items()}


def test_rows_agree_with_timm():
    from timm.models import get_pretrained_cfg

    for name, row in DINOV3_BACKBONES.items():
        for arch in filter(None, (row.arch, row.qkvb_arch)):
            cfg = get_pretrained_cfg(arch)
            assert (tuple(cfg.mean), tuple(cfg.std)) == (row.mean, row.std), (name, arch)
        with torch.device("meta"):
            model = create_dinov3(name)
        assert (model.patch_embed.patch_size[0], model.embed_dim, len(model.blocks), model.num_prefix_tokens) == \
            (16, row.embed_dim, row.depth, 5), name
        assert model.pos_embed is None and model.dynamic_img_size, name  # RoPE, any grid


def test_official_layout_of_the_test_files(checkpoints):
    """The random official files have the keys of facebookresearch/dinov3's DinoVisionTransformer."""
    d = TINY["embed_dim"]
    for name in NAMES:
        sd = torch.load(checkpoints[name]["official"], weights_only=True)
        assert sd["storage_tokens"].shape == (1, 4, d) and sd["cls_token"].shape == (1, 1, d)
        assert sd["mask_token"].shape == (1, d) and "pos_embed" not in sd
        assert sd["rope_embed.periods"].shape == (d // TINY["num_heads"] // 4,)
        assert "blocks.0.ls1.gamma" in sd and "blocks.1.ls2.gamma" in sd
        swiglu = name in ("dinov3_vits16plus", "dinov3_vith16plus", "dinov3_vit7b16")
        assert ("blocks.0.mlp.w1.weight" in sd, "blocks.0.mlp.fc1.weight" in sd) == (swiglu, not swiglu), name
        has_bias = name != "dinov3_vit7b16"
        assert ("blocks.0.attn.qkv.bias" in sd, "blocks.0.attn.qkv.bias_mask" in sd) == (has_bias, has_bias), name
        assert ("local_cls_norm.weight" in sd) == (name == "dinov3_vit7b16")


@pytest.mark.parametrize("name", NAMES)
def test_official_file_matches_official_forward(name, checkpoints):
    """Ours (loaded from the official layout) vs the official forward written out above: max rel. error < 1e-4."""
    backbone = load_dinov3_backbone(name, checkpoints[name]["official"])
    sd = torch.load(checkpoints[name]["official"], weights_only=True)
    assert backbone.name == f"tiny {name}" and backbone.patch_size == 16 and backbone.embed_dim == TINY["embed_dim"]
    errors = []
    for h, w in SIZES:
        image = _image(h, w)
        grid = backbone.features(image)
        assert grid.shape == (TINY["embed_dim"], -(-h // 16), -(-w // 16)) and grid.dtype == torch.float32
        reference = official_forward(sd, _input(image, backbone.mean.flatten().tolist(),
                                                backbone.std.flatten().tolist()), TINY["num_heads"])
        errors.append(_rel(grid, reference))
    print(f"{name}: max relative error vs official forward {max(errors):.2e}")
    assert max(errors) < 1e-4, errors
    assert torch.equal(backbone.model.rope.periods, sd["rope_embed.periods"].float())


@pytest.mark.parametrize("variant", ["no_bias_mask", "rope_max", "timm_periods", "keep_registers_last"])
def test_reference_notices_a_wrong_implementation(variant, checkpoints):
    """Each deliberate deviation from the official forward fails the 1e-4 tolerance at least twice over (the
    float32 instead of the file's bfloat16 periods is the subtlest: ~5e-4; the others ~5e-2 and more)."""
    name = "dinov3_vits16"  # qkv bias with mask, plain MLP
    backbone = load_dinov3_backbone(name, checkpoints[name]["official"])
    sd = torch.load(checkpoints[name]["official"], weights_only=True)
    image = _image(37, 53)
    wrong = official_forward(sd, _input(image, backbone.mean.flatten().tolist(), backbone.std.flatten().tolist()),
                             TINY["num_heads"], variant=variant)
    error = _rel(backbone.features(image), wrong)
    print(f"{variant}: relative error {error:.2e}")
    assert error > 2e-4


@pytest.mark.parametrize("name", NAMES)
def test_timm_file_matches_timm_forward(name, checkpoints):
    """timm's safetensors layout vs timm's own model loading the same file and its forward_features."""
    import timm
    from safetensors.torch import load_file

    row = DINOV3_BACKBONES[name]
    backbone = load_dinov3_backbone(name, checkpoints[name]["timm"])
    model = timm.create_model(row.arch, pretrained=False, num_classes=0, dynamic_img_size=True, **TINY).eval()
    model.load_state_dict(load_file(str(checkpoints[name]["timm"])))
    errors = []
    for h, w in SIZES[:2]:
        image = _image(h, w, seed=1)
        x = _input(image, row.mean, row.std)
        with torch.no_grad():
            tokens = model.forward_features(x)[0, 5:]  # drop class + 4 registers
        reference = tokens.T.reshape(-1, x.shape[2] // 16, x.shape[3] // 16)
        errors.append(_rel(backbone.features(image), reference))
    print(f"{name}: max relative error vs timm forward_features {max(errors):.2e}")
    assert max(errors) < 1e-4, errors


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vith16plus"])
def test_official_and_timm_layouts_agree(name, checkpoints, tmp_path):
    """The official file and timm's safetensors of the same (q/v-biased) weights give the same grid, up to the
    RoPE periods: the official file's are bfloat16-rounded, timm recomputes float32 ones."""
    backbone = load_dinov3_backbone(name, checkpoints[name]["official"])
    timm_file = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    state["head.weight"] = torch.zeros(5, TINY["embed_dim"])  # a classifier is ignored for features
    save_file(state, str(timm_file))
    from_timm = load_dinov3_backbone(name, timm_file)
    assert "blocks.0.attn.q_bias" in dict(from_timm.model.named_parameters())
    image = _image(50, 41)
    assert not torch.equal(from_timm.model.rope.periods, backbone.model.rope.periods)
    from_timm.model.rope.periods.copy_(backbone.model.rope.periods)
    assert torch.equal(from_timm.features(image), backbone.features(image))


@pytest.mark.parametrize("name", ["dinov3_vitb16", "dinov3_vit7b16"])
def test_features_batch_equals_features_and_layers(name, checkpoints):
    backbone = load_dinov3_backbone(name, checkpoints[name]["official"])
    images = [_image(37, 53, 0), _image(50, 41, 1), _image(40, 60, 2), _image(5, 70, 3)]  # 1st and 3rd pad equally
    batch = backbone.features_batch(images)
    for image, grid in zip(images, batch):
        assert torch.allclose(grid, backbone.features(image), atol=1e-5, rtol=0)
    both = load_dinov3_backbone(name, checkpoints[name]["official"], layers=[0, 1])
    stacked = both.features(images[0])
    d = TINY["embed_dim"]
    assert both.embed_dim == 2 * d and torch.equal(stacked[d:], backbone.features(images[0]))
    assert not torch.allclose(stacked[:d], stacked[d:])


def test_wrong_architecture_names_what_the_file_is(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="this is tiny dinov3_vits16plus") as error:
        load_dinov3_backbone("dinov3_vits16", checkpoints["dinov3_vits16plus"]["official"])
    message = str(error.value)
    assert str(checkpoints["dinov3_vits16plus"]["official"]) in message and "SwiGLU MLP" in message
    assert "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in message
    with pytest.raises(ValueError, match="this is tiny dinov3_vit7b16"):
        load_dinov3_backbone("dinov3_vitl16", checkpoints["dinov3_vit7b16"]["timm"])
    with pytest.raises(ValueError, match="embed dim 1024 with 24 blocks"):  # tiny file, full model forced
        load_dinov3_backbone("dinov3_vitl16", checkpoints["dinov3_vitl16"]["official"], tiny=False)
    from bench.backbones.vit import VIT_BACKBONES, save_random_checkpoint as save_vit

    dinov2 = save_vit("dinov2_vitb14_reg", tmp_path / VIT_BACKBONES["dinov2_vitb14_reg"].file)
    with pytest.raises(ValueError, match="official DINOv2 keys.*this is tiny dinov2_vits14_reg"):
        load_dinov3_backbone("dinov3_vitb16", dinov2)
    dino = save_vit("dino_vitb16", tmp_path / "dino.pth")  # patch 16 too, but a position table
    with pytest.raises(ValueError, match="a position table.*tiny dino_vitb16"):
        load_dinov3_backbone("dinov3_vitb16", dino)
    official = torch.load(checkpoints["dinov3_vitb16"]["official"], weights_only=True)
    official["patch_embed.proj.weight"] = official["patch_embed.proj.weight"][..., :14, :14].clone()
    torch.save(official, tmp_path / "patch14.pth")
    with pytest.raises(ValueError, match=r"kernel \(14, 14\)"):  # refused, not resampled by timm's converter
        load_dinov3_backbone("dinov3_vitb16", tmp_path / "patch14.pth")
    from bench.backbones.vit import load_vit_backbone

    with pytest.raises(ValueError, match="does not fit backbone tiny dinov2_vitb14"):
        load_vit_backbone("dinov2_vitb14", checkpoints["dinov3_vitb16"]["official"])


def test_missing_file_names_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth") as error:
        load_dinov3_backbone("dinov3_vith16plus", tmp_path / "nope.pth")
    message = str(error.value)
    assert str(tmp_path / "nope.pth") in message and "dl.fbaipublicfiles.com/dinov3/dinov3_vith16plus/" in message
    assert "ai.meta.com" in message and "huggingface.co/timm/vit_huge_plus_patch16_dinov3.lvd1689m" in message
    assert "huggingface.co/facebook/dinov3-vith16plus-pretrain-lvd1689m" in message
    with pytest.raises(ValueError, match="valid names"):
        load_dinov3_backbone("dinov3_vitg14", tmp_path / "nope.pth")


def test_no_position_table_to_add(checkpoints):
    with pytest.raises(ValueError, match="rotary"):
        load_dinov3_backbone("dinov3_vits16", checkpoints["dinov3_vits16"]["official"], add_pos_embed=True)


def test_registry_factory_reproducible_file_and_lazy_timm(checkpoints, tmp_path):
    backbone = DINOV3_FAMILY["dinov3_vitl16"](checkpoint=checkpoints["dinov3_vitl16"]["official"], layers=[0])
    assert backbone.layers == [0] and not any(p.requires_grad for p in backbone.model.parameters())
    again = save_random_checkpoint("dinov3_vitl16", tmp_path / "again.pth")
    first = torch.load(checkpoints["dinov3_vitl16"]["official"], weights_only=True)
    second = torch.load(again, weights_only=True)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    code = "import sys, bench.backbones.dinov3, bench.backbones.vit; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# transformers' layout (facebook/dinov3-*): tiny random DINOv3ViTModel saved by save_pretrained, checked against
# transformers' own forward and RoPE, and (through the official layout) against the official forward above.

def _hf_config(name: str):
    """The tiny DINOv3ViTConfig of ``name``, as convert_dinov3_vit_to_hf.py configures the real ones: q/v
    biases except on the 7B, never a key bias (the default key_bias=False), SwiGLU with silu on S+, H+, 7B."""
    from transformers import DINOv3ViTConfig

    with torch.device("meta"):
        mlp = create_dinov3(name, tiny=True).blocks[0].mlp
    gated, bias = hasattr(mlp, "fc1_g"), DINOV3_BACKBONES[name].qkvb_arch is not None
    return DINOv3ViTConfig(patch_size=16, hidden_size=TINY["embed_dim"], num_hidden_layers=TINY["depth"],
                           num_attention_heads=TINY["num_heads"], intermediate_size=mlp.fc2.in_features,
                           num_register_tokens=4, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
                           query_bias=bias, value_bias=bias)


def _random_hf_model(name: str, seed: int = 0):
    """A random transformers DINOv3ViTModel (eval), perturbed as ``random_dinov3`` perturbs timm's."""
    from transformers import DINOv3ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DINOv3ViTModel(_hf_config(name)).eval()
        with torch.no_grad():
            for key, value in model.state_dict().items():  # shares storage with the parameters
                if "layer_scale" in key:
                    value.copy_(0.1 + 0.4 * torch.rand_like(value))
                elif key.endswith(("q_proj.weight", "k_proj.weight")):
                    value.normal_(0, 2 / value.shape[1] ** 0.5)
                elif value.ndim >= 2 and "token" not in key:  # transformers' std 0.02: near-identity blocks
                    value.normal_(0, 1 / value[0].numel() ** 0.5)
                elif value.ndim == 1 or "token" in key:
                    value.add_(torch.randn_like(value) * 0.02)
    return model


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory) -> dict:
    """name -> directory holding model.safetensors + config.json of a tiny random DINOv3ViTModel."""
    root = tmp_path_factory.mktemp("dinov3_hf")
    for seed, name in enumerate(NAMES):
        _random_hf_model(name, seed).save_pretrained(root / name)
    return {name: root / name for name in NAMES}


def _hf_grid(model, x: torch.Tensor) -> torch.Tensor:
    """transformers' forward: last_hidden_state (after the final norm), class + 4 registers dropped -> (d, h, w)."""
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state[0, 1 + 4:]
    return tokens.T.reshape(-1, x.shape[2] // 16, x.shape[3] // 16)


@pytest.mark.parametrize("name", NAMES)
def test_transformers_file_matches_transformers_forward(name, hf_files):
    """Ours (loaded from transformers' model.safetensors) vs transformers' DINOv3ViTModel.from_pretrained of the
    same directory: max relative error < 1e-4, at a padded non-square size and an exact multiple of 16."""
    from transformers import DINOv3ViTModel

    with safe_open(str(hf_files[name] / "model.safetensors"), "pt") as f:  # the Hub files' names
        assert "layer.0.attention.q_proj.weight" in f.keys() and "embeddings.register_tokens" in f.keys()
    backbone = load_dinov3_backbone(name, hf_files[name] / "model.safetensors")
    assert backbone.name == f"tiny {name}"
    assert ("blocks.0.attn.q_bias" in backbone.model.state_dict()) == (name != "dinov3_vit7b16")
    model = DINOv3ViTModel.from_pretrained(hf_files[name]).eval()
    errors = []
    for h, w in [(37, 53), (32, 48)]:
        image = _image(h, w, seed=2)
        grid = backbone.features(image)
        reference = _hf_grid(model, _input(image, DINOV3_BACKBONES[name].mean, DINOV3_BACKBONES[name].std))
        assert grid.shape == reference.shape == (TINY["embed_dim"], -(-h // 16), -(-w // 16))
        errors.append(_rel(grid, reference))
    print(f"{name}: max relative error vs transformers forward {max(errors):.2e}")
    assert max(errors) < 1e-4, errors


def test_transformers_in_memory_names_read_too(hf_files, tmp_path):
    """save_original_format=False keeps transformers 5's in-memory ``model.layer.N`` names: the same grid."""
    from transformers import DINOv3ViTModel

    name = "dinov3_vits16plus"
    DINOv3ViTModel.from_pretrained(hf_files[name]).save_pretrained(tmp_path, save_original_format=False)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "model.layer.0.mlp.gate_proj.weight" in f.keys()
    image = _image(37, 53)
    assert torch.equal(load_dinov3_backbone(name, tmp_path / "model.safetensors").features(image),
                       load_dinov3_backbone(name, hf_files[name] / "model.safetensors").features(image))


def test_rope_matches_transformers_at_non_square_grids(hf_files, checkpoints):
    """RoPE sin/cos of ours (timm's rotary module, as loaded from a transformers file) vs transformers'
    DINOv3ViTRopePositionEmbedding at non-square grids: same "separate" per-axis normalisation, same (h, w)
    order, same rotate-half layout, same float32 periods. The official file's periods are bfloat16-rounded;
    with them put into transformers' inv_freq, transformers' RoPE equals ours loaded from the official file."""
    from transformers import DINOv3ViTModel

    ours = load_dinov3_backbone("dinov3_vits16", hf_files["dinov3_vits16"] / "model.safetensors").model.rope
    hf = DINOv3ViTModel.from_pretrained(hf_files["dinov3_vits16"]).eval().rope_embeddings

    def hf_sin_cos(h, w):
        cos, sin = hf(torch.zeros(1, 3, 16 * h, 16 * w))
        return sin, cos

    for h, w in [(3, 5), (5, 3), (4, 7), (1, 6)]:
        sin, cos = ours.get_embed([h, w]).chunk(2, dim=-1)  # (h*w, d_head) each
        ref_sin, ref_cos = hf_sin_cos(h, w)
        assert torch.allclose(sin, ref_sin, atol=2e-6, rtol=0) and torch.allclose(cos, ref_cos, atol=2e-6, rtol=0)
    sin, _ = ours.get_embed([3, 5]).chunk(2, dim=-1)
    assert not torch.allclose(sin, hf_sin_cos(5, 3)[0], atol=1e-2)  # the grid's orientation matters
    assert torch.allclose(1 / hf.inv_freq, ours.periods, rtol=1e-6, atol=0)

    official = load_dinov3_backbone("dinov3_vits16", checkpoints["dinov3_vits16"]["official"]).model.rope
    rounding = float(((official.periods - ours.periods) / ours.periods).abs().max())
    assert 1e-4 < rounding < 4e-3  # bfloat16 keeps 8 significant bits: at most 2^-9 relative
    sin_official, _ = official.get_embed([4, 7]).chunk(2, dim=-1)
    assert not torch.allclose(sin_official, hf_sin_cos(4, 7)[0], atol=1e-4)
    hf.inv_freq.copy_(1 / official.periods)
    ref_sin, ref_cos = hf_sin_cos(4, 7)
    assert torch.allclose(sin_official, ref_sin, atol=2e-6, rtol=0)


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vit7b16"])
def test_transformers_differs_from_official_by_the_periods_only(name, hf_files, tmp_path):
    """The same weights in the official layout (with bfloat16-rounded periods, as the released files) run by
    the official forward written out above: transformers' model differs by more than 1e-4 (its float32
    periods); with the official periods in its inv_freq it agrees within 1e-4. Ours from the transformers
    file equals ours from the official file once the periods are aligned."""
    from transformers import DINOv3ViTModel

    backbone = load_dinov3_backbone(name, hf_files[name] / "model.safetensors")
    sd = to_official_keys(backbone.model.state_dict(), TINY["num_heads"], seven_b=name == "dinov3_vit7b16")
    model = DINOv3ViTModel.from_pretrained(hf_files[name]).eval()
    image = _image(37, 53, seed=3)
    x = _input(image, DINOV3_BACKBONES[name].mean, DINOV3_BACKBONES[name].std)
    official = official_forward(sd, x, TINY["num_heads"])
    unaligned = _rel(_hf_grid(model, x), official)
    model.rope_embeddings.inv_freq.copy_(1 / sd["rope_embed.periods"].float())
    aligned = _rel(_hf_grid(model, x), official)
    print(f"{name}: transformers vs official forward {unaligned:.2e}, with the official periods {aligned:.2e}")
    assert unaligned > 2e-4 and aligned < 1e-4

    torch.save(sd, tmp_path / DINOV3_BACKBONES[name].file)
    from_official = load_dinov3_backbone(name, tmp_path / DINOV3_BACKBONES[name].file)
    backbone.model.rope.periods.copy_(from_official.model.rope.periods)
    assert torch.equal(backbone.features(image), from_official.features(image))


def test_transformers_file_refusals(hf_files, tmp_path):
    """A wrong file is named by its shapes; a config.json that contradicts the weights, a key bias and another
    transformers model are refused; without config.json the keys and the name suffice."""
    from safetensors.torch import load_file

    with pytest.raises(ValueError, match="transformers DINOv3ViTModel keys.*this is tiny dinov3_vits16plus"):
        load_dinov3_backbone("dinov3_vits16", hf_files["dinov3_vits16plus"] / "model.safetensors")

    copy = tmp_path / "copy"
    shutil.copytree(hf_files["dinov3_vitb16"], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3, "rope_theta": 10.0}))
    with pytest.raises(ValueError, match=r"config.json .*num_attention_heads=3 \(needs 2\), rope_theta=10.0"):
        load_dinov3_backbone("dinov3_vitb16", copy / "model.safetensors")
    (copy / "config.json").unlink()  # no config.json: the keys and the name are enough
    assert load_dinov3_backbone("dinov3_vitb16", copy / "model.safetensors").name == "tiny dinov3_vitb16"

    state = load_file(str(copy / "model.safetensors"))
    state["layer.1.attention.k_proj.bias"] = torch.full((TINY["embed_dim"],), 0.1)
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layer.1.attention.k_proj.bias is not zero"):
        load_dinov3_backbone("dinov3_vitb16", copy / "model.safetensors")

    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192,
                             patch_size=16, image_size=64)).save_pretrained(tmp_path / "dinov2")
    with pytest.raises(ValueError, match="another transformers model"):
        load_dinov3_backbone("dinov3_vitb16", tmp_path / "dinov2" / "model.safetensors")
