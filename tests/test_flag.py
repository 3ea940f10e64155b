"""flag_aggregate against the float64 SVD reference (the authors' formulation), plus properties,
input forms and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import flagcore
from conftest import make_gradients, require_torch, simd_levels
from flagcore import _core
from flagcore._reference import flag_aggregate_reference as reference

P = 9
N = 400


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize(
    "r,lam,max_iter,byz", list(itertools.product([1, 3, P // 2], [0.0, 0.5, 100.0], [1, 5], [0, 2]))
)
def test_matches_svd_reference_float64(r, lam, max_iter, byz):
    x = make_gradients(P, N, byzantine=byz, seed=r * 100 + max_iter + byz)
    agg, info = flagcore.flag_aggregate(x, r=r, lam=lam, max_iter=max_iter, return_info=True)
    ref = reference(x, r, lam, max_iter)
    assert agg.dtype == np.float64 and agg.shape == (N,)
    assert _rel(agg, ref["aggregate"]) < 1e-8
    np.testing.assert_allclose(info.objective, ref["objective"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info.reconstruction_ratios, ref["ratios"], atol=1e-9)
    np.testing.assert_allclose(info.weights, ref["weights"], rtol=1e-6)
    assert info.iterations == ref["iterations"]
    assert info.last_step_rejected == ref["rejected"]
    assert len(info.objective) == info.iterations + 1


@pytest.mark.parametrize("scale", ["paper", "median_norm"])
@pytest.mark.parametrize("max_iter", [1, 5])
def test_matches_reference_float32(scale, max_iter):
    x = make_gradients(15, 20_000, byzantine=3, seed=7, dtype=np.float32)
    agg = flagcore.flag_aggregate(x, r=8, max_iter=max_iter, scale=scale)
    ref = reference(x.astype(np.float64), 8, 0.0, max_iter, scale=scale)
    assert agg.dtype == np.float32
    assert _rel(agg, ref["aggregate"]) < 2e-5


def test_paper_scale_formula_by_hand():
    # Two orthogonal unit workers and r = 1: the top eigenvector of X^T X is either axis (tie),
    # so use unequal norms... normalisation makes them equal; add a third worker to break the tie.
    x = np.array([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    agg, info = flagcore.flag_aggregate(x, r=1, return_info=True)
    # Normalised rows e1, e2, (e1+e2)/sqrt2: the top eigenvector of their scatter is (1,1)/sqrt2
    # with eigenvalue 2; the aggregate is y * sum_i y.x_i = y (1/sqrt2 + 1/sqrt2 + 1).
    y = np.array([1.0, 1.0]) / np.sqrt(2)
    np.testing.assert_allclose(agg, y * (np.sqrt(2) + 1.0), rtol=1e-12)
    np.testing.assert_allclose(info.reconstruction_ratios, [0.5, 0.5, 1.0], rtol=1e-12)
    assert info.objective[0] == 3.0


def test_median_norm_scale_has_median_norm_and_same_direction():
    x = make_gradients(11, 500, byzantine=2, seed=3)
    a = flagcore.flag_aggregate(x, r=5, scale="paper")
    b = flagcore.flag_aggregate(x, r=5, scale="median_norm")
    np.testing.assert_allclose(np.linalg.norm(b), np.median(np.linalg.norm(x, axis=1)), rtol=1e-10)
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cos == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_norm_of_cancelling_workers_is_zero(dtype):
    # two anti-correlated workers: the top eigenvector of their normalised Gram is x1 - x2,
    # orthogonal to x1 + x2, so the paper aggregate is exactly 0; its rounding noise (norm
    # ~1e-15) was rescaled to the median norm, a full-size step that changed with the order of
    # the coordinates in 160 of 300 cases (and the DDP hook, summing the Gram by buckets, got
    # a different one); now 0, as the float64 reference says
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.standard_normal((2, 200))
        if x[0] @ x[1] >= 0:
            x[1] = -x[1]
        x = x.astype(dtype)
        perm = rng.permutation(200)
        a = flagcore.flag_aggregate(x, scale="median_norm")
        b = flagcore.flag_aggregate(x[:, perm], scale="median_norm")
        assert not a.any() and not b.any()
        assert not reference(x.astype(np.float64), r=1, scale="median_norm")["aggregate"].any()
    # workers that agree keep the median norm
    x = rng.standard_normal((2, 200))
    x[1] = x[0] + 0.5 * x[1]
    got = flagcore.flag_aggregate(x, scale="median_norm")
    assert np.linalg.norm(got) == pytest.approx(np.median(np.linalg.norm(x, axis=1)), rel=1e-10)


def test_batched_equals_per_problem():
    xs = np.stack([make_gradients(7, 300, byzantine=b % 3, seed=b) for b in range(5)])
    agg, info = flagcore.flag_aggregate(xs, r=3, lam=0.5, max_iter=4, return_info=True)
    assert agg.shape == (5, 300)
    assert info.weights.shape == (5, 7) and info.objective.shape == (5, 5)
    for q in range(5):
        a, i = flagcore.flag_aggregate(xs[q], r=3, lam=0.5, max_iter=4, return_info=True)
        np.testing.assert_array_equal(agg[q], a)
        np.testing.assert_array_equal(info.objective[q, : i.iterations + 1], i.objective)
        assert np.all(np.isnan(info.objective[q, i.iterations + 1 :]))
        assert info.iterations[q] == i.iterations


def test_list_input_any_shape_and_tuple():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((4, 5, 3)) for _ in range(6)]
    out = flagcore.flag_aggregate(grads, r=2)
    assert out.shape == (4, 5, 3)
    flat = flagcore.flag_aggregate(np.stack([g.reshape(-1) for g in grads]), r=2)
    np.testing.assert_array_equal(out.reshape(-1), flat)
    np.testing.assert_array_equal(flagcore.flag_aggregate(tuple(grads), r=2), out)


def test_non_contiguous_and_negative_strides():
    x = make_gradients(6, 800, seed=5)
    expected = flagcore.flag_aggregate(x, r=2)
    xt = np.asfortranarray(x)  # last axis not contiguous
    np.testing.assert_allclose(flagcore.flag_aggregate(xt, r=2), expected, rtol=1e-12)
    big = np.zeros((12, 1600))
    big[::2, ::2] = x
    np.testing.assert_allclose(flagcore.flag_aggregate(big[::2, ::2], r=2), expected, rtol=1e-12)
    rev = x[::-1]  # negative row stride, contiguous rows
    np.testing.assert_allclose(flagcore.flag_aggregate(rev, r=2), expected, rtol=1e-10)


def test_input_is_not_modified():
    x = make_gradients(5, 100, seed=2)
    x[1, 3] = np.nan
    before = x.copy()
    flagcore.flag_aggregate(x, max_iter=3, lam=1.0)
    np.testing.assert_array_equal(x, before)


def test_rank_deficient_identical_and_zero_workers():
    rng = np.random.default_rng(4)
    g = rng.standard_normal(50)
    x = np.stack([g, g, 2 * g, np.zeros(50), -g])  # rank 1, one zero worker
    agg, info = flagcore.flag_aggregate(x, r=3, max_iter=5, return_info=True)
    assert np.all(np.isfinite(agg))
    assert info.rank == 1
    ref = reference(x, 3, 0.0, 5)
    np.testing.assert_allclose(agg, ref["aggregate"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info.reconstruction_ratios, [1, 1, 1, 0, 1], atol=1e-12)


def test_more_workers_than_coordinates():
    x = make_gradients(10, 3, seed=8)
    agg = flagcore.flag_aggregate(x, r=5, max_iter=3)
    ref = reference(x, 5, 0.0, 3)
    np.testing.assert_allclose(agg, ref["aggregate"], rtol=1e-8, atol=1e-12)


def test_degenerate_cases_documented_answers():
    g = np.array([[3.0, 4.0]])
    np.testing.assert_allclose(flagcore.flag_aggregate(g), [0.6, 0.8])  # p = 1: g / (r ||g||)
    np.testing.assert_allclose(flagcore.flag_aggregate(g, scale="median_norm"), [3.0, 4.0])
    np.testing.assert_array_equal(flagcore.flag_aggregate(np.zeros((4, 6))), np.zeros(6))
    one = flagcore.flag_aggregate(np.array([[2.0], [-1.0], [3.0]]), r=1)  # n = 1
    np.testing.assert_allclose(one, [1.0])  # x_i = sign(g_i), Y = [1]: (1 - 1 + 1) / r
    same = flagcore.flag_aggregate(np.tile([1.0, 2.0, 2.0], (4, 1)), r=2)
    np.testing.assert_allclose(same, 4 / 2 * np.array([1.0, 2.0, 2.0]) / 3.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_worker_is_excluded_and_reported(bad):
    x = make_gradients(8, 200, seed=9)
    clean = flagcore.flag_aggregate(np.delete(x, 2, axis=0), r=4, max_iter=3, lam=0.5)
    x[2, 17] = bad
    agg, info = flagcore.flag_aggregate(x, r=4, max_iter=3, lam=0.5, return_info=True)
    assert np.all(np.isfinite(agg))
    np.testing.assert_allclose(agg, clean, rtol=1e-10, atol=1e-14)
    assert info.excluded.tolist() == [i == 2 for i in range(8)]
    assert info.weights[2] == 0 and info.coefficients[2] == 0


def test_all_workers_nonfinite_gives_zero():
    x = np.full((3, 4), np.nan)
    agg, info = flagcore.flag_aggregate(x, return_info=True)
    np.testing.assert_array_equal(agg, np.zeros(4))
    assert info.excluded.all() and info.rank == 0 and info.iterations == 0


def test_huge_finite_values_float32_are_not_excluded():
    x = make_gradients(5, 1000, seed=10).astype(np.float32)
    x[0] *= np.float32(1e25)  # float32 products overflow: the Gram row is recomputed in float64
    agg, info = flagcore.flag_aggregate(x, r=2, return_info=True)
    assert not info.excluded.any()
    ref = reference(x.astype(np.float64), 2)
    assert _rel(agg, ref["aggregate"]) < 2e-5


def test_gram_matches_float64_and_is_psd():
    x = make_gradients(13, 70_001, seed=11, dtype=np.float32)
    g = _core.gram(x[None])[0]
    ref = x.astype(np.float64) @ x.astype(np.float64).T
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    np.testing.assert_array_equal(g, g.T)
    assert np.linalg.eigvalsh(g).min() > -1e-8 * np.abs(g).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_simd_variant_agrees(dtype):
    x = make_gradients(11, 9_999, seed=12, dtype=dtype)
    results = []
    try:
        for lvl in simd_levels():
            _core.set_simd_level(lvl)
            results.append(_core.gram(x[None])[0])
    finally:
        _core.set_simd_level("auto")
    ref = x.astype(np.float64) @ x.astype(np.float64).T
    for g in results:
        np.testing.assert_allclose(g, ref, rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_result_independent_of_thread_count():
    x = make_gradients(15, 300_000, byzantine=3, seed=13, dtype=np.float32)
    try:
        flagcore.set_num_threads(1)
        a1 = flagcore.flag_aggregate(x, max_iter=3)
        flagcore.set_num_threads(3)
        a3 = flagcore.flag_aggregate(x, max_iter=3)
    finally:
        flagcore.set_num_threads(0)
    np.testing.assert_array_equal(a1, a3)


def test_torch_inputs_all_dtypes_and_lists():
    torch = require_torch()
    x = make_gradients(7, 1000, byzantine=1, seed=14)
    ref = flagcore.flag_aggregate(x, r=3)
    for dt, tol in [
        (torch.float64, 1e-12),
        (torch.float32, 1e-5),
        (torch.float16, 5e-3),
        (torch.bfloat16, 3e-2),
    ]:
        t = torch.from_numpy(x).to(dt)
        out = flagcore.flag_aggregate(t, r=3)
        assert isinstance(out, torch.Tensor) and out.dtype == dt and out.shape == (1000,)
        # compare with FA of the rounded input, in float64
        exp = flagcore.flag_aggregate(t.double().numpy(), r=3)
        assert _rel(out.double().numpy(), exp) < tol
    assert _rel(flagcore.flag_aggregate(torch.from_numpy(x), r=3).numpy(), ref) < 1e-12
    t = torch.from_numpy(x).requires_grad_(True)
    assert flagcore.flag_aggregate(t, r=3).requires_grad is False
    lst = [torch.from_numpy(row.reshape(10, 100)) for row in x]
    out = flagcore.flag_aggregate(lst, r=3)
    assert out.shape == (10, 100)
    np.testing.assert_allclose(out.reshape(-1).numpy(), ref, rtol=1e-12)


def test_torch_device_path_matches_native():
    torch = require_torch()
    from flagcore._arrays import as_stack
    from flagcore.flag import _flag_aggregate_torch

    x = make_gradients(9, 3000, byzantine=2, seed=15)
    x[4, 10] = np.nan
    st = as_stack(torch.from_numpy(x), "t")
    st.torch_data = torch.from_numpy(x)[None]  # force the device path on the CPU
    out, d = _flag_aggregate_torch(st, flagcore._native.FlagParams(r=4, lam=0.5, max_iter=3))
    native = flagcore.flag_aggregate(x, r=4, lam=0.5, max_iter=3)
    np.testing.assert_allclose(out[0].numpy(), native, rtol=1e-9, atol=1e-13)
    assert d["excluded"][0, 4]


def test_objective_decreases_until_stop():
    x = make_gradients(12, 2000, byzantine=3, seed=16)
    _, info = flagcore.flag_aggregate(x, r=4, max_iter=50, return_info=True)
    obj = info.objective
    kept = obj[:-1] if info.last_step_rejected else obj
    assert np.all(np.diff(kept) < 0)
    assert info.iterations < 50 or not info.last_step_rejected


BAD = [
    (
        lambda: flagcore.flag_aggregate(np.zeros(3)),
        ValueError,
        r"flag_aggregate: gradients must be \(p, n\) or \(b, p, n\), got shape \(3,\)",
    ),
    (lambda: flagcore.flag_aggregate(np.zeros((1, 2, 3, 4))), ValueError, "got shape"),
    (lambda: flagcore.flag_aggregate(np.zeros((0, 5))), ValueError, "p >= 1"),
    (lambda: flagcore.flag_aggregate([]), ValueError, "p >= 1"),
    (
        lambda: flagcore.flag_aggregate([np.zeros(3), np.zeros(4)]),
        ValueError,
        r"gradients\[1\] has shape \(4,\)",
    ),
    (
        lambda: flagcore.flag_aggregate([np.zeros(3), np.zeros(3, np.float32)]),
        TypeError,
        r"gradients\[1\] has dtype float32",
    ),
    (
        lambda: flagcore.flag_aggregate([np.zeros(3), [0.0, 1.0, 2.0]]),
        TypeError,
        r"gradients\[1\] must be a numpy array",
    ),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4), np.int64)),
        TypeError,
        "floating dtype.*int64",
    ),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4), bool)), TypeError, "floating dtype"),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4), np.complex128)), TypeError, "floating dtype"),
    (lambda: flagcore.flag_aggregate("abc"), TypeError, "gradients must be a numpy array"),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4)), r=0),
        ValueError,
        r"flag_aggregate: r must be in \[1, 3\], got 0",
    ),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4)), r=4),
        ValueError,
        r"r must be in \[1, 3\], got 4",
    ),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4)), r=1.5), TypeError, "r must be an int"),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4)), r=True), TypeError, "r must be an int"),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4)), lam=-1), ValueError, "lam must be >= 0"),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4)), lam=float("nan")),
        ValueError,
        "lam must be finite",
    ),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4)), max_iter=0),
        ValueError,
        "max_iter must be in",
    ),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4)), eps=0.0), ValueError, "eps must be > 0"),
    (lambda: flagcore.flag_aggregate(np.zeros((3, 4)), tol=-1.0), ValueError, "tol must be >= 0"),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4)), scale="mean"),
        ValueError,
        "scale must be one of 'paper', 'median_norm', got 'mean'",
    ),
    (
        lambda: flagcore.flag_aggregate(np.zeros((3, 4)), return_info=1),
        TypeError,
        "return_info must be a bool",
    ),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises_with_clear_message(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_torch_inputs():
    torch = require_torch()
    with pytest.raises(TypeError, match="floating dtype"):
        flagcore.flag_aggregate(torch.zeros((3, 4), dtype=torch.int32))
    with pytest.raises(TypeError, match=r"gradients\[1\] must be a torch tensor"):
        flagcore.flag_aggregate([torch.zeros(3), np.zeros(3)])
