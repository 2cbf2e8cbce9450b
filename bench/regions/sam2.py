"""SAM 2 region source: automatic masks from SAM 2 / SAM 2.1 (the ``sam2`` package, 1.1.0).

``Sam2Regions`` runs ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` over the model
``sam2.build_sam.build_sam2(config, checkpoint, device, mode="eval")`` builds, the path the
official checkpoints take. Weights come from a local file only; nothing is ever downloaded.

    version  model_type  package config                        official checkpoint
    2.1      hiera_t     configs/sam2.1/sam2.1_hiera_t.yaml    sam2.1_hiera_tiny.pt
    2.1      hiera_s     configs/sam2.1/sam2.1_hiera_s.yaml    sam2.1_hiera_small.pt
    2.1      hiera_b+    configs/sam2.1/sam2.1_hiera_b+.yaml   sam2.1_hiera_base_plus.pt
    2.1      hiera_l     configs/sam2.1/sam2.1_hiera_l.yaml    sam2.1_hiera_large.pt
    2.0      (same)      configs/sam2/sam2_hiera_*.yaml        sam2_hiera_{tiny,small,base_plus,large}.pt

A checkpoint is ``torch.save({"model": state_dict})``. Before building, its Hiera trunk (width,
number of blocks) and version (2.1 adds ``no_obj_embed_spatial``) are read from the file and
compared with the requested model, so a hiera_t file given as hiera_s fails naming both; sam2's
own loader would raise a bare RuntimeError after logging a key list.

CPU notes (sam2 1.1.0):
  - Hole filling and sprinkle removal (``min_mask_region_area > 0``) are off unless sam2's
    compiled ``_C`` extension is importable and ``device`` is CUDA: its connected-components
    kernel is CUDA-only. sam2 would warn and skip them on every batch; here one warning is
    given at construction and the generator runs with ``min_mask_region_area=0``, which
    gives the same masks. sam2's generator never runs SAM 1's OpenCV clean-up of small
    islands on the full-resolution masks, so no other post-processing is lost.
  - Image inference runs in float32 on ``device``: no autocast, bfloat16 or ``torch.compile``
    (``compile_image_encoder`` is False in every config; ``vos_optimized`` is video-only).
    On a machine with a GPU, building still initialises CUDA even for ``device="cpu"``:
    sam2's constructors put RoPE tables (memory attention, unused for images) and
    positional-encoding warm-up caches on the GPU whenever ``torch.cuda.is_available()``.
    Set ``CUDA_VISIBLE_DEVICES=""`` to keep such a process off the GPU.
  - ``build_sam2`` reads its config through Hydra's process-wide ``GlobalHydra``, which
    ``import sam2`` points at the sam2 package. ``_sam2_hydra`` re-points it for each build
    and restores what was there, so building works repeatedly, under pytest, and next to
    code that cleared or re-initialised Hydra.
"""
from __future__ import annotations

import importlib.util
import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from bench.images import records_to_masks, to_rgb8
from bench.weights import read_checkpoint

MODEL_TYPES = ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")
VERSIONS = ("2.1", "2.0")

# (version, model_type) -> config name inside the sam2 package (what build_sam2 composes)
SAM2_CONFIGS = {
    ("2.1", "hiera_t"): "configs/sam2.1/sam2.1_hiera_t.yaml",
    ("2.1", "hiera_s"): "configs/sam2.1/sam2.1_hiera_s.yaml",
    ("2.1", "hiera_b+"): "configs/sam2.1/sam2.1_hiera_b+.yaml",
    ("2.1", "hiera_l"): "configs/sam2.1/sam2.1_hiera_l.yaml",
    ("2.0", "hiera_t"): "configs/sam2/sam2_hiera_t.yaml",
    ("2.0", "hiera_s"): "configs/sam2/sam2_hiera_s.yaml",
    ("2.0", "hiera_b+"): "configs/sam2/sam2_hiera_b+.yaml",
    ("2.0", "hiera_l"): "configs/sam2/sam2_hiera_l.yaml",
}

