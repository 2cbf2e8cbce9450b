"""SAM-family region sources on random-weight checkpoints saved in the official format.

Each family is loaded through exactly the path real checkpoints take (file -> key/shape check ->
strict load). Random weights give degenerate but real masks when the quality filters are off.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from skimage import data, transform

from bench.regions import sam as regions_sam
from bench.regions.sam import (AMG_DEFAULTS, AMG_PRESETS, SAM_FAMILY, HqSamRegions, MobileSamRegions, SamRegions,
                               checkpoint_kind, load_model, resolve_amg_kwargs, save_random_checkpoint)

FAMILIES = [("sam", "vit_test"), ("hq_sam", "vit_test"), ("mobile_sam", "vit_t")]
LOW = dict(pred_iou_thresh=0, stability_score_thresh=0)  # no quality filter: random weights still give masks


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """skimage's astronaut at 96x128 uint8 RGB."""
    return (transform.resize(data.astronaut(), (96, 128), anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sam_checkpoints")
    return {family: save_random_checkpoint(family, model_type, root / f"{family}_{model_type}.pth", seed=0)
            for family, model_type in FAMILIES}


@pytest.fixture(scope="module")
def sam_test(checkpoints) -> SamRegions:
    """The cheapest source: toy SAM encoder, one point prompt."""
    return SamRegions("vit_test", checkpoints["sam"], points_per_side=1, **LOW)


def _check_masks(masks: np.ndarray, height: int, width: int) -> None:
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == (height, width)
    assert masks.reshape(len(masks), -1).any(axis=1).all(), "no mask may be empty"


@pytest.mark.parametrize("family,model_type", FAMILIES)
def test_generate_is_deterministic_across_reloads_of_the_same_seed(family, model_type, checkpoints, photo,
                                                                     tmp_path):
    source = SAM_FAMILY[family](model_type, checkpoints[family], points_per_side=1, **LOW)
    masks = source.generate(photo)
    _check_masks(masks, 96, 128)
    assert len(masks) >= 1

    again = save_random_checkpoint(family, model_type, tmp_path / "again.pth", seed=0)
    first, second = torch.load(checkpoints[family], weights_only=True), torch.load(again, weights_only=True)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    reloaded = SAM_FAMILY[family](model_type, again, points_per_side=1, **LOW)
    np.testing.assert_array_equal(reloaded.generate(photo), masks)


def test_random_checkpoint_has_the_official_key_layout(checkpoints):
    state = torch.load(checkpoints["sam"], weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert "image_encoder.patch_embed.proj.weight" in state and "pixel_mean" not in state  # buffer not saved
    assert "mask_decoder.hf_token.weight" in torch.load(checkpoints["hq_sam"], weights_only=True)
    assert "image_encoder.neck.0.weight" in torch.load(checkpoints["mobile_sam"], weights_only=True)


def test_high_thresholds_give_zero_masks(checkpoints, photo):
    # a stability score is at most 1, so nothing passes 1.5
    source = SamRegions("vit_test", checkpoints["sam"], points_per_side=1, stability_score_thresh=1.5)
    masks = source.generate(photo)
    assert masks.shape == (0, 96, 128) and masks.dtype == bool


def test_gray_rgba_and_16_bit_inputs(sam_test, photo):
    rgb = sam_test.generate(photo)
    rgba = np.concatenate([photo, np.full((96, 128, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(sam_test.generate(rgba), rgb)
    np.testing.assert_array_equal(sam_test.generate(photo.astype(np.uint16) * 257), rgb)
    _check_masks(sam_test.generate(photo[:, :, 1]), 96, 128)


@pytest.mark.parametrize("height,width", [(10, 13), (1, 1)])
def test_tiny_images(sam_test, photo, height, width):
    masks = sam_test.generate(photo[:height, :width])
    assert masks.shape[1:] == (height, width) and masks.dtype == bool
    _check_masks(masks, height, width)


# --- checkpoints: errors that say what is wrong and how to fix it -------------------------------

def test_model_type_mismatch_names_both_types(checkpoints):
    with pytest.raises(ValueError) as error:
        SamRegions("vit_b", checkpoints["sam"])
    message = str(error.value)
    assert checkpoints["sam"].name in message and "vit_test" in message and "vit_b" in message
    assert "regions.params.sam.model_type=vit_test" in message


def test_unknown_vit_and_non_sam_files(tmp_path):
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(384, 3, 16, 16),
             "image_encoder.blocks.0.norm1.weight": torch.zeros(384)}
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"embed_dim 384 and depth 1 model, which is no known SAM architecture"):
        SamRegions("vit_b", tmp_path / "odd.pth")
    torch.save({"backbone.weight": torch.zeros(1)}, tmp_path / "dino.pth")
    with pytest.raises(ValueError, match=r"does not look like a SAM-family state_dict"):
        SamRegions("vit_b", tmp_path / "dino.pth")


def test_mobile_sam_checkpoint_given_to_sam(checkpoints):
    with pytest.raises(ValueError, match=r"MobileSAM vit_t model but SAM vit_h.*regions.source=mobile_sam"):
        SamRegions("vit_h", checkpoints["mobile_sam"])


def test_plain_sam_checkpoint_given_to_hq_sam(checkpoints):
    with pytest.raises(ValueError, match=r"holds a SAM vit_test model but HQ-SAM vit_test.*no HQ-SAM keys"):
        HqSamRegions("vit_test", checkpoints["sam"])
    with pytest.raises(ValueError, match=r"holds a HQ-SAM vit_test model but SAM vit_test.*regions.source=hq_sam"):
        SamRegions("vit_test", checkpoints["hq_sam"])


def test_same_kind_with_a_different_architecture_lists_the_differences(checkpoints, tmp_path):
    state = torch.load(checkpoints["sam"], weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.neck.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pth")
    expected = r"does not match.*mask_decoder\.iou_token\.weight.*image_encoder\.neck\.0\.weight"
    with pytest.raises(ValueError, match=expected):
        load_model("sam", "vit_test", tmp_path / "edited.pth")


def test_wrapped_state_dict_is_refused_with_a_hint(checkpoints, tmp_path):
    torch.save({"model": torch.load(checkpoints["sam"], weights_only=True)}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match=r"not a raw state_dict.*torch.save\(ckpt\['model'\], path\)"):
        load_model("sam", "vit_test", tmp_path / "wrapped.pth")


def test_missing_checkpoint_names_the_path_and_the_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*sam_vit_h_4b8939\.pth"):
        SamRegions("vit_h", tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match=r"mobile_sam\.pt"):
        MobileSamRegions(checkpoint=tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match=r"needs a local checkpoint"):
        SamRegions("vit_h")
    with pytest.raises(ValueError, match=r"unknown SAM model_type 'vit_x'.*vit_b"):
        SamRegions("vit_x", tmp_path / "nowhere.pth")


def test_checkpoint_kind_recognises_every_family(checkpoints):
    kinds = {family: checkpoint_kind(torch.load(path, weights_only=True)) for family, path in checkpoints.items()}
    assert kinds == {"sam": ("sam", "vit_test"), "hq_sam": ("hq_sam", "vit_test"),
                     "mobile_sam": ("mobile_sam", "vit_t")}

    def vit(embed_dim, depth, hq=False):
        state = {"image_encoder.patch_embed.proj.weight": torch.empty(embed_dim, 3, 16, 16)}
        state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.empty(embed_dim) for i in range(depth)})
        if hq:
            state["mask_decoder.hf_token.weight"] = torch.empty(1, 256)
        return state

    assert checkpoint_kind(vit(1280, 32)) == ("sam", "vit_h")
    assert checkpoint_kind(vit(1024, 24, hq=True)) == ("hq_sam", "vit_l")
    assert checkpoint_kind(vit(768, 12)) == ("sam", "vit_b")
    assert checkpoint_kind(vit(384, 12)) == ("sam", "ViT with embed_dim 384 and depth 12")
    assert checkpoint_kind({"image_encoder.patch_embed.seq.0.c.weight": torch.empty(1),
                            "mask_decoder.hf_token.weight": torch.empty(1)}) == ("hq_sam", "vit_tiny")
    assert checkpoint_kind({"backbone.weight": torch.empty(1)}) is None


def test_mobile_sam_attention_biases_are_refreshed_after_loading(checkpoints, tmp_path):
    # TinyViT caches its attention biases when switched to eval; a stale cache would silently
    # ignore the checkpoint's biases (they are zero at random init, so set some).
    state = torch.load(checkpoints["mobile_sam"], weights_only=True)
    for key in state:
        if key.endswith("attention_biases"):
            state[key] = torch.randn(state[key].shape)
    torch.save(state, tmp_path / "biased.pt")
    model = load_model("mobile_sam", "vit_t", tmp_path / "biased.pt")
    attentions = [m for m in model.modules() if hasattr(m, "attention_biases")]
    assert attentions and not model.training
    for attention in attentions:
        torch.testing.assert_close(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])
        assert attention.ab.abs().sum() > 0


# --- thresholds ------------------------------------------------------------------------------

def test_presets_and_explicit_values_resolve_in_order():
    assert resolve_amg_kwargs() == AMG_DEFAULTS
    assert resolve_amg_kwargs("table10") == AMG_DEFAULTS  # table10 restates the defaults
    table11 = resolve_amg_kwargs("table11")
    assert table11 == {**AMG_DEFAULTS, "points_per_side": 16, "stability_score_thresh": 0.85}
    table12 = resolve_amg_kwargs("table12", points_per_side=None, stability_score_thresh=0.5)
    assert table12 == {**AMG_DEFAULTS, "points_per_side": 8, "stability_score_thresh": 0.5, "min_mask_region_area": 500}
    with pytest.raises(ValueError, match=r"unknown AMG preset 'table13'.*table10.*table11.*table12"):
        resolve_amg_kwargs("table13")
    with pytest.raises(TypeError, match="points_per_sid"):
        resolve_amg_kwargs(points_per_sid=4)


def test_every_threshold_is_an_explicit_keyword_defaulting_to_none():
    for cls in SAM_FAMILY.values():
        parameters = inspect.signature(cls).parameters
        for name in [*AMG_DEFAULTS, "preset"]:
            assert parameters[name].default is None, (cls.__name__, name)


def test_constructor_passes_resolved_thresholds_to_the_generator(checkpoints):
    source = SamRegions("vit_test", checkpoints["sam"], preset="table11", points_per_side=3, box_nms_thresh=0.5)
    assert source.amg_kwargs == {**AMG_DEFAULTS, "points_per_side": 3, "stability_score_thresh": 0.85,
                                 "box_nms_thresh": 0.5}
    generator = source.generator
    assert generator.point_grids[0].shape == (9, 2)
    assert (generator.stability_score_thresh, generator.box_nms_thresh, generator.pred_iou_thresh) == (0.85, 0.5, 0.88)


def test_min_mask_region_area_without_opencv_says_how_to_install(checkpoints, monkeypatch):
    monkeypatch.setattr(regions_sam, "_has_cv2", lambda: False)
    expected = r"min_mask_region_area=500 \(from preset table12\).*pip install opencv-python-headless"
    with pytest.raises(ImportError, match=expected):
        SamRegions("vit_test", checkpoints["sam"], preset="table12")


def test_min_mask_region_area_runs_with_opencv(checkpoints, photo):
    pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    source = SamRegions("vit_test", checkpoints["sam"], points_per_side=1, min_mask_region_area=50, **LOW)
    _check_masks(source.generate(photo), 96, 128)


@pytest.mark.slow
def test_vit_b_architecture_runs_with_default_thresholds(tmp_path):
    checkpoint = save_random_checkpoint("sam", "vit_b", tmp_path / "sam_vit_b_random.pth")
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    # 16 points, not 1024: the mask decoder alone costs ~0.1-0.3 s per point prompt on CPU
    masks = SamRegions("vit_b", checkpoint, points_per_side=4).generate(image)
    assert masks.dtype == bool and masks.shape[1:] == (240, 320)


def test_registry_names_match_config_sections():
    assert {name: cls.family for name, cls in SAM_FAMILY.items()} == {name: name for name in SAM_FAMILY}
    assert set(AMG_PRESETS) == {"table10", "table11", "table12"}


@pytest.mark.parametrize("points_per_side,batches", [
    (4, (4, 16)),                                  # 16 prompts: 4 batches of 4 or one of 16
    pytest.param(8, (16, 64), marks=pytest.mark.slow),  # the defaults' scale: ~50 s on a busy 2-core CPU
])
def test_points_per_batch_changes_memory_not_masks(checkpoints, photo, points_per_side, batches):
    # Each prompt is decoded on its own (the decoder's attention never mixes prompts), and on this
    # CPU the batched kernels give bit-identical logits, so the batch size changes memory only.
    # box_nms_thresh=1 keeps every mask (IoU never exceeds 1): all 3 masks of every prompt are
    # compared, not the one or two that NMS leaves of random-weight masks.
    kwargs = dict(points_per_side=points_per_side, box_nms_thresh=1.0, **LOW)
    small, large = (SamRegions("vit_test", checkpoints["sam"], points_per_batch=b, **kwargs) for b in batches)
    assert (small.generator.points_per_batch, large.generator.points_per_batch) == batches
    masks = small.generate(photo)
    assert len(masks) > points_per_side**2  # more than one mask per prompt survived
    np.testing.assert_array_equal(large.generate(photo), masks)
