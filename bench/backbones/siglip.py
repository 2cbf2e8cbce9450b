"""SigLIP 2 backbones: the timm ViT trunk of open_clip's SigLIP 2 models, dense, at native resolution.

open_clip builds ``ViT-*-SigLIP2*`` as a ``CustomTextCLIP`` whose visual tower is a ``TimmModel``
wrapping a timm ``VisionTransformer`` (``visual.trunk``, ``global_pool='map'``, no projection:
the image embedding is the trunk's attention-pool output, width = joint-space dim). The
published files (``open_clip_model.safetensors``, also ``open_clip_pytorch_model.bin``, in the
``timm/ViT-*-SigLIP2*`` Hugging Face repos named by open_clip's pretrained config, tag
``webli``) hold the whole model: ``visual.trunk.*``, ``text.*``, ``logit_scale``, ``logit_bias``.
Only ``visual.trunk.*`` is read; the same timm architecture is built with ``pretrained=False``
and loaded strictly. Nothing is downloaded.

    backbone = load_siglip_backbone("siglip2_vitb16_256", "weights/ViT-B-16-SigLIP2-256/open_clip_model.safetensors")
    grid = backbone.features(image)   # (H, W, 3) uint8 -> (768, ceil(H/16), ceil(W/16)) float32
    dense = load_siglip_backbone(..., project=True).features(image)   # the same shape, in the image-text space

Preprocessing: [0, 1] -> centre zero-padding to a multiple of the patch (pad-before = pad // 2)
-> Normalize(0.5, 0.5) (open_clip's preprocess config of every SigLIP 2 tag), so the padding is
-1, as for the other backbones (black before normalising). No resize: the image's own size.

Features: the trunk's patch tokens after the last block and the final ``norm`` (SigLIP has no
class token or registers, so every token is a patch), (width, h, w). They are NOT in the image-text
space: SigLIP has no ``proj`` matrix (``timm_proj='none'``) and reaches the joint space only through
the attention-pool head (``trunk.attn_pool``, timm's ``AttentionPoolLatent``), whose single learned
query mixes all tokens into one vector per image; ``global_feature`` gives it (open_clip's
``encode_image`` before L2 normalisation).

``project=True``: the dense image-text path (MaskCLIP's idea applied to SigLIP's head). Each patch
token x_i (after the final norm) goes through the head as if the query attended to it alone: with
one key the softmax is 1, so q, k, ``q_norm``, ``k_norm`` and the latent drop out, and the head's
output is y_i = proj(v(x_i)) (v = the value half of ``attn_pool.kv``, heads concatenated in timm's
layout), then y_i + mlp(norm(y_i)), then ``forward_head``'s ``fc_norm``, ``head_drop``, ``head``
(Identity, Dropout(0) and Identity for these trunks: ``global_pool='map'``, ``num_classes=0``).
The head's ``pos_embed`` would be added before ``kv`` as timm does (SigLIP's head has none).
Grid: (joint dim, h, w); for an image of a single patch it equals ``global_feature`` exactly. It
is the head's output for a one-token image, NOT something SigLIP was trained to produce per patch
(training only ever pooled over all tokens of an image), so how well text matches it is an
empirical question, as for MaskCLIP's value path in CLIP.

Position embeddings: SigLIP's table is a fixed (1, g*g, width) grid (g = image_size / patch,
e.g. 16 for ViT-B-16-SigLIP2-256). The trunk is built with ``dynamic_img_size=True``, so timm's
``resample_abs_pos_embed`` resamples it to the actual h x w grid on every forward: bicubic,
``align_corners=False``, antialiased (the antialias acts only when the grid shrinks), the table
untouched at exactly g x g. This is what timm does for these trunks at another input size.

Tiny models (tests, smoke runs): ``TINY`` overrides depth/width of the same timm class;
``save_random_checkpoint(name, path)`` writes one in open_clip's full-model layout (with a tiny
text tower) and a tiny tokenizer beside it (``save_random_tokenizer``); ``tiny=None`` at load infers
it from the file.

Text: the same file holds the text tower (``text.*``), and the published repository holds the Gemma
tokenizer beside it (``TOKENIZER_FILES``; open_clip's ``hf_tokenizer_name`` is the model's own repo);
``bench.openvocab`` loads both for open-vocabulary queries, which accept region vectors of the
``project=True`` grid only (``bench.openvocab.check_region_space``).
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.backbones.batching import forward_in_groups
from bench.images import to_rgb8
from bench.padding import center_pad_amounts
from bench.weights import read_checkpoint, save_state_dict, state_dict_diff

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # open_clip's pretrained cfg, every SigLIP 2 'webli' tag


class SiglipRow(NamedTuple):
    open_clip_model: str  # open_clip config name; also the Hugging Face repo timm/<name>
    timm_arch: str        # the trunk: the timm model open_clip's config names
    patch_size: int
    embed_dim: int        # trunk width = channels of features()
    image_size: int       # training resolution: the table is (image_size / patch)^2


def _row(model: str, arch: str, patch: int, dim: int, size: int) -> SiglipRow:
    return SiglipRow(model, arch, patch, dim, size)


SIGLIP_BACKBONES = {
    "siglip2_vitb16": _row("ViT-B-16-SigLIP2", "vit_base_patch16_siglip_224", 16, 768, 224),
    **{f"siglip2_vitb16_{s}": _row(f"ViT-B-16-SigLIP2-{s}", f"vit_base_patch16_siglip_{s}", 16, 768, s)
       for s in (256, 384, 512)},
    **{f"siglip2_vitl16_{s}": _row(f"ViT-L-16-SigLIP2-{s}", f"vit_large_patch16_siglip_{s}", 16, 1024, s)
       for s in (256, 384, 512)},
    "siglip2_so400m14": _row("ViT-SO400M-14-SigLIP2", "vit_so400m_patch14_siglip_224", 14, 1152, 224),
    "siglip2_so400m14_378": _row("ViT-SO400M-14-SigLIP2-378", "vit_so400m_patch14_siglip_378", 14, 1152, 378),
    **{f"siglip2_so400m16_{s}": _row(f"ViT-SO400M-16-SigLIP2-{s}", f"vit_so400m_patch16_siglip_{s}", 16, 1152, s)
       for s in (256, 384, 512)},
    **{f"siglip2_gopt16_{s}": _row(f"ViT-gopt-16-SigLIP2-{s}", f"vit_giantopt_patch16_siglip_{s}", 16, 1536, s)
       for s in (256, 384)},
}

OFFICIAL_FILE = "open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}  # same timm class, fewer blocks, narrower
TINY_VOCAB = 512  # the tiny text tower's vocabulary = save_random_tokenizer's, token for token
# the Gemma tokenizer files of every timm/ViT-*-SigLIP2-* repository that transformers.AutoTokenizer reads
# (the repositories also hold special_tokens_map.json, read when present)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def published_at(name: str) -> str:
    return f"https://huggingface.co/timm/{SIGLIP_BACKBONES[name].open_clip_model}"


def _spec(name: str) -> SiglipRow:
    if name not in SIGLIP_BACKBONES:
        raise ValueError(f"unknown SigLIP 2 backbone '{name}'; valid names: {sorted(SIGLIP_BACKBONES)}")
    return SIGLIP_BACKBONES[name]


def create_trunk(name: str, tiny: bool = False):
    """The randomly initialised timm trunk of ``name`` as open_clip builds it (``num_classes=0``,
    ``global_pool='map'``), plus ``dynamic_img_size``; no download."""
    import timm  # here, not at import: extraction workers never pay for it

    return timm.create_model(_spec(name).timm_arch, pretrained=False, num_classes=0, global_pool="map",
                             dynamic_img_size=True, **(TINY if tiny else {}))


# ----------------------------------------------------------------------------------------------
# The backbone (also RADIO's: any timm ViT whose forward_intermediates gives NCHW patch grids)

class TimmGridBackbone:
    """A frozen timm ViT as a ``Backbone``: (H, W, 3) uint8 -> (embed_dim, ceil(H/p), ceil(W/p)) float32.

    The grid is ``forward_intermediates(indices=[last], norm=True)``: the last block's tokens,
    the model's final norm applied (Identity where the model has none), prefix tokens (class,
    registers) dropped. ``dtype`` "bf16" | "fp16" is a CUDA autocast; the CPU runs fp32.
    """

    def __init__(self, model, mean: Sequence[float], std: Sequence[float], device: str = "cpu",
                 dtype: str = "fp32", name: str = "vit"):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}'; valid: {sorted(DTYPES)}")
        self.name, self.device, self.dtype = name, torch.device(device), dtype
        patch = model.patch_embed.patch_size if hasattr(model, "patch_embed") else model.embeds.patch_size
        self.patch_size = int(patch[0])
        self.embed_dim = model.embed_dim
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, Hp, Wp) float32: [0, 1], centre-padded with 0, then normalised."""
        x = torch.from_numpy(to_rgb8(image)).permute(2, 0, 1).float().div(255)
        (top, bottom), (left, right) = (center_pad_amounts(s, self.patch_size) for s in x.shape[1:])
        return (F.pad(x, (left, right, top, bottom)) - self.mean) / self.std

    @torch.no_grad()
    def features(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (embed_dim, ceil(H/p), ceil(W/p)) float32 on the CPU."""
        return self._grids(self.preprocess(image)[None])[0]

    @torch.no_grad()
    def features_batch(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """``features`` of each image, in order; images of equal padded size share one forward pass."""
        return forward_in_groups([self.preprocess(image) for image in images], self._grids)

    def _autocast(self):
        return (torch.autocast("cuda", dtype=DTYPES[self.dtype])
                if self.device.type == "cuda" and self.dtype != "fp32" else nullcontext())

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hp, Wp) preprocessed -> (B, embed_dim, h, w) float32 on the CPU."""
        last = len(self.model.blocks) - 1
        with self._autocast():
            (grid,) = self.model.forward_intermediates(x.to(self.device), indices=[last], norm=True,
                                                       output_fmt="NCHW", intermediates_only=True)
        return grid.float().cpu()


class SiglipBackbone(TimmGridBackbone):
    """SigLIP 2 trunk patch tokens, or with ``project`` their per-token attention-pool head outputs
    (the module docstring); build with ``load_siglip_backbone``."""

    def __init__(self, model, mean: Sequence[float], std: Sequence[float], device: str = "cpu",
                 dtype: str = "fp32", name: str = "siglip2", project: bool = False):
        super().__init__(model, mean, std, device=device, dtype=dtype, name=name)
        self.project = project
        if project:
            self.embed_dim = model.attn_pool.out_features  # = the joint dim (head: Identity, num_classes=0)

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hp, Wp) preprocessed -> (B, embed_dim, h, w) float32 on the CPU."""
        grid = super()._grids(x)  # (B, width, h, w)
        if not self.project:
            return grid
        b, _, h, w = grid.shape
        with self._autocast():
            tokens = self.dense_head(grid.to(self.device).flatten(2).transpose(1, 2))  # (B, h*w, D)
        return tokens.transpose(1, 2).reshape(b, -1, h, w).float().cpu()

    def dense_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, width) trunk tokens after the final norm -> (B, N, D): ``forward_head`` of each token
        alone, i.e. timm's ``AttentionPoolLatent.forward`` with one key (softmax = 1, so only the
        value half of ``kv`` matters), then ``fc_norm``, ``head_drop``, ``head`` as ``forward_head``."""
        pool, model = self.model.attn_pool, self.model
        if pool.pos_embed is not None:  # timm adds a fixed-length table to the whole sequence
            if x.shape[1] != pool.pos_embed.shape[0]:
                raise ValueError(f"{self.name}'s attention pool has a {pool.pos_embed.shape[0]}-token position "
                                 f"table, which timm adds to the sequence; this image has {x.shape[1]} tokens")
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        width = pool.kv.out_features // 2  # kv's outputs: [k of every head | v of every head]
        bias = None if pool.kv.bias is None else pool.kv.bias[width:]
        y = pool.proj_drop(pool.proj(F.linear(x, pool.kv.weight[width:], bias)))
        if pool.mlp is not None:
            y = y + pool.mlp(pool.norm(y))
        return model.head(model.head_drop(model.fc_norm(y)))

    @torch.no_grad()
    def global_feature(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (D,): the attention-pooled image embedding (open_clip's
        ``encode_image(normalize=False)``), the image padded as for ``features``; the same with or
        without ``project``."""
        with self._autocast():
            pooled = self.model.forward_head(self.model.forward_features(self.preprocess(image)[None].to(self.device)))
        return pooled[0].float().cpu()


# ----------------------------------------------------------------------------------------------
# Checkpoints

def read_trunk_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``visual.trunk.*`` of an open_clip checkpoint, prefix stripped (``module.`` and a
    ``{"state_dict": ...}`` wrapper of open_clip training checkpoints are unwrapped)."""
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    prefix = "visual.trunk."
    return {k.removeprefix("module.")[len(prefix):]: v.float() for k, v in state.items()
            if k.removeprefix("module.").startswith(prefix) and isinstance(v, torch.Tensor)}


def _facts(shapes: dict[str, tuple]) -> str:
    proj = shapes.get("patch_embed.proj.weight")
    if proj is None:
        return "no SigLIP trunk (no visual.trunk.patch_embed.proj.weight)"
    depth = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    pos = shapes.get("pos_embed", (0, 0))[1]
    return (f"width {proj[0]}, {depth} blocks, patch {proj[-1]}, {round(pos ** 0.5)}x{round(pos ** 0.5)} "
            f"position table" + ("" if "attn_pool.latent" in shapes else ", no attention pool"))


def load_siglip_backbone(name: str, checkpoint: str | Path, device: str = "cpu", tiny: bool | None = None,
                         dtype: str = "fp32", project: bool = False) -> SiglipBackbone:
    """The frozen SigLIP 2 backbone ``name`` (a key of SIGLIP_BACKBONES) with weights from a local file.

      checkpoint  open_clip's file of that model (``open_clip_model.safetensors`` or
                  ``open_clip_pytorch_model.bin``); only ``visual.trunk.*`` is read
      tiny        build the TINY variant; None infers it from the file (width and depth of TINY)
      project     features in the image-text space: each patch token through the attention-pool
                  head alone (the module docstring); False: the trunk's patch tokens
    """
    spec = _spec(name)
    path = Path(checkpoint).expanduser()
    official = f"the official file is {OFFICIAL_FILE}, published at {published_at(name)}"
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — {official} (or make a random tiny one "
                                f"with bench.backbones.siglip.save_random_checkpoint('{name}', path))")
    state = read_trunk_state_dict(path)
    given = {k: tuple(v.shape) for k, v in state.items()}
    if tiny is None:
        proj = given.get("patch_embed.proj.weight", (0,))
        tiny = proj[0] == TINY["embed_dim"] and sum(k.endswith("norm1.weight") for k in given) == TINY["depth"]
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_trunk(name, tiny).state_dict().items()}
    if given != expected:  # before loading: timm would not resample a wrong table, but say what the file is
        want = f"tiny {name} (TINY={TINY})" if tiny else f"{name} ({spec.open_clip_model})"
        raise ValueError(f"checkpoint {path} does not fit {want}, which needs {_facts(expected)}; the file holds "
                         f"{_facts(given)}. Keys: {state_dict_diff(expected, given, limit=4, prefix='visual.trunk.')}"
                         f" — {official}")
    trunk = create_trunk(name, tiny)
    trunk.load_state_dict(state, strict=True)
    return SiglipBackbone(trunk, SIGLIP_MEAN, SIGLIP_STD, device=device, dtype=dtype,
                          name=f"tiny {name}" if tiny else name, project=project)


