"""The paper's training presets, the released code's numerics (compat) and its 149-class ADE20K mIoU."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.config import ConfigError, cell_config, load_config
from bench.metrics import confusion_matrix, iou_from_confusion
from bench.presets import COMPAT, PRESETS
from models.segmenter import training_unit
from tests.conftest import SHARED

PAPER = SHARED / "paper" / "region-based-representations-revisited.txt"
TABLE13_ROWS = {"Linear (Regions)": "linear", "Linear (Patch)": "patch_linear", "MLP": "mlp",
                "Transformer": "transformer"}


def table13() -> dict[str, dict]:
    """{preset name: {lr, batch, unit, epochs}} read from the paper's text (Table 13)."""
    if not PAPER.is_file():
        pytest.skip(f"paper text not found at {PAPER}")
    text = PAPER.read_text()
    table = text[text.index("Table 13."):]
    out = {}
    for title, arch in TABLE13_ROWS.items():  # 'MLP (hidden size: 1000)\t5e-4\t1e-4\t32 regions\t...'
        line = next(ln for ln in table.splitlines() if ln.startswith(title))
        lr_voc, lr_ade, batch_voc, batch_ade, ep_voc, ep_ade = line.split("\t")[1:7]
        for dataset, lr, batch, epochs in (("voc", lr_voc, batch_voc, ep_voc), ("ade20k", lr_ade, batch_ade, ep_ade)):
            count, unit = batch.split()
            out[f"{dataset}_{arch}"] = {"lr": float(lr), "batch": int(count), "unit": unit, "epochs": int(epochs)}
    return out


def test_presets_are_the_papers_table_13():
    paper = table13()
    assert len(paper) == 8 and set(paper) <= set(PRESETS)
    for name, want in paper.items():
        cfg = load_config([f"model.preset={name}"])
        batch = cfg.data.region_batch_size if want["unit"] == "regions" else cfg.data.batch_size
        assert (cfg.model.lr, batch, cfg.trainer.max_epochs) == (want["lr"], want["batch"], want["epochs"]), name
        assert cfg.model.kind == ("patch" if "patch" in name else "region")
        # a batch counted in regions or images is what the decoder trains on
        assert training_unit(cfg.model.kind, cfg.model.decoder) == want["unit"].removesuffix("s")


def test_explicit_keys_win_over_a_preset_in_the_same_and_later_layers(tmp_path):
    cli = load_config(["model.preset=ade20k_mlp", "model.lr=0.02"])
    assert cli.model.lr == 0.02 and cli.model.decoder == "mlp" and cli.trainer.max_epochs == 28
    assert cli.model.preset == "ade20k_mlp"  # recorded with the run
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: {preset: voc_transformer}\ntrainer: {max_epochs: 1}\n"
                   "table:\n  rows:\n    tuned: {model.preset: voc_mlp, data.region_batch_size: 64}\n"
                   "    plain: {}\n  columns: {minivoc: {}}\n")
    cfg = load_config([f"experiment={exp}", "model.lr=0.3"])
    assert cfg.model.decoder == "transformer" and cfg.trainer.max_epochs == 1 and cfg.data.batch_size == 2
    plain = cell_config(cfg, "plain/minivoc")
    assert plain.model.decoder == "transformer" and plain.model.lr == 0.3 and plain.trainer.max_epochs == 1
    tuned = cell_config(cfg, "tuned/minivoc")  # the row's preset replaces the file's, its own key wins
    assert tuned.model.decoder == "mlp" and tuned.trainer.max_epochs == 4
    assert tuned.data.region_batch_size == 64 and tuned.model.lr == 0.3  # the command line wins over all


def test_unknown_preset_or_compat_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"model.preset='voc_cnn' is unknown; valid: voc_linear.*command line"):
        load_config(["model.preset=voc_cnn"])
    with pytest.raises(ConfigError, match=r"model.compat='coco' is unknown; valid: voc, ade20k"):
        load_config(["model.compat=coco"])


def test_compat_sets_the_released_numerics_per_dataset_and_defaults_stay_ours():
    ours = load_config([]).model
    assert (ours.label_denominator, ours.loss_weighting, ours.uncovered, list(ours.unscored_classes)) == (
        "labelled", "area", "miss", [])
    voc = load_config(["model.compat=voc"]).model
    assert (voc.label_denominator, voc.loss_weighting, voc.uncovered, list(voc.unscored_classes)) == (
        "all", "l2", "background", [])
    ade = load_config(["model.compat=ade20k", "model.uncovered=nearest"]).model
    assert (ade.label_denominator, ade.loss_weighting, list(ade.unscored_classes)) == ("all", "l2", [149])
    assert ade.uncovered == "nearest"  # explicit wins
    assert set(COMPAT) == {"voc", "ade20k"}


def test_released_ade_recipe_preset():
    cfg = load_config(["model.preset=ade20k_linear_released", "model.compat=ade20k"])
    assert (cfg.model.lr, cfg.data.region_batch_size, cfg.trainer.max_epochs, cfg.model.cosine_t_max,
            cfg.model.weight_decay) == (5e-4, 8192, 16, 30, 0.01)


