"""``features_batch``: one forward pass per padded size, grids equal to ``features`` of each image.

Exactness is asserted with ``torch.equal`` on every machine: ``forward_in_groups`` checks the first
batch of each shape against single-image forwards and falls back to one image at a time where a
batch rounds differently (MKL's sgemm on Intel CPUs does for the tiny CLIP's MLP projection; on
the AMD EPYC build machines every model here batched exactly, measured for issue 17).
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from bench.backbones import ColorTextureBackbone, clip as backbones_clip, vit as backbones_vit
from bench.backbones.batching import forward_in_groups, same_size_groups

# (H, W): (96, 128) twice, so every patch size has a group of two; at patch 14 (97, 130) pads to
# the same 98 x 140, so a group also holds images of different raw sizes.
SIZES = [(96, 128), (50, 70), (97, 130), (96, 128), (14, 28)]


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("batch_checkpoints")
    vit_file = backbones_vit.save_random_checkpoint("dinov2_vitb14", root / "dinov2.pth", tiny=True)
    return {
        "dinov2 last layer": backbones_vit.load_vit_backbone("dinov2_vitb14", vit_file),
        "dinov2 two layers + pos": backbones_vit.load_vit_backbone("dinov2_vitb14", vit_file, layers=[0, -1],
                                                                   add_pos_embed=True),
        "dino_vitb16": backbones_vit.load_vit_backbone(
            "dino_vitb16", backbones_vit.save_random_checkpoint("dino_vitb16", root / "dino.pth", tiny=True)),
        "clip_vitb32": backbones_clip.load_clip_backbone(
            "clip_vitb32", backbones_clip.save_random_checkpoint("clip_vitb32", root / "clip.pt", tiny=True)),
        "maskclip_vitl14": backbones_clip.load_clip_backbone(
            "maskclip_vitl14", backbones_clip.save_random_checkpoint("maskclip_vitl14", root / "mclip.pt", tiny=True)),
        "colortexture": ColorTextureBackbone(patch_size=14),
    }


def test_same_size_groups_keeps_first_appearance_order():
    assert same_size_groups([(2, 3), (4, 5), (2, 3), (1, 1), (4, 5)]) == [[0, 2], [1, 4], [3]]
    assert same_size_groups([]) == []


def test_forward_in_groups_calls_once_per_size_and_restores_order():
    inputs = [torch.full((1, h, w), float(i)) for i, (h, w) in enumerate([(2, 2), (3, 3), (2, 2), (3, 3), (2, 2)])]
    stacks = []

    def forward(x):
        stacks.append(x[:, 0, 0, 0].tolist())
        return x.sum(dim=(1, 2, 3))

    forward_in_groups(inputs, forward)  # each shape's first batch is checked against one input at a time
    assert stacks == [[0.0, 2.0, 4.0], [0.0], [2.0], [4.0], [1.0, 3.0], [1.0], [3.0]]
    stacks.clear()
    out = forward_in_groups(inputs, forward)  # exact: from now on one forward per size
    assert stacks == [[0.0, 2.0, 4.0], [1.0, 3.0]]
    assert [float(o) for o in out] == [float(i) * x.numel() for i, x in enumerate(inputs)]


@pytest.mark.parametrize("name", ["dinov2 last layer", "dinov2 two layers + pos", "dino_vitb16", "clip_vitb32",
                                  "maskclip_vitl14", "colortexture"])
def test_features_batch_is_exactly_features_of_each_image_in_order(backbones, name):
    backbone, images = backbones[name], _images()
    batched = backbone.features_batch(images)
    assert len(batched) == len(images)
    for image, grid in zip(images, batched):
        single = backbone.features(image)
        p = backbone.patch_size
        assert grid.shape == (backbone.embed_dim, -(-image.shape[0] // p), -(-image.shape[1] // p))
        assert grid.dtype == torch.float32 and grid.device.type == "cpu"
        assert torch.equal(grid, single), name
        assert torch.equal(grid.half(), single.half())  # what FeatureCache.put stores


@pytest.mark.parametrize("name", ["dinov2 last layer", "clip_vitb32"])
def test_one_forward_pass_per_padded_size_where_batches_are_exact(backbones, name, monkeypatch):
    from bench.backbones.batching import batch_is_exact

    backbone = backbones[name]
    backbone.features_batch(_images())  # the shapes' verdicts are found on a first call
    batch_sizes = []
    grids = backbone._grids
    counting = types.MethodType(lambda self, x: batch_sizes.append(len(x)) or grids(x), backbone)  # same owner
    monkeypatch.setattr(backbone, "_grids", counting)
    backbone.features_batch(_images())
    p = backbone.patch_size
    padded = [(-(-h // p) * p, -(-w // p) * p) for h, w in SIZES]
    groups = same_size_groups(padded)
    assert max(len(group) for group in groups) > 1  # the sizes above do share a padded size for this patch
    expected = []
    for group in groups:
        exact = batch_is_exact(grids, (len(group), 3, *padded[group[0]]))
        assert exact is not None or len(group) == 1
        expected += [len(group)] if exact or len(group) == 1 else [1] * len(group)
    assert batch_sizes == expected


def test_a_batch_that_rounds_differently_falls_back_to_one_input_at_a_time(caplog):
    """A forward whose rows depend on the batch size (as a BLAS's may): every output is the single-input
    one, one warning, and the shape's verdict is kept (the next call makes no batched forward)."""
    from bench.backbones.batching import batch_is_exact

    calls = []

    def forward(x):
        calls.append(len(x))
        return x.sum(dim=(1, 2, 3)) + 1e-3 * (len(x) - 1)

    inputs = [torch.full((3, 2, 2), float(i)) for i in range(3)]
    with caplog.at_level("WARNING", logger="regionbench.backbones"):
        first = forward_in_groups(inputs, forward)
        second = forward_in_groups(inputs, forward)
    singles = [forward(x[None])[0] for x in inputs]
    assert [float(o) for o in first] == [float(o) for o in second] == [float(s) for s in singles]
    assert calls[:4] == [3, 1, 1, 1] and calls[4:7] == [1, 1, 1]  # checked once, then one at a time
    assert batch_is_exact(forward, (3, 3, 2, 2)) is False
    assert sum("rounds differently" in r.message for r in caplog.records) == 1
