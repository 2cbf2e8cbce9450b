"""Inputs refused or decoded faithfully, with real files (issue 12, items 11, 12 and 14).

Every image mode PIL reads decodes to the RGB that PIL's own conversion gives (16-bit and float
greyscale: scaled, see bench.images); a split file listing an id twice is refused; a split given
as a path names its shard folder safely; generating a dataset is announced; bench.tools.search skips a
non-image file; a missing checkpoint stops extraction before anything is written.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.voc import load_image, load_image_for_label, read_split, save_label_png
from bench.config import cell_config
from tests.conftest import tiny_config

RNG = np.random.default_rng(12)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # (H, W, 3): every case starts from it
DEEP = RNG.integers(0, 65536, (12, 16)).astype(np.uint16)  # 16-bit greyscale


def _palette(transparency: bool) -> Image.Image:
    image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if transparency:
        image.info["transparency"] = 3
    return image


# (file name, mode PIL opens it in, writer): each writes a real file in a format that stores the mode.
EIGHT_BIT = [
    ("cmyk.jpg", "CMYK", lambda p: Image.fromarray(RGB).convert("CMYK").save(p, quality=95)),  # Adobe-inverted
    ("cmyk.tif", "CMYK", lambda p: Image.fromarray(RGB).convert("CMYK").save(p)),
    ("ycbcr.tif", "YCbCr", lambda p: Image.fromarray(RGB).convert("YCbCr").save(p)),
    ("lab.tif", "LAB", lambda p: Image.fromarray(RGB).convert("LAB").save(p)),
    ("grey.png", "L", lambda p: Image.fromarray(RGB).convert("L").save(p)),
    ("grey_alpha.png", "LA", lambda p: Image.fromarray(RGB).convert("LA").save(p)),
    ("bilevel.png", "1", lambda p: Image.fromarray(RGB).convert("1").save(p)),
    ("palette.png", "P", lambda p: _palette(False).save(p)),
    ("palette_trns.png", "P", lambda p: _palette(True).save(p, transparency=3)),
    ("palette_trns.gif", "P", lambda p: _palette(True).save(p, transparency=3)),
    ("rgb.png", "RGB", lambda p: Image.fromarray(RGB).save(p)),
    ("rgba.png", "RGBA", lambda p: Image.fromarray(RGB).convert("RGBA").save(p)),
]


@pytest.mark.parametrize("name, mode, write", EIGHT_BIT, ids=[c[0] for c in EIGHT_BIT])
def test_every_8_bit_mode_decodes_to_rgb_as_pil_converts_it(tmp_path, name, mode, write):
    path = tmp_path / name
    write(path)
    with Image.open(path) as opened:
        assert opened.mode == mode  # the file really holds this mode
        expected = np.asarray(opened.convert("RGB"))
    image = load_image(path)
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8 and image.flags.writeable
    np.testing.assert_array_equal(image, expected)
    # what extraction calls, on the stored pixel grid
    np.testing.assert_array_equal(load_image_for_label(path, (12, 16)), expected)


def test_cmyk_jpeg_is_not_inverted(tmp_path):
    """The issue's case: a CMYK JPEG came out 73 grey levels away from PIL's RGB (read as RGBA)."""
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = load_image(tmp_path / "cmyk.jpg").astype(int)
    assert image.shape == RGB.shape and np.abs(image - RGB.astype(int)).mean() < 4  # up to JPEG loss


def _write_16(path: Path, mode: str) -> None:
    if mode == "I;16":
        Image.fromarray(DEEP).save(path)  # a 16-bit greyscale PNG
    elif mode == "I;16B":
        Image.frombuffer("I;16B", (16, 12), DEEP.astype(">u2").tobytes(), "raw", "I;16B", 0, 1).save(path)
    elif mode == "I":
        Image.fromarray(DEEP).save(path)  # 16-bit PGM: Pillow opens it in mode I (int32)


# 16-bit greyscale: v -> round(v / 257), the inverse of 8 -> 16-bit expansion (PIL's convert("RGB")
# clips instead: every value above 255 becomes white).
@pytest.mark.parametrize("name, mode", [("deep.png", "I;16"), ("deep.tif", "I;16B"), ("deep.pgm", "I")])
def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped(tmp_path, name, mode):
    path = tmp_path / name
    _write_16(path, mode)
    with Image.open(path) as opened:
        assert opened.mode == mode
    image = load_image(path)
    expected = np.floor(DEEP / 257 + 0.5).astype(np.uint8)
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], expected)


def test_32_bit_int_and_float_images(tmp_path):
    values = RNG.random((12, 16)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")  # mode F in [0, 1]: v -> round(255 v)
    image = load_image(tmp_path / "float.tif")
    np.testing.assert_array_equal(image[:, :, 1], np.rint(values * 255).astype(np.uint8))
    Image.fromarray(values * 1000).save(tmp_path / "float_big.tif")
    with pytest.raises(ValueError, match=r"float_big\.tif.*\[0, 1\]"):
        load_image(tmp_path / "float_big.tif")
    Image.fromarray(np.full((12, 16), 70000, np.int32)).save(tmp_path / "int32.tif")  # mode I beyond 16 bits
    with pytest.raises(ValueError, match=r"int32\.tif.*0\.\.65535"):
        load_image(tmp_path / "int32.tif")


# ----------------------------------------------------------------------------- item 12: split files
def _write_voc(root: Path, ids: list[str], splits: dict[str, str], size=(24, 32)) -> Path:
    """A real VOC layout: one JPEG and palette label per id; split files written verbatim."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(ids):
        pixels = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{key}.jpg", quality=95)
        label = np.zeros(size, np.uint8)
        label[: size[0] // 2] = 1 + i % 20
        save_label_png(voc / "SegmentationClass" / f"{key}.png", label)
    for split, text in splits.items():
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text(text)
    return voc


@pytest.mark.parametrize("text, lines", [("a\nb\nc\na\nd\n", "1 and 4"),   # not adjacent: scored twice
                                         ("a\nb\nb\nc\n", "2 and 3"),     # adjacent: duplicate tar member
                                         ("a\n\nb\n/JPEGImages/a.jpg /SegmentationClass/a.png\n", "1 and 4")])
def test_a_split_listing_an_id_twice_is_refused_naming_id_and_lines(tmp_path, text, lines):
    _write_voc(tmp_path, ["a", "b", "c", "d"], {"val": text})
    with pytest.raises(ValueError) as err:
        read_split(tmp_path, "val")
    duplicate = "b" if "b\nb" in text else "a"
    assert f"'{duplicate}'" in str(err.value) and f"lines {lines}" in str(err.value) and "val.txt" in str(err.value)


def test_duplicates_are_refused_before_extraction(tmp_path):
    from bench.extract import extract

    _write_voc(tmp_path / "voc", ["a", "b", "c", "d"], {"train": "a\nb\nc\n", "val": "a\nb\nc\nd\na\n"})
    cfg = tiny_config(tmp_path, "dataset.name=dups", f"dataset.root={tmp_path / 'voc'}", "dataset.generate=null",
                      "cell=region_linear/minivoc")
    with pytest.raises(ValueError, match=r"'a'.*lines 1 and 5"):
        extract(cfg)


# ----------------------------------------------------------------------------- item 14: paths
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_split_given_as_a_list_file_path_gets_its_own_shard_folder(tmp_path, monkeypatch, where):
    from bench.config import cell_config
    from bench.extract import extract
    from bench.runs import build_datamodule
    from datamodules.datasets import split_name

    _write_voc(tmp_path / "voc", ["a", "b", "c"], {"val": "c\n"})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "mine.txt").write_text("a\nb\n")
    monkeypatch.chdir(tmp_path)
    split = str(tmp_path / "lists" / "mine.txt") if where == "absolute" else "lists/mine.txt"
    cfg = tiny_config(tmp_path, "dataset.name=lists", f"dataset.root={tmp_path / 'voc'}", "dataset.generate=null",
                      f"dataset.train_split={split}", "cell=region_linear/minivoc")
    extract(cfg)
    ccfg = cell_config(cfg, "region_linear/minivoc")
    shard_dir = Path(ccfg.extract.shard_dir)
    name = split_name(split)
    assert name.startswith("mine-") and "/" not in name and ".txt" not in name
    assert sorted(p.name for p in shard_dir.iterdir()) == sorted([name, "val"])
    assert (tmp_path / "lists" / "mine.txt").read_text() == "a\nb\n"  # the list file is untouched
    manifest = build_datamodule(ccfg).manifest(split)  # training reads the same folder
    assert manifest["num_samples"] == 2 and split_name("val") == "val"
    assert split_name(str(tmp_path / "other" / "mine.txt")) != split_name(str(tmp_path / "lists" / "mine.txt"))