def tiny_text_cfg(name: str) -> dict:
    """open_clip's text config of ``name`` (SigLIP 2's Gemma-tokenizer text tower), shrunk."""
    import open_clip

    text = dict(open_clip.get_model_config(_spec(name).open_clip_model)["text_cfg"])
    text.pop("hf_tokenizer_name", None)
    text.pop("tokenizer_kwargs", None)
    return dict(text, vocab_size=TINY_VOCAB, width=TINY["embed_dim"], heads=TINY["num_heads"], layers=1)


# Gemma's special tokens at Gemma's ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4), then its 256
# byte-fallback tokens; the rest of the tiny vocabulary is BPE merges learnt from OpenAI's 80 ImageNet templates
# filled with these names
_GEMMA_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_TINY_CORPUS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                      "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
                      "train", "tv monitor", "a step ladder", "a person riding a horse")


def save_random_tokenizer(directory: str | Path) -> list[Path]:
    """A tiny Gemma-style tokenizer in ``directory`` (``TOKENIZER_FILES``), as the timm SigLIP 2
    repositories ship theirs: ``tokenizer.json`` (byte-fallback BPE, spaces -> "▁", built with the
    ``tokenizers`` library: exactly TINY_VOCAB tokens, merges learnt from prompt sentences) and
    ``tokenizer_config.json`` (``GemmaTokenizer``; <eos> appended, no <bos>, pad right: choices for the
    tiny one, the published files carry their own, which AutoTokenizer applies alike). Deterministic;
    ``transformers.AutoTokenizer`` loads it as a fast tokenizer. Returns the two paths."""
    import json

    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = [*_GEMMA_SPECIAL, *(f"<0x{i:02X}>" for i in range(256))]
    tokenizer.train_from_iterator([t(n) for n in _TINY_CORPUS_NAMES for t in OPENAI_IMAGENET_TEMPLATES],
                                  trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=special,
                                                      show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A <eos>", pair="$A <eos> $B <eos>",
                                                             special_tokens=[("<eos>", 1)])
    if tokenizer.get_vocab_size() != TINY_VOCAB:  # the tower's embedding table has TINY_VOCAB rows
        raise RuntimeError(f"the tiny tokenizer has {tokenizer.get_vocab_size()} tokens, not {TINY_VOCAB}")
    config = {"tokenizer_class": "GemmaTokenizer", "pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
              "unk_token": "<unk>", "mask_token": "<mask>", "add_bos_token": False, "add_eos_token": True,
              "padding_side": "right", "model_max_length": 64}
    paths = [directory / f for f in TOKENIZER_FILES]
    tokenizer.save(str(paths[0]))
    paths[1].write_text(json.dumps(config, indent=2) + "\n")
    return paths


