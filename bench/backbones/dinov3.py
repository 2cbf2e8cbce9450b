"""DINOv3 ViT backbones (S/16, S+/16, B/16, L/16, H+/16, 7B/16) from timm's ``Eva`` and a local weights file.

``DINOV3_BACKBONES`` maps each name to timm's architecture (``vit_*_patch16_dinov3``, timm >= 1.0.20),
width, depth, mean/std (timm's pretrained cfg: ImageNet) and the official file; nothing is downloaded.

    backbone = load_dinov3_backbone("dinov3_vitl16", "ckpt/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth")
    grid = backbone.features(image)   # (H, W, 3) uint8 -> (1024, ceil(H/16), ceil(W/16)) float32

Checkpoint formats, told apart by their keys:
  official   facebookresearch/dinov3 ``DinoVisionTransformer.state_dict()`` (torch hub ``dinov3_*``):
             ``cls_token`` (1, 1, d), ``storage_tokens`` (1, 4, d), ``mask_token`` (1, d),
             ``rope_embed.periods`` (d_head/4,), ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2,
             mlp.fc1/fc2 | mlp.w1/w2/w3 (SwiGLU: S+, H+, 7B), ls2.gamma}``, ``norm``; S/S+/B/L/H+ have
             ``attn.qkv.bias`` with a ``bias_mask`` that zeroes the key third, the 7B has no qkv bias and a
             training-only ``local_cls_norm``. Converted by timm's own ``eva.checkpoint_filter_fn`` (qkv bias
             -> q_bias/v_bias, ls -> gamma_1/2, storage -> reg_token, w1/w2/w3 -> fc1_g/fc1_x/fc2; drops
             mask_token, bias_mask, periods, local_cls_norm). A file with a qkv bias is built as timm's
             ``*_dinov3_qkvb`` variant so that its q/v biases are kept whatever their values.
             The official model uses the ``rope_embed.periods`` stored in the file (a persistent buffer; timm
             notes the released files hold them rounded to bfloat16) while timm recomputes them in float32,
             so the file's periods are copied into ``model.rope.periods`` after loading.
  timm       timm / Hugging Face ``model.safetensors`` (``timm/vit_*_patch16_dinov3[_qkvb].lvd1689m``): timm names
             as they are (``head.*`` dropped).
  transformers  ``model.safetensors`` of ``facebook/dinov3-vit*16*-pretrain-lvd1689m`` as transformers'
             ``DINOv3ViTModel.save_pretrained`` writes it (its ``convert_dinov3_vit_to_hf.py`` made them from the
             official files): ``embeddings.{cls_token, register_tokens, mask_token, patch_embeddings}``,
             ``[model.]layer.N.{norm1, attention.{q,k,v,o}_proj, layer_scale1.lambda1, norm2,
             mlp.{up,down}_proj | mlp.{gate,up,down}_proj, layer_scale2.lambda1}``, ``norm``; no key bias (the
             masked third is dropped), no biases at all in the 7B, no RoPE buffer (``inv_freq`` is recomputed).
             Converted here (``transformers_to_timm``): q/k/v concatenated into ``qkv``, q/v biases kept, gate/up/
             down -> fc1_g/fc1_x/fc2 (SwiGLU) or up/down -> fc1/fc2, lambda1 -> gamma_1/2, mask_token dropped.
             The ``config.json`` beside the file is checked when present for what the keys cannot show
             (heads, activation, LayerNorm eps, RoPE base, patch size); widths and depth come from the keys.
             RoPE periods: the file has none, so, like transformers and timm, they are the float32
             100^(2k/(d_head/2)); transformers drops the official file's (bfloat16-rounded) periods when it
             converts, so its model and a transformers file differ from the official ``.pth`` by exactly
             that rounding (5e-4 to 8e-4 relative on the tiny test models; tests/test_backbones_dinov3.py).
Keys and shapes are compared before a strict load, so a file of another backbone is an error saying what
it holds; a patch size other than 16 is refused before timm's converter could resample it.

Patch grid: no position table is interpolated (RoPE). The image is zero centre-padded to a multiple of
16 (pad-before = pad // 2) and normalised (``ViTBackbone.preprocess``), giving h = Hp/16 = ceil(H/16) rows
and w = Wp/16 = ceil(W/16) columns of patch tokens. timm builds the model with ``dynamic_img_size=True``;
``Eva._pos_embed`` then asks the rotary module for exactly that (h, w) grid, as the official
``rope_embed(H=h, W=w)``: patch centres (i + 0.5)/h and (j + 0.5)/w mapped to [-1, 1] separately per axis
("separate" normalisation; training-only coordinate jitter/rescale is off in eval), angles 2*pi*coord/period
with periods 100^(2k/(d_head/2)), applied to queries and keys of the patch tokens only. The class token
and the 4 registers (storage tokens) carry no position and are dropped from the grid. Features are the
patch tokens of ``layers`` after the final LayerNorm (the official ``get_intermediate_layers(norm=True)``),
(d * len(layers), h, w).

Tiny models (tests, smoke runs): ``TINY`` overrides depth/width of the same timm class;
``save_random_checkpoint(name, path)`` writes one in the official layout (``.safetensors``: timm's).
"""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch

from bench.backbones.vit import IMAGENET_MEAN, IMAGENET_STD, ViTBackbone, _read_state_dict, _shapes, to_timm_keys
from bench.weights import save_state_dict, state_dict_diff

if TYPE_CHECKING:
    from timm.models.eva import Eva


class DinoV3Row(NamedTuple):
    arch: str                  # timm model name (with the pretrained tag whose cfg gives mean/std)
    embed_dim: int
    depth: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    file: str                  # the official weights file name (torch hub ``dinov3_*``, LVD-1689M)
    qkvb_arch: str | None      # timm's variant with q/v biases (the official files of S..H+ have them)


PATCH = 16
REGISTERS = 4
# Quoted in error messages only, never fetched. The files are behind Meta's access form.
PUBLISHED = ("https://dl.fbaipublicfiles.com/dinov3/{dir}/{file} (the URL Meta e-mails after the request at "
             "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/), or timm's "
             "https://huggingface.co/timm/{arch} model.safetensors, or transformers' https://huggingface.co/{hub} "
             "model.safetensors (with its config.json)")


def _row(size: str, arch: str, dim: int, depth: int, digest: str, qkvb: bool = True) -> DinoV3Row:
    base = f"vit_{arch}_patch16_dinov3"
    return DinoV3Row(f"{base}.lvd1689m", dim, depth, IMAGENET_MEAN, IMAGENET_STD,
                     f"dinov3_vit{size}_pretrain_lvd1689m-{digest}.pth", f"{base}_qkvb.lvd1689m" if qkvb else None)


DINOV3_BACKBONES = {
    "dinov3_vits16": _row("s16", "small", 384, 12, "08c60483"),
    "dinov3_vits16plus": _row("s16plus", "small_plus", 384, 12, "4057cbaa"),
    "dinov3_vitb16": _row("b16", "base", 768, 12, "73cec8be"),
    "dinov3_vitl16": _row("l16", "large", 1024, 24, "8aa4cbdd"),
    "dinov3_vith16plus": _row("h16plus", "huge_plus", 1280, 32, "7c1da9a5"),
    "dinov3_vit7b16": _row("7b16", "7b", 4096, 40, "a955f4ea", qkvb=False),  # the 7B has no qkv bias
}

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # head dim 24: 6 RoPE periods


def _get(name: str) -> DinoV3Row:
    if name not in DINOV3_BACKBONES:
        raise ValueError(f"unknown DINOv3 backbone '{name}'; valid names: {sorted(DINOV3_BACKBONES)}")
    return DINOV3_BACKBONES[name]


def hub_repo(name: str) -> str:
    """The transformers repository of ``name``: facebook/dinov3-vitl16-pretrain-lvd1689m."""
    return "facebook/" + _get(name).file.split("-")[0].replace("_", "-")


