"""Decoders: small heads from region (or patch) vectors to class logits.

Every decoder is called the same way, so one LightningModule trains any of them:

    decoder(feats (N, d), group (N,) int64 or None, pos (N, width) or None) -> logits (N, num_classes)

``group[i]`` is the group token i belongs to: the batch image of a region (segmentation), the scene
of a frame's region (multi-view) or the clip of a frame's region (video); groups need not be sorted
or contiguous. ``pos`` are optional positional embeddings added to the (projected) tokens, e.g. a
frame's time step or a region's 3-D centre. Per-vector decoders ignore both (and accept None); the
transformer needs ``group``, to let each token attend to the other tokens of its group only.
``TransformerDecoder(output="group")`` is a sequence-level head: one logit row per group (in
ascending group id), from the mean of the group's encoded tokens, e.g. to classify a clip.

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

    def forward(self, feats: Tensor, group: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        return self.linear(feats)


class MLPDecoder(nn.Module):
    """Linear -> ReLU -> Linear per vector (the paper's MLP, hidden 1000). The released code's
    ``torchvision.ops.MLP(in, [hidden, C])`` with no norm and dropout 0 computes the same."""

    train_unit = "region"

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 1000):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, feats: Tensor, group: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
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
    """Transformer encoder blocks over a group's tokens (an image's regions, a scene's or a clip's),
    then a linear head per token, or per group with ``output="group"``.

    Tokens attend only to tokens of the same group (padding masked as keys), so a group's logits do
    not depend on the other groups in its batch. Positional embeddings only if the caller gives
    ``pos``: on segmentation a region is its feature. Defaults follow the authors' development code
    (one block, 8 heads, feed-forward 2048, dropout 0.1, GELU, post-norm); ``width`` null keeps the
    feature dimension (no input projection).
    """

    train_unit = "image"
    OUTPUTS = ("token", "group")

    def __init__(self, in_dim: int, num_classes: int, width: int | None = None, layers: int = 1, heads: int = 8,
                 dim_feedforward: int = 2048, dropout: float = 0.1, output: str = "token"):
        super().__init__()
        width = width or in_dim
        if width % heads:
            raise ValueError(f"model.decoder_params.transformer.heads={heads} does not divide the token width "
                             f"{width}: set model.decoder_params.transformer.width to a multiple of {heads} "
                             f"(features are projected to it) or change heads")
        if output not in self.OUTPUTS:
            raise ValueError(f"model.decoder_params.transformer.output={output!r}; valid: {', '.join(self.OUTPUTS)}")
        self.output = output
        self.proj = nn.Linear(in_dim, width) if width != in_dim else nn.Identity()
        block = nn.TransformerEncoderLayer(width, heads, dim_feedforward, dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, feats: Tensor, group: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        """feats (N, d), group (N,), pos (N, width) or None -> (N, C), or (G, C) with output="group"."""
        if group is None:
            raise ValueError("the transformer decoder needs image_index (which image each region belongs to): "
                             "train it on batches of whole images (train_unit='image'), not shuffled regions")
        tokens = self.proj(feats)  # (N, width)
        if pos is not None:
            tokens = tokens + pos
        if len(feats) == 0:
            return self.head(tokens)
        padded, padding, row, col = pad_by_image(tokens, group)  # (G, L, width), (G, L)
        encoded = self.encoder(padded, src_key_padding_mask=padding)
        if self.output == "token":
            return self.head(encoded[row, col])
        keep = (~padding).unsqueeze(-1).to(encoded.dtype)  # mean over each group's real tokens
        return self.head((encoded * keep).sum(1) / keep.sum(1))


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
