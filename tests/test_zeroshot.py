"""Zero-shot segmentation (task zeroshot, models/zeroshot.py): predictions against similarities and
mIoU computed independently, on MiniVOC and on the fixture's COCO photos, with tiny random CLIPs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.config import cell_config, config_hash, load_config
from bench.rle import decode_rles
from bench.shards import read_split
from models.zeroshot import ZeroShotPatches, ZeroShotRegions, class_probabilities, denoise
from tests.conftest import TINY, shared_or_skip

NAME = "maskclip_vitl14"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from bench.backbones.clip import save_random_checkpoint

    root = tmp_path_factory.mktemp("zeroshot")
    save_random_checkpoint(NAME, root / "data" / "checkpoints" / "random" / f"{NAME}_tiny_random.pt", tiny=True)
    return root


def config(root: Path, cell: str, *extra: str):
    cfg = load_config(["experiment=zeroshot_segmentation", f"cell={cell}", *TINY, "dataset.max_images=null",
                       f"paths.data_root={root / 'data'}", f"paths.results_root={root / 'results'}",
                       "save_predictions=true", *extra])
    return cell_config(cfg, cell)


def reference_text(cfg) -> torch.Tensor:
    """(C, D) prompt ensembles by open_clip's own CLIP model from the same file, written out here."""
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    from bench.tasks.zeroshot import text_names

    templates = {"imagenet": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[cfg.zeroshot.templates]
    model = open_clip.load_openai_model(cfg.backbone.params[NAME].checkpoint, precision="fp32", device="cpu").eval()
    tokenizer = open_clip.get_tokenizer("ViT-L-14-336")
    rows = []
    with torch.no_grad():
        for name in text_names(cfg):
            each = model.encode_text(tokenizer([t(name) for t in templates]))
            mean = (each / each.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def run(cfg) -> dict:
    from bench.extract import extract
    from eval import evaluate

    extract(cfg)
    return evaluate(cfg)[cfg.cell]


def predictions(cfg) -> dict[str, np.ndarray]:
    from bench.config import run_dir

    return {p.stem: np.array(Image.open(p)) for p in run_dir(cfg).rglob("*.png")}  # the layout's own folders


def numpy_miou(preds: list[np.ndarray], labels: list[np.ndarray], classes: int) -> float:
    """Mean IoU over classes present in the labels or predictions, one confusion matrix; 255 ignored."""
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for pred, label in zip(preds, labels):
        keep = label != 255
        np.add.at(confusion, (label[keep].astype(np.int64), np.clip(pred[keep], 0, classes - 1)), 1)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_region_predictions_are_the_argmax_of_independent_similarities_and_the_miou_is_exact(root):
    cfg = config(root, f"{NAME}_region/minivoc")
    metrics = run(cfg)
    text = reference_text(cfg).numpy()
    samples, _ = read_split(Path(cfg.extract.shard_dir) / "val")
    preds, labels, checked = predictions(cfg), [], 0
    assert metrics["num_images"] == 6 and len(preds) == 6
    for sample in samples:
        feats = sample["feats"].astype(np.float64)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        best = np.argmax(feats @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T, axis=1)  # (R,)
        masks = decode_rles(sample["rle"])
        once = masks.sum(axis=0) == 1  # pixels one region covers: they take its class
        owner = masks.argmax(axis=0)
        pred = preds[sample["key"]]
        assert np.array_equal(pred[once], best[owner[once]]), sample["key"]
        checked += int(once.sum())
        labels.append(np.asarray(sample["label"]))
    assert checked > 0.5 * sum(label.size for label in labels)
    ordered = [preds[key] for key in sorted(preds)]
    keys = sorted(preds)
    samples, _ = read_split(Path(cfg.extract.shard_dir) / "val")
    by_key = {s["key"]: np.asarray(s["label"]) for s in samples}
    assert metrics["miou"] == pytest.approx(numpy_miou(ordered, [by_key[k] for k in keys], 21), abs=1e-9)
    assert metrics["texts"][0] == "background" and len(metrics["texts"]) == 21


def test_patch_predictions_are_the_argmax_of_upsampled_unit_features_against_the_texts(root):
    cfg = config(root, f"{NAME}_patch/minivoc")
    run(cfg)
    text = F.normalize(reference_text(cfg), dim=-1)
    samples, _ = read_split(Path(cfg.extract.shard_dir) / "val")
    preds, agree, total = predictions(cfg), 0, 0
    for sample in samples:
        meta, grid = sample["meta"], torch.from_numpy(sample["patches"].astype(np.float32))  # (d, h, w)
        unit = F.normalize(grid, dim=0)[None]  # cosines are linear in unit vectors: upsample those instead
        p, (top, left) = meta["patch_size"], meta["pad"]
        up = F.interpolate(unit, scale_factor=p, mode="bilinear", align_corners=False)[0]
        up = up[:, top:top + meta["height"], left:left + meta["width"]]
        expected = torch.einsum("dhw,cd->chw", up, text).argmax(0).numpy()
        agree += int((preds[sample["key"]] == expected).sum())
        total += expected.size
    assert agree / total > 0.999  # float rounding may flip near-ties only


def test_class_probabilities_follow_each_background_rule():
    cosines = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.25, 0.21]])
    plain = (10 * cosines).softmax(-1)
    assert torch.equal(class_probabilities(cosines, "none", None, 10.0), plain)
    low = class_probabilities(cosines, "class", 0.5, 10.0)
    assert torch.equal(low[0], plain[0]) and low[1].tolist() == [1.0, 0.0, 0.0]  # best 0.37 < 0.5: background
    fg = class_probabilities(cosines, "threshold", 0.5, 10.0)
    assert fg.shape == (2, 4) and torch.equal(fg[0, 1:], plain[0]) and fg[0, 0] == 0
    assert fg[1].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_threshold_background_drops_class_zero_from_the_texts_and_names_must_fit_the_classes(root):
    from bench.tasks.zeroshot import text_names

    cfg = config(root, f"{NAME}_region/minivoc", "zeroshot.background=threshold", "zeroshot.threshold=0.2")
    assert text_names(cfg)[0] == "aeroplane" and len(text_names(cfg)) == 20
    bad = config(root, f"{NAME}_region/minivoc", "zeroshot.class_names=[a,b]")
    with pytest.raises(ValueError, match="2 names but dataset.num_classes is 21"):
        text_names(bad)


