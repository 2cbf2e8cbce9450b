"""Backbones: an RGB image in, a (d, h, w) grid of patch features out.

Every backbone has ``patch_size: int``, ``embed_dim: int`` and
``features(image (H, W, 3) uint8) -> torch.Tensor (d, h, w) float32`` on the CPU. The image is
centre-padded with zeros (black) to a multiple of the patch size — pad-before = pad // 2,
pad-after = the rest, as the official ``CenterPadding`` — so h = ceil(H/p), w = ceil(W/p).
Pooling (``bench.pooling``) relies on exactly this layout to align masks with the grid.
``features_batch(images) -> [features(image) for image in images]`` does a list at once: the ViT
and CLIP backbones stack images of equal padded size into one forward pass (``batching``).

Backbones are plain classes in ``BACKBONES``; build one by name with
``build_backbone("colortexture", patch_size=14)``.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from bench.images import to_rgb8


class Backbone(Protocol):
    patch_size: int
    embed_dim: int

    def features(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (embed_dim, ceil(H/p), ceil(W/p)) float32."""

    def features_batch(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """[(H_i, W_i, 3) uint8] -> [(embed_dim, ceil(H_i/p), ceil(W_i/p)) float32], in input order."""


from bench.padding import center_pad, center_pad_amounts, padded_size  # noqa: E402,F401  (re-exported)


# Fixed normalising constants of ColorTextureBackbone (no dataset statistics, so a feature
# depends only on its own patch). Each block lands roughly in [-1, 1] / [0, 1].
_LAB_CENTER = np.array([50.0, 0.0, 0.0], dtype=np.float32)  # L in [0, 100]; a, b in about [-100, 100]
_LAB_MEAN_SCALE = 50.0   # (mean - center) / 50
_LAB_STD_SCALE = 25.0    # std / 25: a half-black, half-white patch has L std 50 -> 2
_ENERGY_SCALE = 4.0      # log1p(mean |grad L|) / 4; a hard black/white edge is |grad L| = 50
_HOG_FLOOR = 0.5         # HOG vector v -> v / sqrt(|v|^2 + (0.5 p^2)^2): patches whose gradient
                         # mass is below ~0.5 L-units per pixel (noise) shrink towards 0
_LBP_CLASSES = 10        # rotation-invariant uniform 8-neighbour LBP: 0..8 ones + "non-uniform"
_LBP_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]  # circular


