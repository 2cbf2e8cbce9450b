"""CLIP / MaskCLIP backbones: tiny random checkpoints in OpenAI's format through the real loader,
checked against open_clip's own model and a slow literal reference."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.backbones.clip import CLIP_FAMILY, load_clip_backbone, save_random_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # open_clip's loader

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, written out independently
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(name, "jit" | "state_dict") -> path of a tiny random checkpoint (seed 0)."""
    root = tmp_path_factory.mktemp("clip")
    return {(name, kind): save_random_checkpoint(name, root / f"{name}_{kind}.pt", jit=kind == "jit")
            for name in CLIP_FAMILY for kind in ("jit", "state_dict")}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Slow literal reference: float64, one explicit matrix product at a time.

def cubic_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) 1-D bicubic resampling: Keys a = -0.75, pixel centres (align_corners=False),
    sample indices clamped to the border."""
    def kernel(t):
        t, a = abs(t), -0.75
        return ((a + 2) * t - (a + 3)) * t * t + 1 if t <= 1 else ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            m[i, min(max(k, 0), n_in - 1)] += kernel(src - k)
    return m


def layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * weight + bias


def quick_gelu(x):
    return x / (1 + np.exp(-1.702 * x))


def reference_features(path, img: np.ndarray, maskclip: bool, shifted: bool = False, project: bool = True):
    """What MaskCLIP (or CLIP tokens) should be, from the raw OpenAI-style state dict."""
    sd = {k[len("visual."):]: v.double().numpy() for k, v in torch.load(path).items() if k.startswith("visual.")}
    width, _, p, _ = sd["conv1.weight"].shape
    heads, n_layers = width // 64, sum(k.endswith("attn.in_proj_weight") for k in sd)
    H, W, _ = img.shape
    Hp, Wp = -(-H // p) * p, -(-W // p) * p
    top, left = (Hp - H) // 2, (Wp - W) // 2
    padded = np.zeros((Hp, Wp, 3))
    padded[top:top + H, left:left + W] = img / 255.0
    padded = (padded - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    h, w = Hp // p, Wp // p
    conv = sd["conv1.weight"].reshape(width, -1)  # (width, 3*p*p), channel-major
    tokens = [sd["class_embedding"]]
    for i in range(h):
        for j in range(w):
            patch = padded[i * p:(i + 1) * p, j * p:(j + 1) * p].transpose(2, 0, 1).reshape(-1)
            tokens.append(conv @ patch)
    x = np.stack(tokens)  # (1 + h*w, width)

    table = sd["positional_embedding"]
    cls_pos, grid_pos = (table[-1], table[:-1]) if shifted else (table[0], table[1:])
    g = round(len(grid_pos) ** 0.5)
    grid_pos = grid_pos.reshape(g, g, width)
    grid_pos = np.einsum("ia,jb,abc->ijc", cubic_matrix(h, g), cubic_matrix(w, g), grid_pos)
    x = x + np.concatenate([cls_pos[None], grid_pos.reshape(h * w, width)])
    x = layer_norm(x, sd["ln_pre.weight"], sd["ln_pre.bias"])

    def block(n):
        return {k[len(f"transformer.resblocks.{n}."):]: v for k, v in sd.items()
                if k.startswith(f"transformer.resblocks.{n}.")}

    def mlp(b, y):
        hidden = quick_gelu(y @ b["mlp.c_fc.weight"].T + b["mlp.c_fc.bias"])
        return hidden @ b["mlp.c_proj.weight"].T + b["mlp.c_proj.bias"]

    for n in range(n_layers - 1 if maskclip else n_layers):
        b = block(n)
        y = layer_norm(x, b["ln_1.weight"], b["ln_1.bias"])
        q, k, v = np.split(y @ b["attn.in_proj_weight"].T + b["attn.in_proj_bias"], 3, axis=-1)
        dh = width // heads
        out = []
        for head in range(heads):
            s = slice(head * dh, (head + 1) * dh)
            logits = q[:, s] @ k[:, s].T / math.sqrt(dh)
            attn = np.exp(logits - logits.max(-1, keepdims=True))
            out.append(attn / attn.sum(-1, keepdims=True) @ v[:, s])
        x = x + np.concatenate(out, -1) @ b["attn.out_proj.weight"].T + b["attn.out_proj.bias"]
        x = x + mlp(b, layer_norm(x, b["ln_2.weight"], b["ln_2.bias"]))
    x = x[1:]
    if maskclip:  # the last block's value path
        b = block(n_layers - 1)
        y = layer_norm(x, b["ln_1.weight"], b["ln_1.bias"])
        value = y @ b["attn.in_proj_weight"][2 * width:].T + b["attn.in_proj_bias"][2 * width:]
        x = x + value @ b["attn.out_proj.weight"].T + b["attn.out_proj.bias"]
        x = x + mlp(b, layer_norm(x, b["ln_2.weight"], b["ln_2.bias"]))
    x = layer_norm(x, sd["ln_post.weight"], sd["ln_post.bias"])
    if project:
        x = x @ sd["proj"]
    return torch.from_numpy(x.T.reshape(-1, h, w))


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, size, project, dim", [
    ("maskclip_vitl14", (37, 53), None, 32), ("clip_vitb32", (70, 45), None, 128),
    ("clip_vitb32", (70, 45), True, 32), ("maskclip_vitl14", (14, 15), False, 128)])
@pytest.mark.parametrize("kind", ["jit", "state_dict"])
def test_shape_and_determinism(ckpt, name, size, project, dim, kind):
    backbone = CLIP_FAMILY[name](checkpoint=ckpt[name, kind], project=project)
    p = backbone.patch_size
    first = backbone.features(image(*size))
    assert backbone.embed_dim == dim
    assert first.shape == (dim, -(-size[0] // p), -(-size[1] // p)) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, backbone.features(image(*size)))
    assert not backbone.visual.training and not any(q.requires_grad for q in backbone.visual.parameters())


@pytest.mark.parametrize("name", list(CLIP_FAMILY))
def test_jit_archive_and_state_dict_load_the_same_weights(ckpt, name):
    a = load_clip_backbone(name, ckpt[name, "jit"]).features(image(40, 60))
    b = load_clip_backbone(name, ckpt[name, "state_dict"]).features(image(40, 60))
    assert torch.equal(a, b)


@pytest.mark.parametrize("size", [(37, 53), (56, 56), (100, 70)])
def test_maskclip_equals_literal_reference(ckpt, size):
    path = ckpt["maskclip_vitl14", "state_dict"]
    img = image(*size, seed=1)
    ours = load_clip_backbone("maskclip_vitl14", path).features(img)
    torch.testing.assert_close(ours.double(), reference_features(path, img, maskclip=True), atol=1e-5, rtol=1e-5)


def test_compat_pos_embed_bug_reproduces_the_shifted_table(ckpt):
    path, img = ckpt["maskclip_vitl14", "state_dict"], image(37, 53, seed=2)
    fixed = load_clip_backbone("maskclip_vitl14", path).features(img)
    buggy = load_clip_backbone("maskclip_vitl14", path, compat_pos_embed_bug=True).features(img)
    assert (fixed - buggy).abs().max() > 1e-2
    torch.testing.assert_close(buggy.double(), reference_features(path, img, maskclip=True, shifted=True),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="maskclip_vitl14 only"):
        load_clip_backbone("clip_vitb32", ckpt["clip_vitb32", "jit"], compat_pos_embed_bug=True)


def test_clip_tokens_equal_literal_reference(ckpt):
    path, img = ckpt["clip_vitb32", "state_dict"], image(70, 150, seed=3)
    ours = load_clip_backbone("clip_vitb32", path).features(img)
    torch.testing.assert_close(ours.double(), reference_features(path, img, maskclip=False, project=False),
                               atol=1e-5, rtol=1e-5)


def normalised(img: np.ndarray) -> torch.Tensor:
    x = (torch.from_numpy(img).permute(2, 0, 1).double() / 255 - torch.tensor(CLIP_MEAN)[:, None, None])
    return (x / torch.tensor(CLIP_STD)[:, None, None]).float()[None]


@pytest.mark.parametrize("kind", ["jit", "state_dict"])
def test_clip_equals_open_clip_at_training_size(ckpt, kind):
    """Our file goes through open_clip's own OpenAI loader; at 128 px (the tiny model's training
    size, 4x4 grid) its tokens (ln_post applied) are our features, and its pooled output is CLS."""
    import open_clip

    path, img = ckpt["clip_vitb32", kind], image(128, 128, seed=4)
    visual = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").visual.eval()
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(normalised(img))
    expected = tokens[0].T.reshape(-1, 4, 4)
    ours = load_clip_backbone("clip_vitb32", path)
    torch.testing.assert_close(ours.features(img), expected, atol=1e-5, rtol=1e-5)
    projected = load_clip_backbone("clip_vitb32", path, project=True).features(img)
    torch.testing.assert_close(projected, (tokens[0] @ visual.proj).T.reshape(-1, 4, 4), atol=1e-5, rtol=1e-5)


def test_clip_full_resolution_equals_open_clip_with_resized_pos_embed(ckpt):
    """At a larger, non-square padded size (150x100 -> 160x128, a 5x4 grid) our interpolated
    table equals open_clip's ``resize_pos_embed`` and the tokens equal open_clip's forward.
    antialias=False: open_clip's default (True) switches torch to PIL's bicubic (a = -0.5),
    which differs even when upsampling; MaskCLIP's code and ours use a = -0.75."""
    import open_clip
    from open_clip.model import resize_pos_embed

    path, img = ckpt["clip_vitb32", "state_dict"], image(150, 100, seed=5)
    visual = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").visual.eval()
    state = {"visual.positional_embedding": visual.positional_embedding.data}
    resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(5, 4))), antialias=False)
    visual.positional_embedding = torch.nn.Parameter(state["visual.positional_embedding"])
    visual.output_tokens = True
    padded = np.zeros((160, 128, 3), dtype=np.uint8)
    padded[5:155, 14:114] = img
    with torch.no_grad():
        _, tokens = visual(normalised(padded))
    ours = load_clip_backbone("clip_vitb32", path).features(img)
    torch.testing.assert_close(ours, tokens[0].T.reshape(-1, 5, 4), atol=1e-5, rtol=1e-5)