@pytest.mark.parametrize("generator, name", [("datamodules.synthetic.minivoc:generate_minivoc", "MiniVOC"),
                                             ("datamodules.synthetic.miniade:generate_miniade", "MiniADE"),
                                             ("datamodules.synthetic.minicoco:generate_minicoco", "MiniCOCO")])
def test_generating_a_dataset_is_announced_with_its_location(tmp_path, caplog, generator, name):
    import importlib

    module, function = generator.split(":")
    generate = getattr(importlib.import_module(module), function)
    root = tmp_path / "nowhere"  # e.g. a typo in dataset.root
    with caplog.at_level(logging.WARNING):
        generate(root, 2, 1, width=48, height=32, progress=False)
    notices = [r for r in caplog.records if r.levelno >= logging.WARNING and str(root) in r.getMessage()]
    assert len(notices) == 1 and name in notices[0].getMessage() and "3 images" in notices[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        generate(root, 2, 1, width=48, height=32, progress=False)  # already there: nothing to say
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_search_build_skips_and_counts_a_file_that_is_not_an_image(tmp_path):
    from bench.tools import search

    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / "photos" / f"p{i}.png")
    (tmp_path / "photos" / "notes.jpg").write_text("not an image, despite its name\n")
    summary = search.build(tmp_path / "photos", tmp_path / "index",
                           ["extract.progress=false", "regions.params.slic.num_components=8"])
    assert summary["images"] == 2
    assert [s["id"] for s in summary["skipped"]] == ["notes"]
    assert "notes.jpg" in summary["skipped"][0]["path"]


