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

Prompt denoising (``denoise``, MaskCLIP's training-free refinement, its head's ``pd_thresh``): per
image, a text whose highest probability over all the image's vectors (regions, or patches before
upsampling) stays below the threshold is taken out (its cosine set to -100, as MaskCLIP's head sets
its logit), so the image is labelled with the classes some vector is confident about. MaskCLIP
computes those probabilities at scale 100; here at ``logit_scale``.
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


def denoise(cosines: Tensor, threshold: float | None, logit_scale: float) -> Tensor:
    """(N, T) cosines of one image's vectors -> the same with every text whose highest probability
    softmax(logit_scale * cosine) over the N vectors is below ``threshold`` set to -100 (unchanged
    for None, or if that would take out every text)."""
    if threshold is None or len(cosines) == 0:
        return cosines
    weak = (logit_scale * cosines).softmax(dim=-1).amax(dim=0) < threshold  # (T,)
    return cosines if weak.all() else cosines.masked_fill(weak, -100.0)


class ZeroShot:
    """What both zero-shot segmenters share: the text rows and the probability rule."""

    trainable = False

    def set_text(self, text: Tensor, background: str, threshold: float | None, logit_scale: float,
                 prompt_denoising: float | None = None) -> None:
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
        self.denoising = prompt_denoising

    def cosines(self, vectors: Tensor) -> Tensor:
        """(N, D) vectors of one image -> (N, T) cosines to the texts, prompt-denoised if asked."""
        return denoise(zero_shot_logits(vectors, self.text), self.denoising, self.rule[2])

    def configure_optimizers(self):
        return None


class ZeroShotRegions(ZeroShot, RegionSegmenter):
    def predict_pixels(self, batch: dict) -> list[Tensor]:
        cosines = torch.zeros(len(batch["feats"]), len(self.text), device=self.text.device)
        for i in range(len(batch["rles"])):  # denoising looks at one image's regions at a time
            mine = batch["image_index"] == i
            cosines[mine] = self.cosines(batch["feats"][mine])
        return self.paint(class_probabilities(cosines, *self.rule), batch)


class ZeroShotPatches(ZeroShot, PatchSegmenter):
    def predict_pixels(self, batch: dict) -> list[Tensor]:
        preds = []
        for patches, meta in zip(batch["patches"], batch["metas"]):
            d, h, w = patches.shape
            cosines = self.cosines(patches.reshape(d, h * w).T).T.reshape(1, -1, h, w)
            p, (top, left) = meta["patch_size"], meta["pad"]
            cosines = F.interpolate(cosines, size=(h * p, w * p), mode="bilinear", align_corners=False)[0]
            cosines = cosines[:, top:top + meta["height"], left:left + meta["width"]]  # (T, H, W)
            probs = class_probabilities(cosines.flatten(1).T, *self.rule)  # (H*W, C)
            preds.append(probs.argmax(dim=-1).reshape(meta["height"], meta["width"]))
        return preds


MODELS = {"region": ZeroShotRegions, "patch": ZeroShotPatches}
