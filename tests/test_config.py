"""Config layers, struct mode, table cells, and every experiment file."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench.config import (EXPERIMENTS_DIR, ConfigError, cell_config, load_config, save_config, selected_cells,
                          table_cells)


def test_layers_defaults_then_experiment_then_command_line():
    base = load_config([])
    assert base.model.kind == "region" and base.trainer.devices == 1 and base.experiment is None
    exp = load_config(["experiment=quickstart"])
    assert exp.experiment == "quickstart" and "region_linear" in exp.table.rows
    over = load_config(["experiment=quickstart", "trainer.devices=2", "model.lr=0.5"])
    assert over.trainer.devices == 2 and over.model.lr == 0.5


@pytest.mark.parametrize("arg,suggestion", [("model.decodr=mlp", "model.decoder"),
                                            ("trainer.max_epoch=3", "trainer.max_epochs"),
                                            ("lr=0.1", "model.lr")])
def test_unknown_key_is_rejected_naming_the_nearest_valid_keys(arg, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(["experiment=quickstart", arg])
    assert f"'{arg.split('=')[0]}'" in str(err.value) and suggestion in str(err.value)


def test_unknown_key_in_an_experiment_file_names_the_file(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  label_treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"model.label_treshold.*typo.yaml.*model.label_threshold"):
        load_config([f"experiment={bad}"])


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigError, match="quickstart"):
        load_config(["experiment=quikstart"])


def test_arguments_must_be_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["--devices", "2"])


def test_table_cells_apply_row_and_column_overrides():
    cfg = load_config(["experiment=quickstart"])
    assert table_cells(cfg) == ["patch_linear/minivoc", "region_linear/minivoc"]
    patch = cell_config(cfg, "patch_linear/minivoc")
    assert patch.model.kind == "patch" and patch.extract.patches and patch.regions.source == "none"
    assert "none_colortexture_mean-" in patch.extract.shard_dir  # + digest of the extraction config
    with pytest.raises(ConfigError, match="Cells: patch_linear/minivoc"):
        cell_config(cfg, "nope/minivoc")
    assert selected_cells(load_config(["experiment=quickstart", "cell=region_linear/minivoc"])) == [
        "region_linear/minivoc"]


def test_resolved_config_is_saved(tmp_path):
    cfg = load_config(["experiment=quickstart", f"paths.data_root={tmp_path}"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.dataset.root == f"{tmp_path}/minivoc" and saved.experiment == "quickstart"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_loads_and_every_cell_resolves(path: Path):
    cfg = load_config([f"experiment={path.stem}"])
    for cell in table_cells(cfg):
        resolved = OmegaConf.to_container(cell_config(cfg, cell), resolve=True)
        assert resolved["cell"] == cell


def test_cell_patterns_select_a_column():
    cfg = load_config(["experiment=table1_region_generation", "cell=*/minivoc"])
    cells = selected_cells(cfg)
    assert cells and all(c.endswith("/minivoc") for c in cells) and "sam_slic/minivoc" in cells
    with pytest.raises(ConfigError, match="matches no cell"):
        selected_cells(load_config(["experiment=table1_region_generation", "cell=*/coco"]))


def test_command_line_wins_over_table_cells():
    cfg = load_config(["experiment=quickstart", "regions.params.slic.num_components=77"])
    assert cell_config(cfg, "region_linear/minivoc").regions.params.slic.num_components == 77


def test_shard_dir_depends_only_on_what_changes_the_shards():
    base = load_config([]).extract.shard_dir
    assert load_config(["backbone.params.dinov2_vitl14.layers=[1]"]).extract.shard_dir == base  # another backbone
    assert load_config(["regions.params.sam.points_per_side=8"]).extract.shard_dir == base  # another source
    assert load_config(["model.lr=0.5"]).extract.shard_dir == base
    assert load_config(["regions.params.slic.compactness=10"]).extract.shard_dir != base
    assert load_config(["backbone.params.colortexture.patch_size=16"]).extract.shard_dir != base
    assert load_config(["pooling.mode=max"]).extract.shard_dir != base


def test_a_named_dataset_is_one_key_and_its_own_keys_win(tmp_path):
    cfg = load_config(["dataset=miniade", "dataset.max_images=3"])
    assert cfg.dataset.max_images == 3
    named = OmegaConf.to_container(cfg.datasets.miniade)
    assert OmegaConf.to_container(cfg.dataset) == {**named, "max_images": 3}
    assert load_config([]).dataset == load_config([]).datasets.minivoc  # the default is a named dataset too
    exp = tmp_path / "exp.yaml"
    exp.write_text("dataset: coco\ntable:\n  rows: {a: {}}\n"
                   "  columns: {mini: {dataset: minicoco, dataset.max_images: 5}, coco: {dataset: coco}, same: {}}\n")
    cfg = load_config([f"experiment={exp}", "dataset.generate.num_train=4"])
    assert cfg.dataset.name == "coco" and cfg.dataset.generate == {"num_train": 4}
    mini = cell_config(cfg, "a/mini")  # replaced, not merged over coco's node; the command line re-applied
    assert (mini.dataset.name, mini.dataset.max_images) == ("minicoco", 5)
    assert dict(mini.dataset.generate) == {**cfg.datasets.minicoco.generate, "num_train": 4}
    assert cell_config(cfg, "a/same").dataset.name == "coco"
    wins = load_config([f"experiment={exp}", "dataset=voc"])  # the command line wins over the columns
    assert {cell_config(wins, c).dataset.name for c in table_cells(wins)} == {"voc"}


def test_an_unknown_dataset_name_lists_the_named_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"'dataset' \(from command line\) is 'minivco'; valid: minivoc, miniade"):
        load_config(["dataset=minivco"])
    exp = tmp_path / "exp.yaml"
    exp.write_text("table:\n  rows: {a: {}}\n  columns: {x: {dataset: ade}}\n")
    with pytest.raises(ConfigError, match=r"'dataset' \(from table.columns.x\) is 'ade'; valid: .*ade20k"):
        load_config([f"experiment={exp}"])


def test_named_datasets_list_every_key_under_their_own_name_and_are_type_checked():
    cfg = load_config([])
    frames = ("frame_stride", "max_frames_per_scene")  # how RGB-D layouts sample a scene's frames
    for name, node in cfg.datasets.items():
        clips = ("num_frames", "short_side", "max_tokens", "prescan")  # how a video becomes tokens
        extra = frames if node.layout.startswith("scannet") else clips if node.layout == "kinetics" else ()
        assert sorted(node) == sorted([*cfg.dataset, *extra]) and node.name == name, name
    assert load_config(["datasets.voc.generate=null", "datasets.voc.max_images=2"]).datasets.voc.max_images == 2
    with pytest.raises(ConfigError, match=r"'datasets.voc.num_classes' \(from command line\) is 'many'.*integer"):
        load_config(["datasets.voc.num_classes=many"])
    with pytest.raises(ConfigError, match=r"'datasets.ade20k.layout'.*valid: voc, ade20k"):
        load_config(["datasets.ade20k.layout=pascal"])


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_table_column_names_its_dataset(path: Path):
    cfg = load_config([f"experiment={path.stem}"])
    for column, overrides in cfg.table.columns.items():
        assert overrides.get("dataset") in cfg.datasets, f"{path.stem}: column {column} names no dataset"
        assert not any(k.startswith("dataset.") and k != "dataset.max_images" for k in overrides), (
            f"{path.stem}: column {column} restates keys of a named dataset")
