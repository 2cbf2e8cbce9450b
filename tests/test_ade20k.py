"""ADE20K layout on the real SceneParsing samples in ../shared/fixtures."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules import ade20k
from tests.conftest import shared_or_skip

pytestmark = pytest.mark.fixtures


def test_ade20k_samples_labels_and_names():
    root = shared_or_skip() / "ade20k"
    items = list(ade20k.iter_samples(root, "validation"))
    assert [i.id for i in items] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    raw = np.array(Image.open(items[0].label_path))
    label = ade20k.load_label(items[0].label_path)
    assert label.shape == raw.shape
    np.testing.assert_array_equal(label[raw == 0], 255)  # "other" is ignored
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)
    names = ade20k.class_names(root)
    assert len(names) == 150 and names[0] == "wall" and names[1] == "building"


def test_missing_layout_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        list(ade20k.iter_samples(tmp_path, "validation"))
