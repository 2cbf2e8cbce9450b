"""RADIO backbones: tiny random checkpoints in NVIDIA's layouts (Hugging Face; torch-hub for v2.5) and
timm's NaFlexVit layout through the real loader, checked against timm's *classic* ViT (another model
class, another position-table path: timm's own converter resampling the table once at the exact padded
size)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.backbones.radio import RADIO_BACKBONES, RADIO_FAMILY, load_radio_backbone, save_random_checkpoint
from tests.backbone_contract import check_grid_contract

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, written out independently
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NAMES = ["radio_v3_vitb16", "radio_v3_vitl16", "radio_v4_vith16"]  # align_corners True / False; 7 / 9 registers


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("radio")
    return {(name, layout): save_random_checkpoint(name, root / name / layout / "model.safetensors", layout=layout)
            for name in NAMES for layout in ("nvidia", "timm")}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def normalised_padded(img: np.ndarray, p: int = 16) -> torch.Tensor:
    H, W, _ = img.shape
    Hp, Wp = -(-H // p) * p, -(-W // p) * p
    padded = np.zeros((Hp, Wp, 3), dtype=np.float64)
    padded[(Hp - H) // 2:(Hp - H) // 2 + H, (Wp - W) // 2:(Wp - W) // 2 + W] = img / 255
    x = (torch.from_numpy(padded).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) \
        / torch.tensor(CLIP_STD)[:, None, None]
    return x.float()[None]


def classic_timm_reference(name: str, nvidia_file, img: np.ndarray) -> torch.Tensor:
    """timm's VisionTransformer RADIO arch built for exactly the padded size, weights through timm's
    pretrained loader from the local NVIDIA file (its checkpoint filter resamples the 128x128 table
    to that grid as RADIO does), forward_features, CLS and registers dropped."""
    import timm

    x = normalised_padded(img)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    model = timm.create_model(RADIO_BACKBONES[name].timm_arch.replace("naflexvit_", "vit_"), pretrained=True,
                              pretrained_cfg_overlay={"file": str(nvidia_file)}, img_size=tuple(x.shape[-2:]),
                              num_classes=0, depth=2, embed_dim=64, num_heads=2).eval()
    with torch.no_grad():
        tokens = model.forward_features(x)[0, model.num_prefix_tokens:]
    assert model.num_prefix_tokens == (8 if "v3" in name else 10)
    return tokens.T.reshape(-1, h, w)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["nvidia", "timm"])
@pytest.mark.parametrize("size", [(70, 150), (300, 200), (512, 512)])
def test_grid_equals_timm_classic_radio(ckpt, name, layout, size):
    img = image(*size, seed=1)
    expected = classic_timm_reference(name, ckpt[name, "nvidia"], img)
    ours = load_radio_backbone(name, ckpt[name, layout]).features(img)
    assert ours.shape == expected.shape == (64, -(-size[0] // 16), -(-size[1] // 16))
    error = relative_error(ours, expected)
    print(f"{name} {layout} {size}: max relative error {error:.2e}")
    assert error < 1e-4


def test_wrong_implementation_is_caught(ckpt):
    """Plausible mistakes fail the reference check: a non-square grid's table resized without
    RADIO's square-then-crop, the registers kept as patches (shifted tokens), the wrong
    align_corners for the release."""
    import torch.nn.functional as F

    name, img = "radio_v3_vitl16", image(70, 150, seed=1)
    expected = classic_timm_reference(name, ckpt[name, "nvidia"], img)
    backbone = load_radio_backbone(name, ckpt[name, "nvidia"])
    embeds = backbone.model.embeds
    embeds.pos_embed_ar_preserving = False  # resize straight to (h, w)
    assert relative_error(backbone.features(img), expected) > 1e-2
    embeds.pos_embed_ar_preserving = True
    assert relative_error(backbone.features(img), expected) < 1e-4
    tokens = backbone.model.forward_features(backbone.preprocess(img)[None])[0]  # (1 + 7 + h*w, d)
    shifted = tokens[1:1 + 5 * 10].T.reshape(-1, 5, 10)
    assert relative_error(shifted, expected) > 1e-2
    assert F.mse_loss(backbone.mean.flatten(), torch.tensor(CLIP_MEAN)) < 1e-12  # conditioner read
    # v3-B was released with align_corners=True: False would be the other RADIO code version
    name = "radio_v3_vitb16"
    expected = classic_timm_reference(name, ckpt[name, "nvidia"], img)
    backbone = load_radio_backbone(name, ckpt[name, "nvidia"])
    assert backbone.model.embeds.pos_embed_align_corners
    backbone.model.embeds.pos_embed_align_corners = False
    assert relative_error(backbone.features(img), expected) > 1e-2


@pytest.mark.parametrize("size", [(37, 53), (70, 45), (16, 17)])
def test_shape_batch_and_determinism(ckpt, size):
    backbone = RADIO_FAMILY["radio_v3_vitb16"](checkpoint=ckpt["radio_v3_vitb16", "nvidia"])
    check_grid_contract(backbone, image, size, patch=16, dim=64)


def test_both_layouts_load_the_same_weights(ckpt):
    img = image(50, 90)
    a = load_radio_backbone("radio_v4_vith16", ckpt["radio_v4_vith16", "nvidia"]).features(img)
    b = load_radio_backbone("radio_v4_vith16", ckpt["radio_v4_vith16", "timm"]).features(img)
    assert torch.equal(a, b)


def test_table_matches_timm():
    import timm

    for name, row in RADIO_BACKBONES.items():
        with torch.device("meta"):
            model = timm.create_model(row.timm_arch, pretrained=False, num_classes=0)
        assert model.embed_dim == row.embed_dim and tuple(model.embeds.pos_embed.shape[1:3]) == (128, 128), name
        assert model.pretrained_cfg["mean"] == CLIP_MEAN and model.pretrained_cfg["std"] == CLIP_STD, name


def test_wrong_architecture_names_both(tmp_path, ckpt):
    # v3-B file (7 registers) as v4-H (9 registers)
    with pytest.raises(ValueError, match=r"does not fit tiny radio_v4_vith16 .*9 registers.*NVIDIA's RADIO layout: "
                                         r"width 64, 2 blocks, 7 registers.*huggingface\.co/nvidia/C-RADIOv4-H"):
        load_radio_backbone("radio_v4_vith16", ckpt["radio_v3_vitb16", "nvidia"])
    with pytest.raises(ValueError, match=r"does not fit radio_v3_vitl16, which needs width 1024, 24 blocks"):
        load_radio_backbone("radio_v3_vitl16", ckpt["radio_v3_vitl16", "timm"], tiny=False)
    # timm's classic layout: the table was cut to 32x32 (here 4x4: shapes only matter)
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt["radio_v3_vitb16", "timm"]))
    classic = {("patch_embed.proj.weight" if k == "embeds.proj.weight" else k): v for k, v in state.items()}
    classic["patch_embed.proj.weight"] = classic["patch_embed.proj.weight"].reshape(64, 16, 16, 3).permute(0, 3, 1, 2)
    classic["patch_embed.proj.bias"] = classic.pop("embeds.proj.bias")
    classic["cls_token"], classic["reg_token"] = classic.pop("embeds.cls_token"), classic.pop("embeds.reg_token")
    classic["pos_embed"] = classic.pop("embeds.pos_embed")[:, :4, :4].reshape(1, 16, 64).contiguous()
    save_file({k: v.contiguous() for k, v in classic.items()}, str(tmp_path / "classic.safetensors"))
    with pytest.raises(ValueError, match=r"classic ViT layout.*4x4 position table.*cut to 32x32"):
        load_radio_backbone("radio_v3_vitb16", tmp_path / "classic.safetensors")


def test_missing_file_names_the_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors of https://huggingface\.co/nvidia/C-RADIOv3-L "
                                                r".*timm/naflexvit_large_patch16_radio_v3\.c_radio"):
        load_radio_backbone("radio_v3_vitl16", tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match="valid names"):
        load_radio_backbone("radio_v2_vitb16", tmp_path / "nowhere.safetensors")


# RADIOv2.5: no timm arch of its own, so the reference is timm's classic VisionTransformer built here
# from RADIOv2.5's structure written out independently (NVlabs/RADIO: cpe_max_size 2048 -> 128x128
# table; 4 per-teacher CLS tokens padded to register_multiple 8 -> 8 prefix tokens; no final norm;
# the released vit_patch_generator.py resizes bilinear with align_corners=True).
V25 = ["radio_v25_vitb16", "radio_v25_vitl16", "radio_v25_vith16"]


@pytest.fixture(scope="module")
def v25(tmp_path_factory):
    root = tmp_path_factory.mktemp("radio_v25")
    return {**{(name, "nvidia"): save_random_checkpoint(name, root / name / "model.safetensors") for name in V25},
            **{(name, "torchhub"): save_random_checkpoint(name, root / "hub" / RADIO_BACKBONES[name].hub_file,
                                                          layout="torchhub") for name in V25}}


def classic_v25_reference(nvidia_file, img: np.ndarray) -> torch.Tensor:
    """timm's VisionTransformer at exactly the padded size, 1 CLS + 7 registers, no layer scale, no final
    norm; the NVIDIA file through timm's vision_transformer.checkpoint_filter_fn, which resamples the
    128x128 table once (square of the longer side, bilinear, align_corners=True, top-left crop)."""
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    x = normalised_padded(img)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    model = VisionTransformer(img_size=tuple(x.shape[-2:]), patch_size=16, embed_dim=64, depth=2, num_heads=2,
                              reg_tokens=7, no_embed_class=True, final_norm=False, num_classes=0).eval()
    state = checkpoint_filter_fn(load_file(str(nvidia_file)), model, interpolation="bilinear", antialias=False,
                                 align_corners=True)
    model.load_state_dict(state, strict=True)
    assert model.num_prefix_tokens == 8
    with torch.no_grad():
        tokens = model.forward_features(x)[0, 8:]
    return tokens.T.reshape(-1, h, w)


@pytest.mark.parametrize("name", V25)
@pytest.mark.parametrize("layout", ["nvidia", "torchhub"])
@pytest.mark.parametrize("size", [(70, 150), (300, 200)])
def test_v25_grid_equals_timm_classic_vit(v25, name, layout, size):
    img = image(*size, seed=1)
    expected = classic_v25_reference(v25[name, "nvidia"], img)
    backbone = load_radio_backbone(name, v25[name, layout])
    ours = backbone.features(img)
    assert ours.shape == expected.shape == (64, -(-size[0] // 16), -(-size[1] // 16))
    assert backbone.mean.flatten().tolist() == pytest.approx(CLIP_MEAN) and backbone.model.num_prefix_tokens == 8
    error = relative_error(ours, expected)
    print(f"{name} {layout} {size}: max relative error {error:.2e}")
    assert error < 1e-4


def test_v25_wrong_implementation_is_caught(v25):
    """timm's v3-L arch as is (align_corners=False, the 2025 RADIO code) and dropping only the 4 teacher
    CLS tokens (the 4 registers kept as patches) both fail the reference."""
    name, img = "radio_v25_vitl16", image(70, 150, seed=1)
    expected = classic_v25_reference(v25[name, "nvidia"], img)
    backbone = load_radio_backbone(name, v25[name, "torchhub"])
    embeds = backbone.model.embeds
    assert embeds.pos_embed_align_corners and relative_error(backbone.features(img), expected) < 1e-4
    embeds.pos_embed_align_corners = False
    assert relative_error(backbone.features(img), expected) > 1e-2
    embeds.pos_embed_align_corners = True
    tokens = backbone.model.forward_features(backbone.preprocess(img)[None])[0]  # (8 + h*w, d)
    assert relative_error(tokens[4:4 + 5 * 10].T.reshape(-1, 5, 10), expected) > 1e-2


def test_v25_and_v3_files_are_told_apart(v25, ckpt):
    # equal shapes (v3-L's layer scale is taken from the file): the repo's config.json names the release
    with pytest.raises(ValueError, match=r"is NVIDIA's c-radio_v3-l \(the version in its config\.json\).*but "
                                         r"radio_v25_vitl16 is radio_v2\.5-l .*main/radio-v2\.5-l_half\.pth\.tar"):
        load_radio_backbone("radio_v25_vitl16", ckpt["radio_v3_vitl16", "nvidia"])
    with pytest.raises(ValueError, match=r"is NVIDIA's radio_v2\.5-h .*but radio_v3_vith16 is c-radio_v3-h "
                                         r".*huggingface\.co/nvidia/C-RADIOv3-H"):  # neither has layer scale
        load_radio_backbone("radio_v3_vith16", v25["radio_v25_vith16", "nvidia"])
    with pytest.raises(ValueError, match=r"does not fit tiny radio_v3_vitl16 .*the file holds NVIDIA's RADIO "
                                         r"layout: width 64.*\(radio_v2\.5-l per its config\.json\).*missing "
                                         r"\['blocks\.0\.ls1"):
        load_radio_backbone("radio_v3_vitl16", v25["radio_v25_vitl16", "nvidia"])  # v3-L has layer scale
    with pytest.raises(ValueError, match=r"torch-hub layout .*args\.model vit_large_patch16_224, teachers "
                                         r"\['clip', .*the release format of RADIOv2\.5; radio_v3_vitl16 loads "
                                         r"model\.safetensors"):
        load_radio_backbone("radio_v3_vitl16", v25["radio_v25_vitl16", "torchhub"])
    with pytest.raises(ValueError, match=r"does not fit radio_v25_vitl16, which needs width 1024, 24 blocks.*torch-hub"
                                         r" layout .*args\.model vit_base_patch16_224.*: width 64"):
        load_radio_backbone("radio_v25_vitl16", v25["radio_v25_vitb16", "torchhub"], tiny=False)


def test_v25_torchhub_file_is_read_or_refused_by_name(tmp_path, v25):
    import argparse

    chk = torch.load(v25["radio_v25_vitb16", "torchhub"], weights_only=False)
    ema = chk["state_dict"] | {"input_conditioner.norm_mean": torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)}
    torch.save(chk | {"state_dict_ema": ema}, tmp_path / "ema.pth.tar")
    backbone = load_radio_backbone("radio_v25_vitb16", tmp_path / "ema.pth.tar")  # hubconf.py prefers the EMA
    assert backbone.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    state = dict(chk["state_dict"])
    state["base_model.blocks.0.attn.qkv.parametrizations.weight.original"] = state.pop(
        "base_model.blocks.0.attn.qkv.weight")
    torch.save({"args": chk["args"], "state_dict": state}, tmp_path / "sr.pth.tar")
    with pytest.raises(ValueError, match=r"sr\.pth\.tar holds spectral-reparametrised weights.*hubconf\.py"):
        load_radio_backbone("radio_v25_vitb16", tmp_path / "sr.pth.tar")
    torch.save({"args": argparse.Namespace(path=tmp_path), "state_dict": chk["state_dict"]}, tmp_path / "odd.pth.tar")
    with pytest.raises(ValueError, match=r"(?s)cannot read .*odd\.pth\.tar.*pickles only argparse\.Namespace"):
        load_radio_backbone("radio_v25_vitb16", tmp_path / "odd.pth.tar")
    with pytest.raises(FileNotFoundError, match=r"huggingface\.co/nvidia/RADIO-H .*nvidia/RADIO/resolve/main/"
                                                r"radio_v2\.5-h\.pth\.tar"):
        load_radio_backbone("radio_v25_vith16", tmp_path / "nowhere.pth.tar")
