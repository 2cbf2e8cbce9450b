"""Batched backbone forwards: images whose padded inputs have one size share a forward pass.

A ViT's input is the image centre-padded to a multiple of the patch, so two images of different
sizes cannot be stacked without changing what the model sees (more padding = other tokens, and
attention mixes every token). Images of the same padded size stack exactly as they are;
``features_batch`` runs one forward per such group and hands the grids back in input order.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def same_size_groups(sizes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Indices grouped by equal size, groups in order of first appearance, indices ascending
    within a group: [(2, 3), (4, 5), (2, 3)] -> [[0, 2], [1]]."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return list(groups.values())


def forward_in_groups(inputs: Sequence[torch.Tensor],
                      forward: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """[(3, Hp_i, Wp_i)] preprocessed images -> [forward(stack)[j]] per image, in input order.

    ``forward``: (B, 3, Hp, Wp) -> (B, ...) for one stack of same-size inputs; it is called once
    per distinct (Hp, Wp)."""
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for group in same_size_groups([x.shape for x in inputs]):
        for index, output in zip(group, forward(torch.stack([inputs[i] for i in group]))):
            outputs[index] = output
    return outputs
