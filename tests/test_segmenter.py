"""Losses and the patch baseline's pixel alignment."""
from __future__ import annotations

import math

import numpy as np
import pytest
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
    from bench.rle import encode_rles
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


def region_samples(dim: int = 4, num_classes: int = 3) -> list[dict]:
    """Two decoded shard samples (see bench.shards): 3 and 2 regions, histograms with ignore pixels."""
    rng = np.random.default_rng(0)
    out = []
    for key, hists in (("a", [[9, 0, 0, 1], [0, 5, 0, 5], [0, 0, 0, 8]]), ("b", [[1, 1, 6, 0], [2, 2, 2, 0]])):
        hist = np.array(hists, np.int32)
        out.append({"key": key, "feats": rng.normal(size=(len(hist), dim)).astype(np.float16), "hist": hist,
                    "areas": hist.sum(1), "label": np.zeros((2, 2), np.uint8), "rle": [], "meta": {}})
    return out


NO_TRAINER = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


@NO_TRAINER
@pytest.mark.parametrize("decoder", ["linear", "mlp", "transformer"])
def test_training_step_takes_region_rows_and_whole_images(decoder):
    from datamodules.region_shards import collate_region_rows, collate_regions, explode_regions

    params = {"mlp": {"hidden": 8}, "transformer": {"width": 4, "heads": 2, "dim_feedforward": 8}}
    model = RegionSegmenter(in_dim=4, num_classes=3, decoder=decoder, decoder_params=params)
    images = collate_regions(region_samples())
    rows = collate_region_rows(list(explode_regions(iter(region_samples()))))
    assert "image_index" in images and "image_index" not in rows
    batches = [images] if decoder == "transformer" else [images, rows]
    for batch in batches:
        loss = model.training_step(batch, 0)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
    if decoder == "transformer":
        with pytest.raises(ValueError, match="train_unit='image'"):
            model.training_step(rows, 0)


@NO_TRAINER
def test_label_denominator_decides_which_regions_train():
    """Region a/1 is half void, half class 1: labelled by default, left out of the loss in compat."""
    from datamodules.region_shards import collate_regions

    batch = collate_regions(region_samples())
    seen = {}
    for denominator in ("labelled", "all"):
        model = RegionSegmenter(in_dim=4, num_classes=3, label_denominator=denominator, loss_weighting="none")
        logits = model.decoder(batch["feats"])
        labels = torch.tensor([0, 1, -1, 2, -1]) if denominator == "labelled" else torch.tensor([0, -1, -1, 2, -1])
        keep = labels >= 0
        want = F.cross_entropy(logits[keep], labels[keep])
        seen[denominator] = model.training_step(batch, 0)
        assert torch.allclose(seen[denominator], want)
    with pytest.raises(ValueError, match="model.label_denominator"):
        RegionSegmenter(in_dim=4, num_classes=3, label_denominator="some")


def test_cosine_period_defaults_to_max_epochs_and_follows_cosine_t_max():
    import pytorch_lightning as pl

    for t_max, want in ((None, 16), (30, 30)):
        model = RegionSegmenter(in_dim=4, num_classes=3, lr=5e-4, cosine_t_max=t_max)
        model.trainer = pl.Trainer(max_epochs=16, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        scheduler = model.configure_optimizers()["lr_scheduler"]
        assert scheduler.T_max == want
    for _ in range(15):
        scheduler.optimizer.step()  # no gradients: only keeps the optimizer-before-scheduler order
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(5e-4 * (1 + np.cos(np.pi * 15 / 30)) / 2)


def test_unscored_classes_reach_every_metric():
    model = RegionSegmenter(in_dim=4, num_classes=3, unscored_classes=[2], report_oracle=True)
    assert model.val_metric.unscored_classes == model.test_metric.unscored_classes == [2]
    assert model.oracle_metric.unscored_classes == [2]
    with pytest.raises(ValueError, match="model.unscored_classes"):
        RegionSegmenter(in_dim=4, num_classes=3, unscored_classes=[3])


def test_warmup_ramps_linearly_over_a_fraction_of_epochs_then_follows_the_epoch_cosine():
    from models.segmenter import warmup_factor

    f = [warmup_factor(s, per_epoch=4, warmup_epochs=2.5, t_max=10, cosine=True) for s in range(16)]
    assert f[0] == pytest.approx(1 / 10) and f[8] == pytest.approx(9 / 10 * 0.5 * (1 + math.cos(math.pi * 2 / 10)))
    assert f[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 10)))  # ramp done after 10 steps
    assert f[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 10)))  # epoch 3
    assert [warmup_factor(s, 4, 2.5, 10, cosine=False) for s in (0, 9, 15)] == pytest.approx([0.1, 1.0, 1.0])