def published(name: str) -> str:
    row = _get(name)
    return PUBLISHED.format(dir=row.file.split("_pretrain")[0], file=row.file, arch=row.arch, hub=hub_repo(name))


def create_dinov3(name: str, tiny: bool = False, qkv_bias: bool = False) -> Eva:
    """The randomly initialised timm Eva of ``name`` (TINY if ``tiny``; timm's ``_qkvb`` variant if ``qkv_bias``)."""
    import timm  # here, not at import: ~2 s that extraction workers never need

    row = _get(name)
    if qkv_bias and row.qkvb_arch is None:
        raise ValueError(f"{name} has no qkv-bias variant in timm")
    return timm.create_model(row.qkvb_arch if qkv_bias else row.arch, pretrained=False, dynamic_img_size=True,
                             num_classes=0, **(TINY if tiny else {}))


# ----------------------------------------------------------------------------------------------
# Checkpoints

def describe(shapes: dict[str, tuple]) -> str:
    """A one-line summary of a timm-keyed ViT state dict from its {key: shape}."""
    proj = shapes.get("patch_embed.proj.weight")
    if proj is None or len(proj) != 4:
        return "no ViT patch embedding (patch_embed.proj.weight)"
    depth = len({m.group(1) for key in shapes if (m := re.match(r"blocks\.(\d+)\.", key))})
    reg = shapes.get("reg_token")
    parts = [f"embed dim {proj[0]} with {depth} blocks, patch {proj[-1]}",
             f"{reg[1]} register tokens" if reg else "no register tokens",
             "a position table" if "pos_embed" in shapes else "no position table"]
    parts += [label for key, label in (("blocks.0.mlp.fc1_g.weight", "SwiGLU MLP"),
                                       ("blocks.0.attn.q_bias", "q/v biases")) if key in shapes]
    return ", ".join(parts)


def _expected(name: str, tiny: bool, qkv_bias: bool) -> dict[str, tuple]:
    with torch.device("meta"):  # shapes only
        return _shapes(create_dinov3(name, tiny, qkv_bias).state_dict())


def _matches(given: dict[str, tuple]) -> list[str]:
    """Backbone names (``tiny <name>``) of DINOv3 and, failing that, of the ViT family with these keys/shapes."""
    found = [f"tiny {name}" if tiny else name for name, row in DINOV3_BACKBONES.items() for tiny in (False, True)
             for qkv_bias in ((False, True) if row.qkvb_arch else (False,)) if _expected(name, tiny, qkv_bias) == given]
    if not found and "pos_embed" in given:
        from bench.backbones.vit import _matching_backbones
        found = _matching_backbones(given)
    return found


def _official_to_timm(state: dict[str, torch.Tensor], qkv_bias: bool, tiny: bool, name: str,
                      path: Path) -> dict[str, torch.Tensor]:
    """Official DINOv3 keys -> timm's, through timm's own converter."""
    from timm.models.eva import checkpoint_filter_fn

    kernel = tuple(state["patch_embed.proj.weight"].shape[-2:]) if "patch_embed.proj.weight" in state else None
    if kernel != (PATCH, PATCH):  # timm's converter would silently resample another patch size
        raise ValueError(f"checkpoint {path} holds official DINOv3 keys with patch embedding kernel {kernel}, "
                         f"but {name} has patch {PATCH}; use the file of {name} ({_get(name).file})")
    for key, mask in state.items():
        if key.endswith(".qkv.bias_mask"):  # the official model multiplies its bias by this; timm assumes 1, 0, 1
            third = len(mask) // 3
            if not (mask[:third].eq(1).all() and mask[third:2 * third].eq(0).all() and mask[2 * third:].eq(1).all()):
                raise ValueError(f"checkpoint {path}: {key} is not (1 for q, 0 for k, 1 for v); timm cannot "
                                 f"represent this qkv bias")
    with torch.device("meta"):
        model = create_dinov3(name, tiny, qkv_bias)
    return checkpoint_filter_fn(dict(state), model)


