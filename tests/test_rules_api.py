"""The aggregate() API: input forms, rule classes, pre-aggregation, "flag" routing, errors."""

import numpy as np
import pytest

import flagcore
from flagcore import _reference_rules as ref
from flagcore.rules import RULES

F_RULES = {"trimmed_mean", "meamed", "phocas", "krum", "multi_krum", "bulyan"}


def _kw(rule, f=2, n=60):
    if rule == "flag":
        return {}
    if rule == "fltrust":
        return {"f": f, "reference": np.linspace(-1.0, 1.0, n)}
    return {"f": f}


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_every_input_form(rule):
    torch = pytest.importorskip("torch")
    x = ref.make_gradients(11, 60, seed=1, byzantine=2)
    want = flagcore.aggregate(x, rule, **_kw(rule))
    assert want.shape == (60,) and want.dtype == np.float32
    b = flagcore.aggregate(np.stack([x, x]), rule, **_kw(rule))
    assert b.shape == (2, 60)
    np.testing.assert_allclose(b[1], want, rtol=1e-6, atol=1e-7)
    lst = flagcore.aggregate([r.reshape(6, 10) for r in x], rule, **_kw(rule))
    assert lst.shape == (6, 10)
    np.testing.assert_allclose(lst.ravel(), want, rtol=1e-6, atol=1e-7)
    t = flagcore.aggregate(torch.from_numpy(x).double(), rule, **_kw(rule))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-5, atol=1e-6)


def test_flag_routes_to_flag_aggregate():
    x = ref.make_gradients(15, 100, seed=2, byzantine=3)
    a, info = flagcore.aggregate(x, "flag", r=4, max_iter=3, return_info=True)
    b, binfo = flagcore.flag_aggregate(x, r=4, max_iter=3, return_info=True)
    np.testing.assert_array_equal(a, b)
    assert isinstance(info, flagcore.FlagInfo) and info.iterations == binfo.iterations


def test_classes_match_aggregate():
    x = ref.make_gradients(15, 100, seed=3, byzantine=3)
    pairs = [
        (flagcore.rules.Median(), "median", {}),
        (flagcore.rules.TrimmedMean(f=3), "trimmed_mean", {"f": 3}),
        (flagcore.rules.MultiKrum(f=3, m=5), "multi_krum", {"f": 3, "m": 5}),
        (flagcore.rules.Bulyan(f=3), "bulyan", {"f": 3}),
        (flagcore.rules.make_rule("phocas", f=2), "phocas", {"f": 2}),
    ]
    for obj, name, kw in pairs:
        np.testing.assert_array_equal(obj(x), flagcore.aggregate(x, name, **kw))
        assert obj.name == name


def test_nnm_then_rule_matches_reference():
    x = ref.make_gradients(11, 80, seed=4, byzantine=2, dtype=np.float64)
    mixed = ref.nnm_ref(x, 2)
    np.testing.assert_allclose(flagcore.rules.nnm(x, 2), mixed, rtol=1e-12)
    for rule, want in [
        ("median", ref.median_ref(mixed)),
        ("trimmed_mean", ref.trimmed_mean_ref(mixed, 2)),
        ("krum", ref.multi_krum_ref(mixed, 2, 1)[0]),
        ("multi_krum", ref.multi_krum_ref(mixed, 2, 9)[0]),
        ("bulyan", ref.bulyan_ref(mixed, 2)[0]),
    ]:
        got, info = flagcore.aggregate(x, rule, f=2, pre="nnm", return_info=True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=rule)
        assert info.mixing.shape == (11, 11)
        if info.coefficients is not None:  # distance rules never formed the mixed rows
            np.testing.assert_allclose(info.coefficients @ x, got, rtol=1e-10, atol=1e-12)
    # the geometric median is flat at its minimum: compare objectives, not points
    got = flagcore.aggregate(x, "geometric_median", f=2, pre="nnm")
    obj = np.linalg.norm(mixed - got, axis=1).sum()
    assert obj <= ref.geometric_median_ref(mixed)[1] * (1 + 1e-9)


