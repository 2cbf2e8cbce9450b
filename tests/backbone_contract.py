"""What every backbone promises (bench/backbones/__init__.py), checked the same way for each family."""
from __future__ import annotations

import torch


def check_grid_contract(backbone, image, size: tuple[int, int], patch: int, dim: int) -> None:
    """``backbone.features`` of an image of ``size`` is a float32 (dim, ceil(H/p), ceil(W/p)) grid,
    deterministic; ``features_batch`` of mixed sizes equals one image at a time; the model is frozen.
    ``image(h, w, seed=0)`` makes the test images."""
    first = backbone.features(image(*size))
    assert backbone.patch_size == patch and backbone.embed_dim == dim
    assert first.shape == (dim, -(-size[0] // patch), -(-size[1] // patch)) and first.dtype == torch.float32
    assert torch.equal(first, backbone.features(image(*size)))
    images = [image(*size), image(40, 40, seed=3), image(*size, seed=4)]
    for batched, single in zip(backbone.features_batch(images), images):
        torch.testing.assert_close(batched, backbone.features(single), atol=1e-5, rtol=1e-5)
    assert not backbone.model.training and not any(q.requires_grad for q in backbone.model.parameters())
