"""ViT backbones (DINOv2 with and without registers, DINO, supervised ImageNet) from timm's ``VisionTransformer``
and a local weights file.

A backbone is a name, a weights file and its preprocessing: ``VIT_BACKBONES`` maps each name to
the timm architecture, patch size, width, depth, mean/std, the official file and where it is
published. Nothing is ever downloaded: timm models are built with ``pretrained=False`` and the
weights come from ``checkpoint``, a local path.

    backbone = load_vit_backbone("dinov2_vitl14", "ckpt/dinov2_vitl14_pretrain.pth")
    grid = backbone.features(image)   # (H, W, 3) uint8 -> (1024, ceil(H/14), ceil(W/14)) float32

Checkpoint formats, told apart by their keys:
  official DINOv2  ``mask_token`` present (ViT-g: SwiGLU ``mlp.w12/w3``); mapped to timm names by
                   timm's own ``_convert_dinov2`` (drops ``mask_token``, w12/w3 -> fc1/fc2). With registers
                   (``*_reg4_pretrain.pth``: ``register_tokens`` (1, 4, d), ``pos_embed`` (1, 1+37*37, d))
                   it also moves ``register_tokens`` -> ``reg_token`` and folds the class row of
                   ``pos_embed`` into ``cls_token``, giving timm's ``no_embed_class`` layout (pos (1, 37*37, d))
  timm             timm names as they are: the official DINO file (identical to timm's ViT-B/16
                   layout) and timm's Hugging Face files (``model.safetensors``,
                   ``pytorch_model.bin``) for any row; ``head.*`` / ``pre_logits.*`` are dropped
A ``.safetensors`` path is read with safetensors, anything else with ``torch.load(weights_only=True)``.
Keys and shapes are compared before a strict load, so a file of another backbone fails with a
message saying what it holds instead of timm's silent patch/pos-embed resampling.

Preprocessing, as the released code (``extract_features.py``): ToTensor ([0, 1]) -> zero
centre-padding to a multiple of the patch (pad-before = pad // 2) -> Normalize(mean, std). The
padded border is therefore black (-mean/std), not 0 in normalised space as in DINOv2's own
segmentation notebook, which pads after normalising; ``pad_after_normalize=True`` does that.

Features: the patch tokens of ``layers`` (default: the last block) with the final LayerNorm
applied — DINOv2's ``get_intermediate_layers(norm=True)``, DINO's ``get_intermediate_layers`` and
the released ImageNet hook on ``model.norm`` all do this — prefix tokens (class token and, for the
``*_reg`` rows, the 4 registers) dropped, concatenated on channels: (d * len(layers), h, w).

Position embeddings at other grid sizes (``pos_interp`` of a row):
  "dino"  as DINO/DINOv2's ``interpolate_pos_encoding`` (torch hub, what the paper ran): bicubic
          with scale factor (n + 0.1) / M, no antialiasing, the table itself at the native M x M
  "timm"  timm's ``resample_abs_pos_embed`` (bicubic, antialiased to the exact size): what the
          released ImageNet path (timm, ``dynamic_img_size=True``) ran, and exactly what the official
          DINOv2 *register* models do (their hub builders set ``interpolate_antialias=True,
          interpolate_offset=0.0``: bicubic to ``size=(h, w)``, antialiased), so the ``*_reg`` rows use it
  "rope"  no position table (DINOv3, ``bench.backbones.dinov3``): rotary embeddings on the grid
They differ visibly when the grid shrinks (e.g. 37 -> 27 for a 375-pixel VOC side). "dino" is
installed on the model instance (its ``_pos_embed``), never on timm's class.

Tiny models (tests, smoke runs): ``TINY`` overrides depth/width of the same timm class.
``save_random_checkpoint(name, path)`` writes one in the backbone's official format; at load,
``tiny=None`` infers it from the file (tiny iff its embed dim and depth are TINY's). The tiny
S/B/L DINOv2 models are one architecture, so their files are interchangeable.
"""
from __future__ import annotations

