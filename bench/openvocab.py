"""Open-vocabulary queries on region vectors of text-aligned backbones (CLIP family, SigLIP 2, dino.txt).

Region vectors must be in the joint image-text space: ``clip_vitb32`` with ``project=True``
(512-d), ``maskclip_vitl14`` (projects by default, 768-d), ``siglip2_*`` with ``project=True``
(its head's output per token, below). The text tower comes from the same local file as the visual
tower (nothing is downloaded). CLIP's tokenizer is open_clip's
``SimpleTokenizer``, whose BPE vocabulary ships inside the open_clip package; SigLIP 2's is the
Gemma tokenizer read by ``transformers.AutoTokenizer`` from the files beside the checkpoint (as the
timm/ViT-*-SigLIP2-* repositories publish them), so ``load_tokenizer`` needs the checkpoint path.
dino.txt (``dinotxt_vitl16``, ``bench.backbones.dinotxt``): its text encoder is in its head file (the
``checkpoint``), its tokenizer CLIP's BPE read from ``bpe_simple_vocab_16e6.txt.gz`` beside that file;
region vectors pool the vision head's patch tokens, which pair with the second half of its 2048-d text
embedding, so the text tower here gives that half.

    tower = load_text_tower("maskclip_vitl14", "weights/ViT-L-14-336px.pt")
    text = class_text_embeddings(tower, load_tokenizer("maskclip_vitl14"), VOC_NAMES, TEMPLATES)  # (C, D)
    labels = zero_shot_labels(region_feats, text, background="class")                            # (R,)

SigLIP 2 (``siglip2_*``): ``load_text_tower`` and ``load_tokenizer(name, checkpoint)`` give its text
embeddings (open_clip's ``encode_text``), comparable with the image embedding
``SiglipBackbone.global_feature``. Its default region vectors pool the trunk's patch tokens, which
SigLIP maps into the joint space only through the attention-pool head (one learned query attending
over all tokens, then proj + MLP: one vector per image; neither open_clip, ``timm_proj='none'``, nor
timm offers a per-token path), so ``check_region_space`` refuses them instead of ranking by
meaningless cosines (the dimensions would agree, 768 = 768 for ViT-B, so nothing else would catch
it). With ``backbone.params.<name>.project=true`` the grid is each patch token through that head
alone (``bench.backbones.siglip``: proj of the value half of the head's ``kv``, plus its MLP
residual; exactly the head's output for a one-token image), which is in the joint space and is
accepted; it is a MaskCLIP-style approximation, not a per-patch output SigLIP was trained for.

Prompt ensembling is CLIP's zero-shot notebook: every template filled with the class name is
embedded and L2-normalised, the embeddings are averaged, and the mean is L2-normalised again.

Background (VOC's class 0), ``zero_shot_labels(background=...)``:
  "class"      (default) text row 0 is a background class with its own prompts, e.g. the class
               name "background" through the templates; a region takes the argmax over all rows.
  "threshold"  text rows are the foreground classes 1..K only; a region takes 1 + argmax, or 0
               when its best probability softmax(logit_scale * cosine) is below ``threshold``.
  None         no background: the argmax over all rows (datasets without a background class).
With "class", a ``threshold`` may be given as well, which sends low-confidence regions to 0 too.

Why "class" is the default: the training-free CLIP segmentation codes for VOC21 all give
background its own text query and argmax over it — ClearCLIP (mc-lan/ClearCLIP,
configs/cls_voc21.txt: the single word "background"), SCLIP (wangf3014/SCLIP) and NACLIP
(sinahmr/NACLIP; configs/cls_voc21.txt of SCLIP: a list of stuff words "sky, wall, tree, ...",
max over the words) — and needs no tuned number. Those codes then also zero pixels whose best
softmax(logit_scale * cosine) probability is below ``prob_thd``: 0.1 in SCLIP's and NACLIP's
configs/cfg_voc21.py (logit_scale 65 in SCLIP's, NACLIP's default 40), 0.5 in ClearCLIP's
(logit_scale 50). A threshold alone depends on the logit scale, the number of classes and the
backbone, so it is offered, not the default. (Read from the repositories' code and configs;
the papers' text was not checked. Several words per class, as SCLIP's background list, is not
implemented here: pass one name per class.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
             "text_projection")


def __getattr__(name: str):
    """``TEMPLATES`` (OpenAI's 80 ImageNet prompt templates) and ``SIMPLE_TEMPLATES`` (its 7-template
    subset), both open_clip's own lists of ``str -> str`` functions; read lazily so that importing this
    module does not import open_clip."""
    if name in ("TEMPLATES", "SIMPLE_TEMPLATES"):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
        return OPENAI_IMAGENET_TEMPLATES if name == "TEMPLATES" else SIMPLE_IMAGENET_TEMPLATES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TEMPLATE_SETS = ("none", "simple", "imagenet")  # the text as given | open_clip's 7 | its 80 ImageNet templates


def prompt_templates(name: str) -> list:
    """The prompt templates (``str -> str``) a ``templates=`` choice names (``TEMPLATE_SETS``)."""
    if name not in TEMPLATE_SETS:
        raise ValueError(f"templates={name!r} is unknown; valid: {', '.join(TEMPLATE_SETS)}")
    if name == "none":
        return [str]  # the identity: the text as given
    return __getattr__("SIMPLE_TEMPLATES" if name == "simple" else "TEMPLATES")


# ----------------------------------------------------------------------------------------------
# Text tower and tokenizer

DINOTXT = "dinotxt_vitl16"


def _check_text_backbone(name: str) -> None:
    from bench.backbones.clip import CLIP_BACKBONES  # imports open_clip
    from bench.backbones.siglip import SIGLIP_BACKBONES

    if name not in CLIP_BACKBONES and name not in SIGLIP_BACKBONES and name != DINOTXT:
        raise ValueError(f"no text tower for backbone '{name}'; text-aligned backbones: "
                         f"{sorted(CLIP_BACKBONES) + sorted(SIGLIP_BACKBONES) + [DINOTXT]}")


def check_region_space(name: str, project: bool | None = None) -> None:
    """Refuse region vectors of backbone ``name`` (with its ``project`` option) that text cannot be
    compared with: SigLIP 2's and CLIP's without ``project`` (the trunk's patch tokens / the tokens
    before CLIP's ``proj``, the paper's features; see the module docstring)."""
    if name.startswith(("clip_", "maskclip_")):
        from bench.backbones.clip import projects

        if not projects(name, project):
            raise ValueError(f"{name} region vectors without project=true are the tokens before CLIP's proj (the "
                             "paper's features), not in the image-text space text is embedded in: extract "
                             f"them with backbone.params.{name}.project=true")
    if name.startswith("siglip2") and not project:
        raise ValueError(
            f"{name} region vectors without project=true pool SigLIP 2's trunk patch tokens, which are not in its "
            "image-text space: SigLIP reaches that space only through its attention-pool head (trunk.attn_pool: "
            "one learned query over all tokens, then proj + MLP), which gives one vector per image "
            "(SiglipBackbone.global_feature). Cosines between those tokens and text embeddings would be "
            "meaningless (the dimensions agree by coincidence). Extract them with "
            f"backbone.params.{name}.project=true (each patch token through the head alone, MaskCLIP-style), "
            "or use maskclip_vitl14, maskclip_vitb16, or clip_vitb32 / clip_vitb16 with project=true")


def backbone_text_embeddings(name: str, params: dict, texts: Sequence[str], templates: str) -> torch.Tensor:
    """(T, D) prompt-ensembled embeddings of ``texts`` (``templates``: a ``TEMPLATE_SETS`` name) by the
    text tower of backbone ``name`` configured with ``params`` (``backbone.params.<name>``: its
    checkpoint, ``project``, ``device``), for comparison with its region vectors. Refuses, before
    loading anything, region vectors outside the image-text space and a backbone without a text tower."""
    chosen = prompt_templates(templates)
    check_region_space(name, params.get("project"))
    tokenizer = load_tokenizer(name, params.get("checkpoint"))  # also the check that ``name`` has a text tower
    tower = load_text_tower(name, params["checkpoint"], device=params.get("device", "cpu"))
    return class_text_embeddings(tower, tokenizer, texts, chosen)


class TextTower:
    """A frozen open_clip ``TextTransformer`` (CLIP's or SigLIP 2's); build with ``load_text_tower``.

    ``encode_text``: (N, context_length) int64 token ids -> (N, embed_dim) float32 on the CPU, the
    model's own pooled token (CLIP: end of text; SigLIP 2: the last position) projected, not
    normalised (as open_clip's ``encode_text``)."""

    def __init__(self, text: torch.nn.Module):
        self.text = text
        self.device = text.token_embedding.weight.device
        self.context_length = text.context_length
        self.embed_dim = text.output_dim

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens.to(self.device)).float().cpu()


