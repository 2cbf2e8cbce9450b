"""Config values are checked when the config is loaded (issue 12, item 13): types inferred from
bench/defaults.yaml (and pytorch_lightning.Trainer's signature for ``trainer.*``), enumerated keys
against the registries that define them; the error names the key, the value, the valid choices and
the layer the value came from, before any directory is made."""
from __future__ import annotations

import pytest

from bench.config import ConfigError, load_config


@pytest.mark.parametrize("arg, words", [
    # the cases
    ("trainer.max_epochs=abc", ["'trainer.max_epochs'", "'abc'", "int"]),
    ("model.lr=abc", ["'model.lr'", "'abc'", "number"]),
    ("data.region_batch_size=abc", ["'data.region_batch_size'", "'abc'", "integer"]),
    ("data.verify=sha512", ["'data.verify'", "'sha512'", "exists, size, sha256"]),
    ("pooling.mode=maxx", ["'pooling.mode'", "'maxx'", "mean, max, downsample"]),
    # more enumerated keys, each from its registry
    ("regions.source=slicc", ["'regions.source'", "slic", "sam_slic", "none"]),
    ("backbone.name=dinov3", ["'backbone.name'", "colortexture", "dinov2_vitl14"]),
    ("model.kind=oracl", ["'model.kind'", "region, patch, oracle"]),
    ("model.decoder=mlpp", ["'model.decoder'", "linear, mlp, transformer"]),
    ("model.uncovered=nearst", ["'model.uncovered'", "miss, nearest, background"]),
    ("model.loss_weighting=pixels", ["'model.loss_weighting'", "area, none, l2"]),
    ("model.label_denominator=some", ["'model.label_denominator'", "labelled, all"]),
    ("model.scheduler=step", ["'model.scheduler'", "cosine, none"]),
    ("logger.kind=tb", ["'logger.kind'", "csv, tensorboard, wandb, none"]),
    ("dataset.layout=pascal", ["'dataset.layout'", "voc, ade20k, coco, folder"]),
    ("task=detection", ["'task'", "segmentation, retrieval"]),
    ("retrieval.similarity=l2", ["'retrieval.similarity'", "ip, cosine"]),
    ("regions.params.sam.model_type=vit_x", ["'regions.params.sam.model_type'", "vit_h"]),
    ("regions.params.sam.preset=table9", ["'regions.params.sam.preset'", "table10, table11, table12"]),
    ("backbone.params.dinov2_vitl14.dtype=fp8", ["'backbone.params.dinov2_vitl14.dtype'", "fp32", "bf16"]),
    ("leaderboard.sort=best", ["'leaderboard.sort'", "miou"]),
    # trainer.* from pytorch_lightning.Trainer's own signature
    ("trainer.precision=33", ["'trainer.precision'", "'32-true'", "'bf16-mixed'"]),
    ("trainer.deterministic=maybe", ["'trainer.deterministic'", "'warn'"]),
    ("trainer.max_epochs=true", ["'trainer.max_epochs'", "True"]),
    ("trainer.limit_train_batches=all", ["'trainer.limit_train_batches'"]),
    # null defaults with declared types; null where a value is needed
    ("dataset.max_images=ten", ["'dataset.max_images'", "'ten'", "integer"]),
    ("regions.params.sam.points_per_side=many", ["'regions.params.sam.points_per_side'", "integer"]),
    ("model.lr=null", ["'model.lr'", "None"]),
    ("extract.progress=sometimes", ["'extract.progress'", "true or false"]),
    # extract.index without a count was ignored
    ("extract.index=1", ["extract.index=1", "extract.count"]),
])
def test_a_wrong_value_is_refused_at_load_naming_key_value_choices_and_layer(arg, words):
    with pytest.raises(ConfigError) as err:
        load_config(["experiment=quickstart", arg])
    message = str(err.value)
    assert "(from command line)" in message or arg.startswith("extract.index"), message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("args", [
    ["model.lr=1"],  # an int where the default is a float
    ["trainer.devices=2", "trainer.strategy=ddp", "trainer.precision=bf16-mixed", "trainer.deterministic=warn"],
    ["trainer.devices=auto", "trainer.max_epochs=null", "trainer.precision=32", "trainer.limit_val_batches=0.5"],
    ["regions.cache=null", "extract.feature_cache=null", "dataset.generate=null"],
    ["extract.index=1", "extract.count=4"],
    ["model.preset=voc_mlp", "model.compat=voc", "regions.source=none", "dataset.max_images=3"],
    ["regions.params.sam.points_per_side=16", "regions.params.sam.pred_iou_thresh=0.8",
     "backbone.params.dinov2_vitl14.layers=[-1,-4]", "regions.params.sam2.use_m2m=true"],
    ["dataset.name=2012", "cell=*/minivoc"],  # a number is a fine name
])
def test_valid_values_still_load(args):
    load_config(["experiment=quickstart", *args])


def test_extract_index_must_lie_within_count():
    with pytest.raises(ConfigError, match=r"extract.index=4.*extract.count=4"):
        load_config(["extract.index=4", "extract.count=4"])
    with pytest.raises(ConfigError, match=r"extract.count=0"):
        load_config(["extract.count=0"])


def test_a_wrong_value_in_an_experiment_file_names_the_file(tmp_path):
    bad = tmp_path / "bad_pooling.yaml"
    bad.write_text("pooling:\n  mode: maxx\n")
    with pytest.raises(ConfigError, match=r"'pooling.mode' \(from .*bad_pooling.yaml\) is 'maxx'; valid: mean, max, downsample"):
        load_config([f"experiment={bad}"])


def test_a_wrong_value_in_a_table_row_is_refused_when_the_experiment_loads(tmp_path):
    bad = tmp_path / "bad_row.yaml"
    bad.write_text("table:\n  rows:\n    fine: {model.decoder: mlp}\n    typo: {model.decoder: mlpp}\n"
                   "  columns:\n    minivoc: {}\n  sweep:\n    model.lr: [0.1, fast]\n")
    with pytest.raises(ConfigError) as err:
        load_config([f"experiment={bad}"])
    assert "table.rows.typo" in str(err.value) and "'mlpp'" in str(err.value)
    bad.write_text("table:\n  rows:\n    fine: {model.decoder: mlp}\n  sweep:\n    model.lr: [0.1, fast]\n")
    with pytest.raises(ConfigError, match=r"'model.lr' \(from table.sweep.model.lr\) is 'fast'"):
        load_config([f"experiment={bad}"])


def test_train_refuses_a_wrong_type_before_making_a_run_directory(tmp_path, monkeypatch, capsys):
    """The issue's case: a TypeError inside the optimizer, after the run directory was created.
    Runs train.py's own __main__ block in this process: the message alone, exit code 2."""
    import logging
    import runpy
    import sys

    from bench.config import REPO_ROOT

    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # leave the session's logging alone
    results = tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["train.py", "experiment=quickstart", "data.region_batch_size=abc",
                                      f"paths.results_root={results}", f"paths.data_root={tmp_path / 'data'}"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
    assert exit_.value.code == 2
    assert "error: config key 'data.region_batch_size' (from command line) is 'abc'" in capsys.readouterr().err
    assert not results.exists() and not (tmp_path / "data").exists()