# transformers' DINOv3ViTModel names -> timm's Eva names, in order (first match wins). transformers >= 5 names
# the blocks ``model.layer.N`` in memory and saves ``layer.N`` (the Hub files' names); both are read.
_BLOCK = r"^(?:model\.)?layer\.(\d+)\."
TRANSFORMERS_TO_TIMM = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.patch_embeddings\.", "patch_embed.proj."),
    (_BLOCK + r"attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (_BLOCK + r"attention\.", r"blocks.\1.attn."),  # q/k/v_proj: concatenated below
    (_BLOCK + r"layer_scale(\d)\.lambda1$", r"blocks.\1.gamma_\2"),
    (_BLOCK + r"mlp\.gate_proj\.", r"blocks.\1.mlp.fc1_g."),
    (_BLOCK + r"mlp\.up_proj\.", r"blocks.\1.mlp.UP."),  # fc1_x (SwiGLU) or fc1
    (_BLOCK + r"mlp\.down_proj\.", r"blocks.\1.mlp.fc2."),
    (_BLOCK, r"blocks.\1."),  # norm1, norm2
]
TRANSFORMERS_DROPPED = ("embeddings.mask_token", "rope_embeddings.")  # pretraining only / recomputed


def is_transformers_layout(state: dict[str, torch.Tensor]) -> bool:
    return "embeddings.patch_embeddings.weight" in state and "embeddings.register_tokens" in state


def transformers_to_timm(state: dict[str, torch.Tensor], path: Path | str = "the file") -> dict[str, torch.Tensor]:
    """transformers ``DINOv3ViTModel`` keys -> timm's (module docstring). Keys it does not know are kept under
    their own names, so the shape check lists them."""
    gated = any(re.search(r"\.mlp\.gate_proj\.", key) for key in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TRANSFORMERS_DROPPED):
            continue
        if key.endswith(".attention.k_proj.bias") and value.any():  # RoPE rotates it: not a softmax no-op
            raise ValueError(f"checkpoint {path}: {key} is not zero; DINOv3 has no key bias (transformers' "
                             f"key_bias=False, the official bias_mask) and timm's Eva cannot represent one")
        for pattern, replacement in TRANSFORMERS_TO_TIMM:
            if re.search(pattern, key):
                key = re.sub(pattern, replacement, key).replace(".UP.", ".fc1_x." if gated else ".fc1.")
                break
        out[key] = value
    for key in [k for k in out if k.endswith(".attn.q_proj.weight")]:
        block = key[:-len("q_proj.weight")]
        parts = [block + f"{p}_proj.weight" for p in "qkv"]
        if all(p in out for p in parts):
            out[block + "qkv.weight"] = torch.cat([out.pop(p) for p in parts])  # (3d, d), timm's q, k, v order
        out.pop(block + "k_proj.bias", None)  # zero (checked above)
        for p in "qv":
            if block + f"{p}_proj.bias" in out:
                out[block + f"{p}_bias"] = out.pop(block + f"{p}_proj.bias")
    return out


def _check_transformers_config(path: Path, name: str, tiny: bool, gated: bool) -> None:
    """Refuse a ``config.json`` beside a transformers file that describes another model than ``name``, in
    what the weights' shapes cannot show. No config.json: nothing to check (the keys give the rest)."""
    config_path = path.with_name("config.json")
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    with torch.device("meta"):
        model = create_dinov3(name, tiny)
    needs = {"model_type": "dinov3_vit", "patch_size": PATCH, "num_attention_heads": model.blocks[0].attn.num_heads,
             "hidden_act": "silu" if gated else "gelu", "layer_norm_eps": model.norm.eps,
             "rope_theta": model.rope.temperature, "num_register_tokens": REGISTERS}
    wrong = [f"{key}={config[key]!r} (needs {value!r})" for key, value in needs.items()
             if key in config and config[key] != value]
    if wrong:
        raise ValueError(f"{config_path} (beside {path.name}) describes another model than "
                         f"{f'tiny {name}' if tiny else name}: {', '.join(wrong)}. Use the files of "
                         f"{hub_repo(name)} or remove the config.json that does not belong to these weights")


