"""The packed FMA Gram kernels (float32, p > 32): AVX-512 (csrc/flag/gram_packed_avx512.cpp, p > 48;
p = 33 to 48 run the register-tiled kernel there) and AVX2 (csrc/flag/gram_packed_avx2.cpp, every
p > 32; forced on AVX-512 CPUs with `set_simd_level("avx2")`): against float64 NumPy within the
float32 accuracy class, identical for any thread count and memory layout, row tails and column
tails of every length, batches and column groups, and the same accuracy as the OpenBLAS path they
replace (the "generic" level keeps it)."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from flagcore import _core

SUPPORTED = flagcore.build_info().get("simd_supported")
AVX512 = SUPPORTED == "avx512"
AVX2 = SUPPORTED in ("avx2", "avx512")
# the levels whose packed kernel this CPU runs ("auto": the best one, AMX tiles where present);
# "avx2" forced only where it differs from "auto" (on an AVX2-only CPU they run the same code)
LEVELS = ["auto"] + (["avx2"] if AVX512 else [])


def _data(b, p, n, seed):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 100.0, size=(b, p, 1))  # rows of very different norms
    return (rng.standard_normal((b, p, n)) * scale).astype(np.float32)


def _check(g, x):
    ref = np.einsum("qik,qjk->qij", x.astype(np.float64), x.astype(np.float64))
    d = np.sqrt(np.einsum("qii->qi", ref))
    bound = d[:, :, None] * d[:, None, :]  # Cauchy-Schwarz: >= sum |x_ik x_jk|
    # float32 partial sums of at most 512 products, summed in float64
    assert np.all(np.abs(g - ref) <= 2e-6 * bound)
    np.testing.assert_array_equal(g, np.swapaxes(g, 1, 2))


def _same_bits_for_threads(x, thread_counts):
    """The Gram of x on each thread count: within the float32 accuracy class and bitwise equal
    to the first; returns the first."""
    out = []
    for threads in thread_counts:
        flagcore.set_num_threads(threads)
        out.append(_core.gram(x))
    _check(out[0], x)
    for g in out[1:]:
        np.testing.assert_array_equal(g, out[0])
    return out[0]


@pytest.fixture
def level():
    yield
    _core.set_simd_level("auto")
    flagcore.set_num_threads(0)


@pytest.mark.parametrize(
    "b,p,n",
    [
        (1, 33, 1),
        (2, 63, 15),
        (1, 64, 17),
        (3, 65, 513),
        (1, 96, 1031),
        (1, 255, 3000),
        (2, 511, 700),
        (1, 40, 40_000),
        (1, 50, 40_000),  # the packed kernel with column groups
        (2, 520, 9_001),  # p >= 512: slices packed once, shared by the row parts; 2 runs
        (1, 1100, 300),
        (1, 1100, 1_100),  # 8 threads: 16 row parts in the AVX-512 shared driver (else 4)
        (1, 2048, 257),  # the largest p of the AVX2 kernel (2049 on: the OpenBLAS path)
    ],
)
@pytest.mark.parametrize("simd", LEVELS)
def test_matches_float64_and_is_layout_and_thread_independent(level, simd, b, p, n):
    _core.set_simd_level(simd)
    x = _data(b, p, n, seed=p + n)
    ref = _same_bits_for_threads(x, (1, 2, 3) + ((8,) if p >= 512 else ()))
    # the same rows anywhere in memory: a list of rows, a strided view
    wide = np.zeros((b, p, n + 5), np.float32)
    wide[:, :, 2 : n + 2] = x
    np.testing.assert_array_equal(_core.gram(wide[:, :, 2 : n + 2]), ref)
    if b == 1:
        np.testing.assert_array_equal(_core.gram(list(x[0]))[0], ref[0])


@pytest.mark.skipif(not AVX2, reason="the packed kernels need AVX2 or AVX-512")
@pytest.mark.parametrize("simd", LEVELS)
def test_every_last_tile_width_and_strip_phase(level, simd):
    """The AVX2 kernel's 16-row strips start at r0 = 16 s, whose remainder modulo the 6-column
    tiles (0, 4 or 2) sets where the strip's column tiles begin, and p modulo 6 sets how many
    columns its last tile multiplies (6, 4 or 2): p from 37 (the first packed p) to 100 covers
    every pair, against float64 and bitwise the same on 1, 2 and 3 threads (the row parts, so the
    first strip of each part, move with the thread count)."""
    _core.set_simd_level(simd)
    for p in range(37, 101):
        _same_bits_for_threads(_data(1, p, 300, seed=p), (1, 2, 3))


@pytest.fixture
def shared():
    yield
    _core.set_gram_packed_shared("auto")
    _core.set_simd_level("auto")
    flagcore.set_num_threads(0)


@pytest.mark.skipif(not AVX2, reason="the packed kernels need AVX2 or AVX-512")
@pytest.mark.parametrize(
    "b,p,n",
    [
        (1, 512, 700),  # the shared driver's first p
        (2, 520, 1_500),  # two problems, 3 slices: two run buffers in turn
        (1, 1030, 513),  # row tails of the last strip, a 1-column last slice
    ],
)
def test_shared_driver_any_split_same_bits(shared, b, p, n):
    """The shared-slice driver (the AVX-512 kernel's from p = 512; here forced for the AVX2
    kernel too, so that AVX2-only CIs run it) cuts the rows into more parts with more threads
    (two per thread from three threads on): every split must give the same bits, within the
    float32 accuracy class."""
    _core.set_simd_level("avx2")
    _core.set_gram_packed_shared("on")
    _same_bits_for_threads(_data(b, p, n, seed=p + 3 * n), (1, 2, 3, 8))


def test_set_gram_packed_shared_refuses_unknown_modes():
    with pytest.raises(
        ValueError, match="set_gram_packed_shared: mode must be 'auto' or 'on', got 'off'"
    ):
        _core.set_gram_packed_shared("off")


@pytest.mark.skipif(not AVX2, reason="the packed kernels need AVX2 or AVX-512")
@pytest.mark.parametrize("p,n", [(40, 20_000), (60, 20_000), (200, 5_000), (600, 3_000)])
def test_same_accuracy_class_as_the_openblas_path(level, p, n):
    x = _data(1, p, n, seed=7)
    ref = x[0].astype(np.float64) @ x[0].astype(np.float64).T
    errs = {}
    # generic: the OpenBLAS path above p = 32
    for name in ["generic", "avx2"] + (["avx512"] if AVX512 else []):
        _core.set_simd_level(name)
        g = _core.gram(x)
        _check(g, x)
        errs[name] = float(np.abs(g[0] - ref).max() / np.abs(ref).max())
    for name in errs:
        assert errs[name] <= 4 * errs["generic"] + 1e-9, errs


@pytest.mark.parametrize("simd", LEVELS)
def test_nonfinite_and_overflowing_rows(level, simd):
    _core.set_simd_level(simd)
    x = _data(1, 70, 2000, seed=9)
    x[0, 5] *= np.float32(1e25)  # float32 products overflow: recomputed in float64
    x[0, 9, 3] = np.inf
    g = _core.gram(x)[0]
    ref = x[0].astype(np.float64) @ x[0].astype(np.float64).T
    assert abs(g[5, 5] - ref[5, 5]) <= 1e-6 * ref[5, 5]
    assert not np.isfinite(g[9, 9])
    keep = [i for i in range(70) if i != 9]
    d = np.sqrt(np.diag(ref)[keep])
    assert np.all(np.abs(g[np.ix_(keep, keep)] - ref[np.ix_(keep, keep)]) <= 2e-6 * np.outer(d, d))
