"""dino.txt on DINOv3 ViT-L/16: the frozen backbone, its vision head and text encoder, from the official files.

Meta's torch hub entry ``dinov3_vitl16_dinotxt_tet1280d20h24l`` (facebookresearch/dinov3, dinov3/hub/dinotxt.py)
is the frozen ``dinov3_vitl16`` backbone (``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth``, loaded here by
``bench.backbones.dinov3``) plus one file, ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth``,
holding everything else; the tokenizer is CLIP's BPE (``bpe_simple_vocab_16e6.txt.gz``). Nothing is downloaded.

    model = load_dinotxt("ckpt/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
                         "ckpt/dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth")
    grid = model.features(image)                       # (1024, ceil(H/16), ceil(W/16)), in the text space
    text = model.encode_text(load_tokenizer("ckpt/bpe_simple_vocab_16e6.txt.gz")(["a dog"]))  # (1, 2048)
    cosine(grid[:, i, j], patch_part(text)[0])         # dense use: the second half of the text embedding

The architecture, as read in dinov3/eval/text/{dinotxt_model, vision_tower, text_tower, text_transformer}.py and
dinov3/layers/{block, attention, ffn_layers, layer_scale}.py (forks of facebookresearch/dinov3; the hub config):
  vision  the backbone's last block, after its final norm (``get_intermediate_layers(n=1, norm=True)``), as one
          sequence [class, 4 registers, h*w patches] (1024 wide) -> ``visual_model.head``: 2 pre-norm blocks
          (16 heads = the backbone's, qkv without bias, proj with bias, LayerScale ``ls1``/``ls2``, SwiGLU MLP
          ``w3(silu(w1 x) * w2 x)`` with hidden int(4096 * 2/3) rounded up to a multiple of 64 = 2752, all
          LayerNorms eps 1e-5, no RoPE and no mask) -> ``ln_final``. No projection: embed_dim 2048 = 2 x 1024.
          Image embedding (``encode_image``) = cat[class token, mean of the h*w patch tokens], in that order.
  text    ``text_model.backbone``: token embedding (49408 x 1280) + learned positions (77 x 1280), 24 pre-norm
          causal blocks (20 heads, qkv without bias, exact GELU MLP 1280 -> 5120 -> 1280, no LayerScale)
          -> ``ln_final``; ``text_model.head``: no blocks, ``linear_projection`` 1280 -> 2048 without bias; the
          embedding is the token at argmax(token ids) (end of text). Its first half pairs with the class
          token, its second half with the mean patch token.
  dense   a patch token of the head (``encode_image_with_patch_tokens``' second output) against the second
          half of the text embedding (dinov3 README example; the zero-shot segmentation notebook drops the
          first half, "corresponds to the CLS token"). Uncertain: that notebook actually unpacks the third
          output of ``get_class_and_patch_tokens``, the *backbone's* patch tokens (facebookresearch/dinov3
          issue #355, open); ``dense="backbone"`` gives those instead. Default "head".

Module and parameter names below are the official ones, so the file loads strictly, with no converter:
``visual_model.head.{blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.w1/w2/w3, ls2.gamma}, ln_final}``,
``text_model.backbone.{token_embedding, positional_embedding, blocks.N.{attention_norm, attention.qkv,
attention.proj, ffn_norm, feed_forward.fc1/fc2}, ln_final}``, ``text_model.head.linear_projection.weight``,
``logit_scale``. The hub loads this file with ``strict=False`` into the whole model, so the key set above is
inferred from the modules (no released file was available here to list its keys); a file with other keys is
refused, naming them. (timm's EvaBlock and open_clip's TextTransformer compute the same blocks, but under
other names, with a fused in_proj bias and a transposed projection: converters both ways for no gain.)

Patch grid: as ``dinov3_vitl16`` (zero centre-padding to a multiple of 16, then ImageNet normalisation), but
the head attends over every token, so each vector depends on the whole (padded) image.

Tiny models: ``TINY`` (the tiny DINOv3 backbone's width 48 and 2 heads; a 2-layer 32-wide text encoder with
the full vocabulary and context) with ``save_random_checkpoint(path)``; pair it with
``bench.backbones.dinov3.save_random_checkpoint("dinov3_vitl16", path)``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.batching import forward_in_groups

if TYPE_CHECKING:
    from bench.backbones.vit import ViTBackbone

BACKBONE = "dinov3_vitl16"
HEAD_FILE = "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Quoted in error messages only, never fetched.
PUBLISHED = ("https://dl.fbaipublicfiles.com/dinov3/dinov3_vitl16/" + HEAD_FILE + " (the URL Meta e-mails after "
             "the request at https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/)")
BPE_URL = "https://dl.fbaipublicfiles.com/dinov3/thirdparty/" + BPE_FILE
REGISTERS = 4
DENSE = ("head", "backbone")


class DinoTxtConfig(NamedTuple):
    width: int            # the backbone's width = the vision head's
    heads: int            # the backbone's heads = the vision head's
    head_blocks: int
    text_width: int
    text_heads: int
    text_layers: int
    context_length: int
    vocab_size: int

    @property
    def embed_dim(self) -> int:  # class token and patch mean, concatenated
        return 2 * self.width


PUBLISHED_CFG = DinoTxtConfig(width=1024, heads=16, head_blocks=2, text_width=1280, text_heads=20, text_layers=24,
                              context_length=77, vocab_size=49408)
TINY = DinoTxtConfig(width=48, heads=2, head_blocks=2, text_width=32, text_heads=2, text_layers=2,
                     context_length=77, vocab_size=49408)  # the full vocabulary: real tokens index it


# ----------------------------------------------------------------------------------------------
# Modules (official names)

class Attention(nn.Module):
    """Multi-head self-attention, fused qkv without bias: (B, N, d) -> (B, N, d); ``causal`` for text."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d/h)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x); hidden = int(4d * 2/3) rounded up to a multiple of 64 (``align_to=64``)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = int(4 * dim * 2 / 3)
        hidden += -hidden % 64
        self.w1, self.w2, self.w3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class HeadBlock(nn.Module):
    """A vision-head block: x + ls1(attn(norm1 x)), then + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim), Attention(dim, heads), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim), SwiGLU(dim), LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionHead(nn.Module):
    def __init__(self, cfg: DinoTxtConfig):
        super().__init__()
        self.blocks = nn.ModuleList(HeadBlock(cfg.width, cfg.heads) for _ in range(cfg.head_blocks))
        self.ln_final = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + 4 + h*w, d) normed backbone tokens -> the same shape, in the text space."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.ln_final(tokens)


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention_norm, self.attention = nn.LayerNorm(dim), Attention(dim, heads, causal=True)
        self.ffn_norm, self.feed_forward = nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class TextTransformer(nn.Module):
    def __init__(self, cfg: DinoTxtConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.blocks = nn.ModuleList(TextBlock(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(cfg.text_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) int64 -> (N, L, text_width)."""
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class TextHead(nn.Module):
    def __init__(self, cfg: DinoTxtConfig):
        super().__init__()
        self.linear_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)


