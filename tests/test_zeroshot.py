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


# ----------------------------------------------------------------------------------------------
# MaskCLIP's key smoothing

def maskclip_refine(probs: torch.Tensor, keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """MaskCLIP's decode-head rule written out in its own layout: output (N=1, C, H*W) probabilities,
    k (1, HW, K) normalised with F.normalize's default dim (1), weight = k k^T, positions whose best
    probability is below the threshold overwritten by boolean indexing."""
    output = probs.T[None].transpose(-2, -1).clone()       # (1, HW, C)
    k = F.normalize(keys[None], p=2)                        # dim=1: over the positions
    weight = k @ k.transpose(-2, -1)
    selected = (output.max(dim=-1, keepdim=True)[0] < threshold).expand(-1, -1, output.shape[-1])
    weighted = weight @ output
    output[selected] = weighted[selected]
    return output[0]


def test_key_smoothing_is_maskclips_rule_with_keys_normalised_over_the_positions():
    from models.zeroshot import key_smoothing

    generator = torch.Generator().manual_seed(0)
    probs = (4 * torch.randn(30, 5, generator=generator)).softmax(-1)
    keys = torch.randn(30, 8, generator=generator) * torch.linspace(0.2, 3.0, 8) + 0.5
    for threshold in (0.6, 1.0):
        ours = key_smoothing(probs, keys, threshold)
        assert torch.allclose(ours, maskclip_refine(probs, keys, threshold), rtol=1e-5, atol=1e-6)
        assert (ours.argmax(-1) != probs.argmax(-1)).any()  # the rule changed something
    kept = probs.amax(-1) >= 0.6
    assert kept.any() and torch.equal(key_smoothing(probs, keys, 0.6)[kept], probs[kept])
    cosine = F.normalize(keys, dim=-1)  # the reading MaskCLIP's code does not do: cosines between vectors
    assert not torch.equal((cosine @ cosine.T @ probs).argmax(-1), key_smoothing(probs, keys, 1.0).argmax(-1))
    assert torch.equal(key_smoothing(probs, keys, None), probs)


def test_maskclip_attention_keys_are_the_last_blocks_key_projection_through_out_proj(tmp_path):
    """The key channels equal the last block's ln_1 input (captured by a hook on open_clip's own CLIP
    forward) through the key rows of in_proj and out_proj; the first channels are unchanged."""
    import open_clip

    from bench.backbones.clip import load_clip_backbone, save_random_checkpoint

    path = save_random_checkpoint("maskclip_vitb16", tmp_path / "b16.pt", tiny=True)
    plain = load_clip_backbone("maskclip_vitb16", path)
    keyed = load_clip_backbone("maskclip_vitb16", path, attention_keys=True)
    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    grid, both = plain.features(image), keyed.features(image)
    width = keyed.visual.conv1.weight.shape[0]
    assert keyed.embed_dim == plain.embed_dim + width == both.shape[0]
    assert torch.equal(both[:plain.embed_dim], grid)
    assert [g.shape for g in keyed.features_batch([image, image])] == [both.shape] * 2

    model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    last = model.visual.transformer.resblocks[-1]
    seen = {}
    last.ln_1.register_forward_hook(lambda module, args, out: seen.setdefault("normed", out))
    pixels = keyed.pixels(image)
    with torch.no_grad():  # the whole tower at this grid: the hook sees the tokens entering the last block
        tokens, _ = keyed._embed(pixels)
        model.visual.transformer(tokens)
        w_k = last.attn.in_proj_weight.chunk(3)[1]
        b_k = last.attn.in_proj_bias.chunk(3)[1]
        expected = last.attn.out_proj(seen["normed"][:, 1:] @ w_k.T + b_k)[0]  # (h*w, width)
    h, w = both.shape[1:]
    assert torch.allclose(both[plain.embed_dim:].reshape(width, h * w).T, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="MaskCLIP option"):
        load_clip_backbone("clip_vitb16", path, attention_keys=True)


def test_neutral_defaults_keep_existing_hashes_shard_directories_and_feature_caches():
    """Options added after runs existed (maskclip attention_keys=false, siglip2 project=false, zeroshot
    key_smoothing=null) leave hashes, shard directories and feature-cache names as they were without
    the keys; set, they change them; a CLIP backbone's project=false is not neutral (it always had the key)."""
    from omegaconf import OmegaConf, open_dict

    from bench.backbones.cache import cache_dir

    def names(cfg):
        name = cfg.backbone.name
        params = OmegaConf.to_container(cfg.backbone.params[name], resolve=True)
        return config_hash(cfg), cfg.extract.shard_dir, cache_dir("/c", "d", name, params)

    for name, key, value in (("maskclip_vitl14", "attention_keys", "true"), ("siglip2_vitb16_256", "project", "true")):
        cfg = load_config(["task=zeroshot", f"backbone.name={name}"])
        before = names(cfg)
        older = cfg.copy()
        with open_dict(older):
            del older.backbone.params[name][key]
            del older.zeroshot["key_smoothing"]
        assert names(older) == before, name
        changed = names(load_config(["task=zeroshot", f"backbone.name={name}", f"backbone.params.{name}.{key}={value}"]))
        assert all(a != b for a, b in zip(changed, before)), name
    plain = names(load_config(["task=zeroshot", "backbone.name=maskclip_vitl14"]))
    smoothed = load_config(["task=zeroshot", "backbone.name=maskclip_vitl14", "zeroshot.key_smoothing=1.0"])
    assert config_hash(smoothed) != plain[0] and smoothed.extract.shard_dir == plain[1]
    clip = load_config(["backbone.name=clip_vitb16", "backbone.params.clip_vitb16.project=false"])
    clip_null = load_config(["backbone.name=clip_vitb16"])
    assert config_hash(clip) != config_hash(clip_null)


def test_patch_model_with_key_smoothing_equals_maskclips_pipeline_on_minivoc(root):
    """MiniVOC end to end (maskclip_vitl14, keys extracted): each prediction is softmax(50 cos), MaskCLIP's
    refinement on the patch grid, bilinear upsampling, argmax — computed here from the shard's grid."""
    cfg = config(root, f"{NAME}_patch/minivoc", f"backbone.params.{NAME}.attention_keys=true",
                 "zeroshot.key_smoothing=1.0")
    metrics = run(cfg)
    assert metrics["zeroshot"]["key_smoothing"] == 1.0
    text = F.normalize(reference_text(cfg), dim=-1)
    samples, _ = read_split(Path(cfg.extract.shard_dir) / "val")
    preds, agree, total, changed = predictions(cfg), 0, 0, 0
    for sample in samples:
        meta, grid = sample["meta"], torch.from_numpy(sample["patches"].astype(np.float32))  # (d + K, h, w)
        d, (h, w) = text.shape[1], grid.shape[1:]
        assert grid.shape[0] > d
        vectors = grid.reshape(len(grid), h * w).T
        probs = (50 * F.normalize(vectors[:, :d], dim=-1) @ text.T).softmax(-1)
        refined = maskclip_refine(probs, vectors[:, d:], 1.0)  # (h*w, C)
        p, (top, left) = meta["patch_size"], meta["pad"]
        up = F.interpolate(refined.T.reshape(1, -1, h, w), scale_factor=p, mode="bilinear", align_corners=False)[0]
        expected = up[:, top:top + meta["height"], left:left + meta["width"]].argmax(0).numpy()
        plain = F.interpolate(probs.T.reshape(1, -1, h, w), scale_factor=p, mode="bilinear", align_corners=False)[0]
        changed += int((plain[:, top:top + meta["height"], left:left + meta["width"]].argmax(0).numpy()
                        != expected).sum())
        agree += int((preds[sample["key"]] == expected).sum())
        total += expected.size
    assert agree / total > 0.999 and changed > 0.01 * total  # smoothing moved pixels; ours moved the same ones


def test_region_model_smooths_each_images_regions_with_their_pooled_keys():
    """Two images of four regions (random vectors and keys, region r covering row r): each region's
    class is the argmax of MaskCLIP's rule over its own image's regions, which here differs from the
    rule over both images' regions and from no smoothing."""
    from bench.rle import encode_rles

    text = torch.eye(3)
    generator = torch.Generator().manual_seed(3)
    feats, keys = torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)
    probs = (10 * F.normalize(feats, dim=-1) @ text.T).softmax(-1)
    expected = torch.cat([maskclip_refine(probs[:4], keys[:4], 0.9), maskclip_refine(probs[4:], keys[4:], 0.9)])
    assert (expected.argmax(-1) != maskclip_refine(probs, keys, 0.9).argmax(-1)).sum() >= 2
    assert (expected.argmax(-1) != probs.argmax(-1)).sum() >= 2
    masks = np.zeros((4, 4, 4), dtype=bool)
    for r in range(4):
        masks[r, r] = True
    batch = {"feats": torch.cat([feats, keys], 1), "image_index": torch.tensor([0] * 4 + [1] * 4),
             "labels": [torch.zeros(4, 4, dtype=torch.int64)] * 2, "rles": [encode_rles(masks)] * 2}
    model = ZeroShotRegions(in_dim=5, num_classes=3)
    model.set_text(text, "none", None, 10.0, key_smoothing=0.9)
    painted = torch.cat([pred[:, 0] for pred in model.predict_pixels(batch)])
    assert torch.equal(painted, expected.argmax(-1))
    model.set_text(text, "none", None, 10.0)  # without smoothing the keys are ignored
    assert torch.equal(torch.cat([pred[:, 0] for pred in model.predict_pixels(batch)]), probs.argmax(-1))


def test_key_smoothing_refuses_a_backbone_without_keys_and_a_threshold_before_any_work(root):
    from bench.config_checks import ConfigError
    from bench.extract import extract

    cfg = config(root, f"{NAME}_patch/minivoc", "zeroshot.key_smoothing=1.0")
    with pytest.raises(ConfigError, match="attention_keys=true"):
        extract(cfg)
    cfg = config(root, f"{NAME}_patch/minivoc", "zeroshot.key_smoothing=1.0", "zeroshot.threshold=0.2",
                 f"backbone.params.{NAME}.attention_keys=true")
    with pytest.raises(ConfigError, match="threshold"):
        extract(cfg)
    model = ZeroShotPatches(in_dim=3, num_classes=3)
    model.set_text(torch.eye(3), "none", None, 10.0, key_smoothing=1.0)
    with pytest.raises(ValueError, match="attention_keys=true"):
        model.predict_pixels({"patches": [torch.ones(3, 2, 2)],
                              "metas": [{"patch_size": 4, "pad": [0, 0], "height": 8, "width": 8}]})