def test_bucketing_then_rule_matches_reference():
    x = ref.make_gradients(15, 80, seed=5, byzantine=2, dtype=np.float64)
    perm = np.random.default_rng(7).permutation(15)
    buckets = ref.bucketing_ref(x, 2, perm)
    np.testing.assert_allclose(flagcore.rules.bucketing(x, 2, seed=7), buckets, rtol=1e-12)
    got = flagcore.aggregate(x, "krum", f=2, pre="bucketing", bucket_size=2, seed=7)
    np.testing.assert_allclose(got, ref.multi_krum_ref(buckets, 2, 1)[0], rtol=1e-10)
    got = flagcore.aggregate(x, "median", f=2, pre=["bucketing", "nnm"], bucket_size=2, seed=7)
    np.testing.assert_allclose(got, ref.median_ref(ref.nnm_ref(buckets, 2)), rtol=1e-10)
    # preconditions are checked on the buckets: 15 workers, s = 3 -> 5 buckets < 2f + 3 = 7
    with pytest.raises(ValueError, match=r"rule 'krum' needs p >= 2f \+ 3, got p = 5, f = 2"):
        flagcore.aggregate(x, "krum", f=2, pre="bucketing", bucket_size=3)


def test_bucketing_class_reshuffles_each_call():
    x = ref.make_gradients(12, 30, seed=6, dtype=np.float64)
    rule = flagcore.rules.Median(pre="bucketing", bucket_size=3, seed=1)
    _, a = rule(x, return_info=True)
    _, b = rule(x, return_info=True)
    assert not np.array_equal(a.mixing, b.mixing)
    _, c = flagcore.rules.Median(pre="bucketing", bucket_size=3, seed=1)(x, return_info=True)
    np.testing.assert_array_equal(a.mixing, c.mixing)


def test_pre_aggregation_excludes_nonfinite_before_mixing():
    x = ref.make_gradients(9, 40, seed=8, dtype=np.float64)
    x[2, 0] = np.nan
    got, info = flagcore.aggregate(x, "median", f=2, pre="nnm", return_info=True)
    assert np.isfinite(got).all() and info.excluded.tolist() == [i == 2 for i in range(9)]
    rest = np.delete(x, 2, axis=0)
    np.testing.assert_allclose(got, ref.median_ref(ref.nnm_ref(rest, 1)), rtol=1e-12)
    got = flagcore.aggregate(x, "trimmed_mean", f=1, pre="bucketing", bucket_size=2)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("pre", ["clipping", "arc"])
@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean", "bulyan", "flag"])
def test_clipping_first_excludes_nonfinite_workers(pre, rule):
    # A NaN worker kept factor 1 in the clipping step (its norm from the zeroed Gram is 0), so its
    # row entered every mixed row and 0 * NaN made the aggregate all zeros. The rule must see the
    # finite workers only, clipped; the NaN worker's column of the mixing matrix is 0.
    x = ref.make_gradients(7, 30, seed=21, dtype=np.float64)
    bad = x.copy()
    bad[3, 5] = np.nan
    kw: dict = {"f": 1} if rule in ("trimmed_mean", "bulyan") else {}
    if rule == "flag":
        kw["r"] = 3  # the default r follows p (7 here, 6 below)
    if pre == "clipping":
        kw["c"] = float(np.median(np.linalg.norm(x, axis=1)))
    else:
        kw["f"] = 1
    got, info = flagcore.aggregate(bad, rule, pre=pre, return_info=True, **kw)
    assert info.excluded.tolist() == [i == 3 for i in range(7)]
    assert np.isfinite(got).all() and np.abs(got).max() > 0
    assert not np.asarray(info.mixing)[..., 3].any()
    # the same as the rule on the six finite workers (f counts the excluded worker)
    rest = np.delete(x, 3, axis=0)
    kw_rest = dict(kw)
    if "f" in kw_rest:
        kw_rest["f"] = kw["f"] - 1
    want = flagcore.aggregate(rest, rule, pre=pre, **kw_rest)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_errors_name_the_function_and_argument():
    x = np.ones((7, 4))
    with pytest.raises(ValueError, match=r"aggregate: rule must be one of .*got 'krumm'"):
        flagcore.aggregate(x, "krumm", f=1)
    with pytest.raises(TypeError, match=r"aggregate: rule 'krum' needs f"):
        flagcore.aggregate(x, "krum")
    with pytest.raises(TypeError, match=r"aggregate: rule 'median' takes no parameter 'tau'"):
        flagcore.aggregate(x, "median", tau=1.0)
    with pytest.raises(ValueError, match=r"aggregate: pre must be"):
        flagcore.aggregate(x, "median", pre="mix")
    with pytest.raises(ValueError, match=r"aggregate: f must be in \[0, inf\], got -1"):
        flagcore.aggregate(x, "median", f=-1)
    with pytest.raises(ValueError, match=r"aggregate: tau must be > 0"):
        flagcore.aggregate(x, "centered_clipping", tau=0.0)
    with pytest.raises(
        ValueError, match=r"aggregate: reference must have shape \(4,\) or \(1, 4\), got \(3,\)"
    ):
        flagcore.aggregate(x, "centered_clipping", reference=np.zeros(3))
    with pytest.raises(ValueError, match=r"aggregate: reference='previous' needs state"):
        flagcore.aggregate(x, "centered_clipping", reference="previous")
    with pytest.raises(
        ValueError, match=r"aggregate: gradients must be \(p, n\) or \(b, p, n\), got shape \(7,\)"
    ):
        flagcore.aggregate(np.ones(7), "median")
    with pytest.raises(
        ValueError, match=r"aggregate: pre-aggregation 'nnm' needs p > 2f, got p = 7, f = 4"
    ):
        flagcore.aggregate(x, "mean", f=4, pre="nnm")


