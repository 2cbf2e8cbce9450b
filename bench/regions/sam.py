"""SAM-family region sources: automatic masks from SAM, HQ-SAM and MobileSAM.

Each class wraps its package's ``SamAutomaticMaskGenerator`` (AMG), as the released
``region_features/generate_regions.py`` does:

    registry name  class             package / architecture                         model_type
    sam            SamRegions        segment_anything                               vit_h vit_l vit_b vit_test
    hq_sam         HqSamRegions      segment_anything_hq (HQ mask decoder)          vit_h vit_l vit_b vit_tiny vit_test
    mobile_sam     MobileSamRegions  segment_anything's Sam with MobileSAM's        vit_t
                                     TinyViT-5M encoder (ChaoningZhang/MobileSAM)

``vit_test`` is a 2-block toy ViT encoder for tests and smoke runs only; make a random-weight
checkpoint for it (or for any other architecture) with ``save_random_checkpoint``.

Weights always come from a local ``checkpoint`` file in the official format: a raw
``state_dict`` saved with ``torch.save`` (sam_vit_h_4b8939.pth, sam_hq_vit_h.pth,
mobile_sam.pt, ...). Nothing is ever downloaded. ``load_model`` checks the file's keys and
shapes against the requested architecture before a strict load, so a vit_b file given as
vit_h, or a MobileSAM file given to SamRegions, fails with an error that names both.

AMG thresholds: every one is a constructor argument defaulting to None, resolved as explicit
value, else the ``preset``'s value (``AMG_PRESETS``), else the library default
(``AMG_DEFAULTS``, identical in segment_anything and segment_anything_hq). The released code
used the library defaults. ``min_mask_region_area > 0`` needs OpenCV (SAM's hole/island
clean-up calls ``cv2.connectedComponentsWithStats``).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.images import records_to_masks, to_rgb8
from bench.weights import read_checkpoint, state_dict_diff

AMG_DEFAULTS = dict(
    points_per_side=32,                  # a 32x32 grid of point prompts, 3 masks per point
    points_per_batch=64,                 # points per decoder batch: memory and speed, not masks (tested)
    pred_iou_thresh=0.88,                # keep masks whose predicted IoU is > this (0 disables)
    stability_score_thresh=0.95,         # keep masks whose stability score is >= this (0 disables)
    stability_score_offset=1.0,          # logit offset used to compute the stability score
    box_nms_thresh=0.7,                  # box IoU above which duplicate masks are suppressed
    crop_n_layers=0,                     # >0: also run on 2^k x 2^k image crops per layer k
    crop_nms_thresh=0.7,                 # box NMS between masks of different crops
    crop_overlap_ratio=512 / 1500,       # crop overlap, as a fraction of the image side
    crop_n_points_downscale_factor=1,    # points per side shrink by this factor per crop layer
    min_mask_region_area=0,              # >0: remove islands/holes smaller than this (needs cv2)
)

# Named threshold sets; anything not listed falls back to AMG_DEFAULTS.
AMG_PRESETS = {
    "table10": dict(points_per_side=32, pred_iou_thresh=0.88, stability_score_thresh=0.95,
                    stability_score_offset=1.0),
    "table11": dict(points_per_side=16, stability_score_thresh=0.85),
    "table12": dict(points_per_side=8, stability_score_thresh=0.85, min_mask_region_area=500),
}

# ViT image encoders of SAM and HQ-SAM (segment_anything/build_sam.py).
VIT_ENCODERS = {
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    # For tests and smoke runs only (random weights): 2 blocks, the second global. HQ-SAM needs
    # one global-attention block, whose output feeds its HQ decoder.
    "vit_test": dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1]),
}

# MobileSAM's TinyViT-5M image encoder: the architecture of mobile_sam.pt (MobileSAM's
# build_sam_vit_t; HQ-SAM's vit_tiny uses the same encoder).
TINY_VIT = dict(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
                mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)

FAMILY_LABELS = {"sam": "SAM", "hq_sam": "HQ-SAM", "mobile_sam": "MobileSAM"}
MODEL_TYPES = {"sam": [*VIT_ENCODERS], "hq_sam": [*VIT_ENCODERS, "vit_tiny"], "mobile_sam": ["vit_t"]}

# Official file names and where they are published; for error messages.
OFFICIAL_CHECKPOINTS = {
    "sam": {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth",
            "vit_b": "sam_vit_b_01ec64.pth"},
    "hq_sam": {"vit_h": "sam_hq_vit_h.pth", "vit_l": "sam_hq_vit_l.pth", "vit_b": "sam_hq_vit_b.pth",
               "vit_tiny": "sam_hq_vit_tiny.pth"},
    "mobile_sam": {"vit_t": "mobile_sam.pt"},
}
CHECKPOINT_ORIGINS = {
    "sam": "the 'Model Checkpoints' links of the facebookresearch/segment-anything README",
    "hq_sam": "the 'Model Checkpoints' links of the SysCV/sam-hq README",
    "mobile_sam": "weights/mobile_sam.pt in the ChaoningZhang/MobileSAM repository",
}

_PROMPT_DIM = 256  # SAM's prompt/mask-decoder width; the image embedding is 64x64 at 1024 input


def resolve_amg_kwargs(preset: str | None = None, **explicit) -> dict:
    """Full AMG keyword arguments: explicit (non-None) value, else preset value, else default."""
    unknown = sorted(set(explicit) - set(AMG_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown automatic-mask-generator arguments {unknown}; valid: {sorted(AMG_DEFAULTS)}")
    if preset is not None and preset not in AMG_PRESETS:
        raise ValueError(f"unknown AMG preset '{preset}'; valid presets: {sorted(AMG_PRESETS)} (or null)")
    kwargs = {**AMG_DEFAULTS, **AMG_PRESETS.get(preset, {})}
    kwargs.update({key: value for key, value in explicit.items() if value is not None})
    return kwargs


def _has_cv2() -> bool:
    return importlib.util.find_spec("cv2") is not None


def _require_cv2(min_mask_region_area: int, preset: str | None) -> None:
    if not _has_cv2():
        from_preset = "min_mask_region_area" in AMG_PRESETS.get(preset, {})
        source = f" (from preset {preset})" if from_preset else ""
        raise ImportError(
            f"min_mask_region_area={min_mask_region_area}{source} needs OpenCV for SAM's hole and "
            "island clean-up, and cv2 is not importable: run `pip install opencv-python-headless`, "
            "or set min_mask_region_area=0")


# ----------------------------------------------------------------------------------------------
# Model building: one builder per family (random weights), one loader for every family.

def _import_hq():
    """segment_anything_hq, imported quietly.

    Its tiny_vit_sam module imports timm through deprecated paths and re-registers timm's
    tiny_vit_* model names with its own 1024-pixel variants (a side effect on timm's registry).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        import segment_anything_hq
        import segment_anything_hq.modeling.tiny_vit_sam
    return segment_anything_hq


def _check_model_type(family: str, model_type: str) -> None:
    if model_type not in MODEL_TYPES[family]:
        raise ValueError(f"unknown {FAMILY_LABELS[family]} model_type '{model_type}' "
                         f"(regions.params.{family}.model_type); valid: {MODEL_TYPES[family]}")


def build_sam(model_type: str) -> torch.nn.Module:
    """segment_anything's Sam with random weights, in train mode."""
    from segment_anything.build_sam import _build_sam

    _check_model_type("sam", model_type)
    arch = VIT_ENCODERS[model_type]
    return _build_sam(encoder_embed_dim=arch["embed_dim"], encoder_depth=arch["depth"],
                      encoder_num_heads=arch["num_heads"],
                      encoder_global_attn_indexes=arch["global_attn_indexes"], checkpoint=None)


def build_hq_sam(model_type: str) -> torch.nn.Module:
    """segment_anything_hq's Sam (HQ mask decoder) with random weights."""
    _import_hq()
    hq_build = importlib.import_module("segment_anything_hq.build_sam")  # the package exports a function of that name
    _check_model_type("hq_sam", model_type)
    if model_type == "vit_tiny":
        return hq_build.build_sam_vit_t(checkpoint=None)
    arch = VIT_ENCODERS[model_type]
    return hq_build._build_sam(encoder_embed_dim=arch["embed_dim"], encoder_depth=arch["depth"],
                                   encoder_num_heads=arch["num_heads"],
                                   encoder_global_attn_indexes=arch["global_attn_indexes"], checkpoint=None)


def build_mobile_sam(model_type: str = "vit_t") -> torch.nn.Module:
    """MobileSAM with random weights: segment_anything's Sam, prompt encoder and mask decoder
    around the TinyViT encoder; parameter names match mobile_sam.pt."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    _check_model_type("mobile_sam", model_type)
    hq = _import_hq()

    class TinyViTEncoder(hq.modeling.tiny_vit_sam.TinyViT):
        # segment_anything_hq's TinyViT returns (embedding, HQ intermediate features); plain
        # SAM expects the (B, 256, 64, 64) embedding alone, as MobileSAM's own TinyViT returns.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_features(x)[0]

    embedding_size = TINY_VIT["img_size"] // 16
    return Sam(
        image_encoder=TinyViTEncoder(**TINY_VIT),
        prompt_encoder=PromptEncoder(embed_dim=_PROMPT_DIM, image_embedding_size=(embedding_size, embedding_size),
                                     input_image_size=(TINY_VIT["img_size"],) * 2, mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=_PROMPT_DIM, iou_head_depth=3,
                                 iou_head_hidden_dim=256,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=_PROMPT_DIM,
                                                               mlp_dim=2048, num_heads=8)),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


MODEL_BUILDERS = {"sam": build_sam, "hq_sam": build_hq_sam, "mobile_sam": build_mobile_sam}


def checkpoint_kind(state_dict: dict) -> tuple[str, str] | None:
    """(family, model_type) a SAM-family state_dict looks like, e.g. ("hq_sam", "vit_b"); None if
    it is not one. An unlisted ViT gets model_type "ViT with embed_dim D and depth N"."""
    hq = "mask_decoder.hf_token.weight" in state_dict
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:  # TinyViT's conv stem
        return ("hq_sam", "vit_tiny") if hq else ("mobile_sam", "vit_t")
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {int(m.group(1)) for key in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", key))}
    embed_dim, depth = patch.shape[0], len(blocks)
    model_type = next((name for name, arch in VIT_ENCODERS.items()
                       if (arch["embed_dim"], arch["depth"]) == (embed_dim, depth)),
                      f"ViT with embed_dim {embed_dim} and depth {depth}")
    return ("hq_sam" if hq else "sam"), model_type


def _mismatch_advice(path: Path, family: str, model_type: str, found: tuple[str, str] | None) -> str:
    label, config = FAMILY_LABELS[family], f"regions.params.{family}.model_type"
    asked = f"{label} {model_type} ({config}={model_type})"
    if found is None:
        return (f"checkpoint {path.name} does not look like a SAM-family state_dict (no "
                f"image_encoder.patch_embed weights) but {asked} was requested; expected a file like "
                f"{next(iter(OFFICIAL_CHECKPOINTS[family].values()))}")
    found_family, found_type = found
    holds = f"checkpoint {path.name} holds a {FAMILY_LABELS[found_family]} {found_type} model"
    if found_type not in MODEL_TYPES[found_family]:
        return (f"{holds}, which is no known {FAMILY_LABELS[found_family]} architecture "
                f"({MODEL_TYPES[found_family]}), but {asked} was requested; add it to VIT_ENCODERS "
                "in bench/regions/sam.py or use an official checkpoint")
    if found_family == family:
        return f"{holds} but {asked}: set {config}={found_type}"
    hint = ""
    if family == "hq_sam" and found_family == "sam":
        hint = (" (no HQ-SAM keys such as mask_decoder.hf_token.weight; its HQ layers would stay random)"
                f"; for HQ-SAM use a file like {OFFICIAL_CHECKPOINTS['hq_sam'].get(found_type, 'sam_hq_vit_h.pth')}")
    return (f"{holds} but {asked}{hint}: to use this file set regions.source={found_family} and "
            f"regions.params.{found_family}.model_type={found_type}")


def _read_state_dict(path: Path, family: str, model_type: str) -> dict:
    if not path.is_file():
        official = OFFICIAL_CHECKPOINTS[family].get(model_type)
        where = (f"the official file is {official}, from {CHECKPOINT_ORIGINS[family]}" if official else
                 f"make a random-weight one with bench.regions.sam.save_random_checkpoint('{family}', "
                 f"'{model_type}', path)")
        raise FileNotFoundError(f"{FAMILY_LABELS[family]} {model_type} checkpoint not found: {path} — {where}")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"checkpoint {path} is not a raw state_dict (top level: {keys}); official "
            f"{FAMILY_LABELS[family]} files are a plain dict of tensors saved with torch.save — for a "
            "training wrapper re-save its state_dict, e.g. torch.save(ckpt['model'], path)")
    return state


def load_model(family: str, model_type: str, checkpoint: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The float32 model of ``family`` ("sam" | "hq_sam" | "mobile_sam") with the weights of a
    local checkpoint in the official format, in eval mode on ``device``.

    Used for official and random test checkpoints alike. Keys and shapes are compared before a
    strict load. segment_anything_hq's own builder loads with strict=False (and prints the
    result); the official HQ files hold every key of the HQ model (its training script merges
    the SAM file with the HQ decoder), so the strict load accepts them and refuses a plain SAM
    file, whose HQ layers strict=False would leave random.
    """
    if family not in MODEL_BUILDERS:
        raise ValueError(f"unknown SAM family '{family}'; valid: {sorted(MODEL_BUILDERS)}")
    _check_model_type(family, model_type)
    path = Path(checkpoint).expanduser()
    state = _read_state_dict(path, family, model_type)
    found = checkpoint_kind(state)
    if found != (family, model_type):  # fail before building a model that may be 2.5 GB
        raise ValueError(_mismatch_advice(path, family, model_type, found))
    model = MODEL_BUILDERS[family](model_type)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = {key: tuple(value.shape) for key, value in state.items()}
    if expected != given:
        raise ValueError(
            f"checkpoint {path.name} looks like {FAMILY_LABELS[family]} {model_type} but does not match its "
            f"architecture: {state_dict_diff(expected, given)}")
    model.load_state_dict(state, strict=True)
    # eval() after loading: TinyViT caches its attention biases (``ab``) when switched to eval,
    # and the builders switch before any weights exist.
    return model.to(device=device, dtype=torch.float32).eval()


def save_random_checkpoint(family: str, model_type: str, path: str | Path, seed: int = 0) -> Path:
    """Save a random-weight model of ``family``/``model_type`` in the official checkpoint format
    (a raw state_dict via torch.save); the same seed gives the same tensors. The global RNG
    state is left untouched."""
    if family not in MODEL_BUILDERS:
        raise ValueError(f"unknown SAM family '{family}'; valid: {sorted(MODEL_BUILDERS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODEL_BUILDERS[family](model_type)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------
# Region sources

class _SamFamilyRegions:
    """Shared body of the three SAM-family sources; subclasses set ``family``.

    Constructor: ``model_type``, ``checkpoint`` (local path, required), ``device``, ``preset``
    (a key of AMG_PRESETS or None) and every AMG threshold (see AMG_DEFAULTS) as keyword
    arguments defaulting to None. ``amg_kwargs`` holds the resolved thresholds.
    """

    family: str
    default_model_type: str | None = None

    def __init__(self, model_type: str | None = None, checkpoint: str | None = None, device: str = "cpu",
                 preset: str | None = None, *,
                 points_per_side: int | None = None, points_per_batch: int | None = None,
                 pred_iou_thresh: float | None = None, stability_score_thresh: float | None = None,
                 stability_score_offset: float | None = None, box_nms_thresh: float | None = None,
                 crop_n_layers: int | None = None, crop_nms_thresh: float | None = None,
                 crop_overlap_ratio: float | None = None, crop_n_points_downscale_factor: int | None = None,
                 min_mask_region_area: int | None = None):
        label = FAMILY_LABELS[self.family]
        model_type = model_type or self.default_model_type
        if model_type is None:
            raise ValueError(f"{label} needs model_type (regions.params.{self.family}.model_type), one of "
                             f"{MODEL_TYPES[self.family]}")
        if checkpoint is None:
            raise ValueError(f"{label} needs a local checkpoint (regions.params.{self.family}.checkpoint), "
                             f"e.g. {OFFICIAL_CHECKPOINTS[self.family].get(model_type, 'a file')} from "
                             f"{CHECKPOINT_ORIGINS[self.family]}")
        self.model_type, self.checkpoint, self.device, self.preset = model_type, str(checkpoint), device, preset
        self.amg_kwargs = resolve_amg_kwargs(
            preset, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area)
        if self.amg_kwargs["min_mask_region_area"] > 0:
            _require_cv2(self.amg_kwargs["min_mask_region_area"], preset)
        self.model = load_model(self.family, model_type, checkpoint, device)
        self.generator = self._generator_class()(self.model, output_mode="binary_mask", **self.amg_kwargs)

    def _generator_class(self):
        from segment_anything import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator

    def generate(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image -> (R, H, W) bool masks in the generator's output order, empty ones dropped.

        The order is the AMG's: with crop_n_layers=0, masks surviving box NMS by descending
        predicted IoU (torchvision's NMS returns kept indices by score); min_mask_region_area>0
        and crops re-run NMS. Masks may overlap and need not cover the image; R may be 0.
        """
        rgb = to_rgb8(image)
        with torch.inference_mode():
            records = self.generator.generate(rgb)
        return records_to_masks(records, rgb.shape[:2])


class SamRegions(_SamFamilyRegions):
    """Segment Anything (segment_anything 1.0) automatic masks; the paper's default region source."""

    family = "sam"


class HqSamRegions(_SamFamilyRegions):
    """HQ-SAM (segment_anything_hq 0.3) automatic masks; its generator runs with the package
    defaults multimask_output=True and hq_token_only=False, as in the released code."""

    family = "hq_sam"

    def _generator_class(self):
        return _import_hq().SamAutomaticMaskGenerator


class MobileSamRegions(_SamFamilyRegions):
    """MobileSAM automatic masks: segment_anything's generator on the TinyViT model (model_type vit_t)."""

    family = "mobile_sam"
    default_model_type = "vit_t"


SAM_FAMILY = {"sam": SamRegions, "hq_sam": HqSamRegions, "mobile_sam": MobileSamRegions}
