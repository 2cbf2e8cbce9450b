"""RADIO backbones (NVIDIA RADIOv2.5, C-RADIOv3 / C-RADIOv4) through timm's NaFlexVit, dense, at native resolution.

timm 1.0.31 ships RADIO twice: ``vit_*_patch16_radio_v3/v4`` (a classic ``VisionTransformer``
whose 128x128 position table is cut down to a fixed 32x32 grid when the weights load) and
``naflexvit_*_patch16_radio_v3/v4``, which keeps RADIO's whole 128x128 table (2048 px) and its
CPE resize: bilinear, no antialias, to a *square* of the larger grid side, then the top-left
h x w crop — RADIO's own behaviour at every size and aspect ratio. We build the NaFlexVit ones
(``pretrained=False``) so a non-square padded image gets exactly RADIO's positions; the
``align_corners`` of each arch is timm's (True for v3-B and v3-H, as their released code).

RADIOv2.5 (radio_v2.5-b/l/h, NVlabs/RADIO 2024-07 and 2024-10) has no timm arch but is the same
network: a ViT-B/L/H/16 whose ``patch_generator`` holds a bias-free patch linear, the 128x128
table (``cpe_max_size`` 2048) and one CLS token per teacher padded with registers to
``register_multiple`` 8 (4 teachers + 4 registers for B/L, 5 + 3 for H with Florence2: 8 prefix
tokens either way, as C-RADIOv3's 1 CLS + 7 "registers"), no final norm, the CLIP input
conditioner. Its rows reuse the v3 NaFlexVit arch of the same width with two differences:
``align_corners=True`` for all three (the resize code released with v2.5; the 2025 repo code
switched to False), and layer scale taken from the file (present or absent as the file says).

Checkpoint layouts (told apart by their keys; nothing is downloaded):
  NVIDIA    ``model.safetensors`` of the Hugging Face repos (nvidia/C-RADIOv3-B|L|H|g,
            nvidia/C-RADIOv4-SO400M|H, nvidia/RADIO-B|L|H for v2.5):
            ``radio_model.model.patch_generator.{embedder.weight, pos_embed, cls_token.token}``,
            ``radio_model.model.blocks.*`` (layer scale as ``.grandma``),
            ``radio_model.input_conditioner.norm_mean/std``, ``radio_model.summary_idxs``, adaptor heads.
            Converted by timm's own ``naflexvit.checkpoint_filter_fn`` (-> ``vision_transformer._convert_radio``):
            the bias-free patch linear becomes a conv with zero bias, the per-teacher CLS tokens after the
            first become registers; conditioner, summary indices and adaptors are dropped. The release is
            the ``version`` of the repo's ``config.json`` beside the file ("radio_v2.5-l", "c-radio_v3-l"):
            when present it must be the name's release (the tensors of v2.5 and v3 have the same shapes).
  torch-hub the v2.5 release files of huggingface.co/nvidia/RADIO (``radio-v2.5-b_half.pth.tar``,
            ``radio-v2.5-l_half.pth.tar``, ``radio_v2.5-h.pth.tar``) that NVlabs/RADIO's hubconf.py loads:
            a pickle of ``{"args": argparse.Namespace, "state_dict"[_ema]: {"base_model.*", "input_conditioner.*",
            "_heads.*", "_feature_projections.*", ...}}``. Read with ``weights_only`` allowing only
            ``argparse.Namespace``; ``base_model.X`` is NVIDIA's ``radio_model.model.X`` and goes through
            the same converter; teacher heads are dropped. Accepted for the v2.5 names only.
  timm      ``model.safetensors`` of timm/naflexvit_*_patch16_radio_*.c_radio (timm's NaFlexVit keys,
            ``embeds.*``, 128x128 table), loaded as is.
  The classic timm files (timm/vit_*_patch16_radio_*.c_radio) hold a 32x32 table already resampled
  for 512 px; they are refused with a message (RADIO's table at other sizes cannot be recovered).

Preprocessing: [0, 1] -> centre zero-padding to a multiple of 16 -> Normalize with the file's input
conditioner (CLIP's mean/std in every release; timm's pretrained cfg) or CLIP's when the file has none.
Features: the last block's patch tokens (RADIO has no final norm in timm: ``final_norm=False``), the
CLS token and the registers (7 for v2.5 and v3, 9 for v4) dropped, (width, ceil(H/16), ceil(W/16)).

Tiny models (tests): ``TINY`` overrides depth/width of the same timm class, the 128x128 table kept.
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from bench.backbones.siglip import TimmGridBackbone
from bench.weights import read_checkpoint, save_state_dict, state_dict_diff

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # timm's OPENAI_CLIP_MEAN / _STD, RADIO's input conditioner
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RadioRow(NamedTuple):
    timm_arch: str  # timm NaFlexVit model name
    embed_dim: int
    nvidia: str     # the original release (Hugging Face repo, file model.safetensors)
    release: str    # NVIDIA's version string (config.json "version", hubconf version)
    hub_file: str = ""                  # v2.5: the torch-hub release file on huggingface.co/nvidia/RADIO
    align_corners: bool | None = None   # None: timm's arch default


RADIO_BACKBONES = {
    "radio_v25_vitb16": RadioRow("naflexvit_base_patch16_radio_v3", 768, "nvidia/RADIO-B", "radio_v2.5-b",
                                 "radio-v2.5-b_half.pth.tar", True),
    "radio_v25_vitl16": RadioRow("naflexvit_large_patch16_radio_v3", 1024, "nvidia/RADIO-L", "radio_v2.5-l",
                                 "radio-v2.5-l_half.pth.tar", True),
    "radio_v25_vith16": RadioRow("naflexvit_huge_patch16_radio_v3", 1280, "nvidia/RADIO-H", "radio_v2.5-h",
                                 "radio_v2.5-h.pth.tar", True),
    "radio_v3_vitb16": RadioRow("naflexvit_base_patch16_radio_v3", 768, "nvidia/C-RADIOv3-B", "c-radio_v3-b"),
    "radio_v3_vitl16": RadioRow("naflexvit_large_patch16_radio_v3", 1024, "nvidia/C-RADIOv3-L", "c-radio_v3-l"),
    "radio_v3_vith16": RadioRow("naflexvit_huge_patch16_radio_v3", 1280, "nvidia/C-RADIOv3-H", "c-radio_v3-h"),
    "radio_v3_vitg16": RadioRow("naflexvit_giant_patch16_radio_v3", 1536, "nvidia/C-RADIOv3-g", "c-radio_v3-g"),
    "radio_v4_so400m16": RadioRow("naflexvit_so400m_patch16_radio_v4", 1152, "nvidia/C-RADIOv4-SO400M",
                                  "c-radio_v4-so400m"),
    "radio_v4_vith16": RadioRow("naflexvit_huge_patch16_radio_v4", 1280, "nvidia/C-RADIOv4-H", "c-radio_v4-h"),
}

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
PATCH = 16
_NVIDIA = "radio_model.model."
_HUB = "base_model."
_HUB_MODELS = {768: "vit_base_patch16_224", 1024: "vit_large_patch16_224", 1280: "vit_huge_patch16_224"}
_V25_TEACHERS = ("clip", "siglip", "dino_v2", "sam")  # RADIOv2.5-B/L (NVlabs/RADIO README); H adds "florence2"


def _spec(name: str) -> RadioRow:
    if name not in RADIO_BACKBONES:
        raise ValueError(f"unknown RADIO backbone '{name}'; valid names: {sorted(RADIO_BACKBONES)}")
    return RADIO_BACKBONES[name]


def official(name: str) -> str:
    row = _spec(name)
    if row.hub_file:
        return (f"the official file is model.safetensors (with its config.json) of https://huggingface.co/"
                f"{row.nvidia} or the torch-hub file https://huggingface.co/nvidia/RADIO/resolve/main/{row.hub_file} "
                f"(NVIDIA's releases)")
    return (f"the official file is model.safetensors of https://huggingface.co/{row.nvidia} (NVIDIA's release) "
            f"or of https://huggingface.co/timm/{row.timm_arch}.c_radio (timm's conversion)")


def create_radio(name: str, tiny: bool = False, layer_scale: bool | None = None):
    """The randomly initialised timm NaFlexVit of ``name`` (TINY if ``tiny``); no download. ``layer_scale``
    (v2.5 rows only, whose files decide it): blocks with LayerScale (``ls1/ls2.gamma``) or without."""
    import timm  # here, not at import

    row = _spec(name)
    kwargs = dict(TINY) if tiny else {}
    if row.align_corners is not None:
        kwargs["pos_embed_align_corners"] = row.align_corners
    if row.hub_file and layer_scale:
        kwargs["init_values"] = 1e-5
    model = timm.create_model(row.timm_arch, pretrained=False, num_classes=0, **kwargs)
    if row.hub_file and layer_scale is False:  # timm.create_model drops init_values=None
        for block in model.blocks:
            block.ls1, block.ls2 = torch.nn.Identity(), torch.nn.Identity()
    return model


def _read(path: Path) -> tuple[dict[str, torch.Tensor], argparse.Namespace | None]:
    """(state dict, torch-hub ``args`` or None) of a local file in any layout of the module docstring."""
    if path.suffix == ".safetensors":
        return read_checkpoint(path), None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the torch-hub files pickle their args
            obj = read_checkpoint(path)
    except ValueError as error:
        raise ValueError(f"{error} — a torch-hub RADIO file pickles only argparse.Namespace besides tensors; if "
                         f"this one needs more, re-save its 'state_dict' alone from a trusted copy, or use "
                         f"model.safetensors of the Hugging Face repo") from error
    args = obj.get("args") if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace) else None
    for wrapper in ("state_dict_ema", "state_dict", "model"):  # hubconf.py prefers the EMA weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj, args


def _hub_facts(args: argparse.Namespace | None) -> str:
    if args is None:
        return "no args"
    teachers = [t.get("name") for t in getattr(args, "teachers", []) or []]
    return (f"args.model {getattr(args, 'model', None)}, teachers {teachers}, register_multiple "
            f"{getattr(args, 'register_multiple', None)}, cpe_max_size {getattr(args, 'cpe_max_size', None)}")


def _release(path: Path) -> str | None:
    """The ``version`` of the Hugging Face repo's config.json beside ``path``, if there is one."""
    config = path.with_name("config.json")
    if path.suffix != ".safetensors" or not config.is_file():
        return None
    try:
        version = json.loads(config.read_text()).get("version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def to_timm_keys(state: dict[str, torch.Tensor], model) -> tuple[dict[str, torch.Tensor], str]:
    """(NaFlexVit state dict, the layout it came in) through timm's own RADIO converter; the torch-hub
    layout's ``base_model.*`` is NVIDIA's ``radio_model.model.*`` (NVlabs/RADIO hubconf.py)."""
    from timm.models.naflexvit import checkpoint_filter_fn

    if f"{_HUB}patch_generator.embedder.weight" in state:
        fmt = "NVIDIA's torch-hub layout (args + state_dict, base_model.*)"
        state = {_NVIDIA + k[len(_HUB):]: v for k, v in state.items() if k.startswith(_HUB)}
    else:
        fmt = ("NVIDIA's RADIO layout" if f"{_NVIDIA}patch_generator.embedder.weight" in state
               else "timm's NaFlexVit layout" if "embeds.proj.weight" in state
               else "timm's classic ViT layout" if "patch_embed.proj.weight" in state else "an unknown layout")
    return checkpoint_filter_fn(dict(state), model), fmt


def _facts(shapes: dict[str, tuple]) -> str:
    proj = shapes.get("embeds.proj.weight")
    if proj is None:
        return "no RADIO/ViT patch embedding"
    depth = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    pos = shapes.get("embeds.pos_embed")
    return (f"width {proj[0]}, {depth} blocks, {shapes.get('embeds.reg_token', (0, 0))[1]} registers, "
            f"{'x'.join(map(str, pos[1:3])) if pos else 'no'} position table")


def _conditioner(state: dict[str, torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The file's input conditioner (mean, std), CLIP's when it has none."""
    for prefix in ("radio_model.input_conditioner.", "input_conditioner."):  # Hugging Face / torch-hub
        if f"{prefix}norm_mean" in state:
            return (tuple(state[f"{prefix}norm_mean"].float().flatten().tolist()),
                    tuple(state[f"{prefix}norm_std"].float().flatten().tolist()))
    return CLIP_MEAN, CLIP_STD


def load_radio_backbone(name: str, checkpoint: str | Path, device: str = "cpu", tiny: bool | None = None,
                        dtype: str = "fp32") -> TimmGridBackbone:
    """The frozen RADIO backbone ``name`` (a key of RADIO_BACKBONES) from a local file in NVIDIA's, NVIDIA's
    torch-hub or timm's layout (module docstring). ``tiny``: the TINY variant; None infers it from the file."""
    row = _spec(name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — {official(name)} (or make a random tiny "
                                f"one with bench.backbones.radio.save_random_checkpoint('{name}', path))")
    state, args = _read(path)
    release = _release(path)
    mean, std = _conditioner(state)
    with torch.device("meta"):
        shell = create_radio(name, tiny=False)
    state, fmt = to_timm_keys(state, shell)
    if fmt.startswith("NVIDIA's torch-hub") and not row.hub_file:
        raise ValueError(f"checkpoint {path} holds {fmt} ({_hub_facts(args)}), the release format of RADIOv2.5; "
                         f"{name} loads {official(name).removeprefix('the official file is ')}")
    if any(".parametrizations." in k for k in state):
        raise ValueError(f"checkpoint {path} holds spectral-reparametrised weights (args.spectral_reparam, "
                         f"'*.parametrizations.weight.original'), which timm's ViT cannot hold — load it once with "
                         f"NVlabs/RADIO's hubconf.py and save its model's state dict, or use {official(name)}")
    given = {k: tuple(v.shape) for k, v in state.items()}
    layer_scale = any(".ls1." in k for k in given)
    if tiny is None:
        proj = given.get("embeds.proj.weight", (0,))
        tiny = proj[0] == TINY["embed_dim"] and sum(k.endswith("norm1.weight") for k in given) == TINY["depth"]
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_radio(name, tiny, layer_scale).state_dict().items()}
    if given != expected:
        want = f"tiny {name} (TINY={TINY})" if tiny else name
        hint = (" The classic timm file (vit_*_radio_*) holds the table cut to 32x32 for 512 px; use the NaFlexVit "
                "or NVIDIA file." if given.get("embeds.pos_embed", (0, 128))[1] != 128 else "")
        held = f"{fmt} ({_hub_facts(args)})" if args is not None else fmt
        version = f" ({release} per its config.json)" if release else ""
        raise ValueError(f"checkpoint {path} does not fit {want}, which needs {_facts(expected)}; the file holds "
                         f"{held}: {_facts(given)}{version}. Keys after timm's conversion: "
                         f"{state_dict_diff(expected, given, limit=4)}.{hint} — {official(name)}")
    if release is not None and release != row.release:  # v2.5 and v3 files of one width have equal shapes
        raise ValueError(f"checkpoint {path} is NVIDIA's {release} (the version in its config.json): {_facts(given)}, "
                         f"but {name} is {row.release} — {official(name)}")
    model = create_radio(name, tiny, layer_scale)
    model.load_state_dict(state, strict=True)
    return TimmGridBackbone(model, mean, std, device=device, dtype=dtype, name=f"tiny {name}" if tiny else name)


def to_nvidia_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A NaFlexVit RADIO state dict -> NVIDIA's Hugging Face layout (the inverse of timm's converter, which
    needs a zero patch bias), with CLIP's input conditioner and summary indices as the releases have."""
    weight = state["embeds.proj.weight"]  # (d, p*p*3), NaFlexVit's (ph, pw, C) order
    if state["embeds.proj.bias"].abs().max() > 0:
        raise ValueError("RADIO's patch embedding has no bias; a nonzero embeds.proj.bias cannot be written")
    dim, p = weight.shape[0], round((weight.shape[1] // 3) ** 0.5)
    out = {
        f"{_NVIDIA}patch_generator.embedder.weight": weight.reshape(dim, p, p, 3).permute(0, 3, 1, 2).reshape(dim, -1),
        f"{_NVIDIA}patch_generator.pos_embed": state["embeds.pos_embed"].reshape(1, -1, dim),
        f"{_NVIDIA}patch_generator.cls_token.token": torch.cat([state["embeds.cls_token"][0],
                                                                state["embeds.reg_token"][0]]),
        "radio_model.input_conditioner.norm_mean": torch.tensor(CLIP_MEAN).view(3, 1, 1),
        "radio_model.input_conditioner.norm_std": torch.tensor(CLIP_STD).view(3, 1, 1),
        "radio_model.summary_idxs": torch.tensor([0, 1, 2]),
    }
    out |= {_NVIDIA + k.replace(".gamma", ".grandma"): v for k, v in state.items() if k.startswith("blocks.")}
    return {k: v.contiguous() for k, v in out.items()}


def to_hub_checkpoint(state: dict[str, torch.Tensor], name: str) -> dict:
    """A NaFlexVit RADIO state dict -> NVIDIA's torch-hub file content for the v2.5 row ``name``:
    ``{"args", "state_dict"}`` with ``base_model.*`` (layer scale as ``.gamma``), the conditioner and a
    teacher head, as NVlabs/RADIO's hubconf.py reads them."""
    nvidia = to_nvidia_keys(state)
    inner = {_HUB + k[len(_NVIDIA):].replace(".grandma", ".gamma"): v
             for k, v in nvidia.items() if k.startswith(_NVIDIA)}
    inner |= {"input_conditioner.norm_mean": nvidia["radio_model.input_conditioner.norm_mean"],
              "input_conditioner.norm_std": nvidia["radio_model.input_conditioner.norm_std"],
              "_heads.0.weight": torch.zeros(4, state["embeds.proj.weight"].shape[0])}  # dropped on load
    args = argparse.Namespace(model=_HUB_MODELS.get(_spec(name).embed_dim), cpe_max_size=2048, register_multiple=8,
                              cls_token_per_teacher=True, spectral_reparam=False, model_norm=False,
                              teachers=[{"name": t, "use_summary": t not in ("sam", "florence2")} for t in
                                        _V25_TEACHERS + (("florence2",) if name.endswith("vith16") else ())])
    return {"args": args, "state_dict": inner}


def save_random_checkpoint(name: str, path: str | Path, layout: str = "nvidia", seed: int = 0) -> Path:
    """A random tiny ``name`` in ``layout`` "nvidia" | "timm" (``.safetensors``) | "torchhub" (v2.5 names,
    ``.pth.tar``) at ``path`` (module docstring); an NVIDIA ``model.safetensors`` gets the Hugging Face repo's
    ``config.json`` (its ``version``) beside it. Position table std 0.5, layer-scale gammas in [0.1, 0.5]
    (v2.5: no layer scale), norms randomised, patch bias zero (RADIO has none). Same seed, same weights
    in every layout; global RNG untouched."""
    row = _spec(name)
    if layout not in ("nvidia", "timm", "torchhub"):
        raise ValueError(f"unknown layout '{layout}'; valid: 'nvidia', 'timm', 'torchhub'")
    path = Path(path)
    if layout == "torchhub" and (not row.hub_file or not path.name.endswith(".pth.tar")):
        raise ValueError(f"{path}: the torch-hub layout is RADIOv2.5's .pth.tar ({name} has none or the name "
                         f"does not end in .pth.tar)")
    if layout != "torchhub" and path.suffix != ".safetensors":
        raise ValueError(f"{path}: RADIO files are safetensors (model.safetensors)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_radio(name, tiny=True, layer_scale=False if row.hub_file else None)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if key.endswith(".gamma"):
                    param.copy_(0.1 + 0.4 * torch.rand_like(param))
                elif param.ndim == 1:
                    param.add_(0.1 * torch.randn_like(param))
            model.embeds.proj.bias.zero_()
            model.embeds.pos_embed.normal_(0, 0.5)
            model.embeds.cls_token.normal_(0, 0.5)
            model.embeds.reg_token.normal_(0, 0.5)
        state = model.state_dict()
    if layout == "torchhub":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(to_hub_checkpoint(state, name), path)
        return path
    if layout == "nvidia":
        state = to_nvidia_keys(state)
        if path.name == "model.safetensors":  # a Hugging Face repo folder: its config.json names the release
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name("config.json").write_text(json.dumps({"version": row.release, "patch_size": PATCH,
                                                                 "max_resolution": 2048}))
    return save_state_dict(state, path)


RADIO_FAMILY = {name: partial(load_radio_backbone, name) for name in RADIO_BACKBONES}
