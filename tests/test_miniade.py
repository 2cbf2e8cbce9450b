"""MiniADE: the built-in generator in the ADE20K layout, read back by the real ADE20K reader."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.synthetic.miniade import ADE_IDS, generate_miniade, to_ade_raw
from datamodules.synthetic.minivoc import render_scene
from datamodules import ade20k


def test_miniade_reads_back_through_the_ade20k_reader(tmp_path):
    base = generate_miniade(tmp_path, num_train=3, num_val=2, width=64, height=48, progress=False)
    train = list(ade20k.iter_samples(tmp_path, "training"))
    val = list(ade20k.iter_samples(tmp_path, "validation"))
    assert [s.id for s in train] == ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]
    assert [s.id for s in val] == ["ADE_val_00000001", "ADE_val_00000002"]
    raw = np.array(Image.open(val[0].label_path))
    assert Image.open(val[0].label_path).mode == "L"
    _, voc_label = render_scene(1, 3, 64, 48)  # validation image 1 is scene index num_train + 0
    np.testing.assert_array_equal(raw, to_ade_raw(voc_label))
    label = ade20k.load_label(val[0].label_path)
    np.testing.assert_array_equal(label == 255, voc_label == 255)  # void band -> "other" -> ignored
    assert set(np.unique(label)) <= {ade - 1 for ade, _ in ADE_IDS.values()} | {255}
    names = ade20k.class_names(tmp_path)
    assert len(names) == 150 and names[0] == "wall" and names[90] == "airplane"
    assert generate_miniade(tmp_path, num_train=3, num_val=2, width=64, height=48, progress=False) == base


def test_miniade_refuses_a_foreign_ade_tree(tmp_path):
    (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="another ADE20K dataset"):
        generate_miniade(tmp_path, num_train=1, num_val=1, width=64, height=48, progress=False)


def test_ade_predictions_are_shifted_back_with_undecided_as_other(tmp_path):
    pred = np.array([[0, 149], [-1, 5]])
    path = ade20k.save_prediction(tmp_path, "ADE_val_00000001", pred)
    np.testing.assert_array_equal(np.array(Image.open(path)), [[1, 150], [0, 6]])
    with pytest.raises(ValueError, match="class 150"):
        ade20k.save_prediction(tmp_path, "x", np.array([[150]]))
