"""SigLIP 2's dense image-text path (``backbone.params.<name>.project=true``, bench/backbones/siglip.py):
each patch token through the attention-pool head alone, checked against timm's own head run on
one-token sequences and against open_clip's encode_image of a one-patch image; then zero-shot
segmentation and text search end to end on it, against open_clip's own text embeddings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.backbones.siglip import load_siglip_backbone, save_random_checkpoint
from tests.test_openvocab_siglip import reference_ids, reference_model, relative_error

NAME = "siglip2_vitb16_256"  # open_clip ViT-B-16-SigLIP2-256; tiny: width 64 = the joint dim


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny random file (tokenizer beside it) where ``weights=random`` looks for it."""
    root = tmp_path_factory.mktemp("siglip_dense")
    save_random_checkpoint(NAME, root / "data" / "checkpoints" / "random" / f"{NAME}_tiny_random.safetensors")
    return root


@pytest.fixture(scope="module")
def ckpt(root) -> Path:
    return root / "data" / "checkpoints" / "random" / f"{NAME}_tiny_random.safetensors"


def reference_text(ckpt: Path, names: list[str], templates) -> np.ndarray:
    """(C, D) prompt ensembles by open_clip's own SigLIP 2 model from the file, written out here."""
    model = reference_model(ckpt)
    rows = []
    with torch.no_grad():
        for name in names:
            e = model.encode_text(reference_ids(ckpt.parent, [t(name) for t in templates])).double().numpy()
            mean = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
            rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def attn_pool_per_token(trunk, image: np.ndarray) -> torch.Tensor:
    """(D, h, w): timm's own ``trunk.attn_pool`` run on each patch token (after the final norm) as a
    sequence of length 1; ``trunk`` is the backbone without ``project``."""
    tokens = trunk.features(image)  # (width, h, w)
    x = tokens.flatten(1).T[None]   # (1, h*w, width)
    with torch.no_grad():
        pooled = torch.cat([trunk.model.attn_pool(x[:, i:i + 1]) for i in range(x.shape[1])])  # (h*w, D)
    return pooled.T.reshape(-1, *tokens.shape[1:])


# ----------------------------------------------------------------------------------------------
# the path itself

def test_dense_grid_is_timms_attention_pool_applied_to_each_token_alone(ckpt):
    image = np.random.default_rng(0).integers(0, 256, (37, 70, 3), dtype=np.uint8)  # padded to 48 x 80
    trunk, dense = load_siglip_backbone(NAME, ckpt), load_siglip_backbone(NAME, ckpt, project=True)
    grid = dense.features(image)
    pool = dense.model.attn_pool
    assert pool.pos_embed is None and pool.mlp is not None  # SigLIP's head: nothing positional, an MLP
    assert grid.shape == (dense.embed_dim, 3, 5) == (pool.out_features, 3, 5) and grid.dtype == torch.float32
    expected = attn_pool_per_token(trunk, image)
    error = relative_error(grid, expected)
    print(f"siglip2 dense path: max relative error {error:.2e} against attn_pool on one-token sequences")
    assert error < 1e-5
    assert relative_error(trunk.features(image), expected) > 0.1  # the head is far from the identity here
    assert torch.equal(trunk.global_feature(image), dense.global_feature(image))  # project leaves it alone


def test_one_patch_image_gives_global_feature_and_open_clips_encode_image(ckpt):
    """A 16 x 16 image is one token: the head's attention is then exactly on it, so the dense vector
    is the image embedding, as open_clip computes it from the same file."""
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    dense = load_siglip_backbone(NAME, ckpt, project=True)
    grid = dense.features(image)
    assert grid.shape == (64, 1, 1)
    model = reference_model(ckpt, dynamic_img_size=True)  # its trunk at a 1 x 1 grid, as ours
    with torch.no_grad():
        expected = model.encode_image(dense.preprocess(image)[None], normalize=False)[0]
    assert relative_error(dense.global_feature(image), expected) < 1e-5
    assert relative_error(grid[:, 0, 0], expected) < 1e-5


