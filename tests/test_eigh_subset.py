"""The FA's subset eigensolver above p = 32 (LAPACK dsytrd, then dstemr for want <= p/8 or
divide and conquer above: dstedc below p = 64, from there the two halves by dstedc and a last
merge that forms the wanted vectors only; then Q applied to the wanted vectors only, on fixed
column blocks run in parallel: LAPACK dormtr below p = 512, from there blocks of 64 reflectors by
dlarfb with their T factors formed once)
against numpy.linalg.eigh on adversarial spectra up to p = 1024, bitwise the same for 1, 2 and 3
threads; and the IRLS built on it (P = L^(1/2) U^T D^(-1) instead of C^T G) against the float64
SVD reference, with excluded, zero and duplicate workers. Vectors of repeated eigenvalues are not
unique, so vectors are checked through residuals, orthonormality and the projector where the
spectrum has a gap at the cut."""

from __future__ import annotations

import os

import numpy as np
import pytest

import flagcore
from conftest import make_gradients
from flagcore import _core
from flagcore._reference import flag_aggregate_reference as reference
from test_eig import _sym  # a symmetric matrix with the given spectrum


def _spectrum(kind, p, seed):
    rng = np.random.default_rng(seed)
    if kind == "fa":  # a normalised Gram of n = 4p random vectors: a Marchenko-Pastur bulk + spikes
        x = rng.standard_normal((p, 4 * p)) + 0.3 * rng.standard_normal(4 * p)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return np.linalg.eigvalsh(x @ x.T)
    if kind == "clustered":  # four tight clusters (1e-13 apart inside each)
        base = np.repeat([10.0, 5.0, 2.0, 1.0], -(-p // 4))[:p]
        return base + 1e-13 * rng.standard_normal(p)
    if kind == "repeated":  # identical workers: exactly repeated values, the rest zero
        v = np.zeros(p)
        v[: p // 3] = 3.0
        v[p // 3 : 2 * p // 3] = 2.0
        return v
    if kind == "rank5":  # rank-deficient
        v = np.zeros(p)
        v[:5] = [9.0, 7.0, 4.0, 1.0, 1e-9]
        return v
    if kind == "graded":  # 16 orders of magnitude
        return np.logspace(0, -16, p)
    raise ValueError(kind)


def _check(a, want, evals, vecs, ref):
    p = a.shape[0]
    w, v = ref
    top = w[::-1]
    scale = max(np.abs(top).max(), 1e-300)
    tol = 1e-12 * scale * max(1.0, np.sqrt(p) / 4)
    np.testing.assert_allclose(evals, top[:want], rtol=0, atol=tol)
    assert np.all(np.diff(evals) <= 0)
    assert vecs.shape == (p, want)
    assert np.abs(vecs.T @ vecs - np.eye(want)).max() < 1e-11
    assert np.abs(a @ vecs - vecs * evals).max() < tol
    if want < p and top[want - 1] - top[want] > 1e-6 * scale:  # a gap: the subspace is unique
        u = v[:, ::-1][:, :want]
        assert np.abs(u @ u.T - vecs @ vecs.T).max() < 1e-9


def _wants(p):
    # both sides of the MRRR / divide-and-conquer switch (p / 8), one and several dormtr blocks
    # of at most 256 columns, all pairs
    return sorted({1, p // 8, p // 8 + 1, p // 2, min(p, 257), min(p, 600), p})


@pytest.mark.parametrize("kind", ["fa", "clustered", "repeated", "rank5", "graded"])
# from 64 the own last merge; 401 = 200 + 201; from 512 the own back-transformation (520: 519
# reflectors, the last block of 7)
@pytest.mark.parametrize("p", [40, 64, 300, 401, 520])
def test_subset_eigh_adversarial(kind, p):
    a = _sym(_spectrum(kind, p, seed=p), seed=p + 1)
    ref = np.linalg.eigh(a)
    for want in _wants(p):
        evals, vecs = _core.eigh_top(a, want)
        _check(a, want, evals, vecs, ref)


@pytest.mark.parametrize("cut", [200, 150])
def test_subset_eigh_block_diagonal(cut):
    # two independent blocks: at cut = 200 (= p // 2, where the last merge cuts) the rank-one
    # term is zero and every value deflates; at 150 the cut lies inside the second block
    p = 401
    a = np.zeros((p, p))
    a[:cut, :cut] = _sym(_spectrum("fa", cut, seed=1), seed=2)
    a[cut:, cut:] = _sym(_spectrum("fa", p - cut, seed=3), seed=4) * 1.5
    ref = np.linalg.eigh(a)
    for want in (60, 200, 201, 401):
        evals, vecs = _core.eigh_top(a, want)
        _check(a, want, evals, vecs, ref)


@pytest.mark.parametrize("kind", ["zero", "diagonal", "identity"])
def test_subset_eigh_trivial_tridiagonals(kind):
    # the own last merge on degenerate input: an all-zero T (no scale: the dstedc fallback), a
    # diagonal matrix (every off-diagonal zero: nothing to merge), all values equal
    p = 150
    rng = np.random.default_rng(8)
    a = {
        "zero": np.zeros((p, p)),
        "diagonal": np.diag(rng.permutation(np.linspace(-3.0, 5.0, p))),
        "identity": np.eye(p) * 2.5,
    }[kind]
    ref = np.linalg.eigh(a)
    for want in (20, 75, 150):
        evals, vecs = _core.eigh_top(a, want)
        _check(a, want, evals, vecs, ref)


def test_subset_eigh_p1024_fa_spectrum():
    # (tests/test_eig.py covers p = 1024 with clusters and 200 exactly repeated values)
    a = _sym(_spectrum("fa", 1024, seed=3), seed=4)
    ref = np.linalg.eigh(a)
    for want in (128, 129, 600):
        evals, vecs = _core.eigh_top(a, want)
        _check(a, want, evals, vecs, ref)


def _with_threads(n, fn):
    try:
        flagcore.set_num_threads(n)
        return fn()
    finally:
        flagcore.set_num_threads(0)


@pytest.mark.parametrize(
    "p,want", [(300, 37), (300, 150), (401, 200), (513, 300), (600, 520), (700, 64)]
)
def test_subset_eigh_identical_for_any_thread_count(p, want):
    a = _sym(_spectrum("fa", p, seed=p), seed=p + 7)
    out = [_with_threads(t, lambda: _core.eigh_top(a, want)) for t in (1, 2, 3)]
    for evals, vecs in out[1:]:
        np.testing.assert_array_equal(evals, out[0][0])
        np.testing.assert_array_equal(vecs, out[0][1])


def _gram(x):
    x = np.asarray(x, np.float64)
    return (x @ x.T)[None]


def test_irls_excluded_zero_and_duplicate_workers():
    p, n, r = 200, 400, 100
    x = make_gradients(p, n, byzantine=20, seed=11)
    x[3] = 0.0  # a zero gradient
    x[7] = x[8] = x[9]  # duplicates: rank-deficient Gram
    x[50, 5] = np.nan  # excluded
    agg, info = flagcore.flag_aggregate(x, r=r, max_iter=4, return_info=True)
    ref = reference(x, r, 0.0, 4)
    assert np.array_equal(info.excluded, ref["excluded"])
    np.testing.assert_allclose(
        agg, ref["aggregate"], rtol=0, atol=1e-8 * np.abs(ref["aggregate"]).max()
    )
    np.testing.assert_allclose(info.objective, ref["objective"], rtol=1e-8)
    np.testing.assert_allclose(info.reconstruction_ratios, ref["ratios"], atol=1e-8)
    assert info.coefficients[50] == 0.0 and info.reconstruction_ratios[50] == 0.0


def test_irls_several_column_blocks_identical_for_any_thread_count_and_batch():
    # r = 300 > 256: the back-transformation runs as two column blocks, in parallel for one
    # problem, serially inside each problem of a batch; all the same bits, and the reference
    p, n, r = 600, 700, 300
    x = make_gradients(p, n, byzantine=100, seed=5)
    g = _gram(x)
    prm = _core.FlagParams(r=r, max_iter=3, tol=0.0)
    one = [_with_threads(t, lambda: _core.flag_irls(g, prm)) for t in (1, 2)]
    batch = _with_threads(2, lambda: _core.flag_irls(np.concatenate([g, g[:, ::-1, ::-1]]), prm))
    for key in ("coefficients", "reconstruction_ratios", "weights", "objective"):
        np.testing.assert_array_equal(one[0][key], one[1][key])
        np.testing.assert_array_equal(one[0][key][0], batch[key][0])
    ref = reference(x, r, 0.0, 3, tol=0.0)
    agg = one[0]["coefficients"][0] @ x
    np.testing.assert_allclose(
        agg, ref["aggregate"], rtol=0, atol=1e-8 * np.abs(ref["aggregate"]).max()
    )
    np.testing.assert_allclose(one[0]["objective"][0], ref["objective"], rtol=1e-9)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_irls_frees_large_eigensolver_buffers_after_the_call():
    # the IRLS steps share the eigensolver's buffers (about 8 p^2 doubles from p = 64 on: 280 MB
    # at p = 2100); they must be gone when flag_irls returns, not kept by the calling thread
    p = 2100
    rng = np.random.default_rng(0)
    small = _gram(rng.standard_normal((400, 64)))
    prm = _core.FlagParams(r=200, max_iter=2, tol=0.0)
    _with_threads(1, lambda: _core.flag_irls(small, prm))  # warm-up: pool threads, small buffers
    g = _gram(rng.standard_normal((p, 64)))
    before = _rss_bytes()
    big = _core.FlagParams(r=p // 2, max_iter=2, tol=0.0)
    out = _with_threads(1, lambda: _core.flag_irls(g, big))
    after = _rss_bytes()
    assert out["iterations"][0] == 2
    assert after - before < 64 << 20, f"RSS grew by {(after - before) >> 20} MiB"
