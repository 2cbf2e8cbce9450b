"""Batched backbone forwards: images whose padded inputs have one size share a forward pass.

A ViT's input is the image centre-padded to a multiple of the patch, so two images of different
sizes cannot be stacked without changing what the model sees (more padding = other tokens, and
attention mixes every token). Images of the same padded size stack exactly as they are;
``features_batch`` runs one forward per such group and hands the grids back in input order.

A batched forward is used only where it gives each image the bits of a forward of that image alone.
A BLAS may round a matrix product's rows differently when it has more of them (measured: MKL's
sgemm on an Intel Xeon, CLIP ViT-B/32's MLP projection at 26 rows instead of 13; not on an AMD
EPYC), and extraction batches whichever feature calls happen to arrive together, so an inexact batch
would make shard bytes depend on timing. The first batch of each input shape is therefore checked
against single-image forwards (once per backbone and shape, cached); where they differ, that shape
runs one image at a time from then on, with one warning.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

log = logging.getLogger("regionbench.backbones")
_EXACT: dict[tuple, bool] = {}  # (backbone, (B, 3, Hp, Wp)) -> a batch of that shape gives the single-image bits


def same_size_groups(sizes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Indices grouped by equal size, groups in order of first appearance, indices ascending
    within a group: [(2, 3), (4, 5), (2, 3)] -> [[0, 2], [1]]."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return list(groups.values())


def forward_in_groups(inputs: Sequence[torch.Tensor],
                      forward: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """[(3, Hp_i, Wp_i)] preprocessed images -> [forward(x_i[None])[0]] per image, in input order.

    ``forward``: (B, 3, Hp, Wp) -> (B, ...) for one stack of same-size inputs; it is called once per
    distinct (Hp, Wp), where a batch of that shape has been found exact (``batch_is_exact``), else once
    per image."""
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for group in same_size_groups([x.shape for x in inputs]):
        stack = torch.stack([inputs[i] for i in group])
        key = (_owner(forward), tuple(stack.shape))
        if len(group) > 1 and _EXACT.get(key) is not False:
            batched = list(forward(stack))
            if key not in _EXACT:
                batched = _checked(key, batched, stack, forward)
        else:
            batched = [forward(x[None])[0] for x in stack]
        for index, output in zip(group, batched):
            outputs[index] = output
    return outputs


def batch_is_exact(forward: Callable, shape: tuple[int, ...]) -> bool | None:
    """Whether a batch of ``shape`` (B, 3, Hp, Wp) through ``forward`` was found to give the single-image
    bits (None: not tried yet)."""
    return _EXACT.get((_owner(forward), tuple(shape)))


def _checked(key: tuple, batched: list[torch.Tensor], stack: torch.Tensor, forward: Callable) -> list[torch.Tensor]:
    """The single-image outputs, recording whether ``batched`` equals them bit for bit."""
    singles = [forward(x[None])[0] for x in stack]
    _EXACT[key] = all(torch.equal(a, b) for a, b in zip(batched, singles))
    if not _EXACT[key]:
        log.warning("%s: a batch of %d inputs of %s rounds differently from one input at a time on this machine "
                    "(its BLAS); inputs of this shape are computed one at a time, so the grids keep their bits",
                    key[0][0], len(stack), "x".join(map(str, stack.shape[1:])))
    return singles


def _owner(forward: Callable) -> tuple[str, int]:
    """The backbone a bound ``forward`` belongs to (its class name and identity), else the function."""
    owner = getattr(forward, "__self__", forward)
    return type(owner).__name__, id(owner)
