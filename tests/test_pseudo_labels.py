"""MaskCLIP+-style pseudo labels (bench/pseudo_labels.py): a segmentation student on MiniVOC whose train
labels are a tiny random MaskCLIP's zero-shot predictions; the teacher is made once and reused."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from bench.config import ConfigError, cell_config, config_hash, load_config
from bench.shards import read_split
from tests.conftest import TINY

NAME = "maskclip_vitl14"
CELL = "region_linear/minivoc"
TEACHER = ("pseudo_labels.teacher={backbone.name: maskclip_vitl14, model.kind: patch, regions.source: none, "
           "extract.patches: true, zeroshot.templates: simple}")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from bench.backbones.clip import save_random_checkpoint

    root = tmp_path_factory.mktemp("pseudo")
    save_random_checkpoint(NAME, root / "data" / "checkpoints" / "random" / f"{NAME}_tiny_random.pt", tiny=True)
    return root


def config(root: Path, *extra: str):
    cfg = load_config(["experiment=quickstart", f"cell={CELL}", *TINY, "weights=random", "extract.workers=0",
                       "trainer.max_epochs=1", "regions.params.slic.num_components=40",
                       f"paths.data_root={root / 'data'}", f"paths.results_root={root / 'results'}", *extra])
    return cell_config(cfg, CELL)


def pngs(directory: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.array(Image.open(p)) for p in sorted(directory.glob("*.png"))}


@pytest.fixture(scope="module")
def student(root):
    """The student extracted (its teacher made first) and trained once."""
    from bench.extract import extract
    from train import train

    cfg = config(root, TEACHER)
    extract(cfg)
    return cfg, train(cfg)[CELL]


def test_student_train_shards_hold_the_teachers_labels_and_val_keeps_the_real_ones(root, student):
    from bench.pseudo_labels import teacher_dir

    cfg, metrics = student
    record = metrics["pseudo_labels"]
    teacher = pngs(Path(record["label_dir"]))
    assert record["train_images_labelled"] == len(teacher) == 12 and record["teacher_hash"] == teacher_dir(cfg).name
    assert record["teacher"]["backbone.name"] == NAME and 0 <= record["teacher_agreement_with_train_labels"] <= 1
    teacher_metrics = json.loads(Path(record["teacher_metrics"]).read_text())
    assert teacher_metrics["miou"] == record["teacher_agreement_with_train_labels"]
    train = list(read_split(Path(cfg.extract.shard_dir) / "train")[0])
    real = config(root)  # the same student without a teacher: its shards hold the dataset's labels
    assert {s["key"] for s in train} == set(teacher)
    differs = 0
    for sample in train:
        label = np.asarray(sample["label"])
        assert np.array_equal(label, teacher[sample["key"]]), sample["key"]
        differs += not np.array_equal(label, _real_label(real, sample["key"]))
    assert differs > 0  # random teacher: its labels are not the dataset's
    val = list(read_split(Path(cfg.extract.shard_dir) / "val")[0])
    assert len(val) == 6 and all(np.array_equal(np.asarray(s["label"]), _real_label(real, s["key"])) for s in val)
    assert metrics["num_images"] == 6


def _real_label(cfg, key: str) -> np.ndarray:
    from datamodules.datasets import dataset_items, layout

    items = {i.id: i for split in ("train", "val") for i in dataset_items(cfg.dataset, split)}
    return layout(cfg.dataset).load_label(items[key].label_path)


def test_a_finished_teacher_is_reused_and_a_killed_one_is_redone(root, student, caplog):
    from bench.extract import extract
    from bench.pseudo_labels import STAMP, teacher_dir

    cfg, metrics = student
    directory = teacher_dir(cfg)
    files = [directory / STAMP, *Path(metrics["pseudo_labels"]["label_dir"]).glob("*.png")]
    before = {p: p.stat().st_mtime_ns for p in files}
    with caplog.at_level(logging.INFO, logger="regionbench"):
        extract(config(root, TEACHER, "model.lr=0.5"))  # another student of the same teacher
    assert "finished before, reused" in caplog.text and "labelling split" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in files} == before
    (directory / STAMP).unlink()  # killed before its stamp: labels may be half written
    damaged = files[1]
    damaged.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="regionbench"):
        extract(cfg)
    assert "labelling split" in caplog.text and damaged.is_file() and (directory / STAMP).is_file()


def test_the_teacher_enters_the_student_hash_and_no_teacher_keeps_the_old_hash(root):
    plain, taught = config(root), config(root, TEACHER)
    other = config(root, TEACHER.replace("templates: simple", "templates: none"))
    assert len({config_hash(plain), config_hash(taught), config_hash(other)}) == 3
    assert len({plain.extract.shard_dir, taught.extract.shard_dir, other.extract.shard_dir}) == 3
    before = OmegaConf.masked_copy(plain, [k for k in plain if k != "pseudo_labels"])  # a config made before the node
    assert config_hash(plain) == config_hash(before)
    # zeroshot.* enters a student's hash through its teacher's hash, and not a plain student's
    assert config_hash(plain) == config_hash(config(root, "zeroshot.logit_scale=40"))
    assert config_hash(taught) != config_hash(config(root, TEACHER, "zeroshot.logit_scale=40"))


def test_a_bad_teacher_is_refused_before_any_work(root):
    from bench.extract import extract

    fresh = root / "refused"
    with pytest.raises(ConfigError, match=r"unknown config key 'backbone.nmae' \(from pseudo_labels.teacher\)"):
        config(root, "pseudo_labels.teacher={backbone.nmae: maskclip_vitl14}")
    with pytest.raises(ConfigError, match="task=zeroshot"):
        load_config(["experiment=zeroshot_segmentation", TEACHER])
    cfg = config(fresh, "pseudo_labels.teacher={model.kind: patch, regions.source: none, extract.patches: true}")
    with pytest.raises(ConfigError, match="no text tower for backbone 'colortexture'"):
        extract(cfg)
    with pytest.raises(FileNotFoundError, match="maskclip_vitl14.checkpoint=.*no such file"):
        extract(config(fresh, TEACHER))  # the teacher's checkpoint: none under this data root
    cfg = config(fresh, TEACHER, "dataset=minicoco")
    with pytest.raises(ConfigError, match="layout=coco writes predictions in another format"):
        extract(cfg)
    assert not any((fresh / "data").rglob("*.tar")) and not (fresh / "data" / "pseudo_labels").exists()


@pytest.mark.parametrize("name", ["voc", "ade20k"])
def test_a_layouts_prediction_png_reads_back_as_its_label_map(tmp_path, name):
    """-1 (undecided) is written as 0: VOC reads it as class 0 (background), ADE20K as ignore ("other")."""
    from datamodules.datasets import LAYOUTS

    fmt = LAYOUTS[name]
    pred = np.array([[-1, 0, 1], [2, 19, 20]])
    path = fmt.save_prediction(tmp_path, "x", pred)
    expected = np.where(pred < 0, 0 if name == "voc" else 255, pred)
    assert fmt.predictions_are_labels and np.array_equal(fmt.load_label(path), expected)
    assert not LAYOUTS["coco"].predictions_are_labels and not LAYOUTS["folder"].predictions_are_labels
