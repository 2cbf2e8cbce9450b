"""CLIP and MaskCLIP backbones: OpenAI CLIP ViT visual towers at native image resolution.

Both are open_clip's own ``VisionTransformer`` with OpenAI weights from a local file, and follow
the protocol of ``bench.backbones``: ``features(image (H, W, 3) uint8) -> (d, ceil(H/p), ceil(W/p))``.
The image is centre-padded with black to a multiple of the patch size at its native size, then
normalised with CLIP's mean/std (so padding is -mean/std, as the paper's ``CenterPadding``);
the positional table is resampled bicubically from the training grid to the actual grid.

  clip_vitb32      CLIP ViT-B/32 patch tokens after the last block, ``ln_post`` applied, CLS
                   dropped, no ``proj`` (768-d, what the paper's code took; ``project=True``
                   gives the 512-d joint image-text space). Unlike the paper's code, which
                   resized to 224 and centre-cropped (a flat 7x7 token list), this is a full grid.
  maskclip_vitl14  MaskCLIP (Zhou et al. 2022) on CLIP ViT-L/14@336px: the last block's
                   value-embedding path, ``ln_post`` and ``proj`` -> 768-d joint space.
  clip_vitb16, maskclip_vitb16  the same two on CLIP ViT-B/16 (``ViT-B-16.pt``; 768-d ``ln_post``
                   tokens / 512-d joint space), the size the zero-shot segmentation papers report.
                   ``compat_pos_embed_bug=True`` reproduces the released code's positional table
                   (rows [:-1] as the patch grid, the last row for CLS; CLIP stores CLS at row 0).
                   ``attention_keys=True`` appends the last block's attention keys to every
                   patch vector (d + width channels): what MaskCLIP's key smoothing reads
                   (``models.zeroshot.key_smoothing``; the zero-shot task splits them off again).

Checkpoints, read by ``read_visual_state_dict``: OpenAI's TorchScript archives (``ViT-B-32.pt``,
``ViT-L-14-336px.pt``), a plain OpenAI-style state dict, or an open_clip state dict
(``open_clip_pytorch_model.bin`` / ``.safetensors``, same key names). The architecture is read
from the file (width, layers, patch, grid, output dim; heads = width // 64 as OpenAI's own
``build_model``) and must be the published one or the tiny test one (``TINY_ARCH``), so random
test files from ``save_random_checkpoint`` take exactly the path of real ones.
"""
from __future__ import annotations

import contextlib
import re
import warnings
import zipfile
from functools import partial
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, convert_weights_to_fp16
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

from bench.backbones.batching import forward_in_groups
from bench.padding import center_pad_amounts
from bench.images import to_rgb8
from bench.weights import read_checkpoint, state_dict_diff


class ClipSpec(NamedTuple):
    open_clip_model: str  # open_clip config of the published architecture
    patch_size: int
    embed_dim: int        # channels of features() with the default projection
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    file: str             # official weights file
    url: str              # where it is published