def test_zeroshot_settings_enter_only_the_zeroshot_tasks_hash(root):
    cfg = config(root, f"{NAME}_region/minivoc")
    assert config_hash(cfg) != config_hash(config(root, f"{NAME}_region/minivoc", "zeroshot.logit_scale=40"))
    seg = load_config(["experiment=quickstart", *TINY])
    seg_changed = load_config(["experiment=quickstart", *TINY, "zeroshot.logit_scale=40"])
    assert config_hash(seg) == config_hash(seg_changed)


def test_train_py_says_there_is_nothing_to_train(root):
    from train import train

    with pytest.raises(ValueError, match="nothing to train"):
        train(config(root, f"{NAME}_region/minivoc"))


@pytest.mark.fixtures
def test_zero_shot_on_the_fixture_coco_photos(root):
    """The six COCO photos (80 categories, no background class: unlabelled pixels are ignored)."""
    coco = shared_or_skip() / "coco" / "icevision_sample"
    cfg = config(root, f"{NAME}_region/minivoc", "dataset=coco", f"dataset.root={coco}",
                 "dataset.val_split=annotations", "dataset.num_classes=80", "dataset.generate=null",
                 f"paths.results_root={root / 'coco_results'}",  # not the MiniVOC cell's run directory
                 "zeroshot.background=none",
                 "zeroshot.templates=simple", "regions.params.slic.num_components=60")
    metrics = run(cfg)
    assert metrics["num_images"] == 6 and metrics["texts"][0] == "person" and len(metrics["texts"]) == 80
    preds = predictions(cfg)
    assert len(preds) == 6 and all(p.max() < 80 for p in preds.values())
    assert 0 <= metrics["miou"] <= 1


