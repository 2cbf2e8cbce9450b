"""One-shot retrieval: metrics against sklearn, the FAISS region index against NumPy, queries,
the backbones' class tokens, and Table 8's minicoco column end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bench.config import load_config
from bench.retrieval.index import IndexParams, RegionIndex
from bench.retrieval.metrics import average_precision, precision_at_k, ranking, summarize


# ----------------------------------------------------------------------------- metrics
def test_average_precision_equals_sklearn_with_ties_and_negative_scores():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 80))
        positives = rng.random(n) < rng.uniform(0.05, 0.9)
        positives[rng.integers(n)] = True
        scores = (rng.integers(-4, 4, n).astype(float) if trial % 3 == 0  # many ties, negative
                  else rng.standard_normal(n) - 1.0 if trial % 3 == 1     # mostly negative
                  else np.round(rng.standard_normal(n), 1))
        assert average_precision(scores, positives) == pytest.approx(average_precision_score(positives, scores), abs=1e-12)


def test_average_precision_known_cases():
    # torchmetrics >= 1.8 gives 0.0 here (non-positive scores count as not retrieved): pitfalls §2.3
    assert average_precision([0.9, -0.1, -0.2, -0.3], [0, 1, 1, 0]) == pytest.approx(7 / 12)
    for where in range(4):  # all tied: one threshold, AP = prevalence wherever the positive sits
        assert average_precision([1.0] * 4, np.arange(4) == where) == 0.25
    # -inf (an image the index never reached) ranks last, tied with the other -inf
    assert average_precision([1, -np.inf, -np.inf], [0, 1, 0]) == average_precision([1, -5, -5], [0, 1, 0])
    with pytest.raises(ValueError, match="without any positive"):
        average_precision([1.0, 2.0], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([np.nan, 2.0], [1, 0])


def test_precision_at_k_counts_negative_scores_and_breaks_ties_by_index():
    scores = np.array([-0.5, -0.1, -0.3, -0.2])
    assert precision_at_k(scores, [0, 1, 0, 1], k=2) == 1.0  # both best (negative) scores are positives
    assert list(ranking([1.0, 2.0, 2.0, 1.0])) == [1, 2, 0, 3]
    assert precision_at_k([2.0, 2.0, 2.0], [0, 1, 1], k=1) == 0.0  # the tie goes to index 0
    assert precision_at_k([0.1, 0.2, 0.3], [1, 1, 1], k=50) == pytest.approx(3 / 50)  # still / 50


def test_summarize_averages_per_class_then_over_classes():
    rows = [{"class": "a", "ap": 1.0, "precision": 0.5}, {"class": "a", "ap": 0.0, "precision": 0.1},
            {"class": "b", "ap": 0.2, "precision": 0.3}]
    out = summarize(rows, {"a": 60, "b": 10, "c": 5}, num_images=100)
    assert out["map"] == pytest.approx((0.5 + 0.2) / 2)  # not the mean of the three queries (0.4)
    assert out["precision_at_50"] == pytest.approx((0.3 + 0.3) / 2)
    assert out["classes_under_50_positives"] == {"b": 10}
    assert out["max_precision_at_50"] == pytest.approx((1.0 + 0.2) / 2)
    assert out["chance_map"] == pytest.approx((0.6 + 0.1) / 2)


# ----------------------------------------------------------------------------- index
def _database(seed=0, n=400, dim=16, images=30):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float16)  # shards store float16
    image_of = rng.integers(0, images - 2, n)  # unsorted; the last two images have no region
    return vectors, image_of, [f"im{i}" for i in range(images)], rng.standard_normal((7, dim)).astype(np.float32)


def _brute_force(vectors, image_of, num_images, queries, cosine=False):
    v = vectors.astype(np.float32)
    if cosine:
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ v.T
    out = np.full((len(queries), num_images), -np.inf, np.float32)
    for j in range(num_images):
        if (image_of == j).any():
            out[:, j] = sims[:, image_of == j].max(axis=1)
    return out


@pytest.mark.parametrize("similarity", ["ip", "cosine"])
def test_flat_index_image_scores_are_exact(similarity, tmp_path):
    vectors, image_of, keys, queries = _database()
    index = RegionIndex.build(vectors, image_of, keys, IndexParams(similarity=similarity), source="x")
    expected = _brute_force(vectors, image_of, len(keys), queries, cosine=similarity == "cosine")
    np.testing.assert_allclose(index.image_scores(queries), expected, rtol=1e-5, atol=1e-5)
    # through FAISS search (k regions) the images reached get the same maxima
    scores = index.image_scores(queries, k=len(vectors))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert np.isneginf(scores[:, -2:]).all()
    top = index.image_scores(queries, k=5)
    reached = np.isfinite(top)
    assert (reached.sum(axis=1) <= 5).all()
    np.testing.assert_allclose(top[reached], expected[reached], rtol=1e-5, atol=1e-5)
    index.save(tmp_path / "index")
    again = RegionIndex.load(tmp_path / "index")
    assert again.keys == keys and again.info["source"] == "x" and again.params == index.params
    np.testing.assert_array_equal(again.image_scores(queries), index.image_scores(queries))


def test_index_search_matches_numpy_topk():
    vectors, image_of, keys, queries = _database(1)
    index = RegionIndex.build(vectors, np.sort(image_of), keys)  # sorted: region ids unchanged
    sims, regions = index.search(queries, 10)
    expected = np.sort(queries @ vectors.astype(np.float32).T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(sims, expected, rtol=1e-5, atol=1e-5)
    assert regions.dtype == np.int64 and (regions >= 0).all()


def test_ivfpq_index_and_its_errors():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((8, 16)) * 4
    vectors = (centres[rng.integers(0, 8, 2000)] + rng.standard_normal((2000, 16))).astype(np.float32)
    image_of = np.arange(2000) // 20
    keys = [str(i) for i in range(100)]
    params = IndexParams(kind="ivfpq", nlist=8, pq_m=4, pq_bits=8, nprobe=8)
    index = RegionIndex.build(vectors, image_of, keys, params)
    exact = RegionIndex.build(vectors, image_of, keys).image_scores(vectors[:5])
    approx = index.image_scores(vectors[:5])
    assert approx.shape == exact.shape and np.isfinite(approx).all()  # nprobe = nlist reaches every image
    assert np.corrcoef(approx.ravel(), exact.ravel())[0, 1] > 0.9  # PQ codes approximate the products
    with pytest.raises(ValueError, match="pq_m=5 must divide the vector dimension 16"):
        RegionIndex.build(vectors, image_of, keys, IndexParams(kind="ivfpq", nlist=8, pq_m=5))
    with pytest.raises(ValueError, match="needs at least max"):
        RegionIndex.build(vectors[:100], image_of[:100], keys, params)
    with pytest.raises(ValueError, match="unknown"):
        IndexParams(kind="hnsw")


# ----------------------------------------------------------------------------- queries and crops
def test_query_selection_is_deterministic_one_per_image_no_crowd(tmp_path):
    from datamodules.synthetic.minicoco import generate_minicoco
    from bench.retrieval.queries import load_queries, save_queries, select_queries
    from datamodules.coco import annotation_file, load_coco

    generate_minicoco(tmp_path, num_train=40, num_val=2, width=64, height=48, seed=1, progress=False)
    ds = load_coco(annotation_file(tmp_path, "train"))
    queries, shortfall = select_queries(ds, per_class=6, seed=4)
    assert queries == select_queries(ds, per_class=6, seed=4)[0]
    assert queries != select_queries(ds, per_class=6, seed=5)[0]
    anns = {a.id: a for v in ds.annotations.values() for a in v}
    for cat in {q.category_id for q in queries}:
        mine = [q for q in queries if q.category_id == cat]
        assert len({q.image_id for q in mine}) == len(mine) <= 6
    for q in queries:
        ann = anns[q.annotation_id]
        assert not ann.iscrowd and ann.category_id == q.category_id and ds.mask(ann).any()
    counts = {c["name"]: sum(q.category_id == c["id"] for q in queries) for c in ds.categories}
    assert shortfall == {name: n for name, n in counts.items() if n < 6}
    big = select_queries(ds, per_class=6, seed=4, min_area=200)[0]
    assert all(ds.mask(anns[q.annotation_id]).sum() > 200 for q in big)
    save_queries(tmp_path / "q.json", queries, shortfall, {"seed": 4})
    assert load_queries(tmp_path / "q.json")[0] == queries


def test_crop_around_the_object():
    from bench.retrieval.queries import crop_around

    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[40:60, 50:90] = 255
    mask = rgb[..., 0] > 0
    crop = crop_around(rgb, mask, margin=0.5, size=80)
    assert crop.shape == (40, 80, 3)  # box 20x40 grown by 10/20 px per side = 40x80, longer side 80
    assert crop.flags.writeable
    assert crop[0, 0].max() == 0 and crop[20, 40].min() == 255


# ----------------------------------------------------------------------------- class tokens
def test_vit_class_token_comes_from_the_same_forward_as_the_patch_grid(tmp_path):
    from bench.backbones.vit import load_vit_backbone, save_random_checkpoint

    path = save_random_checkpoint("dinov2_vitl14", tmp_path / "d.pth")
    backbone = load_vit_backbone("dinov2_vitl14", path)
    image = (np.random.default_rng(0).random((50, 75, 3)) * 255).astype(np.uint8)
    tokens = backbone.model.forward_features(backbone.preprocess(image)[None])[0]  # (1 + h*w, d)
    grid = backbone.features(image)
    torch.testing.assert_close(tokens[1:].T.reshape(grid.shape), grid)
    torch.testing.assert_close(backbone.global_feature(image), tokens[0])


def test_clip_class_token_is_clips_image_embedding(tmp_path):
    from bench.backbones.clip import load_clip_backbone, save_random_checkpoint

    path = save_random_checkpoint("clip_vitb32", tmp_path / "c.pt")
    backbone = load_clip_backbone("clip_vitb32", path, project=True)
    image = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)  # the training grid
    with torch.no_grad():
        expected = backbone.visual(backbone.pixels(image))[0]  # open_clip: pooled, ln_post, proj
    torch.testing.assert_close(backbone.global_feature(image), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def table8(tmp_path_factory):
    """Table 8's minicoco column on a tiny MiniCOCO: extracted and evaluated once."""
    from bench.backbones.clip import save_random_checkpoint as clip_checkpoint
    from bench.backbones.vit import save_random_checkpoint as vit_checkpoint
    from bench.extract import extract
    from eval import evaluate

    root = tmp_path_factory.mktemp("table8")
    overrides = [
        "experiment=table8_retrieval", "cell=*/minicoco", f"paths.data_root={root / 'data'}",
        f"paths.results_root={root / 'results'}", "dataset.generate={num_train: 40, num_val: 16, width: 96, "
        "height: 72, seed: 0}", "retrieval.queries_per_class=3",
        "extract.progress=false", "extract.samples_per_shard=5", "regions.params.slic.num_components=20",
        f"backbone.params.dinov2_vitl14.checkpoint={vit_checkpoint('dinov2_vitl14', root / 'd.pth')}",
        f"backbone.params.clip_vitb32.checkpoint={clip_checkpoint('clip_vitb32', root / 'c.pt')}"]
    extract(load_config(overrides))
    return root, overrides, evaluate(load_config(overrides))