def load_dinov3_backbone(name: str, checkpoint: str | Path, layers: Sequence[int] | None = None,
                         add_pos_embed: bool = False, device: str = "cpu", tiny: bool | None = None,
                         dtype: str = "fp32", pad_after_normalize: bool = False) -> ViTBackbone:
    """The frozen DINOv3 backbone ``name`` (a key of DINOV3_BACKBONES) with weights from a local file.

    ``checkpoint``: the official ``.pth``, timm's or transformers' ``model.safetensors`` (module docstring).
    ``tiny``: build the TINY variant; None infers it from the file (its width and depth equal TINY's).
    ``add_pos_embed`` is refused (RoPE: no table). Other arguments: see ``ViTBackbone``."""
    row = _get(name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — the official file is {row.file}, from "
                                f"{published(name)} (or make a random tiny one with "
                                f"bench.backbones.dinov3.save_random_checkpoint('{name}', path))")
    raw = _read_state_dict(path)
    transformers = is_transformers_layout(raw)
    if transformers:
        raw = transformers_to_timm(raw, path)
    proj = raw.get("patch_embed.proj.weight")
    width = proj.shape[0] if proj is not None else None
    depth = len({m.group(1) for key in raw if (m := re.match(r"blocks\.(\d+)\.", key))})
    if tiny is None:
        tiny = (width, depth) == (TINY["embed_dim"], TINY["depth"])
    periods = None
    if "storage_tokens" in raw:
        fmt = "official DINOv3 keys"
        qkv_bias = "blocks.0.attn.qkv.bias" in raw and row.qkvb_arch is not None
        if "blocks.0.attn.qkv.bias" in raw and not qkv_bias:
            raise ValueError(f"checkpoint {path} has a qkv bias, but {name} (timm {row.arch}) has none: "
                             f"it is not the file of {name} ({row.file})")
        state = _official_to_timm(raw, qkv_bias, tiny, name, path)
        periods = raw.get("rope_embed.periods")
    elif transformers:
        state, fmt = raw, "transformers DINOv3ViTModel keys"
        qkv_bias = "blocks.0.attn.q_bias" in state and row.qkvb_arch is not None
    else:
        state, fmt = to_timm_keys(raw)  # timm keys (or an official DINOv2 file, named in the error below)
        if fmt == "timm keys" and any(key.startswith("embeddings.") for key in state):
            fmt = "the keys of another transformers model (not DINOv3ViTModel)"
        qkv_bias = "blocks.0.attn.q_bias" in state and row.qkvb_arch is not None
    given = _shapes(state)
    expected = _expected(name, tiny, qkv_bias)
    if given != expected:
        matches = _matches(given)
        verdict = f"this is {' / '.join(matches)}" if matches else "no DINOv3 backbone has this layout"
        raise ValueError(
            f"checkpoint {path} does not fit backbone {f'tiny {name} (TINY={TINY})' if tiny else name}, which "
            f"needs {describe(expected)}. The file holds {fmt}: {describe(given)} — {verdict}. "
            f"Keys: {state_dict_diff(expected, given, limit=4)}. Use the file of {name} (official: {row.file})")
    if transformers:  # after the shapes, which name a wrong file best
        _check_transformers_config(path, name, tiny, gated="blocks.0.mlp.fc1_g.weight" in state)
    model = create_dinov3(name, tiny, qkv_bias)
    model.load_state_dict(state, strict=True)
    if periods is not None:
        if periods.shape != model.rope.periods.shape:
            raise ValueError(f"checkpoint {path}: rope_embed.periods has shape {tuple(periods.shape)}, "
                             f"{name} needs {tuple(model.rope.periods.shape)}")
        with torch.no_grad():
            model.rope.periods.copy_(periods.float())  # the official model runs on the stored periods
    return ViTBackbone(model, row.mean, row.std, layers=layers, add_pos_embed=add_pos_embed,
                       pad_after_normalize=pad_after_normalize, pos_interp="rope", device=device, dtype=dtype,
                       name=f"tiny {name}" if tiny else name)


