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

Key smoothing (``key_smoothing``, MaskCLIP's other training-free refinement, its head's ``ks_thresh``;
the vectors carry the last block's attention keys, ``attention_keys`` of the MaskCLIP backbones): per
image, every vector whose best probability is below the threshold (MaskCLIP's 1.0: all of them) takes
the key-similarity-weighted sum of all the image's probability rows (``key_smoothing``). For patches
this is MaskCLIP's rule on its patch grid, then the smoothed rows are upsampled bilinearly, as MaskCLIP
resizes its refined output; for regions it is the same rule over the image's regions, with their
pooled keys. Smoothed rows are weighted sums, not probabilities, so a background threshold cannot
apply to them (refused).
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
    return background_rule((logit_scale * cosines).softmax(dim=-1), background, threshold)


def background_rule(probs: Tensor, background: str, threshold: float | None) -> Tensor:
    """(N, T) text probabilities -> (N, C) class probabilities (see ``class_probabilities``)."""
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


def key_smoothing(probs: Tensor, keys: Tensor, threshold: float | None) -> Tensor:
    """(N, T) probability rows of one image's vectors, (N, K) their attention keys -> (N, T), MaskCLIP's
    key smoothing: each key channel is L2-normalised over the image's N vectors (MaskCLIP's
    ``F.normalize(k, p=2)`` on (B, N, K) normalises dim 1, the positions: the weights are not cosines
    between vectors), W = k k^T (N, N), and every row whose largest value is below ``threshold`` is
    replaced by its row of W @ probs. Unchanged for None."""
    if threshold is None or len(probs) == 0:
        return probs
    k = F.normalize(keys.float(), p=2, dim=0)
    smoothed = (k @ k.T) @ probs
    low = probs.amax(dim=-1) < threshold
    return torch.where(low[:, None], smoothed, probs)


class ZeroShot:
    """What both zero-shot segmenters share: the text rows and the probability rule."""

    trainable = False

    def set_text(self, text: Tensor, background: str, threshold: float | None, logit_scale: float,
                 prompt_denoising: float | None = None, key_smoothing: float | None = None) -> None:
        """text (T, D): one row per class (T = C, or C - 1 with background "threshold"). Vectors longer
        than D carry attention keys after their first D channels (read by ``key_smoothing``)."""
        if background not in BACKGROUNDS:
            raise ValueError(f"zeroshot.background={background!r}; valid: {', '.join(BACKGROUNDS)}")
        if background == "threshold" and threshold is None:
            raise ValueError("zeroshot.background=threshold needs zeroshot.threshold (a probability, e.g. 0.1)")
        if background == "none" and threshold is not None:
            raise ValueError("zeroshot.threshold sends vectors to class 0, which zeroshot.background=none does not "
                             "have: set zeroshot.threshold=null")
        if key_smoothing is not None and threshold is not None:
            raise ValueError("zeroshot.key_smoothing gives weighted sums of probabilities, which a probability "
                             "threshold cannot apply to: set zeroshot.threshold=null (and zeroshot.background to "
                             "class or none)")
        self.register_buffer("text", text.float())
        self.rule = (background, threshold, logit_scale)
        self.denoising, self.smoothing = prompt_denoising, key_smoothing

    def split(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D + K) -> (N, D) image-text vectors, (N, K) attention keys (K = 0 without keys)."""
        d = self.text.shape[1]
        if self.smoothing is not None and vectors.shape[1] <= d:
            raise ValueError(f"zeroshot.key_smoothing needs the MaskCLIP keys beside each {d}-d vector, but the "
                             f"vectors have {vectors.shape[1]} channels: extract with "
                             "backbone.params.<maskclip backbone>.attention_keys=true")
        return vectors[:, :d], vectors[:, d:]

    def cosines(self, vectors: Tensor) -> Tensor:
        """(N, D) vectors of one image -> (N, T) cosines to the texts, prompt-denoised if asked."""
        return denoise(zero_shot_logits(vectors, self.text), self.denoising, self.rule[2])

    def probabilities(self, vectors: Tensor) -> Tensor:
        """(N, D + K) vectors of one image -> (N, T) text probabilities, denoised and key-smoothed if asked."""
        feats, keys = self.split(vectors)
        probs = (self.rule[2] * self.cosines(feats)).softmax(dim=-1)
        return key_smoothing(probs, keys, self.smoothing)

    def configure_optimizers(self):
        return None


class ZeroShotRegions(ZeroShot, RegionSegmenter):
    def predict_pixels(self, batch: dict) -> list[Tensor]:
        probs = torch.zeros(len(batch["feats"]), len(self.text), device=self.text.device)
        for i in range(len(batch["rles"])):  # denoising and smoothing look at one image's regions at a time
            mine = batch["image_index"] == i
            probs[mine] = self.probabilities(batch["feats"][mine])
        return self.paint(background_rule(probs, self.rule[0], self.rule[1]), batch)


class ZeroShotPatches(ZeroShot, PatchSegmenter):
    def predict_pixels(self, batch: dict) -> list[Tensor]:
        preds = []
        for patches, meta in zip(batch["patches"], batch["metas"]):
            d, h, w = patches.shape
            vectors = patches.reshape(d, h * w).T
            if self.smoothing is None:  # cosines upsampled, then probabilities per pixel
                cosines = self.to_pixels(self.cosines(self.split(vectors)[0]), (h, w), meta)
                probs = class_probabilities(cosines, *self.rule)
            else:  # MaskCLIP: the smoothed probability rows upsampled
                probs = background_rule(self.to_pixels(self.probabilities(vectors), (h, w), meta), *self.rule[:2])
            preds.append(probs.argmax(dim=-1).reshape(meta["height"], meta["width"]))
        return preds

    @staticmethod
    def to_pixels(scores: Tensor, grid_size: tuple[int, int], meta: dict) -> Tensor:
        """(h*w, T) per-patch scores of an (h, w) grid -> (H*W, T) per pixel: bilinear to the padded image,
        the padding cut off."""
        (h, w), p, (top, left) = grid_size, meta["patch_size"], meta["pad"]
        height, width = meta["height"], meta["width"]
        grid = scores.T.reshape(1, -1, h, w)
        pixels = F.interpolate(grid, size=(h * p, w * p), mode="bilinear", align_corners=False)[0]
        return pixels[:, top:top + height, left:left + width].flatten(1).T


MODELS = {"region": ZeroShotRegions, "patch": ZeroShotPatches}