def test_table8_minicoco_end_to_end(table8):
    root, overrides, results = table8
    assert set(results) == {"region/minicoco", "dinov2/minicoco", "clip_crop/minicoco"}
    for cell, metrics in results.items():
        assert 0 <= metrics["map"] <= 1 and 0 <= metrics["precision_at_50"] <= 1
        assert metrics["task"] == "retrieval" and metrics["database_images"] == 16
        assert metrics["num_queries"] == sum(metrics["queries_per_class"].values()) > 0
        # 16 database images: every class is under 50 positives, which caps P@50
        assert metrics["classes_under_50_positives"] == metrics["positives_per_class"]
        assert metrics["precision_at_50"] <= metrics["max_precision_at_50"] + 1e-12
        saved = json.loads((root / "results" / "table8_retrieval" / cell / "metrics.json").read_text())
        assert saved["map"] == metrics["map"]
    assert results["region/minicoco"]["vectors_per_image"] > 1 == results["dinov2/minicoco"]["vectors_per_image"]
    table = (root / "results" / "table8_retrieval" / "table.md").read_text()
    assert "| region |" in table and "0.450" in table and "paper map coco" in table
    assert "python eval.py experiment=table8_retrieval cell=region/coco" in table  # coco: not run here


def test_table8_positives_come_from_the_annotations(table8):
    from datamodules.coco import annotation_file, load_coco

    root, _, results = table8
    coco = load_coco(annotation_file(root / "data" / "minicoco", "val"))
    expected = {c["name"]: sum(c["id"] in coco.image_categories(i) for i in coco.images) for c in coco.categories}
    got = results["region/minicoco"]["positives_per_class"]
    assert got == {c: expected[c] for c in got}
    per_query = json.loads((root / "results" / "table8_retrieval" / "region" / "minicoco" / "per_query.json")
                           .read_text())["queries"]
    assert len(per_query) == results["region/minicoco"]["num_queries"]


def test_table8_reloads_the_saved_index(table8):
    from bench.retrieval.evaluate import evaluate_retrieval

    _, overrides, first = table8
    again = evaluate_retrieval(load_config(overrides))
    for cell in first:
        assert again[cell]["index_loaded"] and again[cell]["map"] == first[cell]["map"]


def test_table8_missing_extraction_says_what_to_run(tmp_path):
    from bench.retrieval.evaluate import evaluate_cell
    from bench.config import cell_config

    cfg = load_config(["experiment=table8_retrieval", f"paths.data_root={tmp_path}",
                       "dataset.generate={num_train: 4, num_val: 2, width: 64, height: 48, seed: 0}"])
    from datamodules.datasets import prepare_dataset

    ccfg = cell_config(cfg, "region/minicoco")
    prepare_dataset(ccfg.dataset)
    with pytest.raises(FileNotFoundError, match="python -m bench.extract experiment=table8_retrieval cell=region/minicoco"):
        evaluate_cell(ccfg)