def load_text_tower(name: str, checkpoint: str | Path, device: str = "cpu") -> TextTower:
    """The text tower of backbone ``name`` from the same local file as its visual tower.

    CLIP (a key of CLIP_BACKBONES): OpenAI's TorchScript archive or any state dict
    ``read_clip_state_dict`` takes. The file's visual tower must be the published architecture of
    ``name`` or its tiny test one (so a ViT-B/32 file is refused for maskclip_vitl14); the text
    architecture is read from the file (heads = width // 64, QuickGELU, causal mask, end-of-text
    pooling: OpenAI's).
    SigLIP 2 (a key of SIGLIP_BACKBONES): open_clip's ``open_clip_model.safetensors`` /
    ``open_clip_pytorch_model.bin``; ``text.*`` is loaded strictly into open_clip's text tower of
    that model's config (or of its tiny test version, ``siglip.tiny_text_cfg``).
    dino.txt: its head-and-text-encoder file; the tower gives the half of the text embedding that pairs
    with patch tokens (``bench.backbones.dinotxt.DinoTxtTextTower``, ``part="patch"``)."""
    _check_text_backbone(name)
    if name.startswith("siglip2"):
        return _load_siglip_text_tower(name, checkpoint, device)
    if name == DINOTXT:
        from bench.backbones import dinotxt

        return dinotxt.load_text_tower(checkpoint, part="patch", device=device)
    from open_clip.transformer import QuickGELU, TextTransformer

    from bench.backbones.clip import (CLIP_BACKBONES, existing_checkpoint, published_arch, read_clip_state_dict,
                                      tiny_arch, visual_arch)

    spec = CLIP_BACKBONES[name]
    path = existing_checkpoint(name, checkpoint)
    official = f"the official file is {spec.file}, published at {spec.url}"
    state = read_clip_state_dict(path)
    found = visual_arch({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
    published = published_arch(name)
    if found not in (published, tiny_arch(spec.patch_size)):
        holds = found.describe() if found else "no CLIP ViT visual tower"
        raise ValueError(f"checkpoint {path.name} holds {holds}, but {name} needs {published.describe()} — {official}")
    missing = [k for k in TEXT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path.name} has no text tower (missing {missing}) — {official}")
    text_state = {k: v for k, v in state.items()
                  if k in TEXT_KEYS or k.startswith("transformer.resblocks.")}
    width = text_state["ln_final.weight"].shape[0]
    text = TextTransformer(
        context_length=text_state["positional_embedding"].shape[0],
        vocab_size=text_state["token_embedding.weight"].shape[0],
        width=width, heads=width // 64,
        layers=len({k.split(".")[2] for k in text_state if k.startswith("transformer.resblocks.")}),
        output_dim=text_state["text_projection"].shape[1], act_layer=QuickGELU)
    text.load_state_dict(text_state, strict=True)
    return TextTower(text.to(device).eval().requires_grad_(False))


def _siglip_text_cfgs(name: str) -> dict[str, tuple[int, dict]]:
    """{"published" | "tiny": (embed_dim, open_clip text_cfg)} of SigLIP 2 backbone ``name``."""
    import open_clip

    from bench.backbones.siglip import SIGLIP_BACKBONES, TINY, tiny_text_cfg

    cfg = open_clip.get_model_config(SIGLIP_BACKBONES[name].open_clip_model)
    text = {k: v for k, v in cfg["text_cfg"].items() if k not in ("hf_tokenizer_name", "tokenizer_kwargs")}
    return {"published": (cfg["embed_dim"], text), "tiny": (TINY["embed_dim"], tiny_text_cfg(name))}


def _load_siglip_text_tower(name: str, checkpoint: str | Path, device: str) -> TextTower:
    from open_clip.model import _build_text_tower

    from bench.backbones.siglip import OFFICIAL_FILE, TINY, published_at, read_checkpoint
    from bench.weights import state_dict_diff

    path = Path(checkpoint).expanduser()
    official = f"the official file is {OFFICIAL_FILE}, published at {published_at(name)}"
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint not found: {path} — {official}")
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # an open_clip training checkpoint
        state = state["state_dict"]
    state = {k.removeprefix("module.")[len("text."):]: v.float() for k, v in state.items()
             if k.removeprefix("module.").startswith("text.") and isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"checkpoint {path.name} has no text tower (no text.* keys) — {official}")
    given = {k: tuple(v.shape) for k, v in state.items()}
    # the published tower, or the tiny test one (its token width is TINY's)
    size = "tiny" if given.get("token_embedding.weight", (0, 0))[-1] == TINY["embed_dim"] else "published"
    embed_dim, text_cfg = _siglip_text_cfgs(name)[size]
    with torch.device("meta"):  # shapes only: a real-size tower is not initialised just to be overwritten
        expected = {k: tuple(v.shape) for k, v in _build_text_tower(embed_dim, text_cfg).state_dict().items()}
    if given != expected:
        raise ValueError(f"the text tower in {path.name} does not fit {'tiny ' if size == 'tiny' else ''}{name}: "
                         f"keys {state_dict_diff(expected, given, limit=4, prefix='text.')} — {official}")
    with torch.device("meta"):
        text = _build_text_tower(embed_dim, text_cfg)
    text.load_state_dict(state, strict=True, assign=True)  # every text.* key of the file, no other
    return TextTower(text.to(device).eval().requires_grad_(False))


def load_tokenizer(name: str, checkpoint: str | Path | None = None,
                   context_length: int | None = None) -> Callable[[Sequence[str]], torch.Tensor]:
    """The tokenizer of text-aligned backbone ``name``: list of N strings -> (N, context_length) int64.

    CLIP: open_clip's ``SimpleTokenizer`` (OpenAI's BPE, vocabulary file inside the open_clip
    package: no download), context 77; ``checkpoint`` is not needed.
    SigLIP 2: open_clip's ``HFTokenizer`` over ``transformers.AutoTokenizer`` on the Gemma tokenizer
    files in ``checkpoint``'s folder (``siglip.TOKENIZER_FILES``; ``local_files_only``: no download),
    with the model's open_clip settings: context 64, ``clean="canonicalize"`` (lower case, punctuation
    removed, whitespace collapsed), padded with <pad> to the context and truncated.
    dino.txt: open_clip's ``SimpleTokenizer`` on the ``bpe_simple_vocab_16e6.txt.gz`` beside ``checkpoint``."""
    _check_text_backbone(name)
    if name.startswith("siglip2"):
        return _load_siglip_tokenizer(name, checkpoint, context_length)
    if name == DINOTXT:
        from bench.backbones import dinotxt

        if checkpoint is None:
            raise ValueError(f"{name}'s BPE vocabulary is read beside its head file: load_tokenizer('{name}', checkpoint)")
        return dinotxt.load_tokenizer(Path(checkpoint).expanduser().parent / dinotxt.BPE_FILE, context_length or 77)
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length or 77)


def _load_siglip_tokenizer(name: str, checkpoint: str | Path | None, context_length: int | None):
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    from bench.backbones.siglip import SIGLIP_BACKBONES, TOKENIZER_FILES, published_at

    if checkpoint is None:
        raise ValueError(f"{name}'s Gemma tokenizer is read from the files beside its checkpoint: "
                         f"load_tokenizer('{name}', checkpoint)")
    path = Path(checkpoint).expanduser()
    folder = path.parent
    for file in TOKENIZER_FILES:
        if not (folder / file).is_file():
            raise FileNotFoundError(
                f"{name}'s tokenizer file {file} is not in {folder} (it is read beside the checkpoint {path.name}): "
                f"the Gemma tokenizer files {', '.join(TOKENIZER_FILES)} (and special_tokens_map.json) are published "
                f"next to open_clip_model.safetensors at {published_at(name)}; put them in {folder} (for a tiny "
                f"random checkpoint: bench.backbones.siglip.save_random_tokenizer('{folder}'))")
    text_cfg = open_clip.get_model_config(SIGLIP_BACKBONES[name].open_clip_model)["text_cfg"]
    return HFTokenizer(str(folder), context_length=context_length or text_cfg["context_length"],
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), local_files_only=True,
                       **text_cfg.get("tokenizer_kwargs", {}))


