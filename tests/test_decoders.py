"""Decoders: shapes, the transformer's per-image attention and padding mask, training units,
checkpoint round trips, and MLP / transformer training under 2-rank DDP with exact evaluation."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from bench.config import EXPERIMENTS_DIR, load_config
from models.decoders import DECODERS, MLPDecoder, TransformerDecoder, build_decoder, pad_by_image
from models.segmenter import RegionSegmenter, training_unit
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
SMALL = {"linear": {}, "mlp": {"hidden": 7},
         "transformer": {"width": 8, "heads": 2, "layers": 2, "dim_feedforward": 16, "dropout": 0.0}}


def regions(counts: list[int], dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random region features for images with the given region counts: feats (N, dim), image_index (N,)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return torch.randn(len(index), dim, generator=g), index


@pytest.mark.parametrize("name", list(DECODERS))
def test_every_decoder_maps_regions_to_logits(name):
    decoder = build_decoder(name, in_dim=6, num_classes=5, **SMALL[name])
    feats, index = regions([3, 1, 4])
    assert decoder(feats, index).shape == (8, 5)
    assert decoder(feats[:0], index[:0]).shape == (0, 5)


def test_mlp_hidden_width_is_the_papers_1000_by_default():
    assert MLPDecoder(6, 5).mlp[0].out_features == 1000
    cfg = load_config(["model.decoder=mlp"])
    assert cfg.model.decoder_params.mlp.hidden == 1000
    decoder = build_decoder("mlp", 6, 5, **cfg.model.decoder_params.mlp)
    assert [m.__class__.__name__ for m in decoder.mlp] == ["Linear", "ReLU", "Linear"]
    assert decoder.mlp[0].out_features == 1000 and decoder.mlp[2].out_features == 5


def test_unknown_decoder_and_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match=r"model.decoder='conv' is unknown; valid: linear, mlp, transformer"):
        build_decoder("conv", 6, 5)
    with pytest.raises(TypeError, match=r"model.decoder_params.mlp.*hiden"):
        build_decoder("mlp", 6, 5, hiden=3)
    with pytest.raises(ValueError, match=r"heads=4 does not divide the token width 6.*transformer.width"):
        TransformerDecoder(6, 5, heads=4)


def test_pad_by_image_matches_a_loop_for_unsorted_indices_and_missing_images():
    index = torch.tensor([2, 0, 2, 2, 5, 0])  # images 1, 3 and 4 have no regions
    feats = torch.arange(12.0).reshape(6, 2)
    tokens, padding, row, col = pad_by_image(feats, index)
    assert tokens.shape == (3, 3, 2) and padding.tolist() == [[False, False, True], [False, False, False],
                                                               [False, True, True]]
    for i in range(6):
        assert torch.equal(tokens[row[i], col[i]], feats[i])
    assert col.tolist() == [0, 0, 1, 2, 0, 1]  # order kept within an image
    assert tokens[padding].eq(0).all()


def test_padding_tokens_do_not_change_the_other_tokens_outputs():
    decoder = TransformerDecoder(6, 5, **SMALL["transformer"]).eval()
    feats, index = regions([2, 5])
    tokens, padding, _, _ = pad_by_image(decoder.proj(feats), index)
    noisy = tokens.clone()
    noisy[padding] = torch.randn(int(padding.sum()), tokens.shape[2]) * 100
    with torch.no_grad():
        clean = decoder.encoder(tokens, src_key_padding_mask=padding)
        dirty = decoder.encoder(noisy, src_key_padding_mask=padding)
        unmasked = decoder.encoder(noisy)
    torch.testing.assert_close(dirty[~padding], clean[~padding])
    assert not torch.allclose(unmasked[~padding], clean[~padding], atol=1e-3)  # the test can fail


def test_an_images_logits_do_not_depend_on_its_batch_in_eval_mode():
    decoder = TransformerDecoder(6, 5, **{**SMALL["transformer"], "dropout": 0.5}).eval()
    feats, index = regions([3, 9, 1])
    with torch.no_grad():
        together = decoder(feats, index)
        for image in range(3):
            mine = index == image
            alone = decoder(feats[mine], torch.zeros(int(mine.sum()), dtype=torch.long))
            torch.testing.assert_close(together[mine], alone)
        # ... while a region's logits do depend on the other regions of its own image
        changed = feats.clone()
        changed[4] += 1.0
        after = decoder(changed, index)
    torch.testing.assert_close(after[index != 1], together[index != 1])
    assert not torch.allclose(after[5], together[5], atol=1e-4)


def test_decoders_declare_how_they_are_trained():
    assert training_unit("region", "linear") == training_unit("region", "mlp") == "region"
    assert training_unit("region", "transformer") == "image"
    assert training_unit("patch", "linear") == "image"
    with pytest.raises(ValueError, match="the transformer decoder needs image_index"):
        TransformerDecoder(6, 5, **SMALL["transformer"])(torch.randn(4, 6), None)


@pytest.mark.parametrize("name", list(DECODERS))
def test_checkpoint_round_trip_rebuilds_the_decoder(name, tmp_path):
    model = RegionSegmenter(in_dim=6, num_classes=5, decoder=name, decoder_params=SMALL,
                            label_denominator="all", unscored_classes=[4], cosine_t_max=30)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = RegionSegmenter.load_from_checkpoint(tmp_path / "last.ckpt", map_location="cpu")
    assert type(loaded.decoder) is DECODERS[name]
    assert loaded.hparams.decoder_params == SMALL and loaded.hparams.unscored_classes == [4]
    assert loaded.hparams.label_denominator == "all" and loaded.test_metric.unscored_classes == [4]
    feats, index = regions([2, 3])
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded.decoder(feats, index), model.decoder(feats, index))


# ----------------------------------------------------------------------------- 2-rank DDP


def ddp_args(root: Path, experiment: Path, results: Path, devices: int) -> list[str]:
    return [f"experiment={experiment}", *tiny_overrides(root), f"paths.results_root={results}", "data.batch_size=3",
            f"trainer.devices={devices}", "trainer.strategy=" + ("ddp" if devices > 1 else "auto")]


def run(script: str, args: list[str]) -> None:
    out = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_mlp_and_transformer_train_under_two_rank_ddp_and_evaluate_identically(tiny_root, tmp_path):
    """Both decoders trained with 2 gloo ranks on the quickstart's region shards; evaluation of the
    checkpoint with 2 processes and with 1 gives the same full confusion matrix. Batches of 3 images
    make the evaluation batches differ between 1 and 2 processes (the transformer sees other company)."""
    from eval import evaluate

    exp = OmegaConf.load(EXPERIMENTS_DIR / "quickstart.yaml")  # its SLIC shards are in tiny_root
    exp.table.rows = {"mlp": {"model.decoder": "mlp", "model.decoder_params.mlp.hidden": 32},
                      "transformer": {"model.decoder": "transformer", "model.lr": 0.01,
                                      **{f"model.decoder_params.transformer.{k}": v
                                         for k, v in SMALL["transformer"].items()}}}
    path = tmp_path / "decoders_ddp.yaml"
    OmegaConf.save(exp, path)
    trained = tmp_path / "trained"
    run("train.py", ddp_args(tiny_root, path, trained, devices=2))
    cells = ("mlp/minivoc", "transformer/minivoc")
    scores = {}
    for devices in (2, 1):
        copy = tmp_path / f"eval_{devices}"
        shutil.copytree(trained, copy)  # eval.py writes metrics.json beside the checkpoints
        if devices > 1:
            run("eval.py", ddp_args(tiny_root, path, copy, devices))
        else:
            evaluate(load_config(ddp_args(tiny_root, path, copy, devices)))
        scores[devices] = {cell: json.loads((copy / "decoders_ddp" / cell / "metrics.json").read_text())
                           for cell in cells}
    for cell in cells:
        two, one = scores[2][cell], scores[1][cell]
        assert two["world_size"] == 2 and one["world_size"] == 1 and two["num_images"] == one["num_images"] == 6
        assert two["confusion"] == one["confusion"], cell
        assert np.asarray(one["confusion"]).sum() == one["num_pixels"]
        fit = json.loads((trained / "decoders_ddp" / cell / "metrics.json").read_text())
        assert fit["epochs"] == 2 and fit["confusion"] == one["confusion"]
