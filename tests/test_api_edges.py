"""Input seams of the public API: a float64 reference beside float32 data, ndarray subclasses,
empty layers, the mean at any p, parameters beyond float64, set_num_threads' arguments, and an
aggregate beyond the caller's dtype. Each case names what it used to do."""

import warnings

import numpy as np
import pytest

import flagcore
from flagcore import _backend
from flagcore import _reference_rules as ref
from flagcore.rules import Median
from flagcore.rules.coordinate import MAX_WORKERS


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------- centered clipping, reference


def _cc_case(seed=31, p=7, n=5):
    """float32 workers near 0 and a float64 reference beyond float32's range (~3.4e38), with tau
    such that every worker is clipped to 0.7 of its distance: v = 0.3 v0 + ..., which float32
    holds."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n)).astype(np.float32)
    v0 = np.full(n, 1e39)
    v0[1] = 9e38
    dist = np.linalg.norm(x.astype(np.float64) - v0, axis=1)
    tau = 0.7 * float(dist.min())
    return x, v0, tau, dist


def test_centered_clipping_keeps_a_float64_reference_beyond_float32():
    # The reference used to be rounded to the data's dtype for the Gram: 1e39 became Inf, the
    # reference row was dropped and the result was the plain mean of the workers (coefficient 0)
    x, v0, tau, dist = _cc_case()
    p = x.shape[0]
    want = ref.centered_clipping_ref(x, tau, 1, v0)
    out, info = flagcore.aggregate(
        x, "centered_clipping", tau=tau, iterations=1, reference=v0, return_info=True
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-6)
    clip = np.minimum(1.0, tau / dist)
    np.testing.assert_allclose(info.coefficients, clip / p, rtol=1e-9)
    np.testing.assert_allclose(info.reference_coefficient, 1.0 - clip.mean(), rtol=1e-9)
    # the same through a list, a torch tensor and a batch with one reference per problem
    lst = flagcore.aggregate(list(x), "centered_clipping", tau=tau, iterations=1, reference=v0)
    np.testing.assert_array_equal(lst, out)
    xb = np.stack([x, x[::-1].copy()])
    ob = flagcore.aggregate(
        xb, "centered_clipping", tau=tau, iterations=1, reference=np.stack([v0, v0])
    )
    np.testing.assert_allclose(ob, np.stack([want, want]), rtol=1e-6)
    t = _torch()
    ot = flagcore.aggregate(
        t.from_numpy(x), "centered_clipping", tau=tau, iterations=1, reference=t.from_numpy(v0)
    )
    assert ot.dtype == t.float32
    np.testing.assert_array_equal(ot.numpy(), out)


def test_centered_clipping_float32_reference_on_the_device_path(monkeypatch):
    """The path for tensors on a non-CPU device (run here on CPU tensors) keeps the reference
    in float64 too (it used to cast it to the data's dtype before the torch Gram)."""
    t = _torch()
    import flagcore.rules as rules_mod
    from flagcore import _arrays

    def as_device_stack(g, fn, **kw):
        st = _arrays.as_stack(g, fn, **kw)
        st.torch_data, st.data = t.as_tensor(st.data), None
        return st

    x, v0, tau, _ = _cc_case(seed=32)
    want = ref.centered_clipping_ref(x, tau, 1, v0)
    monkeypatch.setattr(rules_mod, "as_stack", as_device_stack)
    got = flagcore.aggregate(
        t.from_numpy(x), "centered_clipping", tau=tau, iterations=1, reference=v0
    )
    assert got.dtype == t.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_centered_clipping_float32_with_pre_aggregation_and_a_float64_reference():
    # with NNM the products with the reference are formed from the caller's rows and mixed
    rng = np.random.default_rng(33)
    x = rng.standard_normal((9, 6)).astype(np.float32)
    v0 = rng.standard_normal(6) * 1e-3 + 0.5  # not representable in float32
    want = ref.centered_clipping_ref(ref.nnm_ref(x.astype(np.float64), 2), 0.8, 3, v0)
    got = flagcore.aggregate(
        x, "centered_clipping", f=2, pre="nnm", tau=0.8, iterations=3, reference=v0
    )
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    # float64 data through NNM: now from the Gram pre-aggregation holds, same values as before
    x64 = x.astype(np.float64)
    want64 = ref.centered_clipping_ref(ref.nnm_ref(x64, 2), 0.8, 3, v0)
    got64 = flagcore.aggregate(
        x64, "centered_clipping", f=2, pre="nnm", tau=0.8, iterations=3, reference=v0
    )
    np.testing.assert_allclose(got64, want64, rtol=1e-12, atol=1e-14)


def test_centered_clipping_result_beyond_float32_is_refused():
    # tau = 1 barely moves v from 1e39, which float32 cannot hold: an error naming the function,
    # not an Inf (nor, as before, the workers' mean [1, 1, 1] with the reference dropped)
    x = np.ones((5, 3), np.float32)
    for info in (False, True):
        with pytest.raises(
            ValueError,
            match=r"aggregate: the aggregate does not fit in the gradients' dtype float32: it "
            r"holds 1e\+39 \(coordinate 0\).*float64",
        ):
            flagcore.aggregate(
                x,
                "centered_clipping",
                reference=np.full(3, 1e39),
                tau=1.0,
                iterations=1,
                return_info=info,
            )


def test_centered_clipping_reference_beyond_the_float64_gram_is_refused():
    # ||v0||^2 overflows float64: every distance was Inf and v stayed at v0 whatever tau
    x = np.random.default_rng(34).standard_normal((5, 3))
    for tau in (1.0, 1e200):
        with pytest.raises(
            ValueError,
            match=r"aggregate: reference is too large for the float64 Gram .*largest \|value\| "
            r"1e\+160",
        ):
            flagcore.aggregate(x, "centered_clipping", reference=np.full(3, 1e160), tau=tau)


# ---------------------------------------------------------------- ndarray subclasses


def _matrix(a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix(a)


def test_numpy_matrix_is_read_as_a_plain_array():
    # np.matrix stays 2-D under reshape: an IndexError before
    x = np.arange(12.0).reshape(4, 3)
    m = _matrix(x)
    for rule in ("mean", "median", "krum"):
        kw = {"f": 0} if rule == "krum" else {}
        got = flagcore.aggregate(m, rule, **kw)
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, flagcore.aggregate(x, rule, **kw))
    np.testing.assert_array_equal(flagcore.flag_aggregate(m), flagcore.flag_aggregate(x))
    np.testing.assert_array_equal(
        flagcore.flag_aggregate_layers([m])[0], flagcore.flag_aggregate(x)
    )
    rows = [_matrix(r[None]) for r in x]  # p gradients of shape (1, 3)
    got = flagcore.aggregate(rows, "mean")
    assert type(got) is np.ndarray and got.shape == (1, 3)
    np.testing.assert_array_equal(got[0], x.mean(axis=0))


def test_masked_arrays_are_refused():
    # the mask used to be dropped: a masked 1e30 entered the mean ([2.5e29, 1])
    m = np.ma.array(np.ones((4, 2)), mask=[[1, 0], [0, 0], [0, 0], [0, 0]])
    m.data[0, 0] = 1e30
    with pytest.raises(
        TypeError, match=r"aggregate: gradients must not be a numpy masked array.*fill it"
    ):
        flagcore.aggregate(m, "mean")
    with pytest.raises(TypeError, match=r"aggregate: gradients\[1\] must not be a numpy masked"):
        flagcore.aggregate([np.ones(2), m[1]], "mean")
    with pytest.raises(TypeError, match=r"flag_aggregate: gradients must not be a numpy masked"):
        flagcore.flag_aggregate(m)
    with pytest.raises(
        TypeError, match=r"flag_aggregate_layers: layers\[0\] must not be a numpy masked"
    ):
        flagcore.flag_aggregate_layers([m])


# ---------------------------------------------------------------- empty layers


def test_flag_aggregate_layers_refuses_an_empty_layer_like_flag_aggregate():
    # numpy's "cannot reshape array of size 0" / torch's RuntimeError about -1 before
    with pytest.raises(ValueError, match=r"flag_aggregate: gradients must hold at least one"):
        flagcore.flag_aggregate(np.zeros((0, 6)))
    msg = (
        r"flag_aggregate_layers: layers\[{}\] must hold at least one worker \(p >= 1\), "
        r"got shape \(0, 3, 2\)"
    )
    with pytest.raises(ValueError, match=msg.format(0)):
        flagcore.flag_aggregate_layers([np.zeros((0, 3, 2))])
    with pytest.raises(ValueError, match=msg.format(1)):
        flagcore.flag_aggregate_layers([np.ones((3, 2)), np.zeros((0, 3, 2))])
    t = _torch()
    with pytest.raises(ValueError, match=msg.format(0)):
        flagcore.flag_aggregate_layers([t.zeros(0, 3, 2)])
    # a layer with workers but no coordinates is still an empty aggregate of its shape
    out = flagcore.flag_aggregate_layers([np.ones((3, 0, 2)), np.ones((3, 2))])
    assert out[0].shape == (0, 2) and out[1].shape == (2,)


# ---------------------------------------------------------------- the mean at any p


def test_mean_takes_more_workers_than_the_sorting_networks():
    # refused above 65536 workers ("mean: gradients may hold at most 65536 workers")
    p = MAX_WORKERS + 3
    rng = np.random.default_rng(35)
    x = rng.standard_normal((p, 4))
    out, info = flagcore.aggregate(x, "mean", return_info=True)
    np.testing.assert_array_equal(out, x.mean(axis=0))  # numpy's mean bit for bit
    assert not info.excluded.any()
    np.testing.assert_array_equal(flagcore.aggregate(list(x), "mean"), x.mean(axis=0))
    x32 = x.astype(np.float32)
    got32 = flagcore.aggregate(x32, "mean")
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, x32.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-9)
    # non-finite workers excluded, as at small p; a batch; values near DBL_MAX do not overflow
    xb = x.copy()
    xb[5, 3] = np.nan
    xb[70, 1] = -np.inf
    out, info = flagcore.aggregate(np.stack([x, xb]), "mean", return_info=True)
    np.testing.assert_array_equal(out[0], x.mean(axis=0))
    np.testing.assert_array_equal(out[1], np.delete(x, [5, 70], axis=0).mean(axis=0))
    assert info.excluded[0].sum() == 0 and np.flatnonzero(info.excluded[1]).tolist() == [5, 70]
    np.testing.assert_allclose(flagcore.aggregate(np.full((p, 2), 1e308), "mean"), 1e308)
    out, info = flagcore.aggregate(np.full((p, 2), np.nan), "mean", return_info=True)
    assert info.excluded.all()
    np.testing.assert_array_equal(out, 0.0)
    # independent of the thread count
    try:
        flagcore.set_num_threads(1)
        one = flagcore.aggregate(x32, "mean")
        flagcore.set_num_threads(2)
        two = flagcore.aggregate(x32, "mean")
    finally:
        flagcore.set_num_threads(0)
    np.testing.assert_array_equal(one, two)