@pytest.mark.parametrize("overrides, key", [
    (["backbone.name=dinov2_vits14", "backbone.params.dinov2_vits14.checkpoint={missing}"],
     "backbone.params.dinov2_vits14.checkpoint"),
    (["regions.source=sam", "regions.params.sam.checkpoint={missing}"], "regions.params.sam.checkpoint"),
    (["regions.source=sam_slic", "regions.params.sam.checkpoint={missing}"],
     "regions.params.sam_slic.sam_params.checkpoint"),
])
def test_a_missing_checkpoint_stops_extraction_before_anything_is_written(tmp_path, overrides, key):
    from bench.extract import extract

    _write_voc(tmp_path / "voc", ["a", "b"], {"train": "a\n", "val": "b\n"})
    missing = tmp_path / "weights" / "absent.pth"
    cfg = tiny_config(tmp_path, "dataset.name=nockpt", f"dataset.root={tmp_path / 'voc'}", "dataset.generate=null",
                      "cell=region_linear/minivoc", *(o.format(missing=missing) for o in overrides))
    with pytest.raises(FileNotFoundError) as err:
        extract(cfg)
    assert key in str(err.value) and str(missing) in str(err.value)
    assert not (tmp_path / "data").exists()  # no shard directory, no .tar.tmp, no cache


def test_a_missing_dataset_root_is_reported_before_any_cell_runs(tmp_path):
    from bench.extract import extract

    cfg = tiny_config(tmp_path, f"dataset.root={tmp_path / 'nowhere'}", "dataset.generate=null")
    with pytest.raises(FileNotFoundError, match=r"dataset\.root.*nowhere"):
        extract(cfg)
    assert not (tmp_path / "data").exists()


def test_a_filled_feature_cache_stands_in_for_a_missing_backbone_checkpoint(tmp_path, caplog):
    """A copied feature cache (the README's way to identical shards on another machine) needs no weights."""
    from omegaconf import OmegaConf

    from bench.preflight import check_inputs
    from bench.backbones.cache import cache_dir

    missing = tmp_path / "weights" / "absent.pth"
    cfg = tiny_config(tmp_path, "backbone.name=dinov2_vits14", f"backbone.params.dinov2_vits14.checkpoint={missing}",
                      "cell=region_linear/minivoc")
    with pytest.raises(FileNotFoundError, match="dinov2_vits14.checkpoint"):
        check_inputs(cfg)
    cell = cell_config(cfg, "region_linear/minivoc")
    params = OmegaConf.to_container(cell.backbone.params.dinov2_vits14, resolve=True)
    directory = cache_dir(cell.extract.feature_cache, cell.dataset.name, "dinov2_vits14", params)
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text('{"patch_size": 14, "embed_dim": 384}')
    check_inputs(cfg)
    assert "reads its grids from the feature cache" in caplog.text


def test_a_mini_dataset_is_never_generated_into_a_directory_of_other_files(tmp_path):
    """A downloaded dataset's root given with dataset.generate still set (e.g. dataset=coco after
    overrides that set dataset.generate.*) is refused before anything is written into it."""
    from datamodules.datasets import prepare_dataset

    real = tmp_path / "coco"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "instances_val2017.json").write_text("{}")
    cfg = tiny_config(tmp_path, "dataset=minicoco", f"dataset.root={real}")
    with pytest.raises(ValueError, match="holds files RegionBench did not generate .annotations.*generate=null"):
        prepare_dataset(cfg.dataset)
    assert sorted(p.relative_to(real).as_posix() for p in real.rglob("*")) == [
        "annotations", "annotations/instances_val2017.json"]
    # a root RegionBench generated is regenerated with other parameters (its stamp is two levels down for MiniVOC)
    voc = tiny_config(tmp_path, f"dataset.root={tmp_path / 'minivoc'}")
    prepare_dataset(voc.dataset)
    prepare_dataset(tiny_config(tmp_path, f"dataset.root={tmp_path / 'minivoc'}", "dataset.generate.seed=1").dataset)
