"""The register-tiled float32 Gram kernels (p <= 32, every instruction set built here; up to
p = 64 on AVX-512, 36 on AVX2): against
float64 NumPy within the documented accuracy class (float32 partial sums of at most 128
products, reduced in float64), for every tile remainder shape, column counts around the vector
and chunk widths, rows anywhere in memory (misaligned, separate arrays), and bit-identical for
1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from conftest import simd_levels
from flagcore import _core

# At most 128 products per float32 partial sum (kFlushSteps in csrc/flag/gram_kernel_impl.hpp):
# each rounding is a relative 2^-24 of a partial sum bounded by the sum of |products|; the
# float64 reduction adds nothing visible.
FLUSH_STEPS = 128
BOUND = (FLUSH_STEPS + 2) * 2.0**-24


def _gram_at(level: str, x) -> np.ndarray:
    try:
        _core.set_simd_level(level)
        return _core.gram(x)
    finally:
        _core.set_simd_level("auto")


def _check(g: np.ndarray, rows: list[np.ndarray]) -> None:
    x64 = np.stack([r.astype(np.float64) for r in rows])
    ref = x64 @ x64.T
    absum = np.abs(x64) @ np.abs(x64).T
    err = np.abs(g - ref)
    assert np.all(err <= BOUND * absum + 1e-300), float(np.max(err / np.maximum(absum, 1e-300)))
    np.testing.assert_array_equal(g, g.T)


@pytest.mark.parametrize("level", simd_levels())
@pytest.mark.parametrize("p", list(range(1, 33)))
def test_every_p_and_level_within_accuracy_class(level, p):
    rng = np.random.default_rng(p)
    n = 1000 + 37 * p  # not a multiple of any vector width: whole blocks, a partial block, a tail
    x = rng.standard_normal((1, p, n)).astype(np.float32)
    x[0, : max(1, p // 3)] *= 1e3  # mixed magnitudes
    _check(_gram_at(level, x)[0], list(x[0]))


@pytest.mark.parametrize(
    "level,p",
    [("avx512", p) for p in (33, 37, 40, 45, 48, 49, 57, 64)] + [("avx2", p) for p in (33, 35, 36)],
)
def test_float32_keeps_the_register_kernel_above_p_32(level, p):
    # p = 33 to 64 on AVX-512, 33 to 36 on AVX2: the register kernel's accuracy class (128
    # products per float32 partial sum) and the same bits on 1 thread as on all
    if level not in simd_levels():
        pytest.skip(f"the CPU has no {level}")
    rng = np.random.default_rng(p)
    n = 20_000 + p
    x = rng.standard_normal((1, p, n)).astype(np.float32)
    x[0, : p // 3] *= 1e3
    g = _gram_at(level, x)[0]
    _check(g, list(x[0]))
    flagcore.set_num_threads(1)
    try:
        np.testing.assert_array_equal(_gram_at(level, x)[0], g)
    finally:
        flagcore.set_num_threads(0)


@pytest.mark.parametrize("level", simd_levels())
@pytest.mark.parametrize(
    "n", [0, 1, 15, 16, 17, 255, 256, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4099, 8193]
)
def test_column_counts_around_vector_and_chunk_widths(level, n):
    rng = np.random.default_rng(n)
    for p in (5, 16, 30):
        x = rng.standard_normal((1, p, n)).astype(np.float32)
        g = _gram_at(level, x)[0]
        if n == 0:
            np.testing.assert_array_equal(g, np.zeros((p, p)))
        else:
            _check(g, list(x[0]))


@pytest.mark.parametrize("level", simd_levels())
def test_rows_anywhere_in_memory(level):
    # separate arrays, each starting one float past an aligned address, of a list input
    rng = np.random.default_rng(7)
    p, n = 23, 5003
    bufs = [rng.standard_normal(n + 1).astype(np.float32) for _ in range(p)]
    rows = [b[1:] for b in bufs]
    _check(_gram_at(level, rows)[0], rows)


def test_batch_and_thread_count_give_the_same_bits():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 30, 200_003)).astype(np.float32)  # several column parts
    try:
        flagcore.set_num_threads(1)
        g1 = _core.gram(x)
        singles = [_core.gram(x[q : q + 1])[0] for q in range(3)]
        flagcore.set_num_threads(2)
        g2 = _core.gram(x)
    finally:
        flagcore.set_num_threads(0)
    np.testing.assert_array_equal(g1, g2)
    for q in range(3):
        np.testing.assert_array_equal(g1[q], singles[q])
        _check(g1[q], list(x[q]))


@pytest.mark.parametrize("level", simd_levels())
@pytest.mark.parametrize(("p", "n"), [(16, 32768), (32, 8192), (48, 4097), (64, 4096), (64, 30001)])
def test_problems_of_one_part_split_by_work_keep_the_bits_and_the_class(level, p, n):
    # At most 32768 columns and at least 2 * 2^22 multiply-adds: cut into 2-4 column parts (by n
    # and p, never by the thread count), so 1, 2 and 3 threads give the same bits, and every
    # part boundary stays within the accuracy class.
    rng = np.random.default_rng(p * n)
    x = rng.standard_normal((1, p, n)).astype(np.float32)
    x[0, : p // 4] *= 1e3
    out = []
    try:
        for threads in (1, 2, 3):
            flagcore.set_num_threads(threads)
            out.append(_gram_at(level, x)[0])
    finally:
        flagcore.set_num_threads(0)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])
    _check(out[0], list(x[0]))


def test_overflow_and_underflow_rows_recomputed_in_float64():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 30, 3001)).astype(np.float32)
    x[0, 2] *= np.float32(1e25)  # float32 products overflow
    x[0, 7] *= np.float32(1e-25)  # float32 products underflow
    g = _core.gram(x)[0]
    x64 = x[0].astype(np.float64)
    ref = x64 @ x64.T
    for i in (2, 7):  # these rows (and columns) in float64: exact to float64 rounding
        np.testing.assert_allclose(g[i], ref[i], rtol=1e-12, atol=0)
        np.testing.assert_allclose(g[:, i], ref[:, i], rtol=1e-12, atol=0)
    assert np.all(np.isfinite(g)) and g[7, 7] > 0
    _check(g, list(x[0]))