class TextModel(nn.Module):
    def __init__(self, cfg: DinoTxtConfig):
        super().__init__()
        self.backbone, self.head = TextTransformer(cfg), TextHead(cfg)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) int64 token ids -> (N, embed_dim): the end-of-text token (the largest id) projected."""
        x = self.backbone(tokens)
        return self.head.linear_projection(x[torch.arange(len(tokens)), tokens.argmax(dim=-1)])


class VisualModel(nn.Module):  # the backbone itself is not in the file: only ``visual_model.head``
    def __init__(self, cfg: DinoTxtConfig):
        super().__init__()
        self.head = VisionHead(cfg)


class DinoTxtHeads(nn.Module):
    """Everything in the head file: ``visual_model.head``, ``text_model``, ``logit_scale``."""

    def __init__(self, cfg: DinoTxtConfig):
        super().__init__()
        self.cfg = cfg
        self.visual_model, self.text_model = VisualModel(cfg), TextModel(cfg)
        self.logit_scale = nn.Parameter(torch.zeros(1))


# ----------------------------------------------------------------------------------------------
# The backbone and the text tower

class DinoTxtBackbone:
    """dino.txt as a ``Backbone``: (H, W, 3) uint8 -> (width, ceil(H/16), ceil(W/16)) float32 patch tokens of the
    vision head (``dense="head"``) or of the backbone (``dense="backbone"``, see the module docstring);
    ``global_feature`` is the official image embedding, ``encode_text`` the official text embedding."""

    def __init__(self, vit: ViTBackbone, heads: DinoTxtHeads, dense: str = "head", device: str = "cpu"):
        if dense not in DENSE:
            raise ValueError(f"dense={dense!r} is unknown; valid: {', '.join(DENSE)}")
        self.vit, self.dense, self.device = vit, dense, torch.device(device)
        self.heads = heads.to(self.device).eval().requires_grad_(False)
        self.model = self.heads  # what the backbone contract's frozen check looks at (the ViT is frozen by ViTBackbone)
        self.patch_size, self.embed_dim = vit.patch_size, heads.cfg.width
        self.context_length = heads.cfg.context_length

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, Hp, Wp) preprocessed -> head class tokens (B, d), head patch grids (B, d, h, w), backbone patch
        grids (B, d, h, w)."""
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        tokens = self.vit.model.forward_features(x.to(self.device))  # (B, 1 + 4 + hw, d), final norm on all
        out = self.heads.visual_model.head(tokens)

        def grid(t):
            return t[:, 1 + REGISTERS:].transpose(1, 2).reshape(len(t), -1, h, w).float()

        return out[:, 0].float(), grid(out), grid(tokens)

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        _, head, backbone = self._tokens(x)
        return (head if self.dense == "head" else backbone).cpu()

    @torch.no_grad()
    def features(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (embed_dim, ceil(H/16), ceil(W/16)) float32 on the CPU."""
        return self._grids(self.vit.preprocess(image)[None])[0]

    @torch.no_grad()
    def features_batch(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """``features`` of each image, in order; same padded sizes share one forward pass."""
        return forward_in_groups([self.vit.preprocess(image) for image in images], self._grids)

    @torch.no_grad()
    def global_feature(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (2 * embed_dim,) float32: cat[head class token, mean of the head patch tokens]
        (the official ``encode_image``, not normalised), comparable with the whole ``encode_text``."""
        cls, patches, _ = self._tokens(self.vit.preprocess(image)[None])
        return torch.cat([cls[0], patches[0].mean(dim=(1, 2))]).cpu()

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L <= context_length) int64 -> (N, 2 * embed_dim) float32 on the CPU, not normalised."""
        if self.heads.text_model is None:
            raise ValueError("this dino.txt backbone was loaded with text=False: load_dinotxt(..., text=True)")
        return self.heads.text_model(tokens.to(self.device)).float().cpu()


def patch_part(text: torch.Tensor) -> torch.Tensor:
    """(..., 2d) text embeddings -> (..., d): the half that pairs with patch tokens (and region vectors)."""
    return text[..., text.shape[-1] // 2:]


class DinoTxtTextTower:
    """The text encoder alone, with ``bench.openvocab.TextTower``'s interface: ``encode_text`` (N, L) int64 ->
    (N, embed_dim) float32. ``part="patch"`` (embed_dim = width): the half that pairs with patch tokens and
    region vectors; ``part="full"`` (2 * width): the whole embedding, for ``global_feature``."""

    def __init__(self, text: TextModel, cfg: DinoTxtConfig, part: str = "patch", device: str = "cpu"):
        if part not in ("patch", "full"):
            raise ValueError(f"part={part!r} is unknown; valid: patch, full")
        self.part, self.device = part, torch.device(device)
        self.text = text.to(self.device).eval().requires_grad_(False)
        self.context_length = cfg.context_length
        self.embed_dim = cfg.width if part == "patch" else cfg.embed_dim

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.text(tokens.to(self.device)).float().cpu()
        return patch_part(out) if self.part == "patch" else out


# ----------------------------------------------------------------------------------------------
# Files

def _shapes(module_or_state) -> dict[str, tuple]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {key: tuple(value.shape) for key, value in state.items()}


def expected_shapes(cfg: DinoTxtConfig) -> dict[str, tuple]:
    """{official key: shape} of a head file of ``cfg``."""
    with torch.device("meta"):
        return _shapes(DinoTxtHeads(cfg))


def read_head_file(path: str | Path) -> tuple[dict[str, torch.Tensor], DinoTxtConfig]:
    """The state dict of a dino.txt head file (published or TINY, told apart by the head's width) and its config.
    Keys and shapes must be exactly the official ones; anything else is refused, naming the file and the fix."""
    from bench.backbones.vit import _read_state_dict
    from bench.weights import state_dict_diff

    path = Path(path).expanduser()
    fix = (f"the head file is {HEAD_FILE}, from {PUBLISHED} (or make a tiny random one with "
           f"bench.backbones.dinotxt.save_random_checkpoint(path))")
    if not path.is_file():
        raise FileNotFoundError(f"dino.txt head checkpoint not found: {path} — {fix}")
    state = _read_state_dict(path)
    if "storage_tokens" in state or "patch_embed.proj.weight" in state:
        raise ValueError(f"checkpoint {path.name} is a DINOv3 backbone, not dino.txt's vision head and text encoder: "
                         f"pass it as backbone_checkpoint, and as head_checkpoint {fix}")
    given = _shapes(state)
    width = given.get("visual_model.head.ln_final.weight", (None,))[0]
    cfg = TINY if width == TINY.width else PUBLISHED_CFG
    expected = expected_shapes(cfg)
    if given != expected:
        raise ValueError(f"checkpoint {path.name} does not hold dino.txt's vision head and text encoder "
                         f"({'tiny ' if cfg is TINY else ''}{BACKBONE}, {cfg}) in the official layout: keys "
                         f"{state_dict_diff(expected, given, limit=4)} — {fix}")
    return {key: value.float() for key, value in state.items()}, cfg


def load_heads(path: str | Path) -> DinoTxtHeads:
    """The head file's modules, strictly loaded."""
    state, cfg = read_head_file(path)
    with torch.device("meta"):  # not initialised just to be overwritten
        heads = DinoTxtHeads(cfg)
    heads.load_state_dict(state, strict=True, assign=True)
    return heads.eval().requires_grad_(False)


def load_dinotxt(backbone_checkpoint: str | Path, head_checkpoint: str | Path, dense: str = "head",
                 text: bool = True, device: str = "cpu") -> DinoTxtBackbone:
    """dino.txt from the official ``dinov3_vitl16_pretrain_lvd1689m-*.pth`` (or timm's safetensors: any file
    ``load_dinov3_backbone("dinov3_vitl16", ...)`` reads) and ``HEAD_FILE``; a tiny backbone needs a tiny head.
    ``text=False`` drops the text encoder after the file is checked (extraction: ~350M parameters less)."""
    from bench.backbones.dinov3 import load_dinov3_backbone

    heads = load_heads(head_checkpoint)
    if not text:
        heads.text_model = None
    vit = load_dinov3_backbone(BACKBONE, backbone_checkpoint, device=device)
    tiny = vit.name.startswith("tiny")
    if (heads.cfg is TINY) != tiny or vit.model.embed_dim != heads.cfg.width:
        raise ValueError(f"backbone {Path(backbone_checkpoint).name} is {vit.name} ({vit.model.embed_dim} wide) but "
                         f"head {Path(head_checkpoint).name} is {'tiny' if heads.cfg is TINY else 'published'} "
                         f"({heads.cfg.width} wide): use the files of one model (published: "
                         f"{HEAD_FILE} with the {BACKBONE} backbone file)")
    if vit.model.blocks[0].attn.num_heads != heads.cfg.heads:
        raise ValueError(f"backbone {vit.name} has {vit.model.blocks[0].attn.num_heads} heads, the dino.txt head "
                         f"{heads.cfg.heads}")
    return DinoTxtBackbone(vit, heads, dense=dense, device=device)


def load_text_tower(head_checkpoint: str | Path, part: str = "patch", device: str = "cpu") -> DinoTxtTextTower:
    """The text encoder of ``HEAD_FILE`` (the whole file is checked; the vision head is dropped)."""
    heads = load_heads(head_checkpoint)
    return DinoTxtTextTower(heads.text_model, heads.cfg, part=part, device=device)


def load_tokenizer(bpe_path: str | Path, context_length: int = 77):
    """open_clip's ``SimpleTokenizer`` on a local ``bpe_simple_vocab_16e6.txt.gz``: list of N strings ->
    (N, context_length) int64: [start, BPE ids, end] truncated to the context (end kept last), zero-padded —
    the tokenize of dinov3/eval/text/tokenizer.py (OpenAI CLIP's SimpleTokenizer with lower-casing and
    whitespace cleaning). The special tokens are spelt <start_of_text>/<end_of_text> (OpenAI: <|startoftext|>);
    their ids, 49406 and 49407, are the same."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    path = Path(bpe_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"dino.txt's BPE vocabulary not found: {path} — it is {BPE_FILE}, published at {BPE_URL}; open_clip "
            f"ships a file of that name at {default_bpe()} (CLIP's vocabulary, not checked byte for byte here)")
    return SimpleTokenizer(bpe_path=str(path), context_length=context_length)


def random_heads(cfg: DinoTxtConfig = TINY) -> DinoTxtHeads:
    """``DinoTxtHeads`` with random weights from the global RNG, none a no-op: LayerScale gammas in [0.1, 0.5]
    (the hub inits 1e-5), norm weights 1 + N(0, 0.1²), biases N(0, 0.02²), positions N(0, 0.01²), qkv weights of
    std 2/sqrt(width) (PyTorch's default gives near-uniform attention), logit scale log(1/0.07)."""
    heads = DinoTxtHeads(cfg)
    with torch.no_grad():
        for key, value in heads.state_dict().items():  # state_dict order: the file's RNG order
            if key.endswith(".gamma"):
                value.copy_(0.1 + 0.4 * torch.rand_like(value))
            elif key.endswith(".qkv.weight"):
                value.normal_(0, 2 / value.shape[1] ** 0.5)
            elif key.endswith("positional_embedding"):
                value.normal_(0, 0.01)
            elif key == "logit_scale":
                value.fill_(math.log(1 / 0.07))
            elif key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("_norm.weight") \
                    or key.endswith("ln_final.weight"):
                value.add_(torch.randn_like(value) * 0.1)
            elif key.endswith(".bias"):
                value.normal_(0, 0.02)
    return heads


def save_random_checkpoint(path: str | Path, cfg: DinoTxtConfig = TINY, seed: int = 0, bpe: bool = False) -> Path:
    """Write a random head file of ``cfg`` (default TINY) in the official layout (torch.save). The same seed gives
    the same file; the global RNG is untouched. ``bpe``: also copy open_clip's ``BPE_FILE`` into the file's folder
    (unless one is there), where ``bench.openvocab.load_tokenizer`` looks for it."""
    import shutil

    from bench.weights import save_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = random_heads(cfg).state_dict()
    if bpe:
        from open_clip.tokenizer import default_bpe

        target = Path(path).parent / BPE_FILE
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(default_bpe(), target)
    return save_state_dict(state, path)