import re
import types
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.backbones.batching import forward_in_groups
from bench.padding import center_pad_amounts
from bench.images import to_rgb8
from bench.weights import read_checkpoint, save_state_dict, state_dict_diff

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ViTRow(NamedTuple):
    arch: str                  # timm model name (with the pretrained tag whose cfg gives mean/std)
    patch_size: int
    embed_dim: int
    depth: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int              # training resolution: the stored pos-embed grid is img_size / patch
    file: str                  # the official weights file name
    published: str             # where that file is published
    official_format: str       # "dinov2" (original DINOv2 keys) | "timm"
    pos_interp: str            # "dino" | "timm", see the module docstring


# Where the official files are published: quoted in error messages only, never fetched.
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/{0}/{0}_pretrain.pth"
_DINOV2_REG = "https://dl.fbaipublicfiles.com/dinov2/{0}/{0}_reg4_pretrain.pth"  # torch hub dinov2_*14_reg
VIT_BACKBONES = {
    "dinov2_vits14": ViTRow("vit_small_patch14_dinov2.lvd142m", 14, 384, 12, IMAGENET_MEAN, IMAGENET_STD, 518,
                            "dinov2_vits14_pretrain.pth", _DINOV2.format("dinov2_vits14"), "dinov2", "dino"),
    "dinov2_vitb14": ViTRow("vit_base_patch14_dinov2.lvd142m", 14, 768, 12, IMAGENET_MEAN, IMAGENET_STD, 518,
                            "dinov2_vitb14_pretrain.pth", _DINOV2.format("dinov2_vitb14"), "dinov2", "dino"),
    "dinov2_vitl14": ViTRow("vit_large_patch14_dinov2.lvd142m", 14, 1024, 24, IMAGENET_MEAN, IMAGENET_STD, 518,
                            "dinov2_vitl14_pretrain.pth", _DINOV2.format("dinov2_vitl14"), "dinov2", "dino"),
    "dinov2_vitg14": ViTRow("vit_giant_patch14_dinov2.lvd142m", 14, 1536, 40, IMAGENET_MEAN, IMAGENET_STD, 518,
                            "dinov2_vitg14_pretrain.pth", _DINOV2.format("dinov2_vitg14"), "dinov2", "dino"),
    # DINOv2 with 4 registers: the registers have no position embedding and are dropped from the grid
    **{f"dinov2_vit{size}14_reg": ViTRow(f"vit_{arch}_patch14_reg4_dinov2.lvd142m", 14, dim, depth, IMAGENET_MEAN,
                                          IMAGENET_STD, 518, f"dinov2_vit{size}14_reg4_pretrain.pth",
                                          _DINOV2_REG.format(f"dinov2_vit{size}14"), "dinov2", "timm")
       for size, arch, dim, depth in [("s", "small", 384, 12), ("b", "base", 768, 12), ("l", "large", 1024, 24),
                                      ("g", "giant", 1536, 40)]},
    "dino_vitb16": ViTRow("vit_base_patch16_224.dino", 16, 768, 12, IMAGENET_MEAN, IMAGENET_STD, 224,
                          "dino_vitbase16_pretrain.pth",
                          "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                          "timm", "dino"),
    # The paper's "ImageNet" model (ImageNet-21k supervised, not fine-tuned on 1k), here with its
    # own normalisation (mean = std = 0.5, timm's pretrained_cfg); the released code applied none.
    "imagenet_vitl": ViTRow("vit_large_patch32_224.orig_in21k", 32, 1024, 24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224,
                            "model.safetensors (or pytorch_model.bin)",
                            "https://huggingface.co/timm/vit_large_patch32_224.orig_in21k", "timm", "timm"),
}

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # same timm class, fewer blocks, narrower
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _row(name: str) -> ViTRow:
    if name not in VIT_BACKBONES:
        raise ValueError(f"unknown ViT backbone '{name}'; valid names: {sorted(VIT_BACKBONES)}")
    return VIT_BACKBONES[name]


def create_vit(name: str, tiny: bool = False) -> VisionTransformer:
    """The randomly initialised timm model of ``name`` (its TINY variant if ``tiny``); no download."""
    import timm  # here, not at import: ~2 s that extraction workers and colour-texture runs never need

    row = _row(name)
    overrides = TINY if tiny else {}
    return timm.create_model(row.arch, pretrained=False, dynamic_img_size=True, num_classes=0,
                             img_size=row.img_size, **overrides)


# ----------------------------------------------------------------------------------------------
# Position embeddings

def interpolate_patch_pos_embed(patch_pos: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """(1, M*M, d) stored patch position table -> (1, h*w, d) for a grid (h, w); ``mode`` "dino" | "timm"."""
    count, dim = patch_pos.shape[1:]
    side = int(round(count ** 0.5))
    h, w = grid
    if (h, w) == (side, side):
        return patch_pos
    if mode == "timm":
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(patch_pos, new_size=[h, w], old_size=[side, side], num_prefix_tokens=0)
    if mode != "dino":
        raise ValueError(f"unknown pos_interp '{mode}'; valid: 'dino', 'timm'")
    table = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # DINO's "historical kludge": the +0.1 makes floor(M * scale) = n and also shifts the
    # sampling positions slightly (src = (dst + 0.5) * M / (n + 0.1) - 0.5).
    table = F.interpolate(table, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
    assert table.shape[-2:] == (h, w), (table.shape, grid)
    return table.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patch_pos.dtype)


def _dino_pos_embed(self: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Replacement for ``VisionTransformer._pos_embed`` giving DINO/DINOv2's interpolation.
    x: (B, h, w, d) patch embeddings -> (B, 1 + h*w, d) tokens (cls first)."""
    batch, h, w, dim = x.shape
    patch_pos = interpolate_patch_pos_embed(self.pos_embed[:, 1:], (h, w), "dino")
    cls = self.cls_token.expand(batch, -1, -1) + self.pos_embed[:, :1]
    return self.pos_drop(torch.cat([cls, x.reshape(batch, h * w, dim) + patch_pos], dim=1))


# ----------------------------------------------------------------------------------------------
# The backbone

class ViTBackbone:
    """A frozen timm ViT as a ``Backbone``: (H, W, 3) uint8 -> (embed_dim, ceil(H/p), ceil(W/p)) float32.

      model                a timm VisionTransformer (or DINOv3's Eva) built with dynamic_img_size=True, weights loaded
      mean, std            per-channel normalisation of the [0, 1] image
      layers               block indices (negative count from the end) whose tokens are concatenated
                           on channels, in this order; None = the last block. Each goes through the
                           final norm. embed_dim = model width * len(layers)
      add_pos_embed        add the (interpolated) patch position embedding to every layer's grid (not for "rope")
      pad_after_normalize  pad with 0 after Normalize (DINOv2 notebook) instead of before (released code)
      pos_interp           "dino" | "timm" | "rope", see the module docstring
      device, dtype        dtype "fp32" | "bf16" | "fp16" is an autocast on CUDA; the CPU runs fp32
    """

    def __init__(self, model: VisionTransformer, mean: Sequence[float], std: Sequence[float],
                 layers: Sequence[int] | None = None, add_pos_embed: bool = False,
                 pad_after_normalize: bool = False, pos_interp: str = "timm", device: str = "cpu",
                 dtype: str = "fp32", name: str = "vit"):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}'; valid: {sorted(DTYPES)}")
        if pos_interp not in ("dino", "timm", "rope"):
            raise ValueError(f"unknown pos_interp '{pos_interp}'; valid: 'dino', 'timm', 'rope'")
        depth = len(model.blocks)
        layers = [depth - 1] if layers is None else list(layers)
        bad = [i for i in layers if not -depth <= i < depth]
        if not layers or bad:
            raise ValueError(f"{name} has {depth} blocks (indices 0..{depth - 1}); layers={layers} "
                             f"is {'empty' if not layers else f'out of range at {bad}'}")
        if model.cls_token is None:
            raise ValueError(f"{name}: expected a ViT with a class token")
        if pos_interp == "dino" and (model.num_prefix_tokens != 1 or model.no_embed_class):
            raise ValueError(f"{name}: pos_interp 'dino' needs one class token sharing the position table")
        if (pos_interp == "rope") != (model.pos_embed is None):
            raise ValueError(f"{name}: pos_interp '{pos_interp}' does not fit a model "
                             f"{'without' if model.pos_embed is None else 'with'} a position table")
        if add_pos_embed and pos_interp == "rope":
            raise ValueError(f"{name} has rotary position embeddings, no table to add: add_pos_embed must be false")
        self.name, self.pos_interp = name, pos_interp
        self.layers = [i % depth for i in layers]
        self.add_pos_embed, self.pad_after_normalize = add_pos_embed, pad_after_normalize
        self.device, self.dtype = torch.device(device), dtype
        self.patch_size = model.patch_embed.patch_size[0]
        self.embed_dim = model.embed_dim * len(self.layers)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        if pos_interp == "dino":  # only this instance; timm's class is untouched
            model._pos_embed = types.MethodType(_dino_pos_embed, model)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, Hp, Wp) float32 normalised and centre-padded."""
        x = torch.from_numpy(to_rgb8(image)).permute(2, 0, 1).float().div(255)  # ToTensor
        (top, bottom), (left, right) = (center_pad_amounts(s, self.patch_size) for s in x.shape[1:])
        if self.pad_after_normalize:
            return F.pad((x - self.mean) / self.std, (left, right, top, bottom))
        return (F.pad(x, (left, right, top, bottom)) - self.mean) / self.std

    def pos_embed_grid(self, h: int, w: int) -> torch.Tensor:
        """(d, h, w) float32: the patch position embedding the model adds on an h x w grid."""
        first = 0 if self.model.no_embed_class else self.model.num_prefix_tokens  # reg rows: patches only
        patch_pos = interpolate_patch_pos_embed(self.model.pos_embed[:, first:], (h, w), self.pos_interp)
        return patch_pos.float().reshape(h, w, -1).permute(2, 0, 1)

    @torch.no_grad()  # not inference_mode: callers may modify the returned grid in place
    def features(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (embed_dim, ceil(H/p), ceil(W/p)) float32 on the CPU."""
        return self._grids(self.preprocess(image)[None])[0]

    @torch.no_grad()
    def features_batch(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """[(H_i, W_i, 3) uint8] -> [(embed_dim, ceil(H_i/p), ceil(W_i/p)) float32 on the CPU], in order.

        Images whose padded sizes are equal go through one forward pass (``bench.backbones.batching``);
        the caller bounds memory by the length of the list. Whether a grid is bit-identical to
        ``features`` of the same image depends on the device's kernels (tests/test_backbones_batch.py)."""
        return forward_in_groups([self.preprocess(image) for image in images], self._grids)

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hp, Wp) preprocessed -> (B, embed_dim, h, w) float32 on the CPU."""
        autocast = (torch.autocast("cuda", dtype=DTYPES[self.dtype])
                    if self.device.type == "cuda" and self.dtype != "fp32" else nullcontext())
        taken = sorted(set(self.layers))
        with autocast:
            grids = self.model.forward_intermediates(x.to(self.device), indices=taken, norm=True, stop_early=True,
                                                     output_fmt="NCHW", intermediates_only=True)
        grids = [grids[taken.index(i)].float() for i in self.layers]  # each (B, d, h, w)
        if self.add_pos_embed:
            pos = self.pos_embed_grid(*grids[0].shape[2:]).to(grids[0].device)
            grids = [grid + pos for grid in grids]
        return torch.cat(grids, dim=1).cpu()

    @torch.no_grad()
    def global_feature(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (model width,) float32: the class token after the last block and the final
        norm (DINOv2's ``x_norm_clstoken``), the image preprocessed as for ``features``."""
        x = self.preprocess(image)[None].to(self.device)
        autocast = (torch.autocast("cuda", dtype=DTYPES[self.dtype])
                    if self.device.type == "cuda" and self.dtype != "fp32" else nullcontext())
        with autocast:
            tokens = self.model.forward_features(x)  # (1, prefix + h*w, width), class token first, final norm
        return tokens[0, 0].float().cpu()


# ----------------------------------------------------------------------------------------------
# Checkpoints

def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(path)
    for wrapper in ("model", "state_dict"):  # training wrappers, as timm's filter unwraps them
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        top = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} is not a state_dict of tensors (top level: {top})")
    return state


def to_timm_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in timm names, the format it came in): official DINOv2 keys are converted."""
    if "mask_token" in state or any(".mlp.w12." in key for key in state):
        from timm.models.vision_transformer import _convert_dinov2

        return _convert_dinov2(dict(state), None), "official DINOv2 keys"
    unused = ("head.", "pre_logits.")  # classifier / old JAX representation layer: not patch features
    return {k: v for k, v in state.items() if not k.startswith(unused)}, "timm keys"


def describe_shapes(shapes: dict[str, tuple]) -> dict:
    """Facts of a timm-keyed ViT state dict, from its {key: shape}: patch, embed_dim, depth, pos grid,
    layer scale, SwiGLU, registers; {} if it has no ViT patch embedding."""
    proj = shapes.get("patch_embed.proj.weight")
    if proj is None or len(proj) != 4:
        return {}
    blocks = {int(m.group(1)) for key in shapes if (m := re.match(r"blocks\.(\d+)\.", key))}
    facts = {"patch": proj[-1], "embed_dim": proj[0], "depth": len(blocks),
             "layer_scale": "blocks.0.ls1.gamma" in shapes, "registers": "reg_token" in shapes}
    fc1, fc2 = shapes.get("blocks.0.mlp.fc1.weight"), shapes.get("blocks.0.mlp.fc2.weight")
    facts["swiglu"] = fc1 is not None and fc2 is not None and fc1[0] == 2 * fc2[1]
    if "pos_embed" in shapes:
        tokens = shapes["pos_embed"][1] - ("cls_token" in shapes and not facts["registers"])
        side = int(round(tokens ** 0.5))
        facts["pos"] = f"1+{side}x{side}" if side * side == tokens else str(tokens)
    return facts


def _summary(facts: dict) -> str:
    if not facts:
        return "no ViT patch embedding (patch_embed.proj.weight)"
    extras = [label for key, label in (("layer_scale", "layer scale"), ("swiglu", "SwiGLU MLP"),
                                       ("registers", "register tokens")) if facts.get(key)]
    return (f"embed dim {facts['embed_dim']} with {facts['depth']} blocks, patch {facts['patch']}, "
            f"{facts.get('pos', 'no')} position embeddings" + "".join(f", {e}" for e in extras))


def _matching_backbones(given: dict[str, tuple]) -> list[str]:
    """Names (``tiny <name>`` for TINY variants) whose architecture has exactly these keys/shapes."""
    found = []
    for name in VIT_BACKBONES:
        for tiny in (False, True):
            with torch.device("meta"):  # shapes only, no memory, no init cost
                expected = _shapes(create_vit(name, tiny).state_dict())
            if expected == given:
                found.append(f"tiny {name}" if tiny else name)
    return found


def _mismatch(path: Path, name: str, tiny: bool, fmt: str, given: dict, expected: dict) -> str:
    matches = _matching_backbones(given)
    verdict = f"this is {' / '.join(matches)}" if matches else "no backbone of VIT_BACKBONES has this layout"
    row = _row(name)
    want = f"tiny {name} (TINY={TINY})" if tiny else name
    return (f"checkpoint {path} does not fit backbone {want}, which needs "
            f"{_summary(describe_shapes(expected))}. "
            f"The file holds {fmt}: {_summary(describe_shapes(given))} — {verdict}. "
            f"Keys: {state_dict_diff(expected, given, limit=4)}. "
            f"Use the file of {name} (official: {row.file}, from {row.published})"
            + (f" or choose backbone {matches[0].removeprefix('tiny ')}" if matches else ""))


def load_vit_backbone(name: str, checkpoint: str | Path, layers: Sequence[int] | None = None,
                      add_pos_embed: bool = False, device: str = "cpu", tiny: bool | None = None,
                      dtype: str = "fp32", pad_after_normalize: bool = False) -> ViTBackbone:
    """The frozen ``ViTBackbone`` ``name`` (a key of VIT_BACKBONES) with weights from a local file.

    ``checkpoint``: the official file or timm's Hugging Face file of that backbone (format from
    the keys, see the module docstring). ``tiny``: build the TINY variant; None infers it from
    the file (its embed dim and depth equal TINY's). Other arguments: see ``ViTBackbone``.
    """
    row = _row(name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — the official file is {row.file}, "
                                f"from {row.published} (or make a random tiny one with "
                                f"bench.backbones.vit.save_random_checkpoint('{name}', path))")
    state, fmt = to_timm_keys(_read_state_dict(path))
    given = _shapes(state)
    if tiny is None:
        facts = describe_shapes(given)
        tiny = (facts.get("embed_dim"), facts.get("depth")) == (TINY["embed_dim"], TINY["depth"])
    with torch.device("meta"):
        expected = _shapes(create_vit(name, tiny).state_dict())
    if given != expected:  # checked first: timm would silently resample a wrong patch size or grid
        raise ValueError(_mismatch(path, name, tiny, fmt, given, expected))
    model = create_vit(name, tiny)
    model.load_state_dict(state, strict=True)
    return ViTBackbone(model, row.mean, row.std, layers=layers, add_pos_embed=add_pos_embed,
                       pad_after_normalize=pad_after_normalize, pos_interp=row.pos_interp, device=device,
                       dtype=dtype, name=f"tiny {name}" if tiny else name)


def to_official_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm-keyed state dict of backbone ``name`` -> the key layout of its official file."""
    if _row(name).official_format != "dinov2":
        return dict(state)
    official = {re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", key))
                if name.startswith("dinov2_vitg14") else key: value for key, value in state.items()}
    official["mask_token"] = torch.randn(1, state["cls_token"].shape[-1]) * 0.02  # (1, d), unused at inference
    if "reg_token" in official:  # the inverse of _convert_dinov2's register branch
        cls_pos = torch.randn_like(official["cls_token"]) * 0.02  # (1, 1, d): the class token's position row
        official["register_tokens"] = official.pop("reg_token")
        official["cls_token"] = official["cls_token"] - cls_pos
        official["pos_embed"] = torch.cat([cls_pos, official["pos_embed"]], dim=1)  # (1, 1 + M*M, d)
    return official


def random_vit(name: str, tiny: bool = True) -> VisionTransformer:
    """The timm model of ``name`` with random weights from the global RNG, as ``save_random_checkpoint``
    writes them: layer-scale gammas in [0.1, 0.5] (timm inits 1e-5, which would make every block
    almost the identity) and a class token (and registers) of std 0.02."""
    model = create_vit(name, tiny)
    with torch.no_grad():
        for key, value in model.state_dict().items():  # state_dict order: the file's RNG order
            if key.endswith(".gamma"):
                value.copy_(0.1 + 0.4 * torch.rand_like(value))
        model.cls_token.copy_(torch.randn_like(model.cls_token) * 0.02)
        if model.reg_token is not None:  # timm inits registers at std 1e-6: make them differ
            model.reg_token.copy_(torch.randn_like(model.reg_token) * 0.02)
    return model


def save_random_checkpoint(name: str, path: str | Path, tiny: bool = True, seed: int = 0) -> Path:
    """Write a random-weight ``name`` (TINY if ``tiny``) in its official format (``.safetensors``
    path: safetensors, else torch.save); the same seed gives the same file, global RNG untouched.
    Layer-scale gammas are drawn in [0.1, 0.5] (timm inits 1e-5) so that every block matters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = to_official_keys(name, random_vit(name, tiny).state_dict())
    return save_state_dict(state, path)


# The register rows are their own registry entry, so that adding them to ``BACKBONES`` is one visible line.
REG_NAMES = tuple(name for name in VIT_BACKBONES if name.endswith("_reg"))
VIT_FAMILY = {name: partial(load_vit_backbone, name) for name in VIT_BACKBONES if name not in REG_NAMES}
DINOV2_REG_FAMILY = {name: partial(load_vit_backbone, name) for name in REG_NAMES}