def test_more_bad_inputs_get_named_errors():
    x = np.ones((7, 4))
    # c without pre used to be ignored silently (with pre="nnm" it was refused)
    with pytest.raises(TypeError, match=r"aggregate: c \(the clipping threshold\) is only used"):
        flagcore.aggregate(x, "mean", c=1e-3)
    # a reference that is no number: numpy's bare conversion error before
    for rule, kw in (("fltrust", {}), ("centered_clipping", {"tau": 1.0})):
        with pytest.raises(ValueError, match=r"aggregate: reference must be a numeric array"):
            flagcore.aggregate(x, rule, reference=np.array(["a"] * 4), **kw)
    # more workers than the sorting networks take: named by the function and the rule, not the
    # native call (the mean takes any p: tests/test_api_edges.py)
    with pytest.raises(
        ValueError, match=r"aggregate: rule 'median': gradients may hold at most 65536 workers"
    ):
        flagcore.aggregate(np.zeros((65537, 1), np.float32), "median")


def test_signguard_on_no_coordinates_returns_an_empty_aggregate():
    # n = 0 is an empty aggregate for every rule; signguard raised numpy's sampling error
    x = np.zeros((7, 0))
    assert flagcore.aggregate(x, "signguard", f=1).shape == (0,)
    assert flagcore.aggregate(x, "mean").shape == (0,)


def test_device_path_matches_native(monkeypatch):
    """The path for tensors on a non-CPU device (torch Gram / weighted sum, plain-torch
    coordinate rules, mixing by torch matmul) run on CPU tensors agrees with the native path,
    with a NaN worker, a batch and pre-aggregation."""
    torch = pytest.importorskip("torch")
    import flagcore.rules as rules_mod
    from flagcore import _arrays

    def as_device_stack(g, fn, **kw):
        st = _arrays.as_stack(g, fn, **kw)
        st.torch_data, st.data = torch.as_tensor(st.data), None
        return st

    x = ref.make_gradients(15, 120, seed=9, byzantine=2, dtype=np.float64)
    x[3, 5] = np.nan
    xb = np.stack([x, x[::-1].copy()])
    cases = [(r, None) for r in RULES if r != "flag"] + [
        ("krum", "nnm"),
        ("median", "bucketing"),
        ("bulyan", "nnm"),
        ("flag", "nnm"),
    ]
    for rule, pre in cases:
        kw = _kw(rule, n=120)
        want = flagcore.aggregate(xb, rule, pre=pre, **kw)
        with monkeypatch.context() as m:
            m.setattr(rules_mod, "as_stack", as_device_stack)
            got = flagcore.aggregate(torch.from_numpy(xb), rule, pre=pre, **kw)
        np.testing.assert_allclose(
            got.numpy(), want, rtol=1e-12, atol=1e-12, err_msg=f"{rule} {pre}"
        )


def test_flag_checks_f_without_pre_aggregation_too():
    x = ref.make_gradients(3, 10, seed=5)
    with pytest.raises(ValueError, match="aggregate: rule 'flag' needs f < p, got p = 3, f = 3"):
        flagcore.aggregate(x, "flag", f=3)
    np.testing.assert_array_equal(flagcore.aggregate(x, "flag", f=2), flagcore.flag_aggregate(x))


# ---------------------------------------------------------------- one result type (issue 16)
PRES = [None, "nnm", "bucketing", "clipping", "arc", ("arc", "nnm"), ("bucketing", "clipping")]