def _lbp_riu2_table() -> np.ndarray:
    """(256,) uint8: 8-bit LBP code -> riu2 class (ones count if <= 2 circular transitions, else 9)."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    transitions = (bits != np.roll(bits, 1, axis=1)).sum(axis=1)
    return np.where(transitions <= 2, bits.sum(axis=1), 9).astype(np.uint8)


_LBP_TABLE = _lbp_riu2_table()


class ColorTextureBackbone:
    """A classic hand-crafted patch descriptor: colour statistics + HOG + LBP per patch.

    A documented baseline in the tradition of colour-histogram/HOG/LBP region descriptors
    (needs no downloaded weights, so the default pipeline runs end to end anywhere), not a
    placeholder for a learned model. For every p x p patch of the zero-padded image, with
    channels in this order:

      [0:3]    CIE Lab mean (skimage ``rgb2lab``, D65): (L - 50)/50, a/50, b/50
      [3:6]    CIE Lab standard deviation / 25
      [6]      gradient energy: log1p(mean |grad L|) / 4
      [7:7+c*c*B]  HOG: unsigned gradient orientation (B bins over [0, pi), each pixel's
               magnitude split linearly between its two nearest bins) summed over a c x c grid
               of sub-cells (row-major), the c*c*B vector scaled by
               1 / sqrt(|v|^2 + (0.5 p^2)^2) (HOG block normalisation with a noise floor)
      [-10:]   LBP: fraction of the patch's pixels in each rotation-invariant uniform class
               of the 8-neighbour local binary pattern on L (class k = k neighbours >= centre
               for k = 0..8, class 9 = non-uniform)

    embed_dim = 7 + c*c*B + 10 (53 with the defaults). Gradients (central differences,
    one-sided at patch edges) and LBP neighbours (edge-replicated) never look outside the
    patch, so a patch's descriptor depends only on that patch's pixels, like a ViT's patch
    embedding. Padding pixels are black (Lab 0, 0, 0) as in the paper's code (zero padding
    before normalisation), so border patches see an edge where the padding starts.

      patch_size        p, pixels per patch side (>= 2 and >= cells_per_side)
      orientation_bins  B, HOG orientation bins
      cells_per_side    c, HOG sub-cells per patch side
    """

    def __init__(self, patch_size: int = 14, orientation_bins: int = 9, cells_per_side: int = 2):
        if patch_size < 2 or patch_size < cells_per_side:
            raise ValueError(f"patch_size must be >= 2 and >= cells_per_side ({cells_per_side}), got {patch_size}")
        if orientation_bins < 1 or cells_per_side < 1:
            raise ValueError(f"orientation_bins and cells_per_side must be >= 1, got {orientation_bins}, {cells_per_side}")
        self.patch_size = patch_size
        self.orientation_bins = orientation_bins
        self.cells_per_side = cells_per_side
        self.embed_dim = 7 + cells_per_side**2 * orientation_bins + _LBP_CLASSES

    def features(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 (or anything ``to_rgb8`` takes) -> (embed_dim, ceil(H/p), ceil(W/p)) float32."""
        from skimage.color import rgb2lab

        p = self.patch_size
        lab = rgb2lab(to_rgb8(image).astype(np.float32) / 255).astype(np.float32)
        lab = center_pad(lab, p)  # Lab (0, 0, 0) is exactly black
        h, w = lab.shape[0] // p, lab.shape[1] // p
        patches = lab.reshape(h, p, w, p, 3)  # a view: patch (i, j) is patches[i, :, j, :]
        luminance = patches[..., 0]           # (h, p, w, p)

        channels = torch.from_numpy(lab).permute(2, 0, 1)                  # (3, Hp, Wp)
        mean = F.avg_pool2d(channels, p)                                    # (3, h, w)
        centred = channels - mean.repeat_interleave(p, 1).repeat_interleave(p, 2)
        variance = F.avg_pool2d(centred * centred, p)
        # numpy's sqrt, not torch's: torch sends large tensors to MKL's vector math, whose last bit follows
        # MKL's code path for the CPU (MKL_CBWR); IEEE sqrt is correctly rounded on every instruction set
        mean, std = mean.permute(1, 2, 0).numpy(), np.sqrt(variance.permute(1, 2, 0).numpy())  # (h, w, 3)
        grad_y, grad_x = np.gradient(luminance, axis=(1, 3))  # per patch: axes 1, 3 stay inside it
        magnitude = np.hypot(grad_x, grad_y)
        energy = np.log1p(magnitude.mean(axis=(1, 3)))[..., None]
        blocks = [(mean - _LAB_CENTER) / _LAB_MEAN_SCALE, std / _LAB_STD_SCALE, energy / _ENERGY_SCALE,
                  self._hog(grad_y, grad_x, magnitude, h, w), self._lbp(luminance, h, w)]
        grid = np.concatenate(blocks, axis=-1).astype(np.float32)  # (h, w, d)
        return torch.from_numpy(np.ascontiguousarray(grid.transpose(2, 0, 1)))

    def features_batch(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """``features`` of each image, in order: the descriptor is numpy work per patch, with no
        forward pass that a batch could share."""
        return [self.features(image) for image in images]

    def global_feature(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) -> (embed_dim,): the mean of the image's patch descriptors, this descriptor's
        stand-in for a ViT's class token."""
        return self.global_from_grid(self.features(image))

    @staticmethod
    def global_from_grid(grid: torch.Tensor) -> torch.Tensor:
        """(embed_dim, h, w) patch grid -> (embed_dim,) ``global_feature`` without recomputing it."""
        return grid.float().mean(dim=(1, 2))

    def _hog(self, grad_y: np.ndarray, grad_x: np.ndarray, magnitude: np.ndarray, h: int, w: int) -> np.ndarray:
        """(h, p, w, p) gradients -> (h, w, c*c*B) normalised orientation histograms."""
        p, c, bins = self.patch_size, self.cells_per_side, self.orientation_bins
        angle = np.mod(np.arctan2(grad_y, grad_x), np.pi)  # unsigned, [0, pi]
        position = angle * (bins / np.pi) - 0.5             # bin centres at integers
        lower = np.floor(position)
        upper_weight = (position - lower) * magnitude
        lower_bin = np.mod(lower.astype(np.int64), bins)
        upper_bin = np.mod(lower_bin + 1, bins)
        sub = np.arange(p) * c // p                         # pixel row/col -> sub-cell row/col
        cell = (np.arange(h)[:, None, None, None] * w + np.arange(w)[None, None, :, None]) * c * c \
            + sub[None, :, None, None] * c + sub[None, None, None, :]  # (h, p, w, p)
        size = h * w * c * c * bins
        hist = np.bincount((cell * bins + lower_bin).ravel(), (magnitude - upper_weight).ravel(), size) \
            + np.bincount((cell * bins + upper_bin).ravel(), upper_weight.ravel(), size)
        hist = hist.reshape(h, w, c * c * bins)
        floor = _HOG_FLOOR * p * p
        return hist / np.sqrt((hist**2).sum(axis=-1, keepdims=True) + floor**2)

    def _lbp(self, luminance: np.ndarray, h: int, w: int) -> np.ndarray:
        """(h, p, w, p) L channel -> (h, w, 10) riu2 LBP class fractions, neighbours inside the patch."""
        p = self.patch_size
        padded = np.pad(luminance, ((0, 0), (1, 1), (0, 0), (1, 1)), mode="edge")  # per patch
        code = np.zeros(luminance.shape, dtype=np.uint8)
        for bit, (dy, dx) in enumerate(_LBP_OFFSETS):
            neighbour = padded[:, 1 + dy:1 + dy + p, :, 1 + dx:1 + dx + p]
            code |= (neighbour >= luminance).astype(np.uint8) << bit
        patch = np.arange(h)[:, None, None, None] * w + np.arange(w)[None, None, :, None]
        index = (patch * _LBP_CLASSES + _LBP_TABLE[code]).ravel()
        counts = np.bincount(index, minlength=h * w * _LBP_CLASSES)
        return counts.reshape(h, w, _LBP_CLASSES) / (p * p)


# The ViT families live in their own modules (weights only ever from a local file).
from bench.backbones.dinov3 import DINOV3_FAMILY  # noqa: E402
from bench.backbones.radio import RADIO_FAMILY  # noqa: E402
from bench.backbones.siglip import SIGLIP_FAMILY  # noqa: E402
from bench.backbones.vit import DINOV2_REG_FAMILY, VIT_FAMILY  # noqa: E402

CLIP_NAMES = ("clip_vitb32", "maskclip_vitl14", "clip_vitb16", "maskclip_vitb16")  # bench.backbones.clip.CLIP_FAMILY's keys


def _clip(name: str):
    """The builder of CLIP-family backbone ``name``; open_clip (and torchvision, ~3 s) is imported when
    one is built, not by every process that imports this registry (extraction workers among them)."""

    def build(**kwargs):
        from bench.backbones.clip import CLIP_FAMILY

        return CLIP_FAMILY[name](**kwargs)

    return build


def _dinotxt(checkpoint, backbone_checkpoint, **kwargs):
    """dino.txt: ``checkpoint`` is its head-and-text-encoder file (the one text queries read), the ViT-L/16
    weights come from ``backbone_checkpoint``; torch.nn modules are built on call, not at import."""
    from bench.backbones.dinotxt import load_dinotxt

    return load_dinotxt(backbone_checkpoint, checkpoint, **kwargs)


BACKBONES = {
    "colortexture": ColorTextureBackbone,
    **VIT_FAMILY,  # dinov2_vits14 / vitb14 / vitl14 / vitg14, dino_vitb16, imagenet_vitl
    **DINOV2_REG_FAMILY,  # dinov2_vit{s,b,l,g}14_reg: DINOv2 with 4 registers (dropped from the grid)
    **DINOV3_FAMILY,  # dinov3_vit{s,s+,b,l,h+}16, dinov3_vit7b16: RoPE, 4 registers (timm's Eva)
    **SIGLIP_FAMILY,  # siglip2_*: SigLIP 2 trunks (open_clip files), patch tokens, no class token
    **RADIO_FAMILY,  # radio_v25_* (NVIDIA's HF or torch-hub files), radio_v3_* / radio_v4_* (C-RADIO: NVIDIA's or
                     # timm's files); class tokens and registers dropped
    "dinotxt_vitl16": _dinotxt,  # DINOv3 ViT-L/16 + dino.txt's vision head: patch tokens in its text space
    **{name: _clip(name) for name in CLIP_NAMES},  # clip_vitb32 (full-resolution grid), maskclip_vitl14 (fixed
                                                  # positional embedding)
}


def build_backbone(name: str, **kwargs) -> Backbone:
    """A backbone by registry name, constructed with ``kwargs``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; valid names: {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)
