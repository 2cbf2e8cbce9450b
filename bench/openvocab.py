"""Open-vocabulary queries on region vectors of text-aligned backbones (CLIP family).

Region vectors must be in the joint image-text space: ``clip_vitb32`` with ``project=True``
(512-d), ``maskclip_vitl14`` (projects by default, 768-d). The text tower comes from the same
local OpenAI file as the visual tower (nothing is downloaded); the tokenizer is open_clip's
``SimpleTokenizer``, whose BPE vocabulary ships inside the open_clip package.

    tower = load_text_tower("maskclip_vitl14", "weights/ViT-L-14-336px.pt")
    text = class_text_embeddings(tower, load_tokenizer("maskclip_vitl14"), VOC_NAMES, TEMPLATES)  # (C, D)
    labels = zero_shot_labels(region_feats, text, background="class")                            # (R,)

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

def _check_text_backbone(name: str) -> None:
    from bench.backbones.clip import CLIP_BACKBONES  # imports open_clip

    if name.startswith("siglip2"):
        raise NotImplementedError(
            f"{name}: SigLIP 2's text tower needs its Gemma tokenizer, which open_clip takes from the "
            "`transformers` package (not installed here); open-vocabulary queries support the CLIP "
            f"family only: {sorted(CLIP_BACKBONES)}")
    if name not in CLIP_BACKBONES:
        raise ValueError(f"no text tower for backbone '{name}'; text-aligned backbones: {sorted(CLIP_BACKBONES)}")


class ClipTextTower:
    """A CLIP text tower (open_clip's ``TextTransformer``, frozen); build with ``load_text_tower``.

    ``encode_text``: (N, context_length) int64 token ids -> (N, embed_dim) float32 on the CPU, the
    projected end-of-text token, not normalised (as ``CLIP.encode_text``)."""

    def __init__(self, text: torch.nn.Module):
        self.text = text
        self.device = text.token_embedding.weight.device
        self.context_length = text.context_length
        self.embed_dim = text.text_projection.shape[1]

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens.to(self.device)).float().cpu()


def load_text_tower(name: str, checkpoint: str | Path, device: str = "cpu") -> ClipTextTower:
    """The text tower of CLIP backbone ``name`` (a key of CLIP_BACKBONES) from the same local file as
    its visual tower: OpenAI's TorchScript archive or any state dict ``read_clip_state_dict`` takes.
    The file's visual tower must be the published architecture of ``name`` or its tiny test one
    (so a ViT-B/32 file is refused for maskclip_vitl14); the text architecture is read from the
    file (heads = width // 64, QuickGELU, causal mask, end-of-text pooling: OpenAI's)."""
    from open_clip.transformer import QuickGELU, TextTransformer

    from bench.backbones.clip import (CLIP_BACKBONES, existing_checkpoint, published_arch, read_clip_state_dict,
                                      tiny_arch, visual_arch)

    _check_text_backbone(name)
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
    return ClipTextTower(text.to(device).eval().requires_grad_(False))


def load_tokenizer(name: str, context_length: int = 77) -> Callable[[Sequence[str]], torch.Tensor]:
    """open_clip's ``SimpleTokenizer`` (OpenAI's BPE, vocabulary file inside the open_clip package:
    no download) for the CLIP backbone ``name``: list of N strings -> (N, context_length) int64."""
    from open_clip.tokenizer import SimpleTokenizer

    _check_text_backbone(name)
    return SimpleTokenizer(context_length=context_length)


# ----------------------------------------------------------------------------------------------
# Math

def class_text_embeddings(tower: ClipTextTower, tokenizer: Callable[[Sequence[str]], torch.Tensor],
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
                         "(clip_vitb32 with project=True, or maskclip_vitl14)")
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
