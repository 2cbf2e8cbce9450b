"""Pascal VOC reader: palette, layout, split files, label formats, corrupt files, real fixtures."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from datamodules.synthetic.minivoc import render_scene
from datamodules.voc import (
    VOC_CLASSES, VOC_PALETTE, CorruptImageError, iter_samples, load_image, load_label, read_split,
    save_label_png, voc_paths,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "data" / "voc"
needs_shared = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"real VOC fixtures not found at {FIXTURES}")


def make_voc(root: Path, ids: list[str], split: str = "train") -> Path:
    """A VOC2012 tree with one generated image and label per id. Returns the VOC2012 dir."""
    voc_dir = root / "VOCdevkit" / "VOC2012"
    (voc_dir / "JPEGImages").mkdir(parents=True)
    (voc_dir / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i, sample_id in enumerate(ids):
        image, label = render_scene(0, i, width=64, height=48)
        Image.fromarray(image).save(voc_dir / "JPEGImages" / f"{sample_id}.jpg")
        save_label_png(voc_dir / "SegmentationClass" / f"{sample_id}.png", label)
    (voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc_dir


def test_classes_and_palette_match_the_devkit():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    # Values from VOCdevkit's VOClabelcolormap.m.
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 7: (128, 128, 128), 15: (192, 128, 128),
                20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in expected.items():
        assert tuple(VOC_PALETTE[index]) == colour
    assert len({tuple(c) for c in VOC_PALETTE}) == 256


def test_voc_paths_accepts_the_three_levels(tmp_path):
    voc_dir = make_voc(tmp_path, ["a"])
    assert voc_paths(tmp_path) == voc_paths(tmp_path / "VOCdevkit") == voc_paths(voc_dir) == voc_dir
    with pytest.raises(FileNotFoundError, match=r"nowhere.*VOCdevkit/VOC2012"):
        voc_paths(tmp_path / "nowhere")


def test_read_split_strips_whitespace_and_rejects_file_names(tmp_path):
    voc_dir = make_voc(tmp_path, ["a"])
    split_file = voc_dir / "ImageSets" / "Segmentation" / "val.txt"
    split_file.write_text("  2007_000032 \n\n2007_000039\r\n\n")
    assert read_split(tmp_path, "val") == ["2007_000032", "2007_000039"]
    split_file.write_text("2007_000032\n2007_000039.jpg\n")
    with pytest.raises(ValueError, match="entry 2 .* not a bare image id"):
        read_split(voc_dir, "val")
    split_file.write_text("\n \n")
    with pytest.raises(ValueError, match="empty"):
        read_split(voc_dir, "val")
    with pytest.raises(FileNotFoundError, match=r"Segmentation/test\.txt.*one image id per line"):
        read_split(voc_dir, "test")


def test_iter_samples_yields_paths_and_names_missing_files(tmp_path):
    voc_dir = make_voc(tmp_path, ["x_0", "x_1"])
    samples = list(iter_samples(tmp_path, "train"))
    assert [s.id for s in samples] == ["x_0", "x_1"]
    assert samples[1].image_path == voc_dir / "JPEGImages" / "x_1.jpg"
    assert samples[1].label_path == voc_dir / "SegmentationClass" / "x_1.png"
    samples[1].label_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"x_1\.png is missing but x_1 is listed in split 'train'"):
        list(iter_samples(tmp_path, "train"))


def test_label_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.choice([*range(21), 255], size=(37, 53)).astype(np.uint8)
    path = tmp_path / "results" / "VOC2012" / "Segmentation" / "comp5_val_cls" / "x.png"
    save_label_png(path, label)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.frombuffer(bytes(image.getpalette()), np.uint8).reshape(-1, 3), VOC_PALETTE)
    loaded = load_label(path)
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, label)


def test_rgb_colour_label_maps_through_the_palette(tmp_path):
    label = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
    Image.fromarray(VOC_PALETTE[label]).save(tmp_path / "rgb.png")
    assert np.array_equal(load_label(tmp_path / "rgb.png"), label)
    colours = VOC_PALETTE[label].copy()
    colours[0, 0] = (1, 2, 3)
    Image.fromarray(colours).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png.*\[1, 2, 3\].*not in the VOC palette"):
        load_label(tmp_path / "odd.png")


def test_label_values_outside_voc_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 21], [100, 255]], np.uint8)).save(tmp_path / "bad.png")  # 'L' mode
    with pytest.raises(ValueError, match=r"bad\.png: label values \[21, 100\]"):
        load_label(tmp_path / "bad.png")


def test_load_image_returns_rgb_whatever_the_mode(tmp_path):
    """Every mode, one by one, in tests/test_inputs.py; here the three the pipeline met first."""
    cases = {"grey.png": (np.full((5, 7), 9, np.uint8), np.full((5, 7, 3), 9)),
             "rgba.png": (np.full((5, 7, 4), 9, np.uint8), np.full((5, 7, 3), 9)),
             "deep.png": (np.full((5, 7), 40000, np.uint16), np.full((5, 7, 3), 156))}  # 40000 / 257
    for name, (array, expected) in cases.items():
        Image.fromarray(array).save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert loaded.dtype == np.uint8 and np.array_equal(loaded, expected), name
        assert loaded.flags.writeable


def test_truncated_jpeg_raises_corrupt_image_error(tmp_path, monkeypatch):
    path = tmp_path / "half.jpg"
    Image.fromarray(render_scene(0, 0)[0]).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # Even if another library switched PIL's tolerance on, a partial image must not come back.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(CorruptImageError, match=r"half\.jpg is corrupt or truncated") as caught:
        load_image(path)
    assert caught.value.path == path
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    # It crosses DataLoader worker processes intact.
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(CorruptImageError, match=r"junk\.png"):
        load_label(tmp_path / "junk.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.jpg")


@pytest.mark.fixtures
@needs_shared
def test_real_palette_label():
    label = load_label(FIXTURES / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000063.png")
    assert set(np.unique(label).tolist()) == {0, 9, 12, 255}  # background, chair, dog, void
    assert label.shape == (375, 500)


@pytest.mark.fixtures
@needs_shared
def test_real_grey_label_from_a_mirror():
    label = load_label(FIXTURES / "l_mode_variant" / "2007_000129.png")
    values = set(np.unique(label).tolist())
    assert values <= {*range(21), 255} and values - {0, 255}
    assert values == {0, 2, 15, 255}  # bicycle and person
    assert label.shape == load_image(FIXTURES / "l_mode_variant" / "2007_000129.jpg").shape[:2]


@pytest.mark.fixtures
@needs_shared
def test_real_layout_with_our_own_split_file(tmp_path):
    real = FIXTURES / "VOCdevkit" / "VOC2012"
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    (voc_dir / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClass"):
        (voc_dir / sub).symlink_to(real / sub, target_is_directory=True)
    (voc_dir / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000063\n")
    assert read_split(tmp_path, "val") == ["2007_000063"]
    [sample] = iter_samples(tmp_path, "val")
    image, label = load_image(sample.image_path), load_label(sample.label_path)
    assert image.shape == (375, 500, 3) and image.dtype == np.uint8
    assert label.shape == image.shape[:2]


def test_sbd_aug_ids_take_labels_from_segmentation_class_aug(tmp_path):
    voc_dir = make_voc(tmp_path, ["a", "b"])
    aug = voc_dir / "SegmentationClassAug"
    aug.mkdir()
    (voc_dir / "SegmentationClass" / "b.png").rename(aug / "b.png")  # an SBD-only id
    (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\nb\n")
    samples = list(iter_samples(tmp_path, "train_aug"))
    assert [s.label_path.parent.name for s in samples] == ["SegmentationClass", "SegmentationClassAug"]


def test_deeplab_pair_list_format_and_list_given_as_a_path(tmp_path):
    voc_dir = make_voc(tmp_path, ["a", "b"])
    aug = voc_dir / "SegmentationClassAug"
    aug.mkdir()
    for i in "ab":
        (voc_dir / "SegmentationClass" / f"{i}.png").rename(aug / f"{i}.png")
    listing = tmp_path / "train_aug.txt"
    listing.write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n/JPEGImages/b.jpg /SegmentationClassAug/b.png\n")
    samples = list(iter_samples(tmp_path, str(listing)))
    assert [s.id for s in samples] == ["a", "b"]
    assert samples[1].image_path == voc_dir / "JPEGImages" / "b.jpg"
    assert samples[1].label_path == aug / "b.png"
    (aug / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"SegmentationClassAug/b\.png is missing"):
        list(iter_samples(tmp_path, str(listing)))


@needs_shared
def test_real_deeplab_val_list_parses():
    from datamodules.voc import split_entries

    entries = split_entries(FIXTURES / "VOCdevkit", str(FIXTURES / "lists" / "deeplab_resnet_val.txt"))
    assert len(entries) == 1449 and len({e[0] for e in entries}) == 1449
    assert entries[0] == ("2007_000033", "JPEGImages/2007_000033.jpg", "SegmentationClassAug/2007_000033.png")
