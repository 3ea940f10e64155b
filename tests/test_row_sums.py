"""The streamed row sums behind the coordinate mean and FA's weighted sum, at sizes that cross
their cache-line steps, row groups (8, 4, 1 rows), chunks and column tasks: the mean equals
numpy's (rows added in order, then divided) bit for bit for float64 input, the weighted sum
equals the float64 sum in row order, and neither depends on the thread count or reads a row
whose coefficient is 0."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from flagcore import _core

PS = [1, 2, 3, 5, 8, 9, 12, 13, 17, 33]
# n >= 2: for a single column numpy reduces the contiguous worker axis pairwise, not in order
NS = [2, 15, 17, 2047, 2049, 16_385, 70_001]


def _ordered_weighted_sum(x64: np.ndarray, c: np.ndarray) -> np.ndarray:
    acc = np.zeros(x64.shape[1])
    for ci, xi in zip(c, x64):
        if ci != 0.0:
            acc = acc + ci * xi
    return acc


@pytest.mark.parametrize("p", PS)
def test_mean_is_numpys_bit_for_bit_across_chunks(p):
    rng = np.random.default_rng(p)
    for n in NS:
        x = rng.standard_normal((p, n)) * 10.0 ** rng.integers(-3, 4)
        x[:, ::3] = np.round(x[:, ::3], 1)
        np.testing.assert_array_equal(flagcore.aggregate(x, "mean"), x.mean(axis=0))
        x32 = x.astype(np.float32)
        want32 = x32.astype(np.float64).mean(axis=0).astype(np.float32)
        np.testing.assert_array_equal(flagcore.aggregate(x32, "mean"), want32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_sum_in_row_order_and_zero_rows_unread(dtype):
    rng = np.random.default_rng(5)
    for p in PS:
        n = 20_011
        x = rng.standard_normal((p, n)).astype(dtype)
        c = rng.standard_normal(p)
        c[::4] = 0.0
        x[::4, 7] = np.nan  # rows with coefficient 0 are never read
        got = _core.weighted_sum(x[None], c[None])[0]
        want = _ordered_weighted_sum(x.astype(np.float64), c)
        if dtype == np.float64:
            # the same additions in the same order; a fused multiply-add may round once less
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
        else:
            np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(got))


def test_thread_count_does_not_change_a_bit():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 13, 300_007)).astype(np.float32)
    c = rng.standard_normal((2, 13))
    try:
        flagcore.set_num_threads(1)
        m1 = flagcore.aggregate(x, "mean")
        w1 = _core.weighted_sum(x, c)
        a1 = flagcore.flag_aggregate(x[0])
        flagcore.set_num_threads(2)
        m2 = flagcore.aggregate(x, "mean")
        w2 = _core.weighted_sum(x, c)
        a2 = flagcore.flag_aggregate(x[0])
    finally:
        flagcore.set_num_threads(0)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(a1, a2)


@pytest.mark.parametrize(
    ("p", "n"), [(64, 65), (64, 16_384), (300, 1000), (1000, 300), (2000, 257)]
)
def test_problems_of_one_task_are_split_and_stay_exact(p, n):
    # Shapes that the weighted sum and the coordinate rules now cut into two column tasks (one
    # task of a problem's whole width before): every column, on both sides of the cut, equals
    # the reference, and one thread gives the same bits as two.
    rng = np.random.default_rng(p + n)
    x64 = rng.standard_normal((p, n))
    x32 = x64.astype(np.float32)
    c = rng.standard_normal(p)
    c[::3] = 0.0
    out = {}
    try:
        for threads in (1, 2):
            flagcore.set_num_threads(threads)
            out[threads] = (
                _core.weighted_sum(x32[None], c[None])[0],
                flagcore.aggregate(x64, "mean"),
                flagcore.aggregate(x32, "median"),
                flagcore.aggregate(x32, "trimmed_mean", f=p // 4),
            )
    finally:
        flagcore.set_num_threads(0)
    for a, b in zip(out[1], out[2]):
        np.testing.assert_array_equal(a, b)
    wsum, mean, median, trimmed = out[2]
    want = _ordered_weighted_sum(x32.astype(np.float64), c)
    np.testing.assert_allclose(wsum, want.astype(np.float32), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(mean, x64.mean(axis=0))
    np.testing.assert_array_equal(
        median, np.median(x32.astype(np.float64), axis=0).astype(np.float32)
    )
    s = np.sort(x32.astype(np.float64), axis=0)[p // 4 : p - p // 4]
    np.testing.assert_allclose(trimmed, s.mean(axis=0), rtol=2e-6, atol=1e-6)


def test_float32_sums_exact_at_every_simd_level(simd_level):
    # Each level has its own float32 line kernel (AVX2 / AVX-512: explicit vectors converted
    # from memory): the mean and a weighted sum whose coefficients are powers of two (so the
    # products are exact and a fused multiply-add rounds like an add) must equal the float64 sum
    # in row order, rounded once, bit for bit, for row groups of 1-8 rows, rows that start off a
    # cache line, and every tail of a line.
    rng = np.random.default_rng(11)
    for p in PS + [15, 16, 19]:
        for n in (16, 31, 48, 2048 + 17, 4099):
            # magnitudes 2^-40 .. 2^40 apart, so that the float64 sums round and their order
            # shows (sums of float32 values of similar size are exact in float64)
            scale = np.exp2(rng.integers(-40, 41, size=p * n + 3))
            base = (rng.standard_normal(p * n + 3) * scale).astype(np.float32)
            x = base[3:].reshape(p, n)  # rows start 12 bytes into the buffer: off alignment
            x64 = x.astype(np.float64)
            np.testing.assert_array_equal(
                flagcore.aggregate(x, "mean"), x64.mean(axis=0).astype(np.float32)
            )
            c = rng.choice([-2.0, -0.5, 0.0, 0.25, 1.0, 4.0], size=p)
            got = _core.weighted_sum(x[None], c[None])[0]
            np.testing.assert_array_equal(got, _ordered_weighted_sum(x64, c).astype(np.float32))
