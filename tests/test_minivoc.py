"""MiniVOC generator: VOC layout, labels with void bands, determinism, idempotence."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.synthetic.minivoc import CLASS_STYLES, STAMP, generate_minivoc, image_id, main, render_scene, void_band
from datamodules.voc import IMAGE_DIR, LABEL_DIR, SPLIT_DIR, VOC_PALETTE, iter_samples, load_image, load_label

NUM_TRAIN, NUM_VAL = 6, 3
ALL_IDS = [f"mini_{i:06d}" for i in range(NUM_TRAIN + NUM_VAL)]


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory) -> Path:
    return generate_minivoc(tmp_path_factory.mktemp("minivoc"), NUM_TRAIN, NUM_VAL, progress=False)


def test_layout_and_split_files(voc_dir):
    assert voc_dir.parts[-2:] == ("VOCdevkit", "VOC2012")
    splits = {name: (voc_dir / SPLIT_DIR / f"{name}.txt").read_text().split()
              for name in ("train", "val", "trainval")}
    assert splits == {"train": ALL_IDS[:NUM_TRAIN], "val": ALL_IDS[NUM_TRAIN:], "trainval": ALL_IDS}
    for sample_id in ALL_IDS:
        image = Image.open(voc_dir / IMAGE_DIR / f"{sample_id}.jpg")
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (320, 240))
        label = Image.open(voc_dir / LABEL_DIR / f"{sample_id}.png")
        assert (label.format, label.mode, label.size) == ("PNG", "P", (320, 240))
        palette = np.frombuffer(bytes(label.getpalette()), np.uint8).reshape(-1, 3)
        assert np.array_equal(palette, VOC_PALETTE)


def test_reader_loads_the_mini_set(voc_dir):
    samples = list(iter_samples(voc_dir.parents[1], "val"))
    assert [s.id for s in samples] == ALL_IDS[NUM_TRAIN:]
    image, label = load_image(samples[0].image_path), load_label(samples[0].label_path)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert label.shape == (240, 320)


def test_labels_use_voc_classes_with_void_along_every_boundary(voc_dir):
    classes_seen = set()
    for sample_id in ALL_IDS:
        label = load_label(voc_dir / LABEL_DIR / f"{sample_id}.png")
        values = set(np.unique(label).tolist())
        assert values <= {0, 255, *CLASS_STYLES}
        assert 255 in values and len(values - {0, 255}) >= 1
        assert (label == 255).mean() < 0.2  # a band, not a blanket
        # Two labelled pixels of different classes are never within 2 px of each
        # other along a row or column: a void band of width >= 3 separates them.
        for gap in (1, 2):
            for a, b in ((label[:, :-gap], label[:, gap:]), (label[:-gap], label[gap:])):
                labelled = (a != 255) & (b != 255)
                assert np.array_equal(a[labelled], b[labelled]), sample_id
        classes_seen |= values - {0, 255}
    assert len(classes_seen) >= 4


def test_void_band_is_three_pixels_wide_and_follows_instances():
    instance = np.zeros((8, 10), np.int32)
    instance[:, 5:] = 1
    band = void_band(instance)
    assert band.any(axis=0).sum() == 3 and band[:, 4:7].all()
    # Two touching objects of one class still get a band: it follows instances, not classes.
    instance[:, 8:] = 2
    assert void_band(instance)[:, 7:10].all()


def test_same_seed_gives_identical_files_and_images_regenerate_alone(voc_dir, tmp_path):
    again = generate_minivoc(tmp_path, NUM_TRAIN, NUM_VAL, progress=False)
    for sub, ext in ((IMAGE_DIR, "jpg"), (LABEL_DIR, "png")):
        for sample_id in ALL_IDS:
            name = f"{sub}/{sample_id}.{ext}"
            assert (voc_dir / name).read_bytes() == (again / name).read_bytes(), name
    _, label = render_scene(seed=0, index=7)
    assert np.array_equal(label, load_label(voc_dir / LABEL_DIR / "mini_000007.png"))
    image, _ = render_scene(seed=1, index=7)
    assert not np.array_equal(image, render_scene(seed=0, index=7)[0])


def test_stamp_makes_generation_idempotent(tmp_path):
    voc_dir = generate_minivoc(tmp_path, 2, 1, width=64, height=48, progress=False)
    stamp = json.loads((voc_dir / STAMP).read_text())
    assert (stamp["num_train"], stamp["num_val"], stamp["width"], stamp["height"]) == (2, 1, 64, 48)
    victim = voc_dir / IMAGE_DIR / f"{image_id(0)}.jpg"
    victim.unlink()
    generate_minivoc(tmp_path, 2, 1, width=64, height=48, progress=False)
    assert not victim.exists()  # same parameters: returned without drawing anything
    generate_minivoc(tmp_path, 2, 1, width=64, height=48, seed=5, progress=False)
    assert victim.exists() and json.loads((voc_dir / STAMP).read_text())["seed"] == 5


def test_refuses_to_write_over_a_real_voc(tmp_path):
    splits = tmp_path / "VOCdevkit" / "VOC2012" / SPLIT_DIR
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("2007_000032\n")
    with pytest.raises(FileExistsError, match="another VOC dataset"):
        generate_minivoc(tmp_path, 2, 1, progress=False)
    assert (splits / "train.txt").read_text() == "2007_000032\n"


def test_command_line(tmp_path, capsys):
    main([str(tmp_path), "--num-train", "1", "--num-val", "1", "--width", "64", "--height", "48"])
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    assert capsys.readouterr().out.strip() == str(voc_dir)
    assert load_image(voc_dir / IMAGE_DIR / "mini_000001.jpg").shape == (48, 64, 3)
