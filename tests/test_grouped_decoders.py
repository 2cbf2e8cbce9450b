"""Decoders on groups and positions (models/decoders.py): the transformer attends within a group (an
image, a scene, a clip), takes optional positional embeddings, and can classify a whole group; on
segmentation (group = image, no positions) it computes exactly what the padded-batch decoder did."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.decoders import DECODERS, TransformerDecoder, build_decoder, pad_by_image

SMALL = {"width": 8, "heads": 2, "layers": 2, "dim_feedforward": 16, "dropout": 0.1}


def tokens(counts: list[int], dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return torch.randn(len(index), dim, generator=g), index


def padded_batch_forward(decoder: TransformerDecoder, feats: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """The transformer decoder's forward before groups and positions existed, verbatim."""
    if len(feats) == 0:
        return decoder.head(decoder.proj(feats))
    tokens_, padding, row, col = pad_by_image(decoder.proj(feats), image_index)
    return decoder.head(decoder.encoder(tokens_, src_key_padding_mask=padding)[row, col])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("width", [None, 8])
def test_grouped_path_equals_the_padded_batch_path_bit_for_bit(train, width):
    torch.manual_seed(0)
    decoder = TransformerDecoder(6, 5, **{**SMALL, "width": width, "heads": 2}).train(train)
    feats, index = tokens([3, 1, 5, 2])
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(1))
    feats, index = feats[perm], index[perm]  # unsorted groups, as collate may give
    torch.manual_seed(7)
    old = padded_batch_forward(decoder, feats, index)
    torch.manual_seed(7)  # same dropout draws
    new = decoder(feats, index)
    assert torch.equal(old, new)
    torch.manual_seed(7)
    assert torch.equal(decoder(feats, index, None), old)


def test_a_scene_group_lets_tokens_attend_across_its_images_and_nowhere_else():
    torch.manual_seed(0)
    decoder = TransformerDecoder(6, 5, **{**SMALL, "dropout": 0.0}).eval()
    feats, image = tokens([3, 2, 4])
    scene = torch.tensor([0, 0, 1])[image]  # images 0 and 1 are two views of scene 0
    grouped = decoder(feats, scene)
    alone = decoder(feats[scene == 0], torch.zeros(int((scene == 0).sum()), dtype=torch.long))
    torch.testing.assert_close(grouped[scene == 0], alone, rtol=1e-5, atol=1e-6)
    per_image = decoder(feats, image)
    assert not torch.allclose(grouped[scene == 0], per_image[scene == 0])  # attention crossed the images
    torch.testing.assert_close(grouped[scene == 1], per_image[scene == 1], rtol=1e-5, atol=1e-6)


def test_positions_are_added_to_the_tokens_and_break_permutation_invariance():
    torch.manual_seed(0)
    decoder = TransformerDecoder(6, 5, **{**SMALL, "dropout": 0.0}).eval()
    feats, clip = tokens([4, 4])
    assert torch.equal(decoder(feats, clip, torch.zeros(len(feats), 8)), decoder(feats, clip))
    time = torch.arange(4).repeat(2)  # frame index within the clip
    pos = nn.Embedding(4, 8)(time).detach()
    with_pos = decoder(feats, clip, pos)
    assert not torch.allclose(with_pos, decoder(feats, clip))
    swap = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])  # swap two frames' features, keep positions
    no_pos = decoder(feats[swap], clip)
    torch.testing.assert_close(no_pos[swap], decoder(feats, clip), rtol=1e-5, atol=1e-6)  # a set without positions
    assert not torch.allclose(decoder(feats[swap], clip, pos)[swap], with_pos)


def test_group_head_classifies_each_clip_independently_of_the_others():
    torch.manual_seed(0)
    decoder = TransformerDecoder(6, 5, **{**SMALL, "dropout": 0.0}, output="group").eval()
    feats, clip = tokens([3, 5, 2])
    logits = decoder(feats, clip)
    assert logits.shape == (3, 5)
    alone = decoder(feats[clip == 1], torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(logits[1:2], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="output='frame'; valid: token, group"):
        TransformerDecoder(6, 5, heads=2, output="frame")


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_per_vector_decoders_ignore_groups_and_positions(name):
    decoder = build_decoder(name, in_dim=6, num_classes=5, **({"hidden": 7} if name == "mlp" else {}))
    feats, group = tokens([2, 3])
    assert torch.equal(decoder(feats, group, torch.ones(5, 6)), decoder(feats))
    assert set(DECODERS) == {"linear", "mlp", "transformer"}