# Official file names and where they are published; for error messages.
OFFICIAL_CHECKPOINTS = {
    ("2.1", "hiera_t"): "sam2.1_hiera_tiny.pt",
    ("2.1", "hiera_s"): "sam2.1_hiera_small.pt",
    ("2.1", "hiera_b+"): "sam2.1_hiera_base_plus.pt",
    ("2.1", "hiera_l"): "sam2.1_hiera_large.pt",
    ("2.0", "hiera_t"): "sam2_hiera_tiny.pt",
    ("2.0", "hiera_s"): "sam2_hiera_small.pt",
    ("2.0", "hiera_b+"): "sam2_hiera_base_plus.pt",
    ("2.0", "hiera_l"): "sam2_hiera_large.pt",
}
CHECKPOINT_URLS = {"2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/",
                   "2.0": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"}

# Hiera trunk (embed_dim, number of blocks = sum of stages) -> model_type, as in the configs;
# hiera_b+ uses Hiera's default stages (2, 3, 16, 3). Checked against the configs by the tests.
HIERA_TRUNKS = {(96, 12): "hiera_t", (96, 16): "hiera_s", (112, 24): "hiera_b+", (144, 48): "hiera_l"}

# SAM2AutomaticMaskGenerator's defaults in sam2 1.1.0 (checked against its signature by the
# tests). A None constructor argument means the value here.
SAM2_AMG_DEFAULTS = dict(
    points_per_side=32,                  # a 32x32 grid of point prompts
    points_per_batch=64,                 # points per decoder batch: memory and speed, not masks (16 vs 64
                                         # measured identical on CPU, issue 17)
    pred_iou_thresh=0.8,                 # keep masks whose predicted IoU is > this (0 disables)
    stability_score_thresh=0.95,         # keep masks whose stability score is >= this (0 disables)
    stability_score_offset=1.0,          # logit offset used to compute the stability score
    mask_threshold=0.0,                  # logit above which a pixel is in the mask
    box_nms_thresh=0.7,                  # box IoU above which duplicate masks are suppressed
    crop_n_layers=0,                     # >0: also run on 2^k x 2^k image crops per layer k
    crop_nms_thresh=0.7,                 # box NMS between masks of different crops
    crop_overlap_ratio=512 / 1500,       # crop overlap, as a fraction of the image side
    crop_n_points_downscale_factor=1,    # points per side shrink by this factor per crop layer
    min_mask_region_area=0,              # >0: fill holes / drop sprinkles up to this area in the
                                         # 256x256 low-res masks (needs _C and CUDA, see above)
    use_m2m=False,                       # one refinement pass fed with each mask's own logits
    multimask_output=True,               # 3 masks per point (False: 1, with sam2's stability fallback)
)

_HYDRA_LOCK = threading.Lock()  # GlobalHydra is process-wide: one build at a time


@contextmanager
def _sam2_hydra():
    """Point Hydra's GlobalHydra at the sam2 config module for the duration; restore it after.

    build_sam2 calls ``hydra.compose``, which fails ("GlobalHydra is not initialized") if
    anything cleared GlobalHydra since ``import sam2``, and finds no sam2 config if another
    app re-initialised it with its own config path.
    """
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with _HYDRA_LOCK:
        global_hydra = GlobalHydra.instance()
        previous = global_hydra.hydra
        global_hydra.clear()
        try:
            initialize_config_module("sam2", version_base="1.2")  # what sam2/__init__.py does
            yield
        finally:
            global_hydra.clear()
            if previous is not None:
                global_hydra.initialize(previous)


def _check_choice(model_type: str | None, version: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM 2 model_type {model_type!r} (regions.params.sam2.model_type); "
                         f"valid: {list(MODEL_TYPES)}")
    if version not in VERSIONS:
        raise ValueError(f"unknown SAM 2 version {version!r} (regions.params.sam2.version); valid: "
                         f"{list(VERSIONS)} — quote it in YAML (\"2.1\")")


def _official(version: str, model_type: str) -> str:
    name = OFFICIAL_CHECKPOINTS[(version, model_type)]
    return f"{name} ({CHECKPOINT_URLS[version]}{name})"


def checkpoint_kind(state_dict: dict) -> tuple[str, str] | None:
    """(version, model_type) a SAM 2 state_dict looks like, e.g. ("2.1", "hiera_t"); None if it
    has no Hiera trunk. An unlisted trunk gets model_type "Hiera with embed_dim D and N blocks"."""
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")  # (embed_dim, 3, 7, 7)
    if patch is None:
        return None
    blocks = {int(m.group(1)) for key in state_dict
              if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key))}
    trunk = (int(patch.shape[0]), len(blocks))
    version = "2.1" if "no_obj_embed_spatial" in state_dict else "2.0"
    return version, HIERA_TRUNKS.get(trunk, f"Hiera with embed_dim {trunk[0]} and {trunk[1]} blocks")


