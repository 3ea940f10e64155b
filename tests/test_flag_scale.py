"""FA at large p (the LAPACK eigensolver and the OpenBLAS Gram above p = 32): against the float64
SVD reference, identical for 1 and 2 threads, memory that follows the work, lam refused above
the float64 range."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from conftest import make_gradients
from flagcore import _core
from flagcore._reference import flag_aggregate_reference as reference


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize(
    "p,n,r,max_iter,byz",
    [
        (33, 300, 16, 3, 4),
        (64, 500, 32, 1, 8),
        (257, 200, 40, 3, 30),
        (1024, 200, 64, 1, 100),
        (1024, 200, 64, 3, 100),
        (1024, 120, 512, 2, 100),
    ],
)  # the last: n < r, rank-deficient
def test_large_p_matches_reference(p, n, r, max_iter, byz):
    x = make_gradients(p, n, byzantine=byz, seed=p + max_iter)
    agg, info = flagcore.flag_aggregate(x, r=r, max_iter=max_iter, return_info=True)
    ref = reference(x, r, 0.0, max_iter)
    assert _rel(agg, ref["aggregate"]) < 1e-7
    # rank-deficient: every worker lies in the subspace, F = sum sqrt(1 - v_i) is ~sqrt(rounding)
    np.testing.assert_allclose(
        info.objective, ref["objective"], rtol=1e-8, atol=1e-4 if n < r else 0
    )
    np.testing.assert_allclose(info.reconstruction_ratios, ref["ratios"], atol=1e-8)
    assert info.rank == min(r, n)
    # properties: ratios in [0, 1], the aggregate is sum_i c_i g_i
    assert np.all(info.reconstruction_ratios > -1e-12) and np.all(
        info.reconstruction_ratios < 1 + 1e-12
    )
    np.testing.assert_allclose(
        info.coefficients @ x, agg, rtol=1e-10, atol=1e-12 * np.abs(agg).max()
    )


def test_large_p_pairwise_term_matches_reference():
    p, n = 40, 60
    x = make_gradients(p, n, byzantine=5, seed=1)
    agg, info = flagcore.flag_aggregate(x, r=6, lam=3.0, max_iter=3, return_info=True)
    ref = reference(x, 6, 3.0, 3)
    assert _rel(agg, ref["aggregate"]) < 1e-7
    np.testing.assert_allclose(info.objective, ref["objective"], rtol=1e-8)


@pytest.mark.parametrize(
    "p,n,dtype",
    [
        (15, 70_001, np.float32),
        (64, 100_003, np.float32),
        (300, 5_000, np.float32),
        (130, 9_000, np.float64),
    ],
)
def test_identical_for_one_and_two_threads(p, n, dtype):
    x = make_gradients(p, n, byzantine=p // 5, seed=p, dtype=dtype)
    lst = list(x)  # row pointers anywhere: the packed Gram path
    out = {}
    try:
        for t in (1, 2):
            flagcore.set_num_threads(t)
            out[t] = (
                flagcore.flag_aggregate(x, max_iter=3, return_info=True),
                flagcore.flag_aggregate(lst, max_iter=2),
                _core.gram(x[None]),
            )
    finally:
        flagcore.set_num_threads(0)
    (a1, i1), l1, g1 = out[1]
    (a2, i2), l2, g2 = out[2]
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(i1.coefficients, i2.coefficients)
    np.testing.assert_array_equal(i1.objective, i2.objective)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("p", [33, 200])
def test_blas_gram_accuracy_strided_and_packed(p):
    x = make_gradients(p, 20_011, byzantine=3, seed=2, dtype=np.float32)
    ref = x.astype(np.float64) @ x.astype(np.float64).T
    bound = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))  # Cauchy-Schwarz: sum |x_i x_j|
    for g in (
        _core.gram(x[None])[0],  # strided view: BLAS in place
        _core.gram(list(x))[0],  # row pointers: packed per chunk
        _core.gram(np.ascontiguousarray(x[:, ::-1])[None, :, ::-1].copy())[0],
    ):
        assert np.all(np.abs(g - ref) <= 2e-6 * bound)
        np.testing.assert_array_equal(g, g.T)


def test_blas_gram_overflow_rows_recomputed_and_nan_excluded():
    x = make_gradients(40, 3000, seed=4, dtype=np.float32)
    x[3] *= np.float32(1e25)  # float32 products overflow, data finite
    x[7, 11] = np.nan
    g = _core.gram(x[None])[0]
    ref = x.astype(np.float64) @ x.astype(np.float64).T
    assert np.isfinite(g[3, 3]) and abs(g[3, 3] - ref[3, 3]) < 1e-6 * ref[3, 3]
    agg, info = flagcore.flag_aggregate(x, return_info=True)
    assert list(np.flatnonzero(info.excluded)) == [7] and np.all(np.isfinite(agg))


def test_max_iter_huge_does_not_preallocate_history():
    x = make_gradients(50, 200, byzantine=5, seed=3)
    xb = np.stack([x] * 64)
    _, info = flagcore.flag_aggregate(
        xb, max_iter=10**6, return_info=True
    )  # 64 x 1e6 doubles would be 512 MB
    assert info.objective.shape == (64, int(info.iterations.max()) + 1)
    assert info.iterations.max() < 10**6
    single = flagcore.flag_aggregate(x, max_iter=10**6, return_info=True)[1]
    assert len(single.objective) == single.iterations + 1


def test_lam_range():
    x = make_gradients(6, 50, byzantine=1, seed=5)
    agg = flagcore.flag_aggregate(x, r=2, lam=1e150)
    assert np.all(np.isfinite(agg)) and np.abs(agg).max() > 0  # not the silent all-zero answer
    with pytest.raises(ValueError, match="flag_aggregate: lam must be <= 1e"):
        flagcore.flag_aggregate(x, r=2, lam=1e156)
    with pytest.raises(ValueError, match="lam must be"):
        _core.FlagParams(r=2, lam=1e200)


@pytest.mark.parametrize("p", [2, 40])
def test_tiny_float32_rows_are_recomputed(p):
    """float32 products of values below ~1e-19 underflow: such rows are redone in float64."""
    rng = np.random.default_rng(p)
    x = (rng.standard_normal((p, 37)) * 1e-38).astype(np.float32)
    x[1] = 0.0  # an exactly zero row stays zero
    g = _core.gram(x[None])[0]
    ref = x.astype(np.float64) @ x.astype(np.float64).T
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=0)
