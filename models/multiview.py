"""Multi-view semantic segmentation (the paper's Table 7): region tokens with 2D and 3D positions.

A region is its pooled feature plus, if switched on, learned embeddings of where it is: its 2D
position in the frame (normalised centroid and box, ``pos2d`` (N, 6)) and its 3D position in the
scene (robust centroid and extent in scene-centred world metres, ``pos3d`` (N, 6), with ``valid3d``
(N,) False where the frame's pose or the region's depth is missing: such a region gets no 3D
embedding). Each embedding is a linear projection of Fourier features, added to the feature (the
paper: "addition of embedding features to the visual features"); the projection starts at zero, so
an untrained embedding leaves the model equal to the one without it.

The decoder sees the tokens grouped by ``context``: ``image`` (a frame's regions attend to each
other; the batch's ``image_index``) or ``scene`` (all regions of a scene's frames, or of an evenly
interleaved subset of them: the batch's ``group_index``). Linear and MLP decoders ignore groups.
Pixels are painted per frame as for images (``RegionSegmenter.paint``) and scored with the same
exact confusion-matrix mIoU.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.labels import region_labels
from models.segmenter import OracleSegmenter, RegionSegmenter, weighted_cross_entropy

CONTEXTS = ("image", "scene")


def fourier_features(x: Tensor, bands: int, scale: float) -> Tensor:
    """x (N, D) -> (N, D * (2 * bands + 1)): x itself, then sin and cos of 2^k * pi * x / scale for
    k = 0..bands-1 (``scale``: the coordinate range that one period of the lowest band spans, halved)."""
    freqs = math.pi * 2.0 ** torch.arange(bands, dtype=x.dtype, device=x.device) / scale  # (B,)
    angles = x[:, :, None] * freqs  # (N, D, B)
    return torch.cat([x, angles.sin().flatten(1), angles.cos().flatten(1)], dim=1)


class PositionEmbedding(nn.Module):
    """(N, D) positions -> (N, dim) embeddings: a linear map of their Fourier features, zero at init."""

    def __init__(self, in_dims: int, dim: int, bands: int, scale: float):
        super().__init__()
        self.bands, self.scale = bands, scale
        self.proj = nn.Linear(in_dims * (2 * bands + 1), dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pos: Tensor) -> Tensor:
        return self.proj(fourier_features(pos, self.bands, self.scale))


class MultiviewSegmenter(RegionSegmenter):
    """A region classifier whose tokens carry 2D/3D position embeddings and whose transformer
    attends within a frame or within a scene (``context``)."""

    def __init__(self, *args, pos2d: bool = False, pos3d: bool = False, fourier_bands: int = 8,
                 scene_scale: float = 8.0, context: str = "image", **kwargs):
        """``pos2d``/``pos3d``: add the embeddings; ``fourier_bands`` per coordinate; ``scene_scale``:
        metres spanned by the 3D embedding's lowest band (rooms are a few metres); ``context``: the
        transformer's group, image or scene. Other arguments: ``RegionSegmenter``'s."""
        if context not in CONTEXTS:
            raise ValueError(f"multiview.context={context!r}; valid: {', '.join(CONTEXTS)}")
        super().__init__(*args, **kwargs)
        dim = self.hparams.in_dim
        self.embed2d = PositionEmbedding(6, dim, fourier_bands, 1.0) if pos2d else None
        self.embed3d = PositionEmbedding(6, dim, fourier_bands, scene_scale) if pos3d else None

    def tokens(self, batch: dict) -> Tensor:
        """feats (N, d) plus the switched-on position embeddings -> (N, d)."""
        tokens = batch["feats"]
        if self.embed2d is not None:
            tokens = tokens + self.embed2d(batch["pos2d"].to(tokens.dtype))
        if self.embed3d is not None:
            valid = batch["valid3d"].to(tokens.dtype)[:, None]
            tokens = tokens + valid * self.embed3d(batch["pos3d"].to(tokens.dtype))
        return tokens

    def groups(self, batch: dict) -> Tensor | None:
        """Which tokens attend to each other: a frame's (image_index) or a scene group's (group_index);
        None for a batch of shuffled regions (per-region decoders)."""
        return batch.get("group_index" if self.hparams.context == "scene" else "image_index")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        labels = region_labels(batch["hist"], self.hparams.label_threshold, self.hparams.label_denominator)
        logits = self.decoder(self.tokens(batch), self.groups(batch))
        loss = weighted_cross_entropy(logits, labels, batch["areas"], self.hparams.loss_weighting)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def predict_pixels(self, batch: dict) -> list[Tensor]:
        return self.paint(self.decoder(self.tokens(batch), self.groups(batch)).softmax(dim=1), batch)


class MultiviewOracle(OracleSegmenter):
    """The regions' upper bound on multi-view frames (positions are not used)."""

    def __init__(self, *args, pos2d: bool = False, pos3d: bool = False, fourier_bands: int = 8,
                 scene_scale: float = 8.0, context: str = "image", **kwargs):
        super().__init__(*args, **kwargs)


MODELS = {"region": MultiviewSegmenter, "oracle": MultiviewOracle}
