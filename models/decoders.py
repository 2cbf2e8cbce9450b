"""Decoders: small heads from a feature vector to class logits."""
from __future__ import annotations

from torch import Tensor, nn


class LinearDecoder(nn.Module):
    """One linear layer: (N, in_dim) -> (N, num_classes) logits (the paper's linear probe)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


DECODERS = {"linear": LinearDecoder}


def build_decoder(name: str, in_dim: int, num_classes: int) -> nn.Module:
    if name not in DECODERS:
        raise ValueError(f"model.decoder={name!r} is unknown; valid: {', '.join(DECODERS)}")
    return DECODERS[name](in_dim=in_dim, num_classes=num_classes)
