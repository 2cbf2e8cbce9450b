"""Region sources: an image in, a stack of binary masks out.

Every source implements ``generate(image) -> (R, H, W) bool``: one mask per region, none
empty, in a deterministic order. Sources are plain classes in ``REGION_SOURCES``; build one by
name with ``build_regions("slic", num_components=50)``.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from bench.regions.sam import SAM_FAMILY
from bench.regions.sam2 import SAM2_FAMILY
from bench.regions.sam_slic import GtRegions, SamSlicRegions
from bench.regions.slic import SlicRegions, label_map_to_masks  # noqa: F401  (re-exported)


class RegionSource(Protocol):
    def generate(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image -> (R, H, W) bool masks, none empty."""


def sam_slic_regions(**kwargs) -> SamSlicRegions:
    """SAM+SLIC whose SAM source is built from this registry (``build_regions``)."""
    kwargs.setdefault("build_sam", build_regions)
    return SamSlicRegions(**kwargs)


REGION_SOURCES = {
    "slic": SlicRegions,
    **SAM_FAMILY,  # sam, hq_sam, mobile_sam
    **SAM2_FAMILY,  # sam2
    "sam_slic": sam_slic_regions,
    "gt": GtRegions,
}


def build_regions(name: str, **kwargs) -> RegionSource:
    """A region source by registry name, constructed with ``kwargs``."""
    if name not in REGION_SOURCES:
        raise ValueError(f"unknown region source '{name}'; valid names: {sorted(REGION_SOURCES)}")
    return REGION_SOURCES[name](**kwargs)