def released_mean_iou(pred: np.ndarray, label: np.ndarray, num_labels: int = 149, ignore: int = 255) -> dict:
    """The released code's segmentation_utils.mean_iou (HF evaluate's) after label reduction."""
    mask = label != ignore
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]
    hist = lambda x: np.histogram(x, bins=num_labels, range=(0, num_labels - 1))[0]  # noqa: E731
    area_i, area_p, area_l = hist(intersect), hist(pred), hist(label)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = area_i / (area_p + area_l - area_i)
        acc = area_i / area_l
    return {"mean_iou": np.nanmean(iou), "per_category_iou": iou, "overall_accuracy": area_i.sum() / area_l.sum(),
            "mean_accuracy": np.nanmean(acc)}


def test_unscored_flag_class_gives_the_released_149_class_ade_miou():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 150, (64, 80))
    label[:, :20] = 149  # many "flag" pixels: predictions there are false positives for 149-class scoring
    label[rng.random(label.shape) < 0.1] = 255
    label[label == 7] = 3  # class 7 absent from the ground truth
    pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, 150, label.shape))
    pred[label == 255] = rng.integers(0, 150, int((label == 255).sum()))
    pred[rng.random(label.shape) < 0.05] = -1  # uncovered: the released code's 0, reduced to 255
    ours = iou_from_confusion(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), 150), [149])
    ref = released_mean_iou(np.where(pred < 0, 255, pred), label)
    assert ours["miou"] == pytest.approx(ref["mean_iou"], rel=1e-12)
    np.testing.assert_allclose(ours["iou_per_class"][:149], ref["per_category_iou"], rtol=1e-12)
    assert ours["pixel_acc"] == pytest.approx(ref["overall_accuracy"], rel=1e-12)
    assert ours["mean_class_acc"] == pytest.approx(ref["mean_accuracy"], rel=1e-12)
    assert ours["unscored_classes"] == [149] and ours["num_pixels"] == int((label != 255).sum())
    full = iou_from_confusion(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), 150))
    assert full["miou"] != pytest.approx(ref["mean_iou"], rel=1e-6)  # 150-class scoring differs


def test_compat_config_builds_a_model_scoring_149_classes():
    from bench.runs import build_model

    cfg = load_config(["model.compat=ade20k", "dataset.num_classes=150"])
    model = build_model(cfg, {"feature_dim": 8})
    assert model.test_metric.unscored_classes == [149] and model.hparams.label_denominator == "all"
    assert model.hparams.compat == "ade20k" and OmegaConf.is_config(cfg)


def test_what_a_preset_set_is_recorded_in_the_config_and_config_yaml(tmp_path):
    from bench.config import config_hash, save_config

    cli = load_config(["model.preset=ade20k_mlp", "model.lr=0.02"])
    [record] = OmegaConf.to_container(cli.preset_applied)
    assert record == {"layer": "command line", "model.preset": "ade20k_mlp",
                      "set": {k: v for k, v in PRESETS["ade20k_mlp"].items() if k != "model.lr"}}  # lr: its own
    assert load_config([]).preset_applied == []
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: {compat: voc}\ntable:\n  rows: {mlp: {model.preset: voc_mlp}, plain: {}}\n"
                   "  columns: {minivoc: {}}\n")
    cfg = load_config([f"experiment={exp}"])
    mlp = cell_config(cfg, "mlp/minivoc")
    assert [(r["layer"], r.get("model.preset"), r.get("model.compat")) for r in mlp.preset_applied] == [
        (str(exp), None, "voc"), ("table.rows.mlp", "voc_mlp", None)]
    assert mlp.preset_applied[1].set["trainer.max_epochs"] == 4 == mlp.trainer.max_epochs
    assert len(cell_config(cfg, "plain/minivoc").preset_applied) == 1
    save_config(mlp, tmp_path / "config.yaml")
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.preset_applied[1].set["data.region_batch_size"] == 32
    # a record, not a setting: the hash is that of the values themselves
    bare = mlp.copy()
    bare.preset_applied = []
    assert config_hash(bare) == config_hash(mlp)


def test_weights_random_points_every_model_at_a_file_the_random_weights_tool_writes():
    from bench.presets import WEIGHTS
    from bench.tools.random_weights import RANDOM_CHECKPOINTS

    cfg = load_config(["weights=random", "paths.data_root=/d"])
    for key, value in WEIGHTS["random"].items():
        assert OmegaConf.select(cfg, key) == value.replace("${paths.data_root}", "/d"), key
        if key.endswith(".checkpoint"):
            assert value.rsplit("/", 1)[1] in RANDOM_CHECKPOINTS, key
    (record,) = cfg.preset_applied
    assert record["layer"] == "command line" and record["weights"] == "random"
    assert "backbone.params.dinov2_vitl14.checkpoint" in record["set"]
    with pytest.raises(ConfigError, match="weights='tiny' is unknown; valid: random"):
        load_config(["weights=tiny"])