def test_sorting_rules_above_their_bound_name_the_function_and_the_rule():
    x = np.zeros((MAX_WORKERS + 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"^aggregate: rule 'median': gradients may hold"):
        flagcore.aggregate(x, "median")
    with pytest.raises(ValueError, match=r"^Median: rule 'median': .* got p = 65537"):
        Median()(x)


# ---------------------------------------------------------------- numeric parameters


@pytest.mark.parametrize(
    "rule, kw, name",
    [
        ("centered_clipping", {"tau": 10**400}, "tau"),
        ("flag", {"lam": 10**400}, "lam"),
        ("geometric_median", {"nu": 10**400}, "nu"),
        ("dnc", {"f": 1, "filter_fraction": 10**400}, "filter_fraction"),
        ("median", {"pre": "clipping", "c": 10**400}, "c"),
    ],
)
def test_real_parameters_beyond_float64_are_value_errors(rule, kw, name):
    # a bare OverflowError "int too large to convert to float" before
    x = np.ones((7, 3))
    with pytest.raises(
        ValueError, match=rf"^aggregate: {name} must be finite, got an int of 1329 bits"
    ):
        flagcore.aggregate(x, rule, **kw)


def test_parameters_beyond_float64_in_flag_aggregate():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"^flag_aggregate: lam must be finite, got an int"):
        flagcore.flag_aggregate(x, lam=10**400)
    # an int too long for str() (4300 digits) is named by its size
    with pytest.raises(
        ValueError, match=r"^flag_aggregate: max_iter must be in \[1, 1000000\], got an int of"
    ):
        flagcore.flag_aggregate(x, max_iter=10**5000)