def test_prompt_denoising_drops_the_texts_no_vector_of_the_image_is_confident_about():
    cosines = torch.tensor([[0.30, 0.28, 0.10], [0.31, 0.05, 0.29]])
    probs = (10 * cosines).softmax(-1)  # the best of text 0: 0.53, text 1: 0.42 (row 0), text 2: 0.43 (row 1)
    out = denoise(cosines, 0.425, 10.0)
    assert out[:, 1].tolist() == [-100.0, -100.0] and torch.equal(out[:, [0, 2]], cosines[:, [0, 2]])
    assert probs[:, 1].max() < 0.425 <= probs[:, 2].max()
    assert torch.equal(denoise(cosines, None, 10.0), cosines)
    assert torch.equal(denoise(cosines, 0.99, 10.0), cosines)  # every text weak: nothing is taken out


def test_region_model_denoises_each_image_on_its_own_regions():
    """Two images share three region vectors; region 2 leans to text 2 (probability 0.44). Image 0 has
    a fourth region sure of text 2, image 1 has none: text 2 survives in image 0 and is dropped in
    image 1, where region 2 takes its next class, text 0."""
    from bench.rle import encode_rles

    text = torch.eye(3)
    shared = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.0], [0.5, 0.48, 0.53]])
    feats = torch.cat([shared, torch.tensor([[0.0, 0.0, 1.0]]), shared])  # image 0: 4 regions, image 1: 3
    index = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    masks = np.zeros((4, 4, 4), dtype=bool)
    for r in range(4):
        masks[r, r] = True  # region r covers row r alone
    batch = {"feats": feats, "image_index": index, "labels": [torch.zeros(4, 4, dtype=torch.int64)] * 2,
             "rles": [encode_rles(masks), encode_rles(masks[:3])]}
    probs = (10 * F.normalize(shared, dim=-1) @ text.T).softmax(-1)
    assert probs[2].argmax() == 2 and probs[:, 2].max() < 0.5 and (probs.amax(0)[:2] >= 0.5).all()
    model = ZeroShotRegions(in_dim=3, num_classes=3)
    model.set_text(text, "none", None, 10.0, prompt_denoising=0.5)
    first, second = model.predict_pixels(batch)
    assert [first[r, 0].item() for r in range(4)] == [0, 1, 2, 2]
    assert [second[r, 0].item() for r in range(3)] == [0, 1, 0]
    model.set_text(text, "none", None, 10.0)  # without denoising: region 2 is text 2 in both images
    assert [model.predict_pixels(batch)[1][r, 0].item() for r in range(3)] == [0, 1, 2]


def test_patch_model_denoises_on_the_patch_grid_before_upsampling():
    """A 2x2 grid whose patch (0, 1) leans to text 2 at probability 0.44: with denoising no pixel is text 2."""
    text = torch.eye(3)
    grid = torch.tensor([[[1.0, 0.5], [0.1, 1.0]], [[0.2, 0.48], [1.0, 0.1]], [[0.0, 0.53], [0.0, 0.0]]])  # (3, 2, 2)
    batch = {"patches": [grid], "metas": [{"patch_size": 4, "pad": [0, 0], "height": 8, "width": 8}]}
    model = ZeroShotPatches(in_dim=3, num_classes=3)
    model.set_text(text, "none", None, 10.0)
    assert (model.predict_pixels(batch)[0] == 2).any()
    model.set_text(text, "none", None, 10.0, prompt_denoising=0.5)
    pred = model.predict_pixels(batch)[0]
    assert pred.shape == (8, 8) and not (pred == 2).any() and (pred == 0).any() and (pred == 1).any()
