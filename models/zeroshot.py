"""Training-free zero-shot segmenters: region (or patch) vectors scored against class-name texts.

Both hold the class text embeddings (C, D) (``bench.openvocab.class_text_embeddings``, one row per
dataset class, built by ``bench.tasks.zeroshot.build_model``) and nothing trainable. A vector's class
probabilities are softmax(logit_scale * cosine) over the text rows (``class_probabilities``), then:

  ZeroShotRegions   each region's probabilities, painted to pixels exactly as a trained region
                    model's are (``RegionSegmenter.paint``: the mean over the regions covering a pixel)
  ZeroShotPatches   each patch's cosines, upsampled bilinearly to pixels as the patch baseline's
                    logits are (``PatchSegmenter.pixel_logits``), then the same rule per pixel

Background (``background``, see ``bench.openvocab``): "class" (the dataset's class 0 has its own
text, e.g. "background"), "threshold" (class 0 has no text: a vector whose best foreground
probability is below ``threshold`` is background) or "none" (no background class: ADE20K, COCO).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.openvocab import zero_shot_logits
from models.segmenter import PatchSegmenter, RegionSegmenter

BACKGROUNDS = ("class", "threshold", "none")


def class_probabilities(cosines: Tensor, background: str, threshold: float | None, logit_scale: float) -> Tensor:
    """(N, T) cosines to the text rows -> (N, C) class probabilities, C = T (+1 with background
    "threshold": column 0 is background, one-hot where the best foreground probability < threshold).
    With "class" a threshold also sends low-confidence vectors to class 0."""
    probs = (logit_scale * cosines).softmax(dim=-1)
    if background == "threshold":
        probs = F.pad(probs, (1, 0))
    if threshold is not None:
        low = probs.amax(dim=-1) < threshold
        probs[low] = F.one_hot(torch.zeros((), dtype=torch.int64), probs.shape[-1]).to(probs)
    return probs


class ZeroShot:
    """What both zero-shot segmenters share: the text rows and the probability rule."""

    trainable = False

    def set_text(self, text: Tensor, background: str, threshold: float | None, logit_scale: float) -> None:
        """text (T, D): one row per class (T = C, or C - 1 with background "threshold")."""
        if background not in BACKGROUNDS:
            raise ValueError(f"zeroshot.background={background!r}; valid: {', '.join(BACKGROUNDS)}")
        if background == "threshold" and threshold is None:
            raise ValueError("zeroshot.background=threshold needs zeroshot.threshold (a probability, e.g. 0.1)")
        if background == "none" and threshold is not None:
            raise ValueError("zeroshot.threshold sends vectors to class 0, which zeroshot.background=none does not "
                             "have: set zeroshot.threshold=null")
        self.register_buffer("text", text.float())
        self.rule = (background, threshold, logit_scale)

    def probabilities(self, vectors: Tensor) -> Tensor:
        """(N, D) region or patch vectors -> (N, C) class probabilities."""
        return class_probabilities(zero_shot_logits(vectors, self.text), *self.rule)

    def configure_optimizers(self):
        return None


class ZeroShotRegions(ZeroShot, RegionSegmenter):
    def predict_pixels(self, batch: dict) -> list[Tensor]:
        return self.paint(self.probabilities(batch["feats"]), batch)


class ZeroShotPatches(ZeroShot, PatchSegmenter):
    def predict_pixels(self, batch: dict) -> list[Tensor]:
        preds = []
        for patches, meta in zip(batch["patches"], batch["metas"]):
            d, h, w = patches.shape
            cosines = zero_shot_logits(patches.reshape(d, h * w).T, self.text).T.reshape(1, -1, h, w)
            p, (top, left) = meta["patch_size"], meta["pad"]
            cosines = F.interpolate(cosines, size=(h * p, w * p), mode="bilinear", align_corners=False)[0]
            cosines = cosines[:, top:top + meta["height"], left:left + meta["width"]]  # (T, H, W)
            probs = class_probabilities(cosines.flatten(1).T, *self.rule)  # (H*W, C)
            preds.append(probs.argmax(dim=-1).reshape(meta["height"], meta["width"]))
        return preds


MODELS = {"region": ZeroShotRegions, "patch": ZeroShotPatches}
