"""SigLIP 2 backbones: tiny random checkpoints in open_clip's full-model layout through the real
loader, checked against open_clip's own model (CustomTextCLIP + TimmModel trunk) on the same input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.backbones.siglip import SIGLIP_BACKBONES, SIGLIP_FAMILY, load_siglip_backbone, save_random_checkpoint
from tests.backbone_contract import check_grid_contract

NAME = "siglip2_vitb16_256"  # open_clip ViT-B-16-SigLIP2-256, trunk vit_base_patch16_siglip_256 (16x16 table)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    return {kind: save_random_checkpoint(NAME, root / kind / f"open_clip_{kind}") for kind in
            ("model.safetensors", "pytorch_model.bin")}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def open_clip_model(path):
    """open_clip's CustomTextCLIP for ViT-B-16-SigLIP2-256 with the tiny trunk (depth 2, width 64)
    and tiny text tower, loaded strictly from the file."""
    import open_clip
    import timm
    from open_clip.model import CustomTextCLIP, _build_text_tower

    from bench.backbones.siglip import read_checkpoint, tiny_text_cfg

    cfg = open_clip.get_model_config("ViT-B-16-SigLIP2-256")
    with torch.device("meta"):  # skip building the full-size towers, then put tiny real ones in
        model = CustomTextCLIP(64, vision_cfg=cfg["vision_cfg"], text_cfg=tiny_text_cfg(NAME), init_logit_bias=-10)
    model.visual.trunk = timm.create_model(cfg["vision_cfg"]["timm_model_name"], pretrained=False, num_classes=0,
                                           global_pool=cfg["vision_cfg"]["timm_pool"], depth=2, embed_dim=64,
                                           num_heads=2)
    model.text = _build_text_tower(64, tiny_text_cfg(NAME))
    model.logit_scale, model.logit_bias = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))
    model.load_state_dict(read_checkpoint(path), strict=True)
    return model.eval()


def normalised_padded(img: np.ndarray, p: int = 16) -> torch.Tensor:
    """(1, 3, Hp, Wp): centre zero-padding, then open_clip's SigLIP 2 mean/std."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg("ViT-B-16-SigLIP2-256", "webli")
    H, W, _ = img.shape
    Hp, Wp = -(-H // p) * p, -(-W // p) * p
    padded = np.zeros((Hp, Wp, 3), dtype=np.float64)
    padded[(Hp - H) // 2:(Hp - H) // 2 + H, (Wp - W) // 2:(Wp - W) // 2 + W] = img / 255
    x = (torch.from_numpy(padded).permute(2, 0, 1) - torch.tensor(cfg["mean"])[:, None, None]) \
        / torch.tensor(cfg["std"])[:, None, None]
    return x.float()[None]


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def reference_grid(path, img: np.ndarray, mode: str = "bicubic") -> torch.Tensor:
    """open_clip's model from the file; its trunk set to the padded size with the position table
    resampled here (``mode``, antialiased, align_corners=False), forward_features, reshaped (SigLIP
    has no prefix tokens). At 256x256 the table is used as stored."""
    x = normalised_padded(img)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    trunk = open_clip_model(path).visual.trunk
    table = trunk.pos_embed.data.reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    if (h, w) != (16, 16):
        table = F.interpolate(table, size=(h, w), mode=mode, align_corners=False, antialias=True)
    trunk.patch_embed.set_input_size(img_size=tuple(x.shape[-2:]))
    trunk.pos_embed = torch.nn.Parameter(table.flatten(2).transpose(1, 2))
    with torch.no_grad():
        return trunk.forward_features(x)[0].T.reshape(-1, h, w)


@pytest.mark.parametrize("kind", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("size", [(256, 256), (70, 150), (300, 200)])
def test_grid_equals_open_clip_trunk(ckpt, kind, size):
    img = image(*size, seed=1)
    expected = reference_grid(ckpt[kind], img)
    ours = load_siglip_backbone(NAME, ckpt[kind]).features(img)
    assert ours.shape == expected.shape == (64, -(-size[0] // 16), -(-size[1] // 16))
    error = relative_error(ours, expected)
    print(f"siglip2 {size} {kind}: max relative error {error:.2e}")
    assert error < 1e-4


def test_global_feature_is_open_clip_image_embedding(ckpt):
    img = image(256, 256, seed=2)
    model = open_clip_model(ckpt["model.safetensors"])
    with torch.no_grad():
        expected = model.encode_image(normalised_padded(img))[0]
    ours = load_siglip_backbone(NAME, ckpt["model.safetensors"]).global_feature(img)
    assert relative_error(ours, expected) < 1e-4


def test_wrong_implementation_is_caught(ckpt):
    """The reference check fails on plausible mistakes: a bilinear position table, no final norm,
    no normalisation."""
    path, img = ckpt["model.safetensors"], image(70, 150, seed=1)
    backbone = load_siglip_backbone(NAME, path)
    expected = reference_grid(path, img)
    assert relative_error(backbone.features(img), reference_grid(path, img, mode="bilinear")) > 1e-2
    x = backbone.preprocess(img)[None]
    (unnormed,) = backbone.model.forward_intermediates(x, indices=[1], norm=False, intermediates_only=True)
    assert relative_error(unnormed[0], expected) > 1e-2
    backbone.mean, backbone.std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    assert relative_error(backbone.features(img), expected) > 1e-2


@pytest.mark.parametrize("size", [(37, 53), (70, 45), (16, 17)])
def test_shape_batch_and_determinism(ckpt, size):
    backbone = SIGLIP_FAMILY[NAME](checkpoint=ckpt["model.safetensors"])
    check_grid_contract(backbone, image, size, patch=16, dim=64)


def test_table_matches_open_clip_and_timm():
    import open_clip
    import timm

    for name, row in SIGLIP_BACKBONES.items():
        cfg = open_clip.get_model_config(row.open_clip_model)
        assert cfg["vision_cfg"]["timm_model_name"] == row.timm_arch, name
        assert cfg["vision_cfg"]["image_size"] == row.image_size and cfg["embed_dim"] == row.embed_dim, name
        assert "webli" in open_clip.list_pretrained_tags_by_model(row.open_clip_model), name
        with torch.device("meta"):
            trunk = timm.create_model(row.timm_arch, pretrained=False, num_classes=0)
        assert (trunk.embed_dim, trunk.patch_embed.patch_size[0]) == (row.embed_dim, row.patch_size), name


def test_wrong_architecture_names_both(tmp_path, ckpt):
    with pytest.raises(ValueError, match=r"does not fit siglip2_vitl16_256 .*width 1024, 24 blocks.*"
                                         r"holds width 64, 2 blocks.*huggingface\.co/timm/ViT-L-16-SigLIP2-256"):
        load_siglip_backbone("siglip2_vitl16_256", ckpt["model.safetensors"], tiny=False)
    # a tiny trunk with another table size (ViT-B-16-SigLIP2 at 224: 14x14)
    with pytest.raises(ValueError, match=r"needs width 64, 2 blocks, patch 16, 14x14 .*holds .*16x16"):
        load_siglip_backbone("siglip2_vitb16", ckpt["model.safetensors"])
    torch.save({"visual.conv1.weight": torch.zeros(3)}, tmp_path / "openai.pt")
    with pytest.raises(ValueError, match="no SigLIP trunk"):
        load_siglip_backbone(NAME, tmp_path / "openai.pt")


def test_missing_file_names_the_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors .*huggingface\.co/timm/ViT-B-16-SigLIP2-256"):
        load_siglip_backbone(NAME, tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match="valid names"):
        load_siglip_backbone("siglip_vitb16", tmp_path / "nowhere.safetensors")


def test_module_import_does_not_import_open_clip_or_timm():
    import subprocess
    import sys

    code = ("import sys, bench.backbones.siglip, bench.backbones.radio; "
            "print('open_clip' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
