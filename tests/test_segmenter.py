"""Losses and the patch baseline's pixel alignment."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.segmenter import PatchSegmenter, RegionSegmenter, weighted_cross_entropy


def test_area_weighting_is_proportional_to_pixel_count():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, -1, 1])
    areas = torch.tensor([10, 30, 1000, 60])
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    keep = labels >= 0
    want = (ce[keep] * areas[keep]).sum() / areas[keep].sum()
    assert torch.allclose(weighted_cross_entropy(logits, labels, areas, "area"), want)
    assert torch.allclose(weighted_cross_entropy(logits, labels, areas, "none"), ce[keep].mean())
    a = areas[keep].float()
    assert torch.allclose(weighted_cross_entropy(logits, labels, areas, "l2"), (a / a.norm() * ce[keep]).mean())


def test_no_labelled_region_gives_zero_loss_with_a_graph():
    logits = torch.randn(2, 3, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.tensor([-1, -1]), torch.tensor([5, 5]), "area")
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_patch_logits_are_upsampled_and_cropped_at_the_padding_offset():
    model = PatchSegmenter(in_dim=2, num_classes=2)
    with torch.no_grad():
        model.decoder.linear.weight.copy_(torch.eye(2))
        model.decoder.linear.bias.zero_()
    patches = torch.randn(2, 3, 4)
    meta = {"patch_size": 14, "pad": [5, 2], "height": 32, "width": 51}
    full = F.interpolate(patches[None], size=(42, 56), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(model.pixel_logits(patches, meta), full[:, 5:37, 2:53], atol=1e-6)


def test_region_segmenter_paints_decoded_masks():
    model = RegionSegmenter(in_dim=2, num_classes=2, uncovered="miss")
    with torch.no_grad():
        model.decoder.linear.weight.copy_(torch.eye(2) * 10)
        model.decoder.linear.bias.zero_()
    from bench.extract import encode_rles
    import numpy as np

    masks = np.zeros((2, 4, 5), bool)
    masks[0, :2] = True
    masks[1, 3:] = True  # row 2 is uncovered
    batch = {"feats": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "image_index": torch.tensor([0, 0]),
             "rles": [encode_rles(masks)], "labels": [torch.zeros(4, 5, dtype=torch.long)]}
    pred = model.predict_pixels(batch)[0]
    assert pred[:2].eq(0).all() and pred[3:].eq(1).all() and pred[2].eq(-1).all()


def test_an_oracle_needs_regions():
    import pytest

    with pytest.raises(ValueError, match="report_oracle=false"):
        PatchSegmenter(in_dim=2, num_classes=2, report_oracle=True)
