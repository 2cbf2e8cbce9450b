"""SLIC superpixels (fast-slic) as a region source, and label maps as masks."""
from __future__ import annotations

import numpy as np

from bench.images import to_rgb8


def label_map_to_masks(assignment: np.ndarray) -> np.ndarray:
    """(H, W) integer label map -> (R, H, W) bool, one mask per distinct label.

    Masks are sorted by label value; labels absent from the map get no mask, so no mask is
    empty and R = number of distinct labels.
    """
    assignment = np.asarray(assignment)
    if assignment.ndim != 2 or not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer label map, got {assignment.shape} {assignment.dtype}")
    labels, inverse = np.unique(assignment, return_inverse=True)
    inverse = inverse.reshape(assignment.shape)
    return inverse[None] == np.arange(len(labels))[:, None, None]


class SlicRegions:
    """SLIC superpixels from fast-slic (the paper's FastSLIC [33]).

    Defaults are the paper's (50 components, compactness 8) and fast-slic 0.4.0's own defaults
    for the rest, as in the released ``gen_superpixels.py``:
      num_components   target number of superpixels; connectivity enforcement merges and
                       splits clusters, so the actual count differs (34-50, mean 46, on 15
                       natural 320x240 images; uniform noise collapses to a handful)
      compactness      colour vs spatial distance trade-off (higher = more regular shapes)
      min_size_factor  clusters smaller than this fraction of the mean size are merged
      subsample_stride fast-slic's pixel subsampling during the assignment step
      max_iter         k-means iterations
      num_threads      fast-slic's OpenMP threads (-1 = all cores); the result does not depend
                       on it, set 1 when several extraction processes share the cores

    Differences from the released code:
      - the image goes through ``to_rgb8`` first, so grayscale, RGBA, 16-bit and float images
        get superpixels instead of being skipped;
      - a fresh ``fast_slic.Slic`` is made per image: a reused one starts from the previous
        image's clusters, so results would depend on image order;
      - ``num_components`` is capped at H*W: fast-slic 0.4.0 dies with SIGFPE (killing the
        process) when asked for more components than pixels.
    """

    def __init__(self, num_components: int = 50, compactness: float = 8, min_size_factor: float = 0.25,
                 subsample_stride: int = 3, max_iter: int = 10, num_threads: int = -1):
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.num_components = num_components
        self.compactness = compactness
        self.min_size_factor = min_size_factor
        self.subsample_stride = subsample_stride
        self.max_iter = max_iter
        self.num_threads = num_threads

    def label_map(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image -> (H, W) int superpixel labels."""
        import fast_slic

        rgb = to_rgb8(image)
        height, width = rgb.shape[:2]
        slic = fast_slic.Slic(num_components=min(self.num_components, height * width),
                              compactness=self.compactness, min_size_factor=self.min_size_factor,
                              subsample_stride=self.subsample_stride, num_threads=self.num_threads)
        assignment = slic.iterate(rgb, max_iter=self.max_iter)
        if assignment.shape != (height, width) or assignment.min() < 0:
            raise RuntimeError(f"fast-slic returned an invalid label map for a {height}x{width} image "
                               f"(shape {assignment.shape}, min label {assignment.min()})")
        return assignment

    def generate(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image -> (R, H, W) bool superpixel masks, sorted by label; they partition the image."""
        return label_map_to_masks(self.label_map(image))
