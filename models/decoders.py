"""Decoders: small heads from region (or patch) vectors to class logits.

Every decoder is called the same way, so one LightningModule trains any of them:

    decoder(feats (N, d), image_index (N,) int64 or None) -> logits (N, num_classes)

``image_index[i]`` is the batch image that vector i comes from. Per-vector decoders ignore it (and
accept None); the transformer needs it, to let each region attend to the other regions of its image.

A decoder declares how it must be trained in ``train_unit``: ``"region"`` = shuffled batches of
regions from many images (``data.region_batch_size`` regions per batch), ``"image"`` = batches of
whole images (``data.batch_size`` images per batch); bench.runs.build_datamodule reads it.

Config keys (bench/defaults.yaml):
    model.decoder                           linear | mlp | transformer
    model.decoder_params.linear             {} (one nn.Linear)
    model.decoder_params.mlp.hidden         hidden width (the paper's 1000)
    model.decoder_params.transformer.*      width (null = in_dim, else a linear input projection),
                                            layers, heads, dim_feedforward, dropout
Only the chosen decoder's parameters are used; all are stored as plain values in the checkpoint's
hyperparameters, so ``load_from_checkpoint`` rebuilds the decoder.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearDecoder(nn.Module):
    """One linear layer per vector (the paper's linear probe)."""

    train_unit = "region"

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, feats: Tensor, image_index: Tensor | None = None) -> Tensor:
        return self.linear(feats)


class MLPDecoder(nn.Module):
    """Linear -> ReLU -> Linear per vector (the paper's MLP, hidden 1000). The released code's
    ``torchvision.ops.MLP(in, [hidden, C])`` with no norm and dropout 0 computes the same."""

    train_unit = "region"

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 1000):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, feats: Tensor, image_index: Tensor | None = None) -> Tensor:
        return self.mlp(feats)


def pad_by_image(feats: Tensor, image_index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Group vectors into one zero-padded token sequence per image.

    feats (N, d), image_index (N,) -> tokens (B, L, d), padding (B, L) bool (True = padding),
    row (N,), col (N,) such that tokens[row[i], col[i]] == feats[i]. B counts only the images
    that have vectors (no all-padding row), L is the longest image's count; vectors keep their
    order within an image.
    """
    _, row = torch.unique(image_index, return_inverse=True)  # (N,) in 0..B-1
    counts = torch.bincount(row)  # (B,)
    order = torch.argsort(row, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.empty_like(row)
    col[order] = torch.arange(len(row), device=row.device) - starts[row[order]]
    tokens = feats.new_zeros(len(counts), int(counts.max()), feats.shape[1])
    tokens[row, col] = feats
    padding = torch.ones(tokens.shape[:2], dtype=torch.bool, device=feats.device)
    padding[row, col] = False
    return tokens, padding, row, col


class TransformerDecoder(nn.Module):
    """Transformer encoder blocks over an image's region tokens, then a linear head per token.

    Regions attend only to regions of the same image (padding masked as keys), so an image's logits
    do not depend on the other images in its batch. No positional encoding: a region is its feature.
    Defaults follow the authors' development code (one block, 8 heads, feed-forward 2048, dropout
    0.1, GELU, post-norm); ``width`` null keeps the feature dimension (no input projection).
    """

    train_unit = "image"

    def __init__(self, in_dim: int, num_classes: int, width: int | None = None, layers: int = 1, heads: int = 8,
                 dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        width = width or in_dim
        if width % heads:
            raise ValueError(f"model.decoder_params.transformer.heads={heads} does not divide the token width "
                             f"{width}: set model.decoder_params.transformer.width to a multiple of {heads} "
                             f"(features are projected to it) or change heads")
        self.proj = nn.Linear(in_dim, width) if width != in_dim else nn.Identity()
        block = nn.TransformerEncoderLayer(width, heads, dim_feedforward, dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, feats: Tensor, image_index: Tensor | None = None) -> Tensor:
        if image_index is None:
            raise ValueError("the transformer decoder needs image_index (which image each region belongs to): "
                             "train it on batches of whole images (train_unit='image'), not shuffled regions")
        if len(feats) == 0:
            return self.head(self.proj(feats))
        tokens, padding, row, col = pad_by_image(self.proj(feats), image_index)
        return self.head(self.encoder(tokens, src_key_padding_mask=padding)[row, col])


DECODERS = {"linear": LinearDecoder, "mlp": MLPDecoder, "transformer": TransformerDecoder}


def decoder_class(name: str) -> type[nn.Module]:
    if name not in DECODERS:
        raise ValueError(f"model.decoder={name!r} is unknown; valid: {', '.join(DECODERS)}")
    return DECODERS[name]


def build_decoder(name: str, in_dim: int, num_classes: int, **params) -> nn.Module:
    """``DECODERS[name](in_dim, num_classes, **params)``; params = model.decoder_params.<name>."""
    cls = decoder_class(name)
    try:
        return cls(in_dim=in_dim, num_classes=num_classes, **params)
    except TypeError as err:
        raise TypeError(f"model.decoder_params.{name}: {err}") from err
