"""core.reference_products, the inner products of each gradient with a float64 reference (FLTrust,
centered clipping with a reference outside the data's dtype): against float64 numpy, for
float32 and float64 rows, (b, p, n) arrays and lists of rows, column counts around the block
width; bit for bit against a float64 numpy model of the summation order at every SIMD level;
the same bits on any thread count; NaN kept to its row; a bad reference refused."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from conftest import simd_levels
from flagcore import _core

BLOCK = 16384  # columns per block (kBlock in csrc/rules/reference_cpu.cpp)
LANES = 16  # interleaved sums per block (kLanes in csrc/rules/reference_kernel_impl.hpp)


def _want(x64: np.ndarray, ref: np.ndarray):
    cross = np.einsum("qik,qk->qi", x64, ref)
    scale = np.einsum("qik,qk->qi", np.abs(x64), np.abs(ref))
    return cross, scale, np.einsum("qik,qik->qi", x64, x64), np.einsum("qk,qk->q", ref, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 17, 2049, 16_383, 16_384, 16_385, 40_001])
def test_matches_float64_numpy(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((2, 5, n)) * rng.choice([1e-3, 1.0, 1e3], size=(2, 5, 1))).astype(
        dtype
    )
    ref = rng.standard_normal((2, n))
    cross, r2, sq = _core.reference_products(x, ref, True)
    want, scale, want_sq, want_r2 = _want(x.astype(np.float64), ref)
    assert cross.shape == (2, 5) and r2.shape == (2,) and sq.shape == (2, 5)
    tol = 4 * n * 2.0**-53
    assert np.all(np.abs(cross - want) <= tol * scale)
    np.testing.assert_allclose(sq, want_sq, rtol=tol)
    np.testing.assert_allclose(r2, want_r2, rtol=tol)
    c2, r22, none = _core.reference_products(x, ref, False)
    assert none is None
    np.testing.assert_array_equal(c2, cross)
    np.testing.assert_array_equal(r22, r2)


def _ordered_sum(prod: np.ndarray) -> np.ndarray:
    """The kernel's order for the (m, n) float64 products: per block, column k in lane k % 16 added
    in column order (cumsum is sequential; the zero padding adds +0.0 to sums that start at +0.0),
    the 16 lanes in a fixed tree, then the blocks in order from 0.0."""
    m, n = prod.shape
    total = np.zeros(m)
    for k0 in range(0, max(n, 1), BLOCK):
        blk = prod[:, k0 : k0 + BLOCK]
        pad = np.zeros((m, -blk.shape[1] % LANES))
        lanes = np.cumsum(np.concatenate([blk, pad], axis=1).reshape(m, -1, LANES), axis=1)[:, -1]
        while lanes.shape[1] > 1:  # ((l0 + l1) + (l2 + l3)) + ...: adjacent pairs, level by level
            lanes = lanes[:, 0::2] + lanes[:, 1::2]
        total = total + lanes[:, 0]
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [5, 16_400, 33_000])
def test_the_same_bits_as_the_summation_model_at_every_simd_level(dtype, n):
    rng = np.random.default_rng(n + 7)
    x = (rng.standard_normal((1, 35, n)) * rng.choice([1e-3, 1.0, 1e3], size=(1, 35, 1))).astype(
        dtype
    )
    ref = rng.standard_normal((1, n))
    x64 = x[0].astype(np.float64)
    want_cross = _ordered_sum(x64 * ref[0])
    want_sq = _ordered_sum(x64 * x64)
    want_r2 = _ordered_sum(ref * ref)[0]
    try:
        for level in simd_levels():
            _core.set_simd_level(level)
            cross, r2, sq = _core.reference_products(x, ref, True)
            np.testing.assert_array_equal(cross[0], want_cross, err_msg=level)
            np.testing.assert_array_equal(sq[0], want_sq, err_msg=level)
            assert r2[0] == want_r2, level
            np.testing.assert_array_equal(_core.row_squares(x)[0], want_sq, err_msg=level)
    finally:
        _core.set_simd_level("auto")


def test_list_of_rows_equals_the_array():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5000)).astype(np.float32)
    ref = rng.standard_normal((1, 5000))
    a = _core.reference_products(x[None], ref, True)
    b = _core.reference_products([r.copy() for r in x], ref, True)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_thread_count_does_not_change_a_bit():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 70, 50_001)).astype(np.float32)  # 4 blocks, 3 tasks of rows each
    ref = rng.standard_normal((3, 50_001))
    out = []
    try:
        for threads in (1, 2, 3):
            flagcore.set_num_threads(threads)
            out.append(_core.reference_products(x, ref, True))
    finally:
        flagcore.set_num_threads(0)
    for other in out[1:]:
        for u, v in zip(out[0], other):
            np.testing.assert_array_equal(u, v)


def test_a_nan_stays_in_its_row():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 4, 3000))
    x[0, 2, 1234] = np.nan
    cross, r2, sq = _core.reference_products(x, rng.standard_normal((1, 3000)), True)
    assert np.isnan(cross[0, 2]) and np.isnan(sq[0, 2])
    assert np.all(np.isfinite(np.delete(cross[0], 2))) and np.isfinite(r2[0])


def test_a_reference_of_another_shape_is_refused():
    x = np.zeros((2, 3, 10), np.float32)
    with pytest.raises(ValueError, match=r"reference_products: ref must be \(b, n\) = \(2, 10\)"):
        _core.reference_products(x, np.zeros((2, 11)), True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_squares_are_reference_products_squares(dtype):
    # CGE's and SignGuard's norms: the same sums, without a reference
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 20_001)).astype(dtype)
    x[1, 3, 7] = np.inf
    sq = _core.row_squares(x)
    want = _core.reference_products(x, rng.standard_normal((2, 20_001)), True)[2]
    np.testing.assert_array_equal(sq, want)
    assert np.isinf(sq[1, 3])
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(sq[0], np.einsum("ik,ik->i", x64[0], x64[0]), rtol=1e-12)
