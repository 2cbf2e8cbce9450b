"""dino.txt (DINOv3 ViT-L/16 + vision head + text encoder): tiny random files in the official layout, loaded
through the real path and checked against a computation written out below from the raw state-dict tensors with
plain torch ops.

That written-out forward is the best reference available here: the reference code (facebookresearch/dinov3,
dinov3/eval/text/*.py) is not installable (the dinov3 package is not on the package index) and no released
weights are at hand, so it restates what was read in that code, independently of bench/backbones/dinotxt.py
(no module of it is used: manual attention with an explicit causal mask, functional LayerNorm/GELU/SiLU). Its
backbone part is cross-checked against the project's own official DINOv3 forward (tests/test_backbones_dinov3.py).
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.backbones import dinov3
from bench.backbones.dinotxt import (BPE_FILE, HEAD_FILE, TINY, DinoTxtBackbone, load_dinotxt, load_heads,
                                     load_text_tower, load_tokenizer, patch_part, save_random_checkpoint)
from tests.backbone_contract import check_grid_contract
from tests.test_backbones_dinov3 import _input, _rel, official_forward

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TEXTS = ["a photo of a dog.", "Chair", "the  embroidered   bicycle!", "word " * 90]  # the last is truncated


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dinotxt")
    return {"backbone": dinov3.save_random_checkpoint("dinov3_vitl16", root / "dinov3_vitl16_pretrain.pth"),
            "head": save_random_checkpoint(root / HEAD_FILE)}


@pytest.fixture(scope="module")
def model(files) -> DinoTxtBackbone:
    return load_dinotxt(files["backbone"], files["head"])


@pytest.fixture(scope="module")
def bpe() -> str:
    from open_clip.tokenizer import default_bpe

    return default_bpe()  # a local copy of CLIP's vocabulary (inside the open_clip package)


# ----------------------------------------------------------------------------------------------
# The reference, from raw tensors

def _ln(x, sd, key):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)


def _qkv(x, sd, key, heads, bias=None):
    """(n, d) -> q, k, v, each (heads, n, d/heads): one fused projection, rows ordered [q; k; v], heads contiguous."""
    n, d = x.shape
    qkv = x @ sd[f"{key}.qkv.weight"].T + (0 if bias is None else bias)
    return qkv.reshape(n, 3, heads, d // heads).permute(1, 2, 0, 3)


def _attend(q, k, v, sd, key, causal=False):
    """softmax(q k^T / sqrt(d/heads)) v per head, heads concatenated, then the output projection: (n, d)."""
    heads, n, hd = q.shape
    scores = q @ k.transpose(1, 2) / math.sqrt(hd)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, heads * hd)
    return out @ sd[f"{key}.proj.weight"].T + sd[f"{key}.proj.bias"]


def backbone_tokens(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """The official DINOv3 ViT-L in eval (GELU MLP, masked qkv bias, RoPE on patches with the file's periods),
    all tokens of the last block after the final norm: (1, 3, Hp, Wp) -> (1 + 4 + h*w, d)."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)[0]  # (d, h, w)
    d, h, w = t.shape
    t = torch.cat([sd["cls_token"][0], sd["storage_tokens"][0], t.flatten(1).T])
    coords = torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"), -1)
    angles = (2 * math.pi * (2 * coords.reshape(-1, 2, 1) - 1) / sd["rope_embed.periods"].float()).flatten(1).tile(2)

    def rope(u):  # (heads, n, hd): rotate the h*w patch rows, half-split convention
        first, second = u[:, 5:].chunk(2, dim=-1)
        return torch.cat([u[:, :5], u[:, 5:] * angles.cos() + torch.cat([-second, first], -1) * angles.sin()], 1)

    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        b = f"blocks.{i}."
        bias = sd[b + "attn.qkv.bias"] * sd[b + "attn.qkv.bias_mask"]
        q, k, v = _qkv(_ln(t, sd, b + "norm1"), sd, b + "attn", heads, bias)
        t = t + sd[b + "ls1.gamma"] * _attend(rope(q), rope(k), v, sd, b + "attn")
        hidden = F.gelu(_ln(t, sd, b + "norm2") @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        t = t + sd[b + "ls2.gamma"] * (hidden @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"])
    return _ln(t, sd, "norm")


def vision_reference(backbone_sd: dict, head_sd: dict, x: torch.Tensor):
    """-> (image embedding (2d,) = cat[class, patch mean], head patch grid (d, h, w), backbone patch grid)."""
    h, w = x.shape[2] // 16, x.shape[3] // 16
    tokens = backbone_tokens(backbone_sd, x, TINY.heads)
    t = tokens
    for i in range(TINY.head_blocks):
        b = f"visual_model.head.blocks.{i}."
        q, k, v = _qkv(_ln(t, head_sd, b + "norm1"), head_sd, b + "attn", TINY.heads)
        t = t + head_sd[b + "ls1.gamma"] * _attend(q, k, v, head_sd, b + "attn")  # no RoPE, no mask
        y = _ln(t, head_sd, b + "norm2")
        gate = F.silu(y @ head_sd[b + "mlp.w1.weight"].T + head_sd[b + "mlp.w1.bias"])
        hidden = gate * (y @ head_sd[b + "mlp.w2.weight"].T + head_sd[b + "mlp.w2.bias"])
        t = t + head_sd[b + "ls2.gamma"] * (hidden @ head_sd[b + "mlp.w3.weight"].T + head_sd[b + "mlp.w3.bias"])
    t = _ln(t, head_sd, "visual_model.head.ln_final")
    return torch.cat([t[0], t[5:].mean(0)]), t[5:].T.reshape(-1, h, w), tokens[5:].T.reshape(-1, h, w)


def text_reference(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    """(N, L) int64 -> (N, 2d): causal transformer, final norm, the token at argmax(id), linear projection."""
    p = "text_model.backbone."
    out = []
    for ids in tokens:
        x = sd[p + "token_embedding.weight"][ids] + sd[p + "positional_embedding"][:len(ids)]
        for i in range(TINY.text_layers):
            b = f"{p}blocks.{i}."
            q, k, v = _qkv(_ln(x, sd, b + "attention_norm"), sd, b + "attention", TINY.text_heads)
            x = x + _attend(q, k, v, sd, b + "attention", causal=True)
            hidden = F.gelu(_ln(x, sd, b + "ffn_norm") @ sd[b + "feed_forward.fc1.weight"].T
                            + sd[b + "feed_forward.fc1.bias"])
            x = x + hidden @ sd[b + "feed_forward.fc2.weight"].T + sd[b + "feed_forward.fc2.bias"]
        x = _ln(x, sd, p + "ln_final")
        out.append(x[int(ids.argmax())] @ sd["text_model.head.linear_projection.weight"].T)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Tests

def official_keys(cfg=TINY) -> set[str]:
    """The official key set, spelt out from dinov3/eval/text (VisionHead, TextTransformer, TextHead, DINOTxt)."""
    vision = [f"visual_model.head.blocks.{i}.{m}" for i in range(cfg.head_blocks) for m in
              ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "ls1.gamma",
               "norm2.weight", "norm2.bias", "mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias",
               "mlp.w3.weight", "mlp.w3.bias", "ls2.gamma")]
    text = [f"text_model.backbone.blocks.{i}.{m}" for i in range(cfg.text_layers) for m in
            ("attention_norm.weight", "attention_norm.bias", "attention.qkv.weight", "attention.proj.weight",
             "attention.proj.bias", "ffn_norm.weight", "ffn_norm.bias", "feed_forward.fc1.weight",
             "feed_forward.fc1.bias", "feed_forward.fc2.weight", "feed_forward.fc2.bias")]
    return set(vision + text + ["visual_model.head.ln_final.weight", "visual_model.head.ln_final.bias",
                                "text_model.backbone.token_embedding.weight",
                                "text_model.backbone.positional_embedding",
                                "text_model.backbone.ln_final.weight", "text_model.backbone.ln_final.bias",
                                "text_model.head.linear_projection.weight", "logit_scale"])


def test_tiny_file_has_the_official_layout_and_round_trips(files, tmp_path):
    sd = torch.load(files["head"], weights_only=True)
    assert set(sd) == official_keys()
    d = TINY.width
    assert sd["visual_model.head.blocks.0.mlp.w1.weight"].shape == (128, d)  # int(4d * 2/3) rounded up to 64
    assert sd["text_model.head.linear_projection.weight"].shape == (2 * d, TINY.text_width)
    loaded = load_heads(files["head"]).state_dict()
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    state = torch.get_rng_state()
    again = torch.load(save_random_checkpoint(tmp_path / "again.pth"), weights_only=True)
    other = torch.load(save_random_checkpoint(tmp_path / "other.pth", seed=1), weights_only=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(again[k], sd[k]) for k in sd)
    assert not torch.equal(other["visual_model.head.blocks.0.ls1.gamma"], sd["visual_model.head.blocks.0.ls1.gamma"])


def test_wrong_files_are_refused_with_the_fix(files, tmp_path):
    sd = torch.load(files["head"], weights_only=True)
    missing = {k: v for k, v in sd.items() if k != "visual_model.head.blocks.1.ls2.gamma"}
    renamed = {k.replace("ls1.gamma", "gamma_1"): v for k, v in sd.items()}
    for name, state, said in (("missing.pth", missing, "blocks.1.ls2.gamma"), ("renamed.pth", renamed, "gamma_1")):
        torch.save(state, tmp_path / name)
        with pytest.raises(ValueError, match=name) as error:
            load_dinotxt(files["backbone"], tmp_path / name)
        assert said in str(error.value) and HEAD_FILE in str(error.value)
    with pytest.raises(ValueError, match="is a DINOv3 backbone.*backbone_checkpoint"):
        load_heads(files["backbone"])
    with pytest.raises(FileNotFoundError, match=HEAD_FILE):
        load_heads(tmp_path / "absent.pth")


@pytest.mark.parametrize("size", [(37, 53), (32, 48)])  # padded, and an exact multiple of 16
def test_dense_and_global_paths_equal_the_plain_torch_forward(model, files, size):
    backbone_sd = {k: v.float() for k, v in torch.load(files["backbone"], weights_only=True).items()}
    head_sd = torch.load(files["head"], weights_only=True)
    image = _image(*size)
    x = _input(image, *IMAGENET)
    embedding, head_grid, backbone_grid = vision_reference(backbone_sd, head_sd, x)
    assert _rel(backbone_grid, official_forward(backbone_sd, x, TINY.heads)) < 1e-5  # the reference's own check
    assert _rel(model.features(image), head_grid) < 1e-4
    assert _rel(model.global_feature(image), embedding) < 1e-4
    as_notebook = DinoTxtBackbone(model.vit, model.heads, dense="backbone")
    assert _rel(as_notebook.features(image), backbone_grid) < 1e-4
    assert _rel(model.features(image), backbone_grid) > 0.1  # the head does change the tokens


def test_text_path_equals_the_plain_torch_forward(model, files, bpe):
    head_sd = torch.load(files["head"], weights_only=True)
    tokens = load_tokenizer(bpe)(TEXTS)
    reference = text_reference(head_sd, tokens)
    ours = model.encode_text(tokens)
    assert ours.shape == (len(TEXTS), 2 * TINY.width) and _rel(ours, reference) < 1e-4
    tower = load_text_tower(files["head"])  # part="patch": the half compared with patch tokens and regions
    assert tower.embed_dim == TINY.width and tower.context_length == 77
    assert _rel(tower.encode_text(tokens), reference[:, TINY.width:]) < 1e-4
    assert torch.equal(patch_part(ours), ours[:, TINY.width:])


def test_tokenizer_is_open_clip_simple_tokenizer_on_the_given_file(bpe, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    ours = load_tokenizer(bpe)(TEXTS)
    assert torch.equal(ours, SimpleTokenizer(bpe_path=bpe)(TEXTS))
    assert ours[0, 0] == 49406 and ours[3, -1] == 49407 and ours[0, int(ours[0].argmax())] == 49407
    # another vocabulary file (half the merges) is really the one read
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    small = tmp_path / "small_vocab.txt.gz"
    small.write_bytes(gzip.compress("\n".join(lines[:20000]).encode("utf-8")))
    from_small = load_tokenizer(small)(TEXTS)
    assert torch.equal(from_small, SimpleTokenizer(bpe_path=str(small))(TEXTS)) and not torch.equal(from_small, ours)
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6.txt.gz"):
        load_tokenizer(tmp_path / "absent.txt.gz")


def test_backbone_contract(model):
    check_grid_contract(model, _image, (37, 53), 16, TINY.width)


def test_a_reshaped_tensor_is_refused(files, tmp_path):
    sd = torch.load(files["head"], weights_only=True)
    sd = {k: (v[:, :40] if k == "visual_model.head.blocks.0.attn.qkv.weight" else v) for k, v in sd.items()}
    torch.save(sd, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match="narrow.pth.*shape differs"):
        load_dinotxt(files["backbone"], tmp_path / "narrow.pth")


def test_zero_shot_segmentation_scores_head_patch_tokens_against_the_second_half_of_the_text(tmp_path):
    """eval.py's zero-shot task on MiniVOC with dino.txt (tiny random files where `weights: random` looks,
    the BPE file beside the head): region predictions are the argmax of cosines to prompt ensembles of
    the second half of the plain-torch text forward, and the region vectors pool the head's patch tokens."""
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    from bench.rle import decode_rles
    from bench.shards import read_split
    from bench.tasks.zeroshot import text_names
    from bench.weights import read_checkpoint
    from tests.test_zeroshot import config, predictions, run

    random = tmp_path / "data" / "checkpoints" / "random"
    head = save_random_checkpoint(random / "dinotxt_vitl16_tiny_random.pth", bpe=True)
    dinov3.save_random_checkpoint("dinov3_vitl16", random / "dinov3_vitl16_tiny_random.pth")
    cfg = config(tmp_path, "dinotxt_vitl16_region/minivoc", "regions.params.slic.num_components=30")
    metrics = run(cfg)
    assert metrics["num_images"] == 6 and cfg.zeroshot.templates == "simple"

    sd, tokenize = read_checkpoint(head), SimpleTokenizer(bpe_path=str(random / BPE_FILE))
    rows = []
    for name in text_names(cfg):
        halves = text_reference(sd, tokenize([t(name) for t in SIMPLE_IMAGENET_TEMPLATES]))[:, TINY.width:]
        rows.append(F.normalize(F.normalize(halves, dim=-1).mean(0), dim=0))
    text = torch.stack(rows).double().numpy()
    samples, _ = read_split(Path(cfg.extract.shard_dir) / "val")
    preds, checked, total = predictions(cfg), 0, 0
    for sample in samples:
        feats = sample["feats"].astype(np.float64)
        assert feats.shape[1] == TINY.width
        best = np.argmax((feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ text.T, axis=1)
        masks = decode_rles(sample["rle"])
        once = masks.sum(axis=0) == 1
        assert np.array_equal(preds[sample["key"]][once], best[masks.argmax(axis=0)[once]]), sample["key"]
        checked, total = checked + int(once.sum()), total + once.size
    assert checked > 0.5 * total
