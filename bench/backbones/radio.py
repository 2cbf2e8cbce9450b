"""RADIO backbones (NVIDIA C-RADIOv3 / C-RADIOv4) through timm's NaFlexVit, dense, at native resolution.

timm 1.0.31 ships RADIO twice: ``vit_*_patch16_radio_v3/v4`` (a classic ``VisionTransformer``
whose 128x128 position table is cut down to a fixed 32x32 grid when the weights load) and
``naflexvit_*_patch16_radio_v3/v4``, which keeps RADIO's whole 128x128 table (2048 px) and its
CPE resize: bilinear, no antialias, to a *square* of the larger grid side, then the top-left
h x w crop — RADIO's own behaviour at every size and aspect ratio. We build the NaFlexVit ones
(``pretrained=False``) so a non-square padded image gets exactly RADIO's positions; the
``align_corners`` of each arch is timm's (True for v3-B and v3-H, as their released code).

Checkpoint layouts (told apart by their keys; nothing is downloaded):
  NVIDIA    the original ``model.safetensors`` of nvidia/C-RADIOv3-B|L|H|g, nvidia/C-RADIOv4-SO400M|H:
            ``radio_model.model.patch_generator.{embedder.weight, pos_embed, cls_token.token}``,
            ``radio_model.model.blocks.*`` (layer scale as ``.grandma``), ``input_conditioner.norm_mean/std``,
            ``summary_idxs``, teacher adaptor heads. Converted by timm's own
            ``naflexvit.checkpoint_filter_fn`` (-> ``vision_transformer._convert_radio``): the bias-free
            patch linear becomes a conv with zero bias, the per-teacher CLS tokens after the first become
            registers; conditioner, summary indices and adaptors are dropped. The conditioner's mean/std,
            when present, are used for preprocessing (they are CLIP's in the released files).
  timm      ``model.safetensors`` of timm/naflexvit_*_patch16_radio_*.c_radio (timm's NaFlexVit keys,
            ``embeds.*``, 128x128 table), loaded as is.
  The classic timm files (timm/vit_*_patch16_radio_*.c_radio) hold a 32x32 table already resampled
  for 512 px; they are refused with a message (RADIO's table at other sizes cannot be recovered).

Preprocessing: [0, 1] -> centre zero-padding to a multiple of 16 -> Normalize with CLIP's mean/std
(timm's pretrained cfg and RADIO's input conditioner). Features: the last block's patch tokens
(RADIO has no final norm in timm: ``final_norm=False``), the CLS token and the registers (7 for
v3, 9 for v4) dropped, (width, ceil(H/16), ceil(W/16)).

Tiny models (tests): ``TINY`` overrides depth/width of the same timm class, the 128x128 table kept.
"""
from __future__ import annotations

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


RADIO_BACKBONES = {
    "radio_v3_vitb16": RadioRow("naflexvit_base_patch16_radio_v3", 768, "nvidia/C-RADIOv3-B"),
    "radio_v3_vitl16": RadioRow("naflexvit_large_patch16_radio_v3", 1024, "nvidia/C-RADIOv3-L"),
    "radio_v3_vith16": RadioRow("naflexvit_huge_patch16_radio_v3", 1280, "nvidia/C-RADIOv3-H"),
    "radio_v3_vitg16": RadioRow("naflexvit_giant_patch16_radio_v3", 1536, "nvidia/C-RADIOv3-g"),
    "radio_v4_so400m16": RadioRow("naflexvit_so400m_patch16_radio_v4", 1152, "nvidia/C-RADIOv4-SO400M"),
    "radio_v4_vith16": RadioRow("naflexvit_huge_patch16_radio_v4", 1280, "nvidia/C-RADIOv4-H"),
}

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
PATCH = 16
_NVIDIA = "radio_model.model."


def _spec(name: str) -> RadioRow:
    if name not in RADIO_BACKBONES:
        raise ValueError(f"unknown RADIO backbone '{name}'; valid names: {sorted(RADIO_BACKBONES)}")
    return RADIO_BACKBONES[name]


def official(name: str) -> str:
    row = _spec(name)
    return (f"the official file is model.safetensors of https://huggingface.co/{row.nvidia} (NVIDIA's release) "
            f"or of https://huggingface.co/timm/{row.timm_arch}.c_radio (timm's conversion)")


def create_radio(name: str, tiny: bool = False):
    """The randomly initialised timm NaFlexVit of ``name`` (TINY if ``tiny``); no download."""
    import timm  # here, not at import

    return timm.create_model(_spec(name).timm_arch, pretrained=False, num_classes=0, **(TINY if tiny else {}))


def to_timm_keys(state: dict[str, torch.Tensor], model) -> tuple[dict[str, torch.Tensor], str]:
    """(NaFlexVit state dict, the layout it came in) through timm's own RADIO converter."""
    from timm.models.naflexvit import checkpoint_filter_fn

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


