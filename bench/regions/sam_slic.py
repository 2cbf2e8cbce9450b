"""SAM+SLIC regions (the paper's §3.1 "Augmenting SAM with SLIC") and ground-truth regions.

    merge_sam_slic(sam_masks (R,H,W), slic_labels (H,W))  -> (R+K, H, W) bool
    build_regions("sam_slic", sam="sam").generate(image)  -> (R+K, H, W) bool
    GtRegions().generate(image, label)                    -> (S, H, W) bool, the upper bound

SAM leaves parts of an image uncovered (paper Figure 3); SLIC superpixels that overlap the
uncovered area by at least ``min_pixels`` pixels are clipped to it and appended as extra regions.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from bench.images import to_rgb8
from bench.regions.slic import SlicRegions


def merge_sam_slic(sam_masks: np.ndarray, slic_labels: np.ndarray, min_pixels: int = 300,
                   min_proportion: float = 0.0) -> np.ndarray:
    """SAM masks followed by the SLIC superpixels that fill what SAM left uncovered.

    Args:
        sam_masks: (R, H, W) bool, R may be 0 (an empty array of any shape with R = 0 is accepted).
        slic_labels: (H, W) non-negative int superpixel label map.
        min_pixels: a superpixel is kept when at least this many of its pixels are uncovered.
        min_proportion: ... and when uncovered pixels / its total size >= this fraction.

    Returns (R + K, H, W) bool: the SAM masks unchanged and in their order, then the K kept
    superpixels clipped to the uncovered area, in ascending label order. A pixel is uncovered
    when no SAM mask contains it. Clipped superpixels overlap neither SAM masks nor each other;
    SAM masks may overlap one another, and superpixels below the thresholds leave holes.

    Same semantics as the released ``merge_sam_and_slic_regions.py`` (spec §1.4), except:
      - order: the released code appended superpixels in Python set-iteration order of their
        labels (for small ints in practice ascending, but not guaranteed); here it is ascending;
      - zero SAM masks: the released code crashed (``np.stack`` of an empty list); here the
        whole image is uncovered, so every superpixel with >= ``min_pixels`` pixels is kept
        (its proportion is 1);
      - ``min_proportion`` may be a fraction (the released CLI parsed it as ``int``);
      - the proportion is computed in float64 (released: float32 torch division), which can
        only matter for a threshold equal to a ratio up to float32 rounding.
    Only superpixels with at least one uncovered pixel are candidates, as in the released code,
    so ``min_pixels <= 0`` never yields an empty mask.
    """
    labels = np.asarray(slic_labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"slic_labels must be an (H, W) integer label map, got {labels.shape} {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"slic_labels must be >= 0 (np.bincount), got min {labels.min()}; "
                         "relabel with np.unique(labels, return_inverse=True)")
    height, width = labels.shape
    sam = np.asarray(sam_masks, dtype=bool)
    if sam.size == 0 and sam.ndim >= 1 and sam.shape[0] == 0:
        sam = np.zeros((0, height, width), dtype=bool)
    if sam.ndim != 3 or sam.shape[1:] != (height, width):
        raise ValueError(f"sam_masks {sam.shape} must be (R, {height}, {width}) to match slic_labels")

    flat = labels.ravel()  # (HW,)
    uncovered = ~sam.any(axis=0).ravel() if len(sam) else np.ones(flat.size, dtype=bool)  # (HW,)
    pixels = np.flatnonzero(uncovered)  # (P,)
    under = flat[pixels]  # (P,) their labels
    free = np.bincount(under)  # (L,) uncovered pixels per label
    keep = (free > 0) & (free >= min_pixels)
    if min_proportion > 0:  # every proportion is >= 0: skip a pass over the label map
        sizes = np.bincount(flat, minlength=len(free))[:len(free)]  # (L,) pixels per label
        with np.errstate(divide="ignore", invalid="ignore"):
            keep &= free / sizes >= min_proportion
    kept = np.flatnonzero(keep)  # (K,) ascending label order

    # Scatter: uncovered pixel p of a kept label goes to row slot[label(p)] of the fill masks.
    slot = np.full(len(free), -1, dtype=np.int64)
    slot[kept] = np.arange(len(kept))
    rows = slot[under]
    inside = rows >= 0
    out = np.zeros((len(sam) + len(kept), height * width), dtype=bool)  # (R+K, HW)
    out[: len(sam)] = sam.reshape(len(sam), height * width)
    out.reshape(-1)[(len(sam) + rows[inside]) * (height * width) + pixels[inside]] = True  # 1-D: faster
    return out.reshape(len(out), height, width)


class SamSlicRegions:
    """SAM-family masks plus SLIC superpixels on what SAM leaves uncovered (the paper's SAM+SLIC).

      sam             name of the SAM-family region source in ``bench.regions.REGION_SOURCES``
                      ("sam", and whatever HQ-SAM / MobileSAM sources are registered)
      sam_params      keyword arguments of that source (checkpoint, AMG thresholds, ...)
      num_components, compactness
                      SLIC parameters (paper: 50 and 8); other fast-slic settings are SlicRegions'
      min_pixels      keep a superpixel with at least this many uncovered pixels (paper: 300)
      min_proportion  ... and at least this fraction of it uncovered (released default 0)
      build_sam       ``(name, **params) -> source``: ``bench.regions.build_regions`` when built
                      through the registry (``build_regions("sam_slic", ...)``)

    ``generate(image)`` runs both sources on the same ``to_rgb8`` image; ``from_masks`` reuses
    SAM masks computed earlier (the expensive half) and only runs SLIC and the merge.
    """

    def __init__(self, sam: str = "sam", sam_params: dict | None = None, num_components: int = 50,
                 compactness: float = 8, min_pixels: int = 300, min_proportion: float = 0.0,
                 build_sam: Callable | None = None):
        if build_sam is None:
            raise TypeError("SamSlicRegions needs build_sam, the factory of its SAM source: build it with "
                            "bench.regions.build_regions('sam_slic', ...)")
        self.sam = build_sam(sam, **(sam_params or {}))
        self.slic = SlicRegions(num_components=num_components, compactness=compactness)
        self.min_pixels = min_pixels
        self.min_proportion = min_proportion

    def from_masks(self, sam_masks: np.ndarray, image: np.ndarray) -> np.ndarray:
        """(R, H, W) SAM masks of ``image`` -> (R+K, H, W) bool, SAM masks then SLIC fill."""
        return merge_sam_slic(sam_masks, self.slic.label_map(to_rgb8(image)),
                              self.min_pixels, self.min_proportion)

    def generate(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image -> (R+K, H, W) bool, SAM masks then SLIC fill."""
        rgb = to_rgb8(image)
        return self.from_masks(self.sam.generate(rgb), rgb)


class GtRegions:
    """Ground-truth segments as regions: the upper bound of any region source.

    One region per connected component of each class present in the label map, sorted by
    (class id, component number in scipy's raster-scan order). Ignore pixels belong to no
    region, so they count as uncovered (they are not scored either). Regions are not
    limited to one object: two touching objects of one class form one component.

      connectivity   1 = 4-neighbour, 2 = 8-neighbour components (scipy.ndimage.label)
      ignore_index   label value that gets no region (VOC 255)

    Needs the label map: ``needs_label = True`` tells the extractor to call
    ``generate(image, label)``; the image only fixes the expected size.
    """

    needs_label = True

    def __init__(self, connectivity: int = 2, ignore_index: int = 255):
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 (4-neighbour) or 2 (8-neighbour), got {connectivity}")
        self.structure = ndimage.generate_binary_structure(2, connectivity)
        self.ignore_index = ignore_index

    def generate(self, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image, (H, W) int label map -> (S, H, W) bool, one mask per class component."""
        label = np.asarray(label)
        if label.ndim != 2 or label.shape != np.shape(image)[:2]:
            raise ValueError(f"label {label.shape} must be (H, W) of the image {np.shape(image)[:2]}")
        segment = np.zeros(label.shape, dtype=np.int64)  # 0 = no region, else 1-based region id
        count = 0
        for cls in np.unique(label):
            if cls == self.ignore_index:
                continue
            components, n = ndimage.label(label == cls, structure=self.structure)
            segment[components > 0] = components[components > 0] + count
            count += n
        return segment[None] == np.arange(1, count + 1)[:, None, None]