def test_set_num_threads_arguments():
    try:
        flagcore.set_num_threads(np.int64(2))  # numpy integers, like every other int parameter
        assert flagcore.get_num_threads() == 2
        flagcore.set_num_threads(_backend.MAX_THREADS)  # the bound itself (nothing runs here)
        assert flagcore.get_num_threads() == _backend.MAX_THREADS
        for bad in (2.0, "2", True, None):
            with pytest.raises(TypeError, match=r"^set_num_threads: n must be an int, got"):
                flagcore.set_num_threads(bad)
        with pytest.raises(ValueError, match=r"^set_num_threads: n must be an int >= 0, got -1"):
            flagcore.set_num_threads(-1)
        # pybind's "incompatible function arguments" before
        for big in (_backend.MAX_THREADS + 1, 2**40, 2**5000):
            with pytest.raises(ValueError, match=r"^set_num_threads: n must be at most 1024"):
                flagcore.set_num_threads(big)
        # the bound is the native one
        with pytest.raises(ValueError, match=r"set_num_threads: n must be in \[0, 1024\]"):
            _backend.core.set_num_threads(_backend.MAX_THREADS + 1)
    finally:
        flagcore.set_num_threads(0)


# ---------------------------------------------------------------- output beyond the dtype


def test_an_aggregate_beyond_float16_is_refused_not_turned_to_inf():
    # FA's median_norm scale gives a direction of the median norm (8.5e4 here, above float16's
    # 65504) from finite float16 input: [inf, 1414] with a cast warning before
    x = np.array([[6e4, 6e4], [6e4, -6e4], [6e4, 1e3]], dtype=np.float16)
    with pytest.raises(
        ValueError,
        match=r"^flag_aggregate: the aggregate does not fit in the gradients' dtype float16: "
        r"it holds 8\d{4}(\.\d+)? \(coordinate 0\).*float32 or float64",
    ):
        flagcore.flag_aggregate(x, r=1, scale="median_norm")
    wide = flagcore.flag_aggregate(x.astype(np.float32), r=1, scale="median_norm")
    assert np.isfinite(wide).all() and wide[0] > np.finfo(np.float16).max
    t = _torch()
    with pytest.raises(ValueError, match=r"^flag_aggregate: .* dtype torch\.float16"):
        flagcore.flag_aggregate(t.from_numpy(x), r=1, scale="median_norm")
    # a float16 aggregate in range comes back as before
    ok = flagcore.flag_aggregate(x / 8, r=1, scale="median_norm")
    assert ok.dtype == np.float16 and np.isfinite(ok).all()


