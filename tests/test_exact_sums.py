"""Pooled features are the same bits whatever orders, aligns or threads the sums (issue: green on
every CPU). MKL on Intel CPUs rounds float32 sums differently for differently aligned buffers;
on the AMD machines here it does not, so the alignment test alone could pass with order-dependent
code. The order tests below fail for any float32 BLAS product on any CPU: they permute the terms
of the same sums, which is what a different code path, blocking, alignment or thread count does.
"""
import hashlib

import numpy as np
import pytest
import torch

from bench.exact_sums import weighted_sums
from bench.pooling import pool_regions


def _problem(seed: int = 0, rows: int = 40, terms: int = 900, dim: int = 64, density: float = 0.05):
    """Integer weights (rows, terms) like pooling's (interpolation numerators times mask pixel
    counts, mostly zero) and float16-valued features (terms, dim) as float32."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 784 * 40, size=(rows, terms)) * (rng.random((rows, terms)) < density)
    values = rng.standard_normal((terms, dim)).astype(np.float16).astype(np.float32)
    return torch.from_numpy(weights.astype(np.float64)), torch.from_numpy(values)


def _aligned(array: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A copy of ``array`` whose data starts ``offset_bytes`` past a 64-byte boundary."""
    raw = np.empty(array.nbytes + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_bytes
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def test_sums_do_not_depend_on_the_order_of_their_terms():
    weights, values = _problem()
    expected = weighted_sums(weights, values)
    naive_orders = set()
    for seed in range(6):
        order = torch.from_numpy(np.random.default_rng(seed).permutation(values.shape[0]))
        assert torch.equal(weighted_sums(weights[:, order], values[order]), expected)
        naive_orders.add((weights[:, order].float() @ values[order]).numpy().tobytes())
    # the same permutations change a float32 product's bits: the test can tell the two apart
    assert len(naive_orders) > 1


def test_sums_are_accurate_and_sparse_and_dense_paths_agree(monkeypatch):
    weights, values = _problem(seed=1)
    exact = weights @ values.double()  # float64: errors ~2^-53, far below the 2^-25 tolerance
    ours = weighted_sums(weights, values)
    scale = values.abs().amax(dim=0) * weights.sum(dim=1, keepdim=True)
    assert ((ours - exact).abs() <= scale * 2.0 ** -25).all()
    import bench.exact_sums as module
    monkeypatch.setattr(module, "SPARSE_BELOW", 0.0)  # force the dense product
    assert torch.equal(weighted_sums(weights, values), ours)


def test_large_row_sums_split_into_slices_and_stay_exact():
    weights, values = _problem(seed=2)
    big = weights * 4096  # row sums ~2^37: several slices of few bits each
    assert torch.equal(weighted_sums(big, values), weighted_sums(big[:, torch.arange(899, -1, -1)],
                                                                  values[torch.arange(899, -1, -1)]))
    torch.testing.assert_close(weighted_sums(big, values) / 4096, weighted_sums(weights, values),
                               rtol=2.0 ** -20, atol=1e-9)
    with pytest.raises(ValueError, match="too large"):
        weighted_sums(weights * 2.0 ** 45, values)


@pytest.mark.parametrize("mode", ["mean", "downsample"])
def test_pooling_a_transposed_image_gives_the_same_bits(mode):
    # the transposed image has the same sums over the same patches, met in another order
    # (dense masks for downsample: its fallback breaks ties in raster order, which transposes)
    rng = np.random.default_rng(3)
    grid = torch.from_numpy(rng.standard_normal((48, 11, 13)).astype(np.float16).astype(np.float32))
    density = rng.random((30, 1, 1)) * 0.3 + (0.6 if mode == "downsample" else 0.0)
    masks = torch.from_numpy(rng.random((30, 150, 180)) < density)
    straight = pool_regions(grid, masks, 14, mode=mode)
    transposed = pool_regions(grid.transpose(1, 2), masks.transpose(1, 2), 14, mode=mode)
    assert torch.equal(straight, transposed)


@pytest.mark.parametrize("mode", ["mean", "max", "downsample"])
def test_pooling_does_not_depend_on_buffer_alignment(mode):
    """The cold/warm feature-cache case: the same grid in differently aligned buffers."""
    rng = np.random.default_rng(4)
    grid = rng.standard_normal((64, 27, 36)).astype(np.float16).astype(np.float32)
    masks = torch.from_numpy(rng.random((25, 375, 500)) < 0.2)
    results = {pool_regions(torch.from_numpy(_aligned(grid, offset)), masks, 14, mode=mode).numpy().tobytes()
               for offset in range(0, 64, 4)}
    assert len(results) == 1


def test_pooled_bytes_are_the_same_on_every_machine():
    """A digest recorded on one machine: every step is integer-exact or a single IEEE operation,
    so any CPU (or GPU) must reproduce it. Inputs are integers and powers of two, made without
    floating-point library calls."""
    rng = np.random.default_rng(5)
    grid = torch.from_numpy((rng.integers(-2048, 2048, size=(32, 9, 12)) / 256).astype(np.float32))
    masks = torch.from_numpy(rng.integers(0, 5, size=(16, 120, 160)) == 0)
    digests = [hashlib.sha256(pool_regions(grid, masks, 14, mode=mode).numpy().tobytes()).hexdigest()[:16]
               for mode in ("mean", "downsample")]
    assert digests == GOLDEN


GOLDEN = ["3647625da4db2a93", "362e105f6dfb2c9f"]


def test_inputs_are_left_unchanged():
    weights, values = _problem(seed=6, dim=8)
    values = values.double()
    before = values.clone()
    weighted_sums(weights, values)
    assert torch.equal(values, before)