def save_random_checkpoint(name: str, path: str | Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """A random tiny ``name`` in open_clip's full-model layout (``visual.trunk.*`` of the TINY
    trunk, a tiny ``text.*`` tower built by open_clip, ``logit_scale``, ``logit_bias``);
    ``.safetensors`` path: safetensors, else torch.save. Same seed, same file; global RNG untouched.
    Norm weights and biases (timm: 1 / 0) and the pool's latent query are randomised too.
    ``tokenizer``: also write the tiny tokenizer (``save_random_tokenizer``) into the file's folder,
    where ``bench.openvocab.load_tokenizer`` looks for it, as in the published repositories."""
    from open_clip.model import _build_text_tower

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = create_trunk(name, tiny=True)
        text = _build_text_tower(TINY["embed_dim"], tiny_text_cfg(name))
        with torch.no_grad():
            for param in [*trunk.parameters(), *text.parameters()]:
                if param.ndim == 1:
                    param.add_(0.1 * torch.randn_like(param))
            trunk.pos_embed.normal_(0, 0.5)  # timm inits it at std 0.02: make position matter
        state = {**{f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()},
                 **{f"text.{k}": v for k, v in text.state_dict().items()},
                 "logit_scale": torch.tensor(np.log(10.0), dtype=torch.float32),
                 "logit_bias": torch.tensor(-10.0)}
    if tokenizer:
        save_random_tokenizer(Path(path).parent)
    return save_state_dict(state, path)


SIGLIP_FAMILY = {name: partial(load_siglip_backbone, name) for name in SIGLIP_BACKBONES}