# ----------------------------------------------------------------------------------------------
# Math

def class_text_embeddings(tower: TextTower, tokenizer: Callable[[Sequence[str]], torch.Tensor],
                          class_names: Sequence[str], templates: Sequence[Callable[[str], str]]) -> torch.Tensor:
    """(C, D) float32, row c = the prompt ensemble of ``class_names[c]``: every template filled with
    the name, each embedding L2-normalised, averaged, and the mean L2-normalised again."""
    rows = []
    for name in class_names:
        embeddings = F.normalize(tower.encode_text(tokenizer([t(name) for t in templates])), dim=-1)  # (T, D)
        rows.append(F.normalize(embeddings.mean(0), dim=-1))
    return torch.stack(rows).float()


def zero_shot_logits(region_feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(R, D) region vectors, (C, D) text embeddings -> (R, C) cosine similarities (both sides
    normalised; a zero region vector, i.e. an empty mask, gets 0 everywhere)."""
    if region_feats.shape[-1] != text.shape[-1]:
        raise ValueError(f"region features have dim {region_feats.shape[-1]} but the text embeddings "
                         f"{text.shape[-1]}: regions must be in the joint image-text space "
                         "(maskclip_*, clip_* or siglip2_* with project=true, dinotxt_vitl16)")
    return F.normalize(region_feats.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def zero_shot_labels(region_feats: torch.Tensor, text: torch.Tensor, background: str | None = "class",
                     threshold: float | None = None, logit_scale: float = 50.0) -> torch.Tensor:
    """(R, D) region vectors, (C, D) text embeddings -> (R,) int64 class labels.

      background   "class": row 0 of ``text`` is the background class, labels = argmax (0..C-1);
                   "threshold": the rows are the foreground classes, labels = 1 + argmax (1..C), and
                   0 where the best probability is below ``threshold`` (required);
                   None: labels = argmax, no background. See the module docstring.
      threshold    a probability: a region whose max of softmax(logit_scale * cosine) over the rows is
                   below it gets 0 (with "class" optional, as SCLIP / ClearCLIP do on VOC21)
      logit_scale  the softmax temperature for ``threshold`` (ClearCLIP 50; SCLIP, NACLIP 40)
    """
    if background not in ("class", "threshold", None):
        raise ValueError(f"background must be 'class', 'threshold' or None, not {background!r}")
    if background == "threshold" and threshold is None:
        raise ValueError("background='threshold' needs a threshold (a probability, e.g. 0.1 as SCLIP on VOC21)")
    if background is None and threshold is not None:
        raise ValueError("threshold sends regions to class 0, which background=None does not have")
    logits = zero_shot_logits(region_feats, text)  # (R, C)
    labels = logits.argmax(-1) + (1 if background == "threshold" else 0)
    if threshold is not None:
        best = (logit_scale * logits).softmax(-1).amax(-1)  # (R,)
        labels = torch.where(best < threshold, torch.zeros_like(labels), labels)
    return labels


def text_query_scores(region_feats_per_image: Sequence[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """[(R_i, D)] region vectors of N images, (D,) query -> (N,) float32: each image's best cosine
    similarity between one of its regions and the query (-inf for an image without regions)."""
    query = F.normalize(query.float(), dim=-1)
    return torch.stack([F.normalize(feats.float(), dim=-1).matmul(query).max() if len(feats)
                        else torch.tensor(float("-inf")) for feats in region_feats_per_image])


def combine_queries(text: torch.Tensor, region: torch.Tensor, region_weight: float = 0.5) -> torch.Tensor:
    """(D,) text embedding, (D,) example region vector -> (D,) unit query:
    normalise((1 - w) * text / |text| + w * region / |region|). With w = 0.5 (default) this is the
    normalised sum of the two unit vectors, which ranks by the sum of the cosine similarities to
    the text and to the example region."""
    mixed = (1 - region_weight) * F.normalize(text.float(), dim=-1) + region_weight * F.normalize(region.float(), dim=-1)
    return F.normalize(mixed, dim=-1)
