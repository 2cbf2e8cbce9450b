"""Weighted sums whose bits do not depend on how a BLAS orders them.

``weighted_sums(weights, values)`` is ``weights @ values`` for non-negative integer weights,
computed so that every multiply-add inside the matrix product is exact. A float32 ``@`` rounds
each partial sum, so its last bits depend on the summation order, and the order depends on the
BLAS library, its code path for the CPU model (MKL picks one per vendor and instruction set),
the memory alignment of the inputs (MKL on Intel CPUs, unless its reproducibility mode is on),
the thread count, and the device. Exact partial sums have no order.

How (an error-free splitting in the manner of Ozaki's scheme):
  1. with B the largest row sum of ``weights``, b = 53 - bitlength(B) bits fit beside it:
     B * 2^b < 2^53;
  2. each column c of ``values`` is scaled by a power of two 2^s_c so its largest magnitude
     lies just below 2^(n*b - 1), n the fewest slices giving at least MIN_BITS bits, and
     rounded to an integer q;
  3. q is cut into n slices of b bits, q = sum_i slice_i * 2^(b*i);
  4. ``weights @ slice_i`` in float64 then only ever adds integers below 2^53: exact in any
     order, with or without FMA, dense or sparse, on any BLAS and any device;
  5. the slices' sums are recombined (Horner: a fixed sequence of elementwise IEEE operations,
     deterministic everywhere) and divided by 2^s_c.

The one rounding is step 2: at most 2^-MIN_BITS = 2^-24 of each column's largest |value| (half a
float32 unit in the last place of it). Pooling one image needs one slice unless a mask covers more than about
2^28 / (2p)^2 pixels (340,000 at p = 14).
"""
from __future__ import annotations

import warnings

import torch

MIN_BITS = 24        # bits kept of each column's largest value (step 2)
EXACT_BITS = 53      # float64 holds every integer below 2^53 exactly
SPARSE_BELOW = 0.25  # fraction of non-zero weights under which the products go through CSR
CHUNK_COLUMNS = 128  # columns of values converted to float64 at a time


def weighted_sums(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """weights (R, K) non-negative integer-valued (any dtype), values (K, d) float -> (R, d) float64.

    Equals ``weights @ values`` up to 2^-24 of each column's largest |value|, and is
    bit-identical for any ordering of the K terms (so for any BLAS, alignment, thread count,
    CPU or GPU). Non-finite values make their column NaN; check inputs first if that matters.
    """
    if weights.ndim != 2 or values.ndim != 2 or weights.shape[1] != values.shape[0]:
        raise ValueError(f"weights (R, K) and values (K, d) expected, got {tuple(weights.shape)} and "
                         f"{tuple(values.shape)}")
    weights = weights.to(torch.float64)
    if len(weights) == 0 or len(values) == 0:
        return weights.new_zeros(len(weights), values.shape[1])
    bound = int(weights.sum(dim=1).max().item())
    bits = EXACT_BITS - bound.bit_length()                     # bound * 2^bits < 2^53
    if bits < 8:
        raise ValueError(f"weight rows sum to {bound}: too large for exact float64 sums; pool smaller images "
                         "or masks")
    slices = -(-(MIN_BITS + 1) // bits)                        # slices * bits - 1 >= MIN_BITS
    product = _matmul(weights)
    # a few columns at a time: float64 temporaries stay small (and in cache)
    values = values.to(weights.device)
    return torch.cat([_column_sums(product, values[:, first:first + CHUNK_COLUMNS], bits, slices)
                      for first in range(0, values.shape[1], CHUNK_COLUMNS)], dim=1)


def _column_sums(product, values: torch.Tensor, bits: int, slices: int) -> torch.Tensor:
    """Steps 2-5 for values (K, c) -> (R, c) float64."""
    values = values.to(torch.float64, memory_format=torch.contiguous_format, copy=True)  # rows, for CSR products
    _, exponent = torch.frexp(torch.linalg.vector_norm(values, ord=float("inf"), dim=0))  # max |.| < 2^e
    scale = torch.ldexp(torch.ones_like(values[0]), slices * bits - 1 - exponent)  # (c,) powers of two
    rest = values.mul_(scale).round_()                         # (K, c) integers, |.| <= 2^(slices*bits - 1)
    step = float(2 ** bits)
    sums = []
    for _ in range(slices - 1):
        high = (rest / step).floor_()                          # exact: step is a power of two
        sums.append(product(rest.sub_(high, alpha=step)))      # low slice in [0, 2^bits): exact sums
        rest = high
    total = product(rest)                                      # top slice, |.| < 2^bits: exact sums
    for low in reversed(sums):
        total = total * step + low
    return total / scale

def _matmul(weights: torch.Tensor):
    """``weights @ x`` as a function of x; through a CSR copy when few weights are non-zero (region
    masks cover a few percent of a grid: 2 ms instead of 15 ms at ADE20K size). Sparse or dense,
    the sums are exact, so the two give the same bits."""
    if (weights != 0).sum().item() > SPARSE_BELOW * weights.numel():
        return weights.__matmul__
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta")
        sparse = weights.to_sparse_csr()
    return sparse.__matmul__
