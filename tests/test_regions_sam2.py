"""Sam2Regions through the real checkpoint path, with a random-weight hiera_t 2.1 checkpoint.

Every generate() runs the 1024x1024 Hiera encoder (~5 s on 2 free CPU cores, whatever the image
size), so the tests share one model and one set of astronaut masks where they can.
"""
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from skimage import data, transform

from bench.regions.sam2 import (HIERA_TRUNKS, OFFICIAL_CHECKPOINTS, SAM2_AMG_DEFAULTS, SAM2_CONFIGS, SAM2_FAMILY,
                                Sam2Regions, checkpoint_kind, hole_filling_available, save_random_checkpoint)

sam2 = pytest.importorskip("sam2")

# Random weights: lowered thresholds so masks survive; box NMS off because random-weight masks
# all cover most of the image (at 0.7 or 0.9 only one survives).
LOW = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint("hiera_t", "2.1", tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="module")
def regions(checkpoint) -> Sam2Regions:
    return Sam2Regions("hiera_t", "2.1", checkpoint, **LOW)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    image = transform.resize(data.astronaut(), (240, 320), anti_aliasing=True)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def astronaut_masks(regions, astronaut) -> np.ndarray:
    return regions.generate(astronaut)


def _check_masks(masks: np.ndarray, height: int, width: int) -> None:
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == (height, width)
    assert masks.reshape(len(masks), -1).any(axis=1).all(), "no mask may be empty"


def test_tables_match_the_installed_package():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES
    from sam2.modeling.backbones.hieradet import Hiera

    assert set(HF_MODEL_ID_TO_FILENAMES.values()) == {
        (SAM2_CONFIGS[key], OFFICIAL_CHECKPOINTS[key]) for key in SAM2_CONFIGS}
    default_stages = inspect.signature(Hiera).parameters["stages"].default
    package = Path(sam2.__file__).parent
    for (version, model_type), config in SAM2_CONFIGS.items():
        trunk = OmegaConf.load(package / config).model.image_encoder.trunk
        assert HIERA_TRUNKS[(trunk.embed_dim, sum(trunk.get("stages", default_stages)))] == model_type, config


def test_amg_defaults_match_the_installed_generator():
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    signature = inspect.signature(SAM2AutomaticMaskGenerator).parameters
    assert SAM2_AMG_DEFAULTS == {key: signature[key].default for key in SAM2_AMG_DEFAULTS}
    assert set(signature) - set(SAM2_AMG_DEFAULTS) == {"model", "point_grids", "output_mode", "kwargs"}
    assert set(inspect.signature(Sam2Regions).parameters) == {"model_type", "version", "checkpoint", "device",
                                                              *SAM2_AMG_DEFAULTS}


def test_random_checkpoint_is_in_the_official_format(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    assert list(state) == ["model"]
    assert checkpoint_kind(state["model"]) == ("2.1", "hiera_t")
    assert 38e6 < sum(value.numel() for value in state["model"].values()) < 40e6


def test_masks_on_a_natural_image(regions, astronaut_masks):
    _check_masks(astronaut_masks, 240, 320)
    assert len(astronaut_masks) >= 2
    assert regions.amg_kwargs == {**SAM2_AMG_DEFAULTS, **LOW}
    assert SAM2_FAMILY == {"sam2": Sam2Regions}


def test_masks_are_the_generators_in_its_order_and_deterministic(regions, astronaut, astronaut_masks):
    records = regions.generator.generate(astronaut)  # a second run on the same image
    expected = [record["segmentation"] for record in records if record["segmentation"].any()]
    np.testing.assert_array_equal(np.stack(expected), astronaut_masks)


def test_16_bit_rgba_gives_the_masks_of_its_8_bit_rgb(regions, astronaut, astronaut_masks):
    rgba16 = np.concatenate([astronaut, np.full((240, 320, 1), 7, np.uint8)], axis=2).astype(np.uint16) * 257
    np.testing.assert_array_equal(regions.generate(rgba16), astronaut_masks)


def test_tiny_gray_image(regions, astronaut):
    _check_masks(regions.generate(astronaut[100:110, 150:163, 1]), 10, 13)


def test_no_masks_gives_an_empty_stack(checkpoint, astronaut):
    strict = Sam2Regions("hiera_t", "2.1", checkpoint, points_per_side=4, stability_score_thresh=1.01)
    masks = strict.generate(astronaut)
    assert masks.shape == (0, 240, 320) and masks.dtype == bool


@pytest.mark.skipif(hole_filling_available("cpu"), reason="sam2's _C hole filling is CUDA-only")
def test_min_mask_region_area_without_C_warns_once_and_still_generates(checkpoint, astronaut):
    with pytest.warns(UserWarning, match="hole filling"):
        filled = Sam2Regions("hiera_t", "2.1", checkpoint, min_mask_region_area=25, **LOW)
    assert filled.amg_kwargs["min_mask_region_area"] == 25
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # sam2 would warn about _C on every batch
        _check_masks(filled.generate(astronaut[:40, :60]), 40, 60)


def test_builds_whatever_the_global_hydra_state(checkpoint, tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # e.g. a test that tore Hydra down
    try:
        Sam2Regions("hiera_t", "2.1", checkpoint)
        assert not GlobalHydra.instance().is_initialized()
        with initialize_config_dir(str(tmp_path), version_base="1.2"):  # another app's config dir
            theirs = GlobalHydra.instance().hydra
            Sam2Regions("hiera_t", "2.1", checkpoint)
            assert GlobalHydra.instance().hydra is theirs
    finally:
        from hydra import initialize_config_module

        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")  # as `import sam2` left it


@pytest.mark.parametrize("model_type, version, found", [("hiera_s", "2.1", "SAM 2.1 hiera_t"),
                                                        ("hiera_t", "2.0", "SAM 2.1 hiera_t"),
                                                        ("hiera_s", 2.1, "SAM 2.1 hiera_t")])
def test_mismatched_checkpoint_names_file_and_both_models(checkpoint, model_type, version, found):
    with pytest.raises(ValueError, match="holds a") as error:
        Sam2Regions(model_type, version, checkpoint)
    message = str(error.value)
    assert str(checkpoint) in message and found in message and f"SAM {version} {model_type}" in message


def test_missing_checkpoint_names_the_official_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt.*sam2\.1_hiera_small\.pt"):
        Sam2Regions("hiera_s", "2.1", tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match="sam2_hiera_large.pt"):
        Sam2Regions("hiera_l", "2.0")
    with pytest.raises(ValueError, match=r"valid: \['hiera_t'"):
        Sam2Regions("vit_h", "2.1", tmp_path / "nowhere.pt")


def test_checkpoint_not_in_the_sam2_format(tmp_path):
    raw, other = tmp_path / "raw.pt", tmp_path / "other.pt"
    torch.save({"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7)}, raw)
    torch.save({"model": {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}}, other)
    with pytest.raises(ValueError, match=r"torch.save\(\{'model': state_dict\}\)"):
        Sam2Regions("hiera_t", "2.1", raw)
    with pytest.raises(ValueError, match="does not look like SAM 2"):
        Sam2Regions("hiera_t", "2.1", other)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["hiera_s", "hiera_b+", "hiera_l"])
@pytest.mark.parametrize("version", ["2.1", "2.0"])
def test_every_architecture_round_trips(tmp_path, model_type, version):
    path = save_random_checkpoint(model_type, version, tmp_path / OFFICIAL_CHECKPOINTS[(version, model_type)])
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
    assert checkpoint_kind(state) == (version, model_type)
    Sam2Regions(model_type, version, path)