def _check_checkpoint(path: Path, version: str, model_type: str) -> None:
    """Raise unless ``path`` is an official-format SAM 2 checkpoint of (version, model_type)."""
    asked = (f"SAM {version} {model_type} (regions.params.sam2.model_type={model_type}, "
             f"regions.params.sam2.version=\"{version}\")")
    if not path.is_file():
        raise FileNotFoundError(f"SAM {version} {model_type} checkpoint not found: {path} — the official "
                                f"file is {_official(version, model_type)}")
    state = read_checkpoint(path, mmap=True)  # only the header and shapes are read here; build_sam2 loads tensors
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)):
        top = sorted(map(str, state))[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"checkpoint {path} is not in the SAM 2 format torch.save({{'model': state_dict}}) (top level: "
            f"{top}); for a raw state_dict re-save it with torch.save({{'model': state_dict}}, path)")
    found = checkpoint_kind(state["model"])
    if found is None:
        raise ValueError(f"checkpoint {path} does not look like SAM 2 (no image_encoder.trunk.patch_embed "
                         f"weights) but {asked} was requested; expected a file like "
                         f"{_official(version, model_type)}")
    if found != (version, model_type):
        found_version, found_type = found
        fix = (f"set regions.params.sam2.model_type={found_type} and regions.params.sam2.version="
               f"\"{found_version}\"" if found_type in MODEL_TYPES else "use a SAM 2 checkpoint")
        raise ValueError(f"checkpoint {path} holds a SAM {found_version} {found_type} model but {asked} was "
                         f"requested: {fix}, or give {_official(version, model_type)}")


def _build(version: str, model_type: str, checkpoint: Path | None, device: str) -> torch.nn.Module:
    """build_sam2 for (version, model_type): weights from ``checkpoint``, or random if None."""
    from sam2.build_sam import build_sam2

    with _sam2_hydra():
        try:
            return build_sam2(SAM2_CONFIGS[(version, model_type)], None if checkpoint is None else str(checkpoint),
                              device=device, mode="eval")
        except RuntimeError as error:  # a strict load_state_dict failure the trunk check did not catch
            if checkpoint is None or "state_dict" not in str(error):
                raise
            raise RuntimeError(f"checkpoint {checkpoint} looks like SAM {version} {model_type} but does not load "
                               f"strictly into it: {error}") from error


def hole_filling_available(device: str) -> bool:
    """Whether sam2 can fill holes / remove sprinkles (min_mask_region_area > 0) on ``device``."""
    return torch.device(device).type == "cuda" and importlib.util.find_spec("sam2._C") is not None


def save_random_checkpoint(model_type: str, version: str, path: str | Path, seed: int = 0) -> Path:
    """Save a random-weight SAM ``version`` ``model_type`` (built from the same package config as
    the official one) in the official format ``{"model": state_dict}``; same seed, same weights.
    hiera_t: 39M parameters, 156 MB."""
    version = str(version)
    _check_choice(model_type, version)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(version, model_type, None, "cpu")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


