"""Distance-based rules (p-space) against float64 NumPy references on the full data."""

import numpy as np
import pytest

import flagcore
from flagcore import _reference_rules as ref


@pytest.mark.parametrize("p,f", [(3, 0), (7, 2), (15, 3), (15, 6), (20, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_krum_and_multi_krum(p, f, dtype):
    x = ref.make_gradients(p, 500, seed=p + f, byzantine=f, dtype=dtype)
    x64 = x.astype(np.float64)
    got, info = flagcore.aggregate(x, "krum", f=f, return_info=True)
    want, sel = ref.multi_krum_ref(x64, f, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.flatnonzero(info.selected).tolist() == sel.tolist()
    np.testing.assert_allclose(info.scores, ref.krum_scores_ref(x64, f), rtol=1e-6)
    for m in (None, 1, max(1, (p - f) // 2)):
        kw = {} if m is None else {"m": m}
        got, info = flagcore.aggregate(x, "multi_krum", f=f, return_info=True, **kw)
        want, sel = ref.multi_krum_ref(x64, f, p - f if m is None else m)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.flatnonzero(info.selected).tolist() == sel.tolist()
        assert not info.selected[p - f :].any() or f == 0  # the far-off attackers are never chosen


def test_krum_hand_computed():
    # points on a line at 0, 1, 2, 10; f = 0 -> p - f - 2 = 2 nearest: scores 1+4, 1+1, 1+4, 64+81
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    got, info = flagcore.aggregate(x, "krum", f=0, return_info=True)
    assert got.tolist() == [1.0]
    np.testing.assert_array_equal(info.scores, [5.0, 2.0, 5.0, 145.0])


@pytest.mark.parametrize("p,f", [(3, 0), (7, 1), (11, 2), (15, 3)])
def test_bulyan(p, f):
    x = ref.make_gradients(p, 400, seed=10 + p, byzantine=f, dtype=np.float64)
    got, info = flagcore.aggregate(x, "bulyan", f=f, return_info=True)
    want, sel = ref.bulyan_ref(x, f)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.flatnonzero(info.selected).tolist() == sel.tolist()


@pytest.mark.parametrize("p", [23, 60])
def test_bulyan_with_many_equal_distances(p):
    # small-integer workers: most pairwise distances tie, so the neighbour lists' order (ties
    # to the lower index) decides which workers Bulyan keeps
    x = np.random.default_rng(p).integers(0, 3, (p, 4)).astype(np.float64)
    f = (p - 3) // 4
    got, info = flagcore.aggregate(x, "bulyan", f=f, return_info=True)
    want, sel = ref.bulyan_ref(x, f)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.flatnonzero(info.selected).tolist() == sel.tolist()


def test_geometric_median_converges_to_reference():
    x = ref.make_gradients(15, 2000, seed=5, byzantine=3, dtype=np.float64)
    got, info = flagcore.aggregate(x, "geometric_median", return_info=True)
    z, obj = ref.geometric_median_ref(x)
    assert info.converged and 1 <= info.iterations < 1000
    assert abs(info.objective - obj) <= 1e-10 * obj
    true_obj = np.linalg.norm(x - got, axis=1).sum()
    assert true_obj <= obj * (1 + 1e-10)
    np.testing.assert_allclose(got, z, rtol=1e-5, atol=1e-5 * np.abs(z).max())


def test_geometric_median_at_large_p_matches_the_reference_on_any_thread_count():
    # p = 700 runs the blocked symmetric product on the threads (from p = 512) and the
    # row-wise data-point test; the same bits for 1, 2 and 3 threads
    x = ref.make_gradients(700, 60, seed=7, byzantine=70, dtype=np.float64)
    outs = []
    for t in (1, 2, 3):
        flagcore.set_num_threads(t)
        outs.append(flagcore.aggregate(x, "geometric_median", return_info=True))
    flagcore.set_num_threads(2)
    assert outs[0][0].tobytes() == outs[1][0].tobytes() == outs[2][0].tobytes()
    assert outs[0][1].objective == outs[1][1].objective == outs[2][1].objective
    got, info = outs[0]
    z, obj = ref.geometric_median_ref(x)
    assert info.converged
    assert np.linalg.norm(x - got, axis=1).sum() <= obj * (1 + 1e-8)
    np.testing.assert_allclose(got, z, rtol=1e-4, atol=1e-4 * np.abs(z).max())


def test_geometric_median_reports_non_convergence():
    x = ref.make_gradients(9, 300, seed=6, dtype=np.float64)
    _, info = flagcore.aggregate(x, "geometric_median", max_iter=1, tol=0.0, return_info=True)
    assert info.iterations == 1 and info.converged is False


def test_geometric_median_of_collinear_points_is_their_median():
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [50.0, 50.0]])
    got = flagcore.aggregate(x, "geometric_median", tol=1e-15, max_iter=100000)
    np.testing.assert_allclose(got, [2.0, 2.0], atol=1e-5)


@pytest.mark.parametrize("val", [3e38, 1e20])
def test_geometric_median_is_not_moved_by_huge_finite_workers(val):
    # Weiszfeld started at the mean: with two workers at +/-3e38 the p-space distances to it
    # summed terms of ~1e78, the honest ones were rounding noise, and the aggregate moved by
    # 1.6e21 (191 at +/-1e20). From the medoid's modified step the honest distances are exact.
    rng = np.random.default_rng(2)
    honest = (0.1 * rng.standard_normal((11, 47))).astype(np.float32)
    x = np.concatenate(
        [honest, np.full((1, 47), val, np.float32), np.full((1, 47), -val, np.float32)]
    )
    got, info = flagcore.aggregate(x, "geometric_median", return_info=True)
    xs = x.astype(np.float64)  # n-space Weiszfeld in float64 from the honest median
    z = np.median(honest.astype(np.float64), axis=0)
    for _ in range(3000):
        w = 1.0 / np.maximum(np.linalg.norm(xs - z, axis=1), 1e-12)
        z = (w @ xs) / w.sum()
    # the objective is ~4e39 here, so its relative change alone stopped the iteration after the
    # first step, 0.02 from the minimiser; the step-length test goes on (docs/scaling_rules.md)
    assert info.converged and info.iterations > 1
    np.testing.assert_allclose(got, z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize(
    "attack", [[[1e154, 0, 0], [-1e154, 0, 0]], [[1e154, 0, 0], [1e154, 1e150, 0]]]
)
def test_huge_finite_workers_get_infinite_krum_scores_and_are_never_chosen(first, attack):
    # norm ~1e154: G_ii = 1e308 is finite (not excluded), but two such distances summed
    # overflowed, Krum's exact sum gave inf - inf = NaN, and a NaN score at row 0 won Krum and
    # Bulyan's selection (review, 2026-12-05). The distances are now those of G scaled by a
    # power of two (distance_scale): the honest scores are the float64 reference's, the
    # attackers' are inf, and where the attackers sit changes nothing.
    rng = np.random.default_rng(3)
    honest = rng.standard_normal((9, 3))
    bad = np.array(attack, dtype=np.float64)
    x = np.concatenate([bad, honest] if first else [honest, bad])
    h = slice(2, 11) if first else slice(0, 9)
    f = 2
    out, info = flagcore.aggregate(x, "krum", f=f, return_info=True)
    scores = np.asarray(info.scores)
    assert np.all(np.isinf(np.delete(scores, np.arange(11)[h])))
    d2 = ((honest[:, None, :] - honest[None, :, :]) ** 2).sum(-1)  # n-space, float64
    nb = 11 - f - 2  # every honest worker's nearest nb others are honest
    want = np.sort(d2 + np.diag(np.full(9, np.inf)), axis=1)[:, :nb].sum(axis=1)
    np.testing.assert_allclose(scores[h], want, rtol=1e-12)
    np.testing.assert_array_equal(out, honest[np.argmin(want)])
    multi = flagcore.aggregate(x, "multi_krum", f=f)
    np.testing.assert_allclose(multi, honest[np.argsort(want, kind="stable")[: 11 - f]].mean(0))
    bulyan = flagcore.aggregate(x, "bulyan", f=f)
    assert np.all(np.abs(bulyan) <= np.abs(honest).max(axis=0))


@pytest.mark.parametrize("tau,iters", [(0.5, 1), (3.0, 3), (1e6, 2)])
def test_centered_clipping(tau, iters):
    x = ref.make_gradients(12, 300, seed=7, byzantine=2, dtype=np.float64)
    got = flagcore.aggregate(x, "centered_clipping", tau=tau, iterations=iters)
    np.testing.assert_allclose(
        got, ref.centered_clipping_ref(x, tau, iters), rtol=1e-10, atol=1e-12
    )
    v0 = x[:10].mean(axis=0) + 0.1
    got = flagcore.aggregate(x, "centered_clipping", tau=tau, iterations=iters, reference=v0)
    np.testing.assert_allclose(
        got, ref.centered_clipping_ref(x, tau, iters, v0), rtol=1e-10, atol=1e-12
    )


def test_centered_clipping_with_huge_tau_is_the_mean():
    x = ref.make_gradients(6, 100, seed=8, dtype=np.float64)
    np.testing.assert_allclose(
        flagcore.aggregate(x, "centered_clipping", tau=1e12, iterations=1),
        x.mean(axis=0),
        rtol=1e-12,
    )


def test_centered_clipping_previous_reference_is_stateful():
    x = ref.make_gradients(8, 100, seed=9, dtype=np.float64)
    cc = flagcore.rules.CenteredClipping(tau=1.0, iterations=1, reference="previous")
    a = cc(x)
    np.testing.assert_allclose(a, ref.centered_clipping_ref(x, 1.0, 1), rtol=1e-10)
    b = cc(x)
    np.testing.assert_allclose(b, ref.centered_clipping_ref(x, 1.0, 1, a), rtol=1e-10)


def test_nearly_equal_gradients_cancellation():
    """Distances from the Gram matrix: gradients equal up to 1e-6 of their norm still give
    Krum's choice and Multi-Krum's mean of the reference (differences 1e-12 relative in D)."""
    rng = np.random.default_rng(11)
    base = 100.0 * rng.standard_normal(1000)
    x = base + 1e-4 * rng.standard_normal((9, 1000))
    x[8] += 1e-2  # the odd one out, still nearly equal
    got, info = flagcore.aggregate(x, "multi_krum", f=1, m=3, return_info=True)
    want, sel = ref.multi_krum_ref(x, 1, 3)
    assert np.flatnonzero(info.selected).tolist() == sel.tolist()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # identical gradients: squared distances may come out as tiny negatives; clamped to 0
    same = np.repeat(base[None], 5, axis=0)
    _, info = flagcore.aggregate(same, "krum", f=1, return_info=True)
    assert np.all(info.scores >= 0) and np.all(info.scores <= 1e-9 * base @ base)


@pytest.mark.parametrize(
    "rule", ["krum", "multi_krum", "bulyan", "geometric_median", "centered_clipping"]
)
def test_nonfinite_worker_is_excluded(rule):
    p, f = 11, 2
    x = ref.make_gradients(p, 200, seed=12, byzantine=1, dtype=np.float64)
    x[3, 7] = np.nan
    got, info = flagcore.aggregate(x, rule, f=f, return_info=True)
    assert info.excluded.tolist() == [i == 3 for i in range(p)]
    assert np.isfinite(got).all()
    rest = np.delete(x, 3, axis=0)
    want, _ = flagcore.aggregate(rest, rule, f=f - 1, return_info=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    x[:] = np.inf
    got, info = flagcore.aggregate(x, rule, f=f, return_info=True)
    assert info.excluded.all() and np.all(got == 0)


@pytest.mark.parametrize(
    "rule,kw,p,f,need",
    [
        ("krum", {}, 6, 2, "p >= 2f + 3"),
        ("multi_krum", {}, 4, 1, "p >= 2f + 3"),
        ("bulyan", {}, 10, 2, "p >= 4f + 3"),
        ("trimmed_mean", {}, 6, 3, "p > 2f"),
        ("meamed", {}, 4, 2, "p > 2f"),
        ("phocas", {}, 2, 1, "p > 2f"),
        ("median", {}, 4, 2, "p > 2f"),
        ("geometric_median", {}, 4, 2, "p > 2f"),
        ("centered_clipping", {}, 2, 1, "p > 2f"),
        ("mean", {}, 3, 3, "f < p"),
    ],
)
def test_preconditions(rule, kw, p, f, need):
    x = np.ones((p, 5))
    with pytest.raises(
        ValueError, match=rf"rule '{rule}' needs {need.replace('+', '[+]')}, got p = {p}, f = {f}"
    ):
        flagcore.aggregate(x, rule, f=f, **kw)


def test_multi_krum_m_range():
    x = np.ones((9, 5))
    with pytest.raises(ValueError, match=r"m <= p - f, got m = 8, p = 9, f = 2"):
        flagcore.aggregate(x, "multi_krum", f=2, m=8)
    with pytest.raises(ValueError, match=r"m must be in \[1, inf\], got 0"):
        flagcore.aggregate(x, "multi_krum", f=2, m=0)


def test_batch_and_list_inputs():
    xs = np.stack([ref.make_gradients(9, 64, seed=s, byzantine=2) for s in range(3)])
    got = flagcore.aggregate(xs, "multi_krum", f=2)
    for q in range(3):
        np.testing.assert_allclose(
            got[q], ref.multi_krum_ref(xs[q].astype(np.float64), 2, 7)[0], rtol=1e-5
        )
    lst = [r.reshape(8, 8) for r in xs[0]]
    got = flagcore.aggregate(lst, "geometric_median")
    assert got.shape == (8, 8)
    np.testing.assert_allclose(
        got.ravel(), ref.geometric_median_ref(xs[0].astype(np.float64))[0], rtol=1e-4, atol=1e-5
    )


def test_geometric_median_at_a_data_point_is_exact():
    """Three equal workers out of five: their point is the minimiser (the unit vectors to the
    two others sum to norm <= 3); returned exactly, without Weiszfeld's slow creep."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 50))
    x[1] = x[2] = x[0]
    got, info = flagcore.aggregate(x, "geometric_median", return_info=True)
    np.testing.assert_array_equal(got, x[0])
    assert info.iterations == 0 and info.converged
    np.testing.assert_allclose(info.objective, np.linalg.norm(x - x[0], axis=1).sum(), rtol=1e-12)