def random_dinov3(name: str, tiny: bool = True, qkv_bias: bool = False) -> Eva:
    """The timm model of ``name`` with random weights from the global RNG: layer-scale gammas in [0.1, 0.5]
    (timm inits 1e-5, which would make every block almost the identity), every vector (norms, biases,
    q/v biases) and the class/register tokens shifted by N(0, 0.02²) so that none is a no-op, and qkv weights
    of std 2/sqrt(width) (timm's 0.02 gives almost uniform attention, where RoPE would hardly matter)."""
    model = create_dinov3(name, tiny, qkv_bias)
    with torch.no_grad():
        for key, value in model.state_dict().items():  # state_dict order: the file's RNG order
            if key.endswith((".gamma_1", ".gamma_2")):
                value.copy_(0.1 + 0.4 * torch.rand_like(value))
            elif key.endswith(".attn.qkv.weight"):
                value.normal_(0, 2 / value.shape[1] ** 0.5)
            elif value.ndim == 1 or key in ("cls_token", "reg_token"):
                value.add_(torch.randn_like(value) * 0.02)
    return model


def to_official_keys(state: dict[str, torch.Tensor], num_heads: int, seven_b: bool = False) -> dict[str, torch.Tensor]:
    """A timm-keyed DINOv3 state dict -> the official layout: the inverse of timm's ``checkpoint_filter_fn``,
    plus what that converter drops (``mask_token``, ``bias_mask``, ``rope_embed.periods`` rounded to bfloat16
    as timm says the released files hold them, the 7B's ``local_cls_norm``). The key third of
    ``qkv.bias`` is random: ``bias_mask`` zeroes it, so a loader that ignored the mask would be caught."""
    swiglu = "blocks.0.mlp.fc1_g.weight" in state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".attn.q_bias"):
            v_bias = state[key.replace("q_bias", "v_bias")]
            k_bias = torch.randn_like(value)  # masked out
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, k_bias, v_bias])
            out[key.replace("q_bias", "qkv.bias_mask")] = torch.cat(
                [torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)])
            continue
        if key.endswith(".attn.v_bias"):
            continue
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if swiglu:
            key = re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", re.sub(r"\.mlp\.fc1_x\.", ".mlp.w2.",
                                                               re.sub(r"\.mlp\.fc1_g\.", ".mlp.w1.", key)))
        out[key] = value
    dim = state["cls_token"].shape[-1]
    head = dim // num_heads
    out["mask_token"] = torch.zeros(1, dim)
    periods = 100.0 ** (2 * torch.arange(head // 4, dtype=torch.float32) / (head // 2))
    out["rope_embed.periods"] = periods.to(torch.bfloat16)
    if seven_b:
        out["local_cls_norm.weight"], out["local_cls_norm.bias"] = torch.ones(dim), torch.zeros(dim)
    return out


def save_random_checkpoint(name: str, path: str | Path, tiny: bool = True, seed: int = 0,
                           official: bool | None = None) -> Path:
    """Write a random-weight ``name`` (TINY if ``tiny``): the official layout (torch.save) unless
    ``official`` is False or, by default, the path ends in ``.safetensors`` (timm's layout, timm's default
    arch without q/v biases). The same seed gives the same file; the global RNG is untouched."""
    path = Path(path)
    official = path.suffix != ".safetensors" if official is None else official
    row = _get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = random_dinov3(name, tiny, qkv_bias=official and row.qkvb_arch is not None)
        state = model.state_dict()
        if official:
            state = to_official_keys(state, model.blocks[0].attn.num_heads, seven_b=name == "dinov3_vit7b16")
    return save_state_dict(state, path)


DINOV3_FAMILY = {name: partial(load_dinov3_backbone, name) for name in DINOV3_BACKBONES}