class Sam2Regions:
    """SAM 2 automatic masks (``SAM2AutomaticMaskGenerator``, binary masks).

    Constructor:
      model_type   "hiera_t" | "hiera_s" | "hiera_b+" | "hiera_l"
      version      "2.1" | "2.0" (a YAML float 2.1 is accepted too)
      checkpoint   local path of the matching official file (see the module docstring)
      device       torch device for the model
      the rest     every generator threshold, None = sam2's default (SAM2_AMG_DEFAULTS, where
                   each is described); note points_per_side=None means 32 here, not "use
                   point_grids" as in sam2. ``amg_kwargs`` holds the resolved values.

    min_mask_region_area > 0 only takes effect with sam2's compiled ``_C`` extension on CUDA;
    otherwise hole filling and sprinkle removal are off (one warning) and the masks are those
    of min_mask_region_area=0.
    """

    def __init__(self, model_type: str | None = None, version: str = "2.1", checkpoint: str | None = None,
                 device: str = "cpu", *,
                 points_per_side: int | None = None, points_per_batch: int | None = None,
                 pred_iou_thresh: float | None = None, stability_score_thresh: float | None = None,
                 stability_score_offset: float | None = None, mask_threshold: float | None = None,
                 box_nms_thresh: float | None = None, crop_n_layers: int | None = None,
                 crop_nms_thresh: float | None = None, crop_overlap_ratio: float | None = None,
                 crop_n_points_downscale_factor: int | None = None, min_mask_region_area: int | None = None,
                 use_m2m: bool | None = None, multimask_output: bool | None = None):
        version = str(version)
        _check_choice(model_type, version)
        if checkpoint is None:
            raise ValueError(f"SAM 2 needs a local checkpoint (regions.params.sam2.checkpoint), e.g. "
                             f"{_official(version, model_type)}")
        self.model_type, self.version, self.device = model_type, version, device
        self.checkpoint = Path(checkpoint).expanduser()
        explicit = dict(
            points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            mask_threshold=mask_threshold, box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area, use_m2m=use_m2m, multimask_output=multimask_output)
        self.amg_kwargs = {key: default if explicit[key] is None else explicit[key]
                           for key, default in SAM2_AMG_DEFAULTS.items()}

        _check_checkpoint(self.checkpoint, version, model_type)
        self.model = _build(version, model_type, self.checkpoint, device)

        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        generator_kwargs = dict(self.amg_kwargs)
        if generator_kwargs["min_mask_region_area"] > 0 and not hole_filling_available(device):
            has_c = importlib.util.find_spec("sam2._C") is not None
            warnings.warn(
                f"min_mask_region_area={generator_kwargs['min_mask_region_area']} has no effect: SAM 2's hole "
                f"filling and sprinkle removal need its compiled _C extension and a CUDA device (device={device}, "
                f"_C importable: {has_c}); masks are those of min_mask_region_area=0", UserWarning, stacklevel=2)
            generator_kwargs["min_mask_region_area"] = 0  # what sam2's fallback does, minus a warning per batch
        with warnings.catch_warnings():  # SAM2Transforms scripts its resize; torch 2.14 deprecates jit.script
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            self.generator = SAM2AutomaticMaskGenerator(self.model, output_mode="binary_mask", **generator_kwargs)

    def generate(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image -> (R, H, W) bool masks in the generator's output order, empty ones dropped.

        The order is the generator's: with crop_n_layers=0, masks surviving box NMS by descending
        predicted IoU. Masks may overlap and need not cover the image; R may be 0. The image is
        resized to 1024x1024 inside, so the cost hardly depends on its size.
        """
        rgb = to_rgb8(image)
        with torch.inference_mode():
            records = self.generator.generate(rgb)
        return records_to_masks(records, rgb.shape[:2])


SAM2_FAMILY = {"sam2": Sam2Regions}
