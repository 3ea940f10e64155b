"""The top eigenpair of the p-space rules at large p (flagcore.rules.selection.lanczos_top /
top_eigenpair: Lanczos with full reorthogonalisation from p = LANCZOS_MIN_P, the native
eigensolver below it or when Lanczos does not converge), against numpy.linalg.eigh in float64:
adversarial spectra, exact and near multiplicities, rank deficiency, indefinite matrices,
non-finite entries; thread-count independence; CAF and DnC at p >= LANCZOS_MIN_P against their
n-space references; the native symmetric product (core.symv) they run on."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from flagcore import _reference_rules as ref
from flagcore.rules import selection as sel


def _with_spectrum(evals: np.ndarray, seed: int) -> np.ndarray:
    p = evals.size
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    a = (q * evals) @ q.T
    return np.ascontiguousarray((a + a.T) / 2)


def _op(a: np.ndarray):
    return lambda v: a @ v


P = 400  # lanczos_top itself at a size where numpy's eigh is quick


@pytest.mark.parametrize(
    "name",
    ["gap", "clustered-bulk", "rank-5", "indefinite", "negative-definite", "low-rank-plus-noise"],
)
def test_lanczos_top_matches_numpy_eigh(name: str) -> None:
    rng = np.random.default_rng(len(name))
    ev = {
        "gap": np.concatenate([[10.0], rng.uniform(0, 5, P - 1)]),
        "clustered-bulk": np.concatenate([[2.0], 1.0 + 1e-3 * rng.standard_normal(P - 1)]),
        "rank-5": np.concatenate([[9.0, 7.0, 5.0, 3.0, 1.0], np.zeros(P - 5)]),
        "indefinite": np.concatenate([[4.0, -6.0], rng.uniform(-3, 3, P - 2)]),
        "negative-definite": np.concatenate([[-1.0], rng.uniform(-9, -2, P - 1)]),
        "low-rank-plus-noise": np.concatenate([[50.0, 30.0], rng.uniform(0, 1e-3, P - 2)]),
    }[name]
    a = _with_spectrum(ev, 1)
    w, v = np.linalg.eigh(a)
    got = sel.lanczos_top(_op(a), P, max_iter=P)
    assert got is not None
    lam, u = got
    assert abs(lam - w[-1]) <= 1e-12 * np.abs(w).max()
    assert min(np.abs(u - v[:, -1]).max(), np.abs(u + v[:, -1]).max()) < 1e-10
    assert abs(np.linalg.norm(u) - 1.0) < 1e-14


def test_a_repeated_top_eigenvalue_gives_a_vector_of_its_eigenspace() -> None:
    ev = np.concatenate([[3.0, 3.0, 3.0], np.linspace(0.0, 1.0, P - 3)])
    a = _with_spectrum(ev, 2)
    lam, u = sel.lanczos_top(_op(a), P)
    assert abs(lam - 3.0) < 1e-13
    assert np.linalg.norm(a @ u - lam * u) < 1e-12


def test_a_tiny_gap_converges_or_falls_back_to_the_eigensolver() -> None:
    # top two 1e-9 apart: Lanczos with few steps cannot separate them; top_eigenpair must
    # still return the eigensolver's accuracy (the eigenvalue to 1e-13 and a residual at
    # rounding level, whichever vector of the near-pair it is)
    ev = np.concatenate([[1.0, 1.0 - 1e-9], np.linspace(0.0, 0.9, 1100 - 2)])
    a = _with_spectrum(ev, 3)
    assert sel.lanczos_top(_op(a), 1100, max_iter=20) is None  # not converged in 20 steps
    lam, u = sel.top_eigenpair(a)
    assert abs(lam - 1.0) < 1e-12
    assert np.linalg.norm(a @ u - lam * u) < 1e-8  # within the 1e-9 pair


def test_zero_and_non_finite_matrices() -> None:
    lam, u = sel.lanczos_top(_op(np.zeros((50, 50))), 50)
    assert lam == 0.0 and abs(np.linalg.norm(u) - 1.0) < 1e-15
    a = np.eye(50)
    a[3, 7] = a[7, 3] = np.nan
    assert sel.lanczos_top(_op(a), 50) is None
    lam, _ = sel.top_eigenpair(np.full((1000, 1000), np.inf))  # the eigensolver's NaN
    assert np.isnan(lam)


def _start(p: int) -> np.ndarray:
    r = np.random.default_rng(sel._LANCZOS_SEED).standard_normal(p)
    return r / np.linalg.norm(r)


@pytest.mark.parametrize("case", ["start-is-an-eigenvector", "low-rank-top-orthogonal-to-start"])
def test_a_top_eigenvector_orthogonal_to_the_start_is_still_found(case: str) -> None:
    # the start's Krylov space is invariant without the top pair: its pairs are exact, and
    # before the restart lanczos_top returned the space's top (1.0) as the operator's (review,
    # 2026-12-05); a restart from a second direction orthogonal to that space finds 2.0
    r = _start(P)
    q, _ = np.linalg.qr(np.column_stack([r, np.random.default_rng(4).standard_normal((P, 4))]))
    if case == "start-is-an-eigenvector":
        ev = np.concatenate([[1.0, 2.0], np.linspace(0.0, 0.5, P - 2)])  # r's eigenvalue 1
        rest = np.random.default_rng(5).standard_normal((P, P - 5))
        q, _ = np.linalg.qr(np.column_stack([q, rest]))
        a = (q * ev) @ q.T
    else:  # rank 4: the top vector q[:, 1] is orthogonal to r, the others are not
        v = q[:, 1:5].copy()
        v[:, 1:] += 0.3 * r[:, None]
        v, _ = np.linalg.qr(v)
        a = (v * np.array([2.0, 1.0, 0.7, 0.4])) @ v.T
    a = (a + a.T) / 2
    w, vec = np.linalg.eigh(a)
    assert abs(vec[:, -1] @ r) < 1e-12 and w[-1] > w[-2] + 0.5
    lam, u = sel.lanczos_top(_op(a), P)
    assert abs(lam - w[-1]) <= 1e-12
    assert np.linalg.norm(a @ u - lam * u) < 1e-12


@pytest.mark.parametrize("scale", [1e-200, 1e-170, 1e150, 1e250])
def test_tiny_and_huge_operators_give_the_scaled_pair(scale: float) -> None:
    # below ~1e-154 the squares of the products underflowed: beta read 0, the start's Krylov
    # space passed for invariant, and its Rayleigh quotient came back (review, 2026-12-05)
    a = _with_spectrum(np.concatenate([[2.0, 1.0], np.linspace(0.0, 0.5, P - 2)]), 6)
    w, v = np.linalg.eigh(a)
    lam, u = sel.lanczos_top(_op(a * scale), P)
    assert abs(lam / scale - w[-1]) <= 1e-12
    assert min(np.abs(u - v[:, -1]).max(), np.abs(u + v[:, -1]).max()) < 1e-10


def test_top_eigenpair_does_not_depend_on_the_thread_count() -> None:
    x = np.random.default_rng(5).standard_normal((1100, 300))
    from flagcore._backend import core

    g = core.gram(x[None])[0]
    out = []
    for t in (1, 2, 3):
        flagcore.set_num_threads(t)
        lam, u = sel.top_eigenpair(g)
        out.append((lam, u.tobytes()))
    flagcore.set_num_threads(2)
    assert out[0] == out[1] == out[2]
    w = np.linalg.eigvalsh(g)
    assert abs(out[0][0] - w[-1]) <= 1e-12 * w[-1]


def test_dnc_selection_ignores_a_coordinate_shared_by_every_worker() -> None:
    # a coordinate ~1e90 times the workers' spread, the same on every worker, changes no centred
    # row; DnC divided by the largest |x| before centring, so the centred Gram was ~1e-196, its
    # Lanczos pair the start's Rayleigh quotient, and 92 of 100 attackers were kept (review,
    # 2026-12-05)
    p, n, f = 1000, 1000, 100  # n >= p: the p x p side, Lanczos
    x = ref.make_gradients(p, n, seed=8, byzantine=f, dtype=np.float64)
    shifted = x.copy()
    shifted[:, 0] = 2.0**300  # one constant column
    a = flagcore.aggregate(x, "dnc", f=f, sub_dim=n, return_info=True)[1]
    b = flagcore.aggregate(shifted, "dnc", f=f, sub_dim=n, return_info=True)[1]
    np.testing.assert_array_equal(a.selected, b.selected)
    assert not np.any(np.asarray(b.selected)[p - f :])  # the attackers (the last f rows) are out


def test_caf_and_dnc_from_lanczos_match_their_references() -> None:
    assert sel.LANCZOS_MIN_P <= 1100
    for p, n in ((1100, 40), (1100, 1200)):  # rank n < p (invariant Krylov space), full rank
        x = ref.make_gradients(p, n, seed=p + n, byzantine=p // 10, dtype=np.float64)
        f = p // 10
        np.testing.assert_allclose(flagcore.aggregate(x, "caf", f=f), ref.caf_ref(x, f), rtol=1e-9)
    # DnC's p x p side (n >= p) at p = 1100
    out = flagcore.aggregate(x, "dnc", f=f)
    np.testing.assert_allclose(out, ref.dnc_ref(x, f, [np.arange(n)])[0], rtol=1e-12)


@pytest.mark.parametrize("p", [1, 7, 256, 257, 511, 512, 1000])
def test_symv_matches_numpy_and_reads_one_triangle(p: int) -> None:
    from flagcore._backend import core

    rng = np.random.default_rng(p)
    a = rng.standard_normal((p, p))
    a = (a + a.T) / 2
    x = rng.standard_normal(p)
    want = a @ x
    got = []
    for t in (1, 2, 3):
        flagcore.set_num_threads(t)
        got.append(core.symv(a, x))
    flagcore.set_num_threads(2)
    assert got[0].tobytes() == got[1].tobytes() == got[2].tobytes()
    np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=1e-12 * np.abs(a).sum(axis=1).max())
    lower_nan = a.copy()
    lower_nan[np.tril_indices(p, -1)] = np.nan  # the strict lower triangle is never read
    assert core.symv(lower_nan, x).tobytes() == got[0].tobytes()


def test_symv_refuses_bad_shapes() -> None:
    from flagcore._backend import core

    with pytest.raises(
        ValueError, match=r"symv: a must be a square \(p, p\) float64 matrix .*got shape \(3, 4\)"
    ):
        core.symv(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"symv: x must be a \(3,\) vector, got shape \(4,\)"):
        core.symv(np.zeros((3, 3)), np.zeros(4))