@pytest.mark.parametrize("pre", PRES)
def test_one_info_type_for_every_rule_and_pre(pre):
    x = ref.make_gradients(15, 40, seed=20, byzantine=2, dtype=np.float64)
    for rule in RULES:
        kw = _kw(rule, f=1, n=40)
        if pre is not None:
            kw = dict(kw, f=1, pre=pre)
            if "clipping" in ((pre,) if isinstance(pre, str) else pre):
                kw["c"] = 3.0
        out, info = flagcore.aggregate(x, rule, return_info=True, **kw)
        assert type(info) is flagcore.rules.RuleInfo, (rule, pre)
        assert isinstance(info, flagcore.FlagInfo)  # FA's info fields, kept by the subclass
        assert info.rule == rule and info.excluded.shape == (15,)
        if info.coefficients is not None:
            np.testing.assert_allclose(
                info.coefficients @ x, out, rtol=1e-9, atol=1e-10, err_msg=f"{rule} {pre}"
            )


def test_flag_weights_and_ratios_survive_pre_aggregation():
    x = ref.make_gradients(11, 50, seed=21, byzantine=2, dtype=np.float64)
    out, info = flagcore.aggregate(x, "flag", r=3, max_iter=4, f=2, pre="arc", return_info=True)
    mixed = ref.arc_ref(x, 2)
    want, winfo = flagcore.flag_aggregate(mixed, r=3, max_iter=4, return_info=True)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    for name in ("weights", "reconstruction_ratios", "objective"):
        np.testing.assert_allclose(
            getattr(info, name), getattr(winfo, name), rtol=1e-8, atol=1e-12, err_msg=name
        )
    assert info.iterations == winfo.iterations and info.rank == winfo.rank
    assert info.last_step_rejected == winfo.last_step_rejected
    np.testing.assert_allclose(
        info.coefficients @ x, out, rtol=1e-10, atol=1e-12
    )  # over the caller's rows
    # without pre: the same fields, the same values as flag_aggregate's FlagInfo
    out, info = flagcore.aggregate(x, "flag", r=3, max_iter=4, return_info=True)
    _, winfo = flagcore.flag_aggregate(x, r=3, max_iter=4, return_info=True)
    assert type(info) is flagcore.rules.RuleInfo and info.rule == "flag" and info.mixing is None
    np.testing.assert_array_equal(info.weights, winfo.weights)
    np.testing.assert_array_equal(info.reconstruction_ratios, winfo.reconstruction_ratios)
    # batched, with pre: per-problem fields gain the batch axis
    xb = np.stack([x, x[::-1].copy()])
    _, info = flagcore.aggregate(xb, "flag", r=3, f=2, pre="bucketing", return_info=True)
    assert (
        info.weights.shape == (2, 6)
        and info.coefficients.shape == (2, 11)
        and info.iterations.shape == (2,)
    )


def test_a_rule_built_once_draws_a_new_shuffle_per_call_reproducibly():
    x = ref.make_gradients(12, 30, seed=22, dtype=np.float64)
    rule = flagcore.rules.make_rule("median", pre="bucketing", bucket_size=3, seed=9)
    mixes = [rule(x, return_info=True)[1].mixing for _ in range(4)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(mixes) for b in mixes[i + 1 :])
    again = flagcore.rules.make_rule("median", pre="bucketing", bucket_size=3, seed=9)
    for m in mixes:
        np.testing.assert_array_equal(again(x, return_info=True)[1].mixing, m)
    # the sequence is the generator's: call k uses the k-th permutation of default_rng(seed)
    rng = np.random.default_rng(9)
    for m in mixes:
        perm = rng.permutation(12)
        np.testing.assert_allclose(m @ x, ref.bucketing_ref(x, 3, perm), rtol=1e-12)


def test_rules_needing_f_and_reference_are_listed():
    x = np.ones((9, 4))
    for rule in RULES:
        kw = {"reference": np.ones(4)} if rule in flagcore.rules.RULES_NEEDING_REFERENCE else {}
        if rule in flagcore.rules.RULES_NEEDING_F:
            with pytest.raises(TypeError, match=rf"aggregate: rule '{rule}' needs f"):
                flagcore.aggregate(x, rule, **kw)
        else:
            assert flagcore.aggregate(x, rule, **kw).shape == (4,)
    assert (
        set(flagcore.rules.RULES_NEEDING_F)
        >= {"mda", "smea", "monna", "cge", "caf", "dnc"} | F_RULES
    )