# ---------------------------------------------------------------- the Gram's range


def test_distance_rules_hold_over_the_documented_float64_range():
    """docs/rules.md (Scale): float64 gradients of norm ~1e-150 to ~1e154 give the selections
    of norm 1 (below ~1e-154 the Gram's entries are subnormal and pick arbitrary workers)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((11, 6))
    x[:2] += 4
    for rule, kw in (("krum", {"f": 2}), ("mda", {"f": 2}), ("cge", {"f": 2})):
        base = flagcore.aggregate(x, rule, return_info=True, **kw)[1].selected
        for c in (1e-150, 1e150):
            sel = flagcore.aggregate(x * c, rule, return_info=True, **kw)[1].selected
            np.testing.assert_array_equal(sel, base, err_msg=f"{rule} at {c}")


# ---------------------------------------------------------------- docs against the registries


def test_docs_list_what_the_registries_hold():
    """docs/rules.md has a row per rule and per pre-aggregation step; docs/aggregation.md points
    there instead of repeating the list (it used to name 11 rules and two steps) and names
    every attack."""
    from pathlib import Path

    from flagcore.attacks import ALL_ATTACKS
    from flagcore.rules import PRE_STEPS, RULES

    docs = Path(__file__).resolve().parent.parent / "docs"
    rules_md = (docs / "rules.md").read_text()
    for name in RULES:
        assert f"| `{name}` |" in rules_md, name
    for step in PRE_STEPS:
        assert f'| `"{step}"` |' in rules_md, step
    usage = (docs / "aggregation.md").read_text()
    assert "rules.md" in usage and "flagcore.rules.RULES" in usage
    for name in ALL_ATTACKS:
        assert f"`{name}`" in usage, name