CLIP_BACKBONES = {
    "clip_vitb32": ClipSpec(
        "ViT-B-32-quickgelu", 32, 768, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "ViT-B-32.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    "maskclip_vitl14": ClipSpec(
        "ViT-L-14-336-quickgelu", 14, 768, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "ViT-L-14-336px.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"),
    # ViT-B/16: the size of the training-free zero-shot segmentation literature (MaskCLIP, SCLIP, ...)
    "clip_vitb16": ClipSpec(
        "ViT-B-16-quickgelu", 16, 768, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "ViT-B-16.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
    "maskclip_vitb16": ClipSpec(
        "ViT-B-16-quickgelu", 16, 512, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "ViT-B-16.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
}


class VitArch(NamedTuple):
    """What a CLIP ViT visual state dict determines."""
    width: int
    layers: int
    patch_size: int
    grid: int        # side of the square training grid of the positional table
    output_dim: int  # columns of proj

    def describe(self) -> str:
        known = _KNOWN_ARCHS.get(self, "tiny test model" if self == tiny_arch(self.patch_size) else "")
        return (f"width {self.width}, {self.layers} layers, patch {self.patch_size}, {self.grid}x{self.grid} "
                f"positional grid ({self.grid * self.patch_size} px), output dim {self.output_dim}"
                + (f" = {known}" if known else ""))


def tiny_arch(patch_size: int) -> VitArch:
    """The tiny test architecture of a family: 2 blocks of width 128 (2 heads), 4x4 grid."""
    return VitArch(width=128, layers=2, patch_size=patch_size, grid=4, output_dim=32)


_KNOWN_ARCHS = {
    VitArch(768, 12, 32, 7, 512): "CLIP ViT-B/32 (ViT-B-32.pt)",
    VitArch(768, 12, 16, 14, 512): "CLIP ViT-B/16 (ViT-B-16.pt)",
    VitArch(1024, 24, 14, 16, 768): "CLIP ViT-L/14 at 224 px (ViT-L-14.pt)",
    VitArch(1024, 24, 14, 24, 768): "CLIP ViT-L/14@336px (ViT-L-14-336px.pt)",
}

# The full BPE vocabulary (49408), so the real tokenizer's ids work with the tiny text tower.
_TINY_TEXT = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)


def published_arch(name: str) -> VitArch:
    cfg = open_clip.get_model_config(CLIP_BACKBONES[name].open_clip_model)
    vision = cfg["vision_cfg"]
    return VitArch(vision["width"], vision["layers"], vision["patch_size"],
                   vision["image_size"] // vision["patch_size"], cfg["embed_dim"])


# ----------------------------------------------------------------------------------------------
# Reading checkpoints

def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A whole CLIP checkpoint with OpenAI's key names (``visual.*`` and the text tower's
    ``token_embedding.weight``, ``transformer.*``, ...), floating tensors as float32.

    Accepts a TorchScript archive (OpenAI's released ``.pt``), a ``.safetensors`` file, or a
    torch.save'd state dict, optionally wrapped as ``{"state_dict": ...}`` with ``module.``
    prefixes (open_clip's training checkpoints; ``open_clip.load_openai_model`` also accepts it).
    """
    path = Path(path)
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit is deprecated, but it is OpenAI's format
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = read_checkpoint(path, also="TorchScript archive or ")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = {re.sub(r"^module\.", "", k): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if isinstance(v, torch.Tensor)}


def existing_checkpoint(name: str, checkpoint: str | Path) -> Path:
    """``checkpoint`` as a path, or FileNotFoundError naming the official file of backbone ``name``."""
    spec, path = CLIP_BACKBONES[name], Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — the official file is {spec.file}, published "
                                f"at {spec.url} (or make a random one with "
                                f"bench.backbones.clip.save_random_checkpoint('{name}', path))")
    return path


def read_visual_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The visual tower of a CLIP checkpoint (any format ``read_clip_state_dict`` takes) as
    float32 tensors, ``visual.`` stripped from keys."""
    return {k[len("visual."):]: v for k, v in read_clip_state_dict(path).items() if k.startswith("visual.")}


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; torch.save zips have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def visual_arch(state: dict[str, torch.Tensor]) -> VitArch | None:
    """The architecture of a visual state dict (keys without ``visual.``); None if not a CLIP ViT."""
    if not {"conv1.weight", "positional_embedding", "proj"} <= state.keys():
        return None
    width, _, patch, _ = state["conv1.weight"].shape
    layers = sum(1 for k in state if re.fullmatch(r"transformer\.resblocks\.\d+\.attn\.in_proj_weight", k))
    grid = round((state["positional_embedding"].shape[0] - 1) ** 0.5)
    return VitArch(width, layers, patch, grid, state["proj"].shape[1])


def build_visual(arch: VitArch) -> VisionTransformer:
    """open_clip's VisionTransformer as OpenAI's CLIP ViTs are built (QuickGELU, 64-d heads)."""
    return VisionTransformer(image_size=arch.grid * arch.patch_size, patch_size=arch.patch_size,
                             width=arch.width, layers=arch.layers, heads=arch.width // 64, mlp_ratio=4.0,
                             output_dim=arch.output_dim, act_layer=QuickGELU)


def projects(name: str, project: bool | None = None) -> bool:
    """Whether backbone ``name`` with option ``project`` gives vectors in the joint image-text space:
    ``project``, or for None the family's default (MaskCLIP projects, CLIP gives the paper's tokens)."""
    return name.startswith("maskclip") if project is None else bool(project)


def load_clip_backbone(name: str, checkpoint: str | Path, device: str = "cpu", tiny: bool | None = None,
                       project: bool | None = None, compat_pos_embed_bug: bool = False,
                       autocast: bool = False, attention_keys: bool = False) -> ClipBackbone:
    """The frozen backbone ``name`` (a key of CLIP_BACKBONES) with weights from a local file.

      checkpoint   OpenAI's file (see CLIP_BACKBONES) or any format ``read_visual_state_dict`` takes
      tiny         the architecture is read from the file; None accepts the published one or
                   ``tiny_arch`` (random test files), True / False insist on one of them
      project      apply ``proj`` (joint image-text space); None = the family's default
                   (False for clip_vitb32, True for maskclip_vitl14)
      compat_pos_embed_bug  maskclip only: the released code's shifted positional table
      autocast     CUDA float16 autocast (features still come out float32)
      attention_keys  maskclip only: append the last block's keys (``last_block_keys``) to every
                   patch vector, for MaskCLIP's key smoothing in zero-shot segmentation
    """
    if name not in CLIP_BACKBONES:
        raise ValueError(f"unknown CLIP backbone '{name}'; valid names: {sorted(CLIP_BACKBONES)}")
    spec, maskclip = CLIP_BACKBONES[name], name.startswith("maskclip")
    if compat_pos_embed_bug and not maskclip:
        raise ValueError("compat_pos_embed_bug reproduces the released MaskCLIP code; "
                         "it is for maskclip_vitl14 only")
    if attention_keys and not maskclip:
        raise ValueError(f"attention_keys (MaskCLIP's key smoothing) is a MaskCLIP option; {name} has no "
                         "value path: use maskclip_vitb16 or maskclip_vitl14")
    path = existing_checkpoint(name, checkpoint)
    official = f"the official file is {spec.file}, published at {spec.url}"
    state = read_visual_state_dict(path)
    found, published, small = visual_arch(state), published_arch(name), tiny_arch(spec.patch_size)
    allowed = {None: (published, small), True: (small,), False: (published,)}[tiny]
    if found not in allowed:
        holds = (f"holds {found.describe()}" if found else "is not an OpenAI/open_clip CLIP ViT (no "
                 f"visual.conv1/positional_embedding/proj; visual keys: {sorted(state)[:5]})")
        raise ValueError(f"checkpoint {path.name} {holds}, but {name} needs {published.describe()}"
                         + (" (or its tiny test model, width 128 with 2 layers)" if tiny is None else "")
                         + f" — {official}")
    visual = build_visual(found)
    expected = {k: tuple(v.shape) for k, v in visual.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    if expected != given:
        raise ValueError(f"checkpoint {path.name} looks like {found.describe()} but does not match open_clip's "
                         f"VisionTransformer: {state_dict_diff(expected, given, prefix='visual.')}")
    visual.load_state_dict(state, strict=True)
    visual = visual.to(device).eval().requires_grad_(False)
    cls = MaskClipBackbone if maskclip else ClipBackbone
    options = {"compat_pos_embed_bug": compat_pos_embed_bug, "attention_keys": attention_keys} if maskclip else {}
    return cls(visual, spec.mean, spec.std, project=projects(name, project),
               autocast=autocast, **options)


def save_random_checkpoint(name: str, path: str | Path, tiny: bool = True, seed: int = 0,
                           jit: bool = False) -> Path:
    """Random CLIP weights for backbone ``name`` in OpenAI's format: the whole CLIP model (visual
    tower plus a text tower, tiny when ``tiny``) with OpenAI's key names, Linear/Conv/attention
    weights and ``proj`` stored in float16 as in OpenAI's files; a TorchScript archive like the
    released ``.pt`` when ``jit``, else a plain state dict (which ``open_clip.load_openai_model``
    also reads). Layer-norm and bias parameters are randomised too. The global RNG is untouched."""
    arch = tiny_arch(CLIP_BACKBONES[name].patch_size) if tiny else published_arch(name)
    vision = CLIPVisionCfg(layers=arch.layers, width=arch.width, patch_size=arch.patch_size,
                           image_size=arch.grid * arch.patch_size)
    published_text = open_clip.get_model_config(CLIP_BACKBONES[name].open_clip_model)["text_cfg"]
    text = _TINY_TEXT if tiny else CLIPTextCfg(**published_text)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(arch.output_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim == 1:  # layer-norm weights and biases start constant (1 / 0)
                    param.add_(0.1 * torch.randn_like(param))
    convert_weights_to_fp16(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if jit:
        # TorchScript would save the non-persistent buffer attn_mask in the state dict, which
        # OpenAI's archives lack (open_clip's loader then refuses it): make it a plain attribute.
        model.attn_mask = model._buffers.pop("attn_mask")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.script(model.eval()), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------
# Math

def interpolate_pos_embed(table: torch.Tensor, grid: tuple[int, int],
                          compat_pos_embed_bug: bool = False) -> torch.Tensor:
    """(1 + g*g, C) CLIP positional table -> (1 + h*w, C) for an h x w patch grid.

    Row 0 (CLS) is kept; rows 1.. are the g x g training grid (row-major), resampled bicubically
    (align_corners=False, no antialiasing, as the released MaskCLIP code). With
    ``compat_pos_embed_bug`` rows [:-1] are taken as the grid and row -1 as CLS, as that code did.
    """
    cls, patches = (table[-1:], table[:-1]) if compat_pos_embed_bug else (table[:1], table[1:])
    g = round(patches.shape[0] ** 0.5)
    if tuple(grid) != (g, g):
        square = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
        patches = F.interpolate(square, size=tuple(grid), mode="bicubic", align_corners=False)
        patches = patches[0].flatten(1).T  # (h*w, C)
    return torch.cat([cls, patches])


def value_path(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's output of one block, (B, N, C) -> (B, N, C): attention replaced by its value
    projection, so every token keeps its own content (no mixing between tokens)."""
    width = x.shape[-1]
    v = F.linear(block.ln_1(x), block.attn.in_proj_weight[2 * width:], block.attn.in_proj_bias[2 * width:])
    v = x + block.ls_1(block.attn.out_proj(v))
    return v + block.ls_2(block.mlp(block.ln_2(v)))


def last_block_keys(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's keys of one block, (B, N, C) -> (B, N, C): the key projection of ``ln_1(x)``
    passed through the attention's ``out_proj``, as MaskCLIP's ViT returns q, k and v (each of the
    three projections through ``out_proj``; no ``ln_post``, no ``proj``)."""
    width = x.shape[-1]
    k = F.linear(block.ln_1(x), block.attn.in_proj_weight[width:2 * width], block.attn.in_proj_bias[width:2 * width])
    return block.attn.out_proj(k)


# ----------------------------------------------------------------------------------------------
# Backbones

class ClipBackbone:
    """CLIP ViT patch tokens at native resolution; build with ``load_clip_backbone``.

    ``features``: (H, W, 3) uint8 -> (embed_dim, ceil(H/p), ceil(W/p)) float32 on the CPU, where
    embed_dim = width (768 for ViT-B/32) or, with ``project``, the joint-space dim (512);
    ``features_batch`` does a list of images. ``autocast`` is CUDA float16 only (fp32 otherwise).
    """

    def __init__(self, visual: VisionTransformer, mean, std, project: bool = False, autocast: bool = False):
        self.visual, self.project = visual, project
        self.device = visual.conv1.weight.device
        if autocast and self.device.type != "cuda":
            raise ValueError(f"autocast needs a CUDA device, the model is on {self.device}")
        self.autocast = autocast
        self.patch_size = visual.patch_size[0]
        self.embed_dim = visual.proj.shape[1] if project else visual.proj.shape[0]
        self.mean = torch.tensor(mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(3, 1, 1)

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, Hp, Wp): [0, 1], centre-padded with 0, then normalised."""
        rgb = torch.from_numpy(to_rgb8(image)).to(self.device).permute(2, 0, 1).float() / 255
        (top, bottom), (left, right) = (center_pad_amounts(s, self.patch_size) for s in rgb.shape[1:])
        return ((F.pad(rgb, (left, right, top, bottom)) - self.mean) / self.std)[None]

    @torch.inference_mode()
    def features(self, image: np.ndarray) -> torch.Tensor:
        return self._grids(self.pixels(image))[0]

    @torch.inference_mode()
    def features_batch(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """[(H_i, W_i, 3) uint8] -> [(embed_dim, ceil(H_i/p), ceil(W_i/p)) float32 on the CPU], in order;
        images of equal padded size share one forward pass (``bench.backbones.batching``)."""
        return forward_in_groups([self.pixels(image)[0] for image in images], self._grids)

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hp, Wp) normalised pixels -> (B, embed_dim, h, w) float32 on the CPU."""
        with torch.autocast("cuda", dtype=torch.float16) if self.autocast else contextlib.nullcontext():
            tokens, (h, w) = self._embed(x)       # (B, 1 + h*w, width)
            patches = self._last_tokens(tokens)   # (B, h*w, width)
            patches = self.visual.ln_post(patches)
            if self.project:
                patches = patches @ self.visual.proj
        return patches.transpose(1, 2).reshape(len(x), -1, h, w).float().cpu().contiguous()

    @torch.inference_mode()
    def global_feature(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> the class token after the last block and ``ln_post`` (through ``proj``
        when ``project``: CLIP's image embedding), the image padded as for ``features``."""
        with torch.autocast("cuda", dtype=torch.float16) if self.autocast else contextlib.nullcontext():
            tokens, _ = self._embed(self.pixels(image))  # (1, 1 + h*w, width)
            cls = self.visual.ln_post(self.visual.transformer(tokens)[:, 0])
            if self.project:
                cls = cls @ self.visual.proj
        return cls[0].float().cpu()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, Hp, Wp) -> (B, 1 + h*w, width) tokens after ln_pre, and (h, w)."""
        v = self.visual
        x = v.conv1(x)                                   # (B, width, h, w)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)                 # (B, h*w, width)
        x = torch.cat([v.class_embedding.to(x.dtype).expand(len(x), 1, -1), x], dim=1)
        x = x + self._pos_embed(grid).to(x.dtype)
        return v.ln_pre(x), tuple(grid)

    def _pos_embed(self, grid) -> torch.Tensor:
        return interpolate_pos_embed(self.visual.positional_embedding, grid)

    def _last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + h*w, width) -> (B, h*w, width) patch tokens after the last block."""
        return self.visual.transformer(x)[:, 1:]


class MaskClipBackbone(ClipBackbone):
    """MaskCLIP: blocks 0..L-2 as usual, then the last block's value path on the patch tokens
    (the value path is per token, so CLS is dropped first and the normal attention of the last
    block is never computed), ``ln_post`` and ``proj``: (768, h, w) for ViT-L/14."""

    def __init__(self, visual: VisionTransformer, mean, std, project: bool = True, autocast: bool = False,
                 compat_pos_embed_bug: bool = False, attention_keys: bool = False):
        super().__init__(visual, mean, std, project=project, autocast=autocast)
        self.compat_pos_embed_bug, self.attention_keys = compat_pos_embed_bug, attention_keys
        if attention_keys:
            self.embed_dim += visual.conv1.weight.shape[0]  # + width: the keys

    def _pos_embed(self, grid) -> torch.Tensor:
        return interpolate_pos_embed(self.visual.positional_embedding, grid, self.compat_pos_embed_bug)

    def _last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        *blocks, last = self.visual.transformer.resblocks
        for block in blocks:
            x = block(x)
        self._keys = last_block_keys(last, x[:, 1:]) if self.attention_keys else None
        return value_path(last, x[:, 1:])

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """As CLIP's, then with ``attention_keys`` the last block's keys as further channels."""
        grid = super()._grids(x)
        if not self.attention_keys:
            return grid
        keys = self._keys.transpose(1, 2).reshape(len(x), -1, *grid.shape[-2:]).float().cpu()
        self._keys = None
        return torch.cat([grid, keys], dim=1).contiguous()


CLIP_FAMILY = {name: partial(load_clip_backbone, name) for name in CLIP_BACKBONES}
