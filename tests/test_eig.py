"""The FA's host eigensolver (LAPACK dsyevr / dsyevd from the private OpenBLAS, used above
p = 32) against numpy.linalg.eigh on adversarial spectra: clustered, repeated, rank-deficient,
graded, up to p = 1024. Vectors of repeated eigenvalues are not unique, so the checks are the
eigen-equation residual, orthonormality, the eigenvalues, and the projector onto the top
subspace wherever the spectrum has a gap at its edge."""

from __future__ import annotations

import numpy as np
import pytest

from flagcore import _core


def _sym(evals, seed):
    rng = np.random.default_rng(seed)
    p = len(evals)
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    a = (q * evals) @ q.T
    return (a + a.T) / 2


def _spectrum(kind, p, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal(p)
    if kind == "clustered":  # three tight clusters (1e-13 apart inside each)
        base = np.repeat([10.0, 5.0, 1.0], -(-p // 3))[:p]
        return base + 1e-13 * rng.standard_normal(p)
    if kind == "repeated":  # identical workers: a few exactly repeated values, the rest zero
        v = np.zeros(p)
        v[: p // 4] = 3.0
        v[p // 4 : p // 2] = 2.0
        return v
    if kind == "rank3":  # rank-deficient: three non-zero values
        v = np.zeros(p)
        v[:3] = [7.0, 4.0, 1.0]
        return v
    if kind == "graded":  # 16 orders of magnitude
        return np.logspace(0, -16, p)
    raise ValueError(kind)


def _check(a, want, evals, vecs, ref_eigh=None):
    p = a.shape[0]
    w, v = np.linalg.eigh(a) if ref_eigh is None else ref_eigh
    ref = w[::-1]
    scale = max(np.abs(ref).max(), 1e-300)
    np.testing.assert_allclose(
        evals, ref[:want], rtol=0, atol=1e-12 * scale * max(1, np.sqrt(p) / 4)
    )
    assert vecs.shape == (p, want)
    assert np.abs(vecs.T @ vecs - np.eye(want)).max() < 1e-11
    resid = a @ vecs - vecs * evals
    assert np.abs(resid).max() < 1e-12 * scale * max(1, np.sqrt(p) / 4)
    if want < p and ref[want - 1] - ref[want] > 1e-6 * scale:  # a gap: the subspace is unique
        top = v[:, ::-1][:, :want]
        assert np.abs(top @ top.T - vecs @ vecs.T).max() < 1e-9


@pytest.mark.parametrize("kind", ["random", "clustered", "repeated", "rank3", "graded"])
@pytest.mark.parametrize("p", [33, 100, 257])
def test_eigh_top_adversarial_spectra(kind, p):
    a = _sym(_spectrum(kind, p, seed=p), seed=p + 1)
    ref = np.linalg.eigh(a)
    for want in sorted({1, 3, p // 4, p // 2, p}):  # both paths: MRRR (want <= p/8) and D&C
        evals, vecs = _core.eigh_top(a, want)
        _check(a, want, evals, vecs, ref)


def test_eigh_top_p1024_clustered_and_repeated():
    spec = _spectrum("clustered", 1024, seed=5)
    spec[:200] = 10.0  # 200 exactly repeated values across the MRRR subset boundary (256)
    a = _sym(spec, seed=6)
    ref = np.linalg.eigh(a)
    for want in (256, 512):
        evals, vecs = _core.eigh_top(a, want)
        _check(a, want, evals, vecs, ref)


def test_eigh_top_gram_of_identical_workers():
    """The FA's own hard case: a Gram of many identical (and zero) workers."""
    rng = np.random.default_rng(3)
    x = np.repeat(rng.standard_normal((4, 50)), 40, axis=0)  # 160 workers, 4 distinct
    x[::7] = 0.0
    g = x @ x.T
    evals, vecs = _core.eigh_top(g, 80)
    _check(g, 80, evals, vecs)
    assert np.sum(evals > 1e-12 * evals[0]) == 4


def test_eigh_top_nonfinite_and_bad_arguments():
    a = np.eye(40)
    a[3, 5] = a[5, 3] = np.nan
    evals, _ = _core.eigh_top(a, 4)
    assert np.all(np.isnan(evals))
    with pytest.raises(ValueError, match="want must be in"):
        _core.eigh_top(np.eye(40), 41)
    with pytest.raises(ValueError, match="square"):
        _core.eigh_top(np.zeros((3, 4)), 1)