def test_same_seed_same_weights(tmp_path, ckpt):
    again = save_random_checkpoint("clip_vitb32", tmp_path / "again.pt", seed=0)
    other = save_random_checkpoint("clip_vitb32", tmp_path / "other.pt", seed=1)
    a, b, c = (torch.load(p) for p in (ckpt["clip_vitb32", "state_dict"], again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])
    assert a["visual.conv1.weight"].dtype == torch.float16  # as OpenAI's files


def test_wrong_architecture_names_both(tmp_path, ckpt):
    with pytest.raises(ValueError, match=r"patch 32.*maskclip_vitl14 needs .*patch 14.*ViT-L-14-336px\.pt"):
        load_clip_backbone("maskclip_vitl14", ckpt["clip_vitb32", "jit"])
    # The shapes of a real ViT-B/32 file, without 88M random numbers: only shapes are read first.
    fake = {"visual.conv1.weight": torch.zeros(768, 3, 32, 32), "visual.positional_embedding": torch.zeros(50, 768),
            "visual.proj": torch.zeros(768, 512)}
    fake |= {f"visual.transformer.resblocks.{i}.attn.in_proj_weight": torch.zeros(1) for i in range(12)}
    torch.save(fake, tmp_path / "ViT-B-32.pt")
    with pytest.raises(ValueError, match=r"CLIP ViT-B/32 \(ViT-B-32\.pt\).*maskclip_vitl14 needs .*ViT-L/14@336px"):
        load_clip_backbone("maskclip_vitl14", tmp_path / "ViT-B-32.pt")
    with pytest.raises(ValueError, match="tiny test model"):
        load_clip_backbone("clip_vitb32", ckpt["clip_vitb32", "jit"], tiny=False)
    torch.save({"backbone.conv.weight": torch.zeros(3)}, tmp_path / "dino.pth")
    with pytest.raises(ValueError, match="dino.pth is not an OpenAI/open_clip CLIP ViT"):
        load_clip_backbone("clip_vitb32", tmp_path / "dino.pth")


def test_key_mismatch_is_refused_before_loading(tmp_path, ckpt):
    state = torch.load(ckpt["clip_vitb32", "state_dict"])
    del state["visual.ln_pre.bias"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken\.pt .*missing visual\.\['ln_pre\.bias'\]"):
        load_clip_backbone("clip_vitb32", tmp_path / "broken.pt")


def test_missing_file_names_the_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ViT-L-14-336px\.pt, published at https://openaipublic"):
        load_clip_backbone("maskclip_vitl14", tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match="valid names"):
        load_clip_backbone("clip_vitb99", tmp_path / "nowhere.pt")


def test_the_registry_names_every_clip_backbone_without_importing_open_clip():
    import subprocess
    import sys

    from bench.backbones import CLIP_NAMES

    assert CLIP_NAMES == tuple(CLIP_FAMILY)
    code = "import sys, bench.backbones, bench.extraction; print('open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
