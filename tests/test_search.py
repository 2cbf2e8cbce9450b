"""The region search tool over a folder of images (python -m bench.tools.search)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench.tools import search
from datamodules import folder
from tests.conftest import shared_or_skip

FAST = ["extract.progress=false", "regions.params.slic.num_components=30"]  # colour-texture + SLIC: no weights


def test_query_mask_from_a_png_or_a_box(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 6:9] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert np.array_equal(search.query_mask((20, 30), mask=tmp_path / "m.png"), mask > 0)
    box = search.query_mask((20, 30), box="-5,2,4,50")  # clipped to the image
    assert box.sum() == 4 * 18 and box[2:20, 0:4].all()
    with pytest.raises(ValueError, match="exactly one of"):
        search.query_mask((20, 30))
    with pytest.raises(ValueError, match="exactly one of"):
        search.query_mask((20, 30), mask=tmp_path / "m.png", box="0,0,1,1")
    with pytest.raises(ValueError, match=r"is 30x20 \(W x H\) but the query image is 31x20"):
        search.query_mask((20, 31), mask=tmp_path / "m.png")
    with pytest.raises(ValueError, match="empty"):
        search.query_mask((20, 30), box="40,40,50,50")
    with pytest.raises(ValueError, match="four numbers"):
        search.query_mask((20, 30), box="1,2,3")


def test_colour_ramp_ends():
    ramp = search.colour_ramp(np.array([0.0, 1.0, 2.0]))
    assert ramp.dtype == np.uint8 and ramp[0].tolist() == [0, 0, 4] and ramp[1].tolist() == ramp[2].tolist()


def test_folder_layout_keys(tmp_path):
    (tmp_path / "site.a").mkdir()
    for name in ("site.a/img.001.JPG", "b.png", "notes.txt"):
        Image.new("RGB", (5, 4)).save(tmp_path / name, format="PNG")
    items = list(folder.iter_samples(tmp_path))
    assert [i.id for i in items] == ["b", "site_a__img_001"]
    assert folder.load_label(items[0].label_path).shape == (4, 5)
    Image.new("RGB", (5, 4)).save(tmp_path / "b.jpg")
    with pytest.raises(ValueError, match="both become sample key 'b'"):
        list(folder.iter_samples(tmp_path))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A folder of 8 built-in scenes and an index over it."""
    from datamodules.synthetic.minivoc import render_scene_instances

    root = tmp_path_factory.mktemp("search")
    (root / "images").mkdir()
    for i in range(8):
        image, _, instance, _ = render_scene_instances(5, i, 128, 96)
        Image.fromarray(image).save(root / "images" / f"scene{i}.png")
        if i == 3:
            Image.fromarray(((instance == 1) * 255).astype(np.uint8)).save(root / "mask3.png")
    summary = search.build(root / "images", root / "index", FAST)
    return root, summary


def test_build_and_query(scenes, capsys):
    root, summary = scenes
    assert summary["images"] == 8 and summary["regions"] > 8 and not summary["skipped"]
    results = search.main(["query", f"index={root / 'index'}", f"image={root / 'images' / 'scene3.png'}",
                           f"mask={root / 'mask3.png'}", "top=4", f"out={root / 'q'}"])
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert results[0]["key"] == "scene3"  # the object's own image: a region there matches it best (cosine)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        picture = np.asarray(Image.open(r["heatmap"]))
        assert picture.ndim == 3 and picture.shape[1] > 3 * 128
    saved = json.loads((root / "q" / "ranking.json").read_text())
    assert saved["results"] == results
    assert "scene3" in capsys.readouterr().out


def test_rebuild_keeps_the_index_and_a_box_query_works(scenes):
    root, summary = scenes
    meta = (root / "index" / "index" / "meta.json").read_text()
    again = search.build(root / "images", root / "index", FAST)
    assert again["regions"] == summary["regions"] and (root / "index" / "index" / "meta.json").read_text() == meta
    results = search.query(root / "index", root / "images" / "scene0.png", box="10,10,60,50", top=8)
    assert sorted(r["key"] for r in results) == [f"scene{i}" for i in range(8)]
    with pytest.raises(FileNotFoundError, match="holds no search index"):
        search.query(root / "nothing", root / "images" / "scene0.png", box="0,0,5,5")


@pytest.mark.fixtures
def test_search_answers_a_query_on_real_coco_photos(tmp_path):
    """Index the fixture's six COCO photos; query with a person's ground-truth mask; heatmaps written."""
    from datamodules.coco import load_coco

    root = shared_or_skip() / "coco" / "icevision_sample"
    images = root / "images"  # read only: shards, index and heatmaps go to tmp_path
    ds = load_coco(root / "annotations" / "annotations.json")
    person = next(a for a in ds.annotations[404249] if a.category_id == 1)
    Image.fromarray(ds.mask(person).astype(np.uint8) * 255).save(tmp_path / "person.png")
    summary = search.build(images, tmp_path / "index", ["extract.progress=false"])
    assert summary["images"] == 6
    results = search.query(tmp_path / "index", images / "000000404249.jpg", mask=tmp_path / "person.png",
                           top=6, out=tmp_path / "out")
    assert sorted(r["key"] for r in results) == sorted(p.stem for p in images.iterdir())
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for r in results:
        with Image.open(r["heatmap"]) as picture:
            assert picture.size[0] > 3 * 427  # query | result | similarity, each at full size
    assert (tmp_path / "out" / "ranking.json").is_file()


def test_result_pictures_keep_each_panel_at_its_own_width_and_carry_a_colour_bar():
    from bench.tools.search import colour_bar, colour_ramp, side_by_side

    bar = colour_bar(0.2, 0.9, 100)
    assert bar.shape == (100, 64, 3)
    assert tuple(bar[0, 5]) == tuple(colour_ramp(np.array(1.0)))  # top: the highest similarity
    assert tuple(bar[-1, 5]) == tuple(colour_ramp(np.array(0.0)))
    landscape, portrait = np.zeros((60, 90, 3), np.uint8), np.zeros((90, 60, 3), np.uint8)
    row = side_by_side([landscape, portrait, portrait, bar[:90]], ["query", "result", "heat", "key"])
    # query scaled to the result's height (90 -> 135 wide); every panel at its own width plus 4 px margins
    assert row.shape[1] == (4 + 135 + 4) + 2 * (4 + 60 + 4) + (4 + 64 + 4)
    assert row.shape[0] == 4 + 18 + 90 + 4
