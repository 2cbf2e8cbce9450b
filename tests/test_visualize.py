import numpy as np
import pytest
from PIL import Image

from bench.tools.visualize import (UNCOVERED_ALPHA, UNCOVERED_RGB, contact_sheet, main, region_boundaries,
                             region_colours, render_labels, render_regions, uncovered_marking)
from tests.conftest import tiny_overrides

GREY = 100


def _image(height=40, width=50):
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def _expected_uncovered(shape):
    """What render_regions draws on an uncovered pixel of the grey image."""
    tinted = np.round((1 - UNCOVERED_ALPHA) * GREY + UNCOVERED_ALPHA * UNCOVERED_RGB).astype(np.uint8)
    out = np.broadcast_to(tinted, (*shape, 3)).copy()
    out[uncovered_marking(shape)] = UNCOVERED_RGB.astype(np.uint8)
    return out


def test_render_regions_shape_boundaries_and_uncovered_marking():
    masks = np.zeros((2, 40, 50), dtype=bool)
    masks[0, 5:25, 5:25] = True
    masks[1, 5:25, 25:45] = True  # touches mask 0 along column 24/25
    out = render_regions(_image(), masks)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8

    lines = region_boundaries(masks)
    assert lines[5:25, 24].all() and not lines[6:24, 25].any(), "touching regions share one 1 px line"
    assert lines[5, 10] and lines[24, 10] and lines[10, 5] and lines[10, 44]
    assert not lines[~masks.any(axis=0)].any(), "lines lie inside masks"
    np.testing.assert_array_equal(out[lines], 255)  # white outlines
    interior = masks[0] & ~lines
    assert (out[interior] != out[lines][0]).any(axis=1).all(), "outline must differ from the interior"
    assert len(np.unique(out[interior], axis=0)) == 1
    assert not np.array_equal(out[10, 10], out[10, 30]), "regions get distinct colours"

    covered = masks.any(axis=0)
    np.testing.assert_array_equal(out[~covered], _expected_uncovered((40, 50))[~covered])
    magenta_tint = _expected_uncovered((40, 50))[~covered]
    assert not np.isin(out[covered].view("V3"), magenta_tint.view("V3")).any(), "marking only on uncovered pixels"


def test_render_regions_overlap_later_on_top_all_outlines_shown():
    big = np.zeros((40, 50), dtype=bool)
    big[2:38, 2:48] = True
    small = np.zeros_like(big)
    small[10:30, 10:30] = True
    out = render_regions(_image(), np.stack([big, small]))
    alone = render_regions(_image(), small[None])
    # the later (small) mask's colour wins inside it... (seed fixes colours by position)
    colours = region_colours(2)
    expected_small = np.round(0.5 * GREY + 0.5 * colours[1].astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(out[20, 20], expected_small)
    assert not np.array_equal(out[20, 20], out[5, 5])
    # ...and both outlines are drawn: the big one at its edge, the small one inside the big one
    assert (out[2, 2:48] == 255).all() and (out[10, 10:30] == 255).all() and (out[10:30, 10] == 255).all()
    # overlapping masks never produce the uncovered marking
    assert not (out[big] == UNCOVERED_RGB.astype(np.uint8)).all(axis=1).any()
    assert alone.shape == out.shape


def test_render_regions_without_masks_marks_everything():
    out = render_regions(_image(), np.zeros((0, 40, 50), dtype=bool))
    np.testing.assert_array_equal(out, _expected_uncovered((40, 50)))
    with pytest.raises(ValueError, match="must be"):
        render_regions(_image(), np.zeros((1, 30, 50), dtype=bool))


def test_region_colours_distinct_and_never_magenta():
    colours = region_colours(60, seed=3).astype(int)
    assert len(np.unique(colours, axis=0)) == 60
    assert not ((colours[:, 0] > 150) & (colours[:, 2] > 150) & (colours[:, 1] < 100)).any()
    np.testing.assert_array_equal(region_colours(5, seed=3), region_colours(60, seed=3)[:5])


def test_render_labels_uses_voc_palette():
    rgb = render_labels(np.array([[0, 1], [15, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [128, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [192, 128, 128])
    np.testing.assert_array_equal(rgb[1, 1], [224, 224, 192])


def test_contact_sheet_size():
    panels = [[np.zeros((30, 40, 3), np.uint8), np.zeros((20, 60), np.uint8)],
              [np.zeros((25, 25, 3), np.uint8)]]
    sheet = contact_sheet(panels, [["a", "a long caption cut to the panel"], ["c"]], pad=4, caption_height=14)
    assert sheet.shape == (4 + 2 * (14 + 30 + 4), 4 + 2 * (60 + 4), 3) and sheet.dtype == np.uint8
    assert (sheet[4 + 14:4 + 14 + 30, 4:44] == 0).all(), "first panel under its caption"
    assert (sheet[4:4 + 14, 4:44] < 255).any(), "caption drawn"
    assert contact_sheet(panels).shape == (4 + 2 * (30 + 4), 4 + 2 * (60 + 4), 3)


def test_cli_writes_region_pictures(tiny_root, tmp_path, capsys):
    from bench.config import cell_config, load_config
    from bench.config import run_dir
    from datamodules.voc import save_label_png

    # results go to tmp_path, so the fake prediction below never reaches other tests' results
    argv = ["experiment=quickstart", *tiny_overrides(tiny_root), f"paths.results_root={tmp_path}"]
    cfg = cell_config(load_config(argv), "region_linear/minivoc")
    ids = ["mini_000012", "mini_000013"]  # the first val images
    save_label_png(run_dir(cfg) / "results/VOC2012/Segmentation/comp5_val_cls" / f"{ids[1]}.png",
                   np.ones((120, 160), np.uint8))

    paths = main([*argv, "cell=region_linear/minivoc", "num_images=2"])
    assert paths == [tmp_path / "quickstart/region_linear/minivoc/regions" / f"{i}.png" for i in ids]
    assert capsys.readouterr().out.split() == [str(p) for p in paths]
    # image | regions | ground truth (+ prediction, titled with its mIoU) | class key: 160x120 panels, 4 px
    # gaps, 18 px captions
    assert Image.open(paths[0]).size == (4 + 4 * 164, 4 + 18 + 120 + 4)
    assert Image.open(paths[1]).size == (4 + 5 * 164, 4 + 18 + 120 + 4)

    # a patch baseline shows its patch grid; out= moves the pictures
    (patch,) = main([*argv, "cell=patch_linear/minivoc", "num_images=1", f"out={tmp_path / 'pics'}"])
    assert patch == tmp_path / "pics/patch_linear/minivoc/regions" / f"{ids[0]}.png"
    assert Image.open(patch).size == (4 + 4 * 164, 146)


def test_a_prediction_picture_carries_its_image_miou_and_a_key_to_the_classes_present():
    from bench.tools.visualize import image_miou, render_legend

    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 0, 1, 0], [0, 0, 1, 1]])  # class 0: IoU 4/5; class 1: IoU 2/3 (255 ignored)
    assert image_miou(pred, label, num_classes=3) == pytest.approx((4 / 5 + 2 / 3) / 2)
    legend = render_legend([0, 1, 15], ["background", "aeroplane"] + [str(i) for i in range(2, 21)], 60, 120)
    assert legend.shape == (60, 120, 3)
    from datamodules.voc import VOC_PALETTE

    swatches = [tuple(legend[4 + i * 18 + 6, 8]) for i in range(3)]  # inside each swatch
    assert swatches == [tuple(VOC_PALETTE[c]) for c in (0, 1, 15)]