def test_features_batch_is_exactly_features_of_each_image(ckpt):
    dense = load_siglip_backbone(NAME, ckpt, project=True)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 50), (16, 16), (33, 48), (40, 50)]]
    for image, grid in zip(images, dense.features_batch(images)):  # (40, 50) and (33, 48) share 48 x 64
        assert torch.equal(grid, dense.features(image))


# ----------------------------------------------------------------------------------------------
# end to end

def test_zero_shot_segmentation_with_project_scores_the_dense_vectors(root, ckpt):
    """eval.py's zero-shot task on MiniVOC: region predictions are the argmax of cosines to open_clip's
    own text embeddings, and the mIoU is a numpy confusion matrix's."""
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    from bench.rle import decode_rles
    from bench.shards import read_split
    from bench.tasks.zeroshot import text_names
    from tests.test_zeroshot import config, numpy_miou, predictions, run

    cfg = config(root, "maskclip_vitl14_region/minivoc", f"backbone.name={NAME}",
                 f"backbone.params.{NAME}.project=true", "regions.params.slic.num_components=30")
    assert cfg.backbone.params[NAME].checkpoint == str(ckpt)
    metrics = run(cfg)
    assert cfg.zeroshot.templates == "simple"
    text = reference_text(ckpt, text_names(cfg), SIMPLE_IMAGENET_TEMPLATES)
    samples, _ = read_split(Path(cfg.extract.shard_dir) / "val")
    preds, labels, checked = predictions(cfg), {}, 0
    for sample in samples:
        feats = sample["feats"].astype(np.float64)
        assert feats.shape[1] == 64
        best = np.argmax((feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ text.T, axis=1)
        masks = decode_rles(sample["rle"])
        once = masks.sum(axis=0) == 1
        assert np.array_equal(preds[sample["key"]][once], best[masks.argmax(axis=0)[once]]), sample["key"]
        checked += int(once.sum())
        labels[sample["key"]] = np.asarray(sample["label"])
    assert metrics["num_images"] == len(labels) == 6 and checked > 0.5 * sum(v.size for v in labels.values())
    keys = sorted(labels)
    assert metrics["miou"] == pytest.approx(numpy_miou([preds[k] for k in keys], [labels[k] for k in keys], 21),
                                            abs=1e-9)


def test_text_search_with_project_ranks_by_the_dense_region_vectors(tmp_path, ckpt):
    """An index of three scenes: its region vectors are timm's head on each token, pooled (so project
    reached the backbone), and a text query ranks by best-region cosine to open_clip's own text embedding."""
    from bench.pooling import pool_regions_reference
    from bench.rle import decode_rles
    from bench.shards import read_split
    from bench.tools import search
    from datamodules.synthetic.minivoc import render_scene_instances
    from tests.test_search_text import assert_ranking, reference_ranking

    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(render_scene_instances(5, i, 64, 48)[0]).save(tmp_path / "images" / f"scene{i}.png")
    search.build(tmp_path / "images", tmp_path / "index",
                 ["extract.progress=false", f"backbone.name={NAME}", f"backbone.params.{NAME}.checkpoint={ckpt}",
                  f"backbone.params.{NAME}.project=true", "regions.params.slic.num_components=10"])
    samples = list(read_split(tmp_path / "index" / "shards" / "all")[0])
    vectors = {s["key"]: s["feats"].astype(np.float64) for s in samples}
    scene0 = next(s for s in samples if s["key"] == "scene0")
    rgb = np.array(Image.open(tmp_path / "images" / "scene0.png").convert("RGB"))
    grid = attn_pool_per_token(load_siglip_backbone(NAME, ckpt), rgb).half().float()  # float16, as extracted
    pooled = pool_regions_reference(grid, torch.from_numpy(decode_rles(scene0["rle"])), 16, "mean")
    np.testing.assert_allclose(vectors["scene0"], pooled.half().double().numpy(), rtol=1e-2, atol=1e-3)

    results = search.query(tmp_path / "index", text="a step ladder", top=3, out=tmp_path / "q")
    assert_ranking(results, reference_ranking(vectors, reference_text(ckpt, ["a step ladder"], [str])[0]))