def load_radio_backbone(name: str, checkpoint: str | Path, device: str = "cpu", tiny: bool | None = None,
                        dtype: str = "fp32") -> TimmGridBackbone:
    """The frozen RADIO backbone ``name`` (a key of RADIO_BACKBONES) from a local file in NVIDIA's or
    timm's layout (module docstring). ``tiny``: the TINY variant; None infers it from the file."""
    _spec(name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — {official(name)} (or make a random tiny "
                                f"one with bench.backbones.radio.save_random_checkpoint('{name}', path))")
    state = read_checkpoint(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    mean, std = CLIP_MEAN, CLIP_STD
    if "input_conditioner.norm_mean" in state:  # the model's own preprocessing
        mean = tuple(state["input_conditioner.norm_mean"].flatten().tolist())
        std = tuple(state["input_conditioner.norm_std"].flatten().tolist())
    with torch.device("meta"):
        shell = create_radio(name, tiny=False)
    state, fmt = to_timm_keys(state, shell)
    given = {k: tuple(v.shape) for k, v in state.items()}
    if tiny is None:
        proj = given.get("embeds.proj.weight", (0,))
        tiny = proj[0] == TINY["embed_dim"] and sum(k.endswith("norm1.weight") for k in given) == TINY["depth"]
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_radio(name, tiny).state_dict().items()}
    if given != expected:
        want = f"tiny {name} (TINY={TINY})" if tiny else name
        hint = (" The classic timm file (vit_*_radio_*) holds the table cut to 32x32 for 512 px; use the NaFlexVit "
                "or NVIDIA file." if given.get("embeds.pos_embed", (0, 128))[1] != 128 else "")
        raise ValueError(f"checkpoint {path} does not fit {want}, which needs {_facts(expected)}; the file holds "
                         f"{fmt}: {_facts(given)}. Keys after timm's conversion: "
                         f"{state_dict_diff(expected, given, limit=4)}.{hint} — {official(name)}")
    model = create_radio(name, tiny)
    model.load_state_dict(state, strict=True)
    return TimmGridBackbone(model, mean, std, device=device, dtype=dtype, name=f"tiny {name}" if tiny else name)


def to_nvidia_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A NaFlexVit RADIO state dict -> NVIDIA's original layout (the inverse of timm's converter, which
    needs a zero patch bias), with CLIP's input conditioner and summary indices as the release has."""
    weight = state["embeds.proj.weight"]  # (d, p*p*3), NaFlexVit's (ph, pw, C) order
    if state["embeds.proj.bias"].abs().max() > 0:
        raise ValueError("RADIO's patch embedding has no bias; a nonzero embeds.proj.bias cannot be written")
    dim, p = weight.shape[0], round((weight.shape[1] // 3) ** 0.5)
    out = {
        f"{_NVIDIA}patch_generator.embedder.weight": weight.reshape(dim, p, p, 3).permute(0, 3, 1, 2).reshape(dim, -1),
        f"{_NVIDIA}patch_generator.pos_embed": state["embeds.pos_embed"].reshape(1, -1, dim),
        f"{_NVIDIA}patch_generator.cls_token.token": torch.cat([state["embeds.cls_token"][0],
                                                                state["embeds.reg_token"][0]]),
        "input_conditioner.norm_mean": torch.tensor(CLIP_MEAN).view(3, 1, 1),
        "input_conditioner.norm_std": torch.tensor(CLIP_STD).view(3, 1, 1),
        "summary_idxs": torch.tensor([0, 1, 2]),
    }
    out |= {_NVIDIA + k.replace(".gamma", ".grandma"): v for k, v in state.items() if k.startswith("blocks.")}
    return {k: v.contiguous() for k, v in out.items()}


def save_random_checkpoint(name: str, path: str | Path, layout: str = "nvidia", seed: int = 0) -> Path:
    """A random tiny ``name`` in ``layout`` "nvidia" | "timm" (module docstring) as ``model.safetensors``
    at ``path``. Position table std 0.5, layer-scale gammas in [0.1, 0.5], norms randomised, patch bias
    zero (RADIO has none). Same seed, same weights; global RNG untouched."""
    if layout not in ("nvidia", "timm"):
        raise ValueError(f"unknown layout '{layout}'; valid: 'nvidia', 'timm'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_radio(name, tiny=True)
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
    if layout == "nvidia":
        state = to_nvidia_keys(state)
    if Path(path).suffix != ".safetensors":
        raise ValueError(f"{path}: RADIO files are safetensors (model.safetensors)")
    return save_state_dict(state, path)


RADIO_FAMILY = {name: partial(load_radio_backbone, name) for name in RADIO_BACKBONES}
