"""Adaptive attacks (optimal_alie, optimal_ipm, min_max, min_sum, fa_aware) and list input.

The deviation an attack reaches is recomputed here independently of flagcore.attacks:
D(b) = ||rule(H + f copies of b) - rule(H + f copies of mu)|| with the rule from
flagcore.aggregate (and, for mean, a float64 NumPy mean). The property: an adaptive attack's
deviation on the rule it targets is at least that of its non-adaptive version on the same input,
and strictly more where the rule lets a scale matter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flagcore
from conftest import require_torch
from flagcore.attacks import (
    ADAPTIVE_ATTACKS,
    ALL_ATTACKS,
    ATTACKS,
    alie_z,
    attack,
    line_maximize,
    min_max_gamma,
    min_sum_gamma,
)

TARGETS = [
    "mean",
    "median",
    "trimmed_mean",
    "multi_krum",
    "geometric_median",
    "centered_clipping",
    "flag",
]
F = 3


def honest_stack(seed=0, h=12, n=300, spread=1.0):
    rng = np.random.default_rng(seed)
    return 0.5 * rng.standard_normal(n) + spread * rng.standard_normal((h, n))


def deviation(rule, h, b, f=F):
    """The test's own D(b) (float64)."""
    mu = h.mean(axis=0)
    agg = (
        (lambda x: x.mean(axis=0))
        if rule == "mean"
        else (lambda x: np.asarray(flagcore.aggregate(x, rule, f=f)))
    )
    return float(
        np.linalg.norm(
            agg(np.vstack([h, np.tile(b, (f, 1))])) - agg(np.vstack([h, np.tile(mu, (f, 1))]))
        )
    )


def agnostic(name, h):
    return attack(name, h, F)[0]


# ------------------------------------------------------------------ the defining property
NON_ADAPTIVE = {
    "optimal_alie": ("alie", {}),
    "optimal_ipm": ("ipm", {}),
    "min_max": ("min_max", None),
    "min_sum": ("min_sum", None),
}


@pytest.mark.parametrize("rule", TARGETS)
@pytest.mark.parametrize("name", ["optimal_alie", "optimal_ipm", "min_max", "min_sum"])
def test_adaptive_beats_its_non_adaptive_version(rule, name):
    h = honest_stack(1)
    base_name, kw = NON_ADAPTIVE[name]
    base = attack(base_name, h, F)[0] if kw is not None else agnostic(base_name, h)
    out, info = attack(name, h, F, rule=rule, return_info=True)
    assert out.shape == (F, h.shape[1]) and np.all(out == out[0])  # f identical attackers
    d_adapt, d_base = deviation(rule, h, out[0]), deviation(rule, h, base)
    assert d_adapt >= d_base * (1 - 1e-9) - 1e-12, (rule, name, d_adapt, d_base)
    assert info.deviation == pytest.approx(
        d_adapt, rel=1e-6, abs=1e-9
    )  # the attack's D is the test's D


@pytest.mark.parametrize(
    "rule, name",
    [
        ("mean", "optimal_alie"),
        ("mean", "optimal_ipm"),
        ("mean", "min_max"),
        ("mean", "min_sum"),
        ("median", "optimal_alie"),
        ("trimmed_mean", "optimal_alie"),
        ("trimmed_mean", "optimal_ipm"),
        ("multi_krum", "optimal_alie"),
        ("multi_krum", "optimal_ipm"),
    ],
)
def test_adaptive_strictly_better_where_scale_matters(rule, name):
    """Cases where the non-adaptive scale is not the best one: the optimiser must move."""
    h = honest_stack(1)
    base_name, kw = NON_ADAPTIVE[name]
    base = attack(base_name, h, F)[0] if kw is not None else agnostic(base_name, h)
    out = attack(name, h, F, rule=rule)
    assert deviation(rule, h, out[0]) > 1.05 * deviation(rule, h, base)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    h=st.integers(4, 10),
    f=st.integers(1, 3),
    spread=st.sampled_from([0.01, 1.0, 30.0]),
    rule=st.sampled_from(["mean", "median", "trimmed_mean", "flag"]),
    name=st.sampled_from(["optimal_alie", "optimal_ipm", "min_max", "min_sum"]),
)
def test_adaptive_never_below_non_adaptive(seed, h, f, spread, rule, name):
    x = honest_stack(seed, h=h, n=40, spread=spread)
    if rule == "trimmed_mean" and not h + f > 2 * f:
        return
    base_name, _ = NON_ADAPTIVE[name]
    if name == "optimal_alie":
        p = h + f
        if not 0 < (p - (math.floor(p / 2 + 1) - f)) / p < 1:
            return
    base = attack(base_name, x, f)[0]
    out = attack(name, x, f, rule=rule)
    assert np.isfinite(out).all()
    assert deviation(rule, x, out[0], f) >= deviation(rule, x, base, f) * (1 - 1e-9) - 1e-12


# ------------------------------------------------------------------ min-max / min-sum closed forms
@pytest.mark.parametrize("pert", ["unit_vec", "std", "sign"])
def test_min_max_and_min_sum_gamma_are_the_largest_feasible(pert):
    h = honest_stack(2, h=9, n=50)
    mu = h.mean(axis=0)
    d = {"unit_vec": mu / np.linalg.norm(mu), "std": h.std(axis=0, ddof=1), "sign": np.sign(mu)}[
        pert
    ]
    pair = np.linalg.norm(h[:, None] - h[None], axis=2)
    sums = (pair**2).sum(axis=1)

    def ok_max(g):
        return np.linalg.norm(mu - g * d - h, axis=1).max() <= pair.max() * (1 + 1e-12)

    def ok_sum(g):
        return (np.linalg.norm(mu - g * d - h, axis=1) ** 2).sum() <= sums.max() * (1 + 1e-12)

    for gamma, ok in ((min_max_gamma(h, d), ok_max), (min_sum_gamma(h, d), ok_sum)):
        assert gamma > 0 and ok(gamma) and not ok(gamma * (1 + 1e-6))
        # the agnostic attack (no rule) sends exactly mu - gamma d
    out, info = attack("min_max", h, 2, perturbation=pert, return_info=True)
    np.testing.assert_allclose(out[0], mu - min_max_gamma(h, d) * d, rtol=1e-9, atol=1e-12)
    assert info.parameter == info.agnostic_parameter == pytest.approx(min_max_gamma(h, d))


def test_min_sum_gamma_matches_bisection():
    h = honest_stack(3, h=7, n=30)
    mu = h.mean(axis=0)
    d = mu / np.linalg.norm(mu)
    sums = (np.linalg.norm(h[:, None] - h[None], axis=2) ** 2).sum(axis=1).max()
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi)
            if (np.linalg.norm(mu - mid * d - h, axis=1) ** 2).sum() <= sums
            else (lo, mid)
        )
    assert min_sum_gamma(h, d) == pytest.approx(lo, rel=1e-9)


# ------------------------------------------------------------ line search (ByzFL's LineMaximize)
def test_line_maximize_finds_the_peak_within_its_budget():
    calls = []

    def obj(x):
        calls.append(x)
        return -((x - 5.3) ** 2)

    x, y = line_maximize(obj, evals=30, start=0.0, delta=1.0, ratio=0.8)
    assert len(calls) == 30 and all(c >= 0 for c in calls)
    assert abs(x - 5.3) < 0.2 and y == max(obj(c) for c in calls[:30])


def test_line_maximize_evaluation_count_reported():
    h = honest_stack(4)
    _, info = attack("optimal_alie", h, F, rule="median", evals=10, return_info=True)
    assert info.evaluations == 10 + 2  # reference + 10 line-search points + ALIE's z_max


# ------------------------------------------------------------------ FA-aware
@pytest.mark.parametrize("fa", [{}, {"max_iter": 20}, {"scale": "median_norm"}])
def test_fa_aware_keeps_ratios_at_honest_level_and_beats_feasible_baselines(fa):
    h = honest_stack(5, n=400)
    out, info = attack("fa_aware", h, F, rule="flag", rule_params=fa, return_info=True)
    stack = np.vstack([h, out])
    _, fi = flagcore.flag_aggregate(stack, return_info=True, **fa)
    v = np.asarray(fi.reconstruction_ratios)
    assert info.feasible
    assert (
        v[-F:].min() >= np.median(v[:-F]) - 1e-12
    )  # attackers look at least as trusted as the median honest worker
    assert info.byzantine_ratio == pytest.approx(v[-F:].min())

    def dev(b):
        mu = h.mean(axis=0)
        ref = flagcore.flag_aggregate(np.vstack([h, np.tile(mu, (F, 1))]), **fa)
        return float(
            np.linalg.norm(flagcore.flag_aggregate(np.vstack([h, np.tile(b, (F, 1))]), **fa) - ref)
        )

    assert info.deviation == pytest.approx(dev(out[0]), rel=1e-6)
    for base in ("alie", "ipm", "sign_flip"):
        b = attack(base, h, F)[0]
        _, bi = flagcore.flag_aggregate(np.vstack([h, np.tile(b, (F, 1))]), return_info=True, **fa)
        bv = np.asarray(bi.reconstruction_ratios)
        if bv[-F:].min() >= np.median(bv[:-F]):  # a baseline FA would trust as much
            assert info.deviation >= dev(b) * (1 - 1e-9), base


def test_fa_aware_targets_another_rule_with_fa_ratios():
    h = honest_stack(6)
    out, info = attack("fa_aware", h, F, rule="median", return_info=True)
    assert info.feasible and info.deviation == pytest.approx(
        deviation("median", h, out[0]), rel=1e-6
    )


# ------------------------------------------------------------------ rule as callable / list input
def test_callable_rule_matches_named_rule():
    h = honest_stack(7)
    a = attack("optimal_alie", h, F, rule="median")
    b = attack("optimal_alie", h, F, rule=lambda x: np.median(x, axis=0))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_list_input_numpy_and_torch():
    h = honest_stack(8, n=24).astype(np.float32)
    items = [r.reshape(4, 6) for r in h]
    for name in ATTACKS + ADAPTIVE_ATTACKS:
        kw = {"rule": "median"} if name in ("optimal_alie", "optimal_ipm") else {}
        out = attack(name, items, 2, seed=3, **kw)
        ref = attack(name, h, 2, seed=3, **kw)
        assert isinstance(out, list) and len(out) == 2
        assert all(o.shape == (4, 6) and o.dtype == np.float32 for o in out)
        np.testing.assert_array_equal(np.stack([o.reshape(-1) for o in out]), ref)
    torch = require_torch()
    titems = [torch.from_numpy(i).to(torch.float64) for i in items]
    out = attack("min_max", titems, 2, rule="trimmed_mean")
    ref = attack("min_max", h.astype(np.float64), 2, rule="trimmed_mean")
    assert all(
        isinstance(o, torch.Tensor) and o.dtype == torch.float64 and tuple(o.shape) == (4, 6)
        for o in out
    )
    np.testing.assert_allclose(torch.stack([o.reshape(-1) for o in out]).numpy(), ref, rtol=1e-12)


def test_torch_stack_round_trip_and_seed():
    torch = require_torch()
    h = torch.from_numpy(honest_stack(9, n=64)).float()
    for name in ADAPTIVE_ATTACKS:
        out = attack(name, h, 2, rule="median", seed=4)
        assert (
            isinstance(out, torch.Tensor)
            and out.dtype == torch.float32
            and tuple(out.shape) == (2, 64)
        )
        assert torch.equal(out, attack(name, h, 2, rule="median", seed=4))


def test_non_finite_honest_rows_are_ignored():
    h = honest_stack(10)
    bad = h.copy()
    bad[3] = np.nan
    for name in ("min_max", "min_sum"):
        np.testing.assert_allclose(
            attack(name, bad, F), attack(name, np.delete(h, 3, axis=0), F), rtol=1e-12
        )
    out = attack("optimal_alie", bad, F, rule="median")
    assert np.isfinite(out).all()
    allnan = np.full((4, 5), np.nan)
    assert np.isnan(attack("optimal_ipm", allnan, 2, rule="mean")).all()  # as plain ipm would


def test_non_adaptive_attacks_ignore_rule():
    h = honest_stack(11)
    np.testing.assert_array_equal(attack("alie", h, 2, rule="median"), attack("alie", h, 2))
    assert set(ALL_ATTACKS) == set(ATTACKS) | set(ADAPTIVE_ATTACKS)
    assert alie_z(15, 3) > 0


@pytest.mark.parametrize(
    "name, kw, exc, msg",
    [
        ("optimal_alie", {}, TypeError, "attack: attack 'optimal_alie' needs rule="),
        ("optimal_ipm", {"rule": 5}, TypeError, "attack: rule must be None, a rule name"),
        ("optimal_ipm", {"rule": "nosuch"}, ValueError, "attack: rule must be one of"),
        (
            "optimal_ipm",
            {"rule": "median", "rule_params": [1]},
            TypeError,
            "attack: rule_params must be a dict",
        ),
        (
            "optimal_ipm",
            {"rule": np.mean, "rule_params": {"f": 1}},
            ValueError,
            "rule_params applies to a rule name",
        ),
        (
            "optimal_ipm",
            {"rule": "krum", "rule_params": {"f": 6}},
            ValueError,
            r"attack: rule 'krum' needs p >= 2f \+ 3",
        ),
        ("min_max", {"perturbation": "up"}, ValueError, "attack: perturbation must be one of"),
        ("min_max", {"rule_params": {"f": 1}}, ValueError, "rule_params given without a rule"),
        (
            "optimal_alie",
            {"rule": "mean", "ratio": 1.5},
            ValueError,
            r"attack: ratio must be in \(0.5, 1\)",
        ),
        ("optimal_alie", {"rule": "mean", "evals": 0}, ValueError, "attack: evals must be in"),
        ("optimal_alie", {"rule": "mean", "delta": 0.0}, ValueError, "attack: delta must be > 0"),
        ("fa_aware", {"quantile": 2.0}, ValueError, r"attack: quantile must be in \[0, 1\]"),
        (
            "fa_aware",
            {"flag_params": {"rank": 2}},
            TypeError,
            "flag_params takes no parameter 'rank'",
        ),
        ("fa_aware", {"angles": 0}, ValueError, "attack: angles must be in"),
        ("min_sum", {"return_info": 1}, TypeError, "attack: return_info must be a bool"),
    ],
)
def test_adaptive_bad_arguments(name, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        attack(name, honest_stack(12, n=20), 2, **kw)


def test_list_input_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"attack: honest\[1\] has shape"):
        attack("ipm", [np.zeros(3), np.zeros(4)], 1)
    with pytest.raises(ValueError, match="attack: honest must hold at least one worker"):
        attack("ipm", [], 1)


def test_optimal_alie_runs_where_alie_z_max_is_undefined():
    h = honest_stack(13, h=3, n=20)
    with pytest.raises(ValueError, match="attack: attack 'alie': f is too large for ALIE's z_max"):
        attack("alie", h, 4)  # p = 7, f = 4: s = 0, (p - s) / p = 1
    out, info = attack("optimal_alie", h, 4, rule="mean", return_info=True)
    assert np.isfinite(out).all() and info.evaluations == 16 + 1


def test_optimal_alie_fallback_f_zero_and_f_too_large():
    # f = 0: nothing to send, as for every attack (z_max is undefined for p = 2, f = 0)
    h = honest_stack(14, h=2, n=20)
    assert attack("optimal_alie", h, 0, rule="median").shape == (0, 20)
    # fewer than 2 finite honest rows: plain ALIE at z_max, which f = 4 of p = 7 leaves undefined
    bad = honest_stack(14, h=3, n=20)
    bad[1:, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=r"attack: attack 'optimal_alie': f is too large for ALIE's z_max, which needs "
        r"f < floor\(p / 2 \+ 1\) = 4; got p = 7 \(honest \+ f\), f = 4; .*z explicitly",
    ):
        attack("optimal_alie", bad, 4, rule="median")


# ------------------------------------------------------------------ scale equivariance
# Norms and squared distances of finite float64 gradients overflow beyond ~1e154 and underflow
# below ~1e-162; the attacks' maths is scale-equivariant over the whole finite range. The run at
# s = 1 is the reference.
SCALES = [1e-170, 1e-100, 1.0, 1e100, 1e155, 1e160, 1e300]


def scale_honest():
    return np.random.default_rng(0).standard_normal((7, 20))


def assert_scaled(out, ref, s):
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out / s, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("rule", [None, "median"])
@pytest.mark.parametrize("pert", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("name", ["min_max", "min_sum"])
def test_min_max_min_sum_are_scale_equivariant(name, pert, rule, s):
    h = scale_honest()
    ref, ri = attack(name, h, 3, perturbation=pert, rule=rule, return_info=True)
    out, info = attack(name, h * s, 3, perturbation=pert, rule=rule, return_info=True)
    unit = 1.0 if pert == "std" else s  # gamma multiplies d: std scales with s, the others not
    assert ri.parameter > 0 and info.parameter / unit == pytest.approx(ri.parameter, rel=1e-9)
    assert info.agnostic_parameter / unit == pytest.approx(ri.agnostic_parameter, rel=1e-9)
    assert_scaled(out, ref, s)
    if rule is not None:
        assert math.isfinite(info.deviation)
        assert info.deviation == pytest.approx(s * ri.deviation, rel=1e-9)
        assert info.evaluations == ri.evaluations


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("name", ["optimal_ipm", "optimal_alie"])
def test_optimal_ipm_alie_are_scale_equivariant(name, s):
    h = scale_honest()
    ref, ri = attack(name, h, 3, rule="median", return_info=True)
    out, info = attack(name, h * s, 3, rule="median", return_info=True)
    assert info.parameter == pytest.approx(ri.parameter, rel=1e-9)  # eps and z are invariant
    assert math.isfinite(info.deviation) and ri.deviation > 0
    assert info.deviation == pytest.approx(s * ri.deviation, rel=1e-9)
    assert_scaled(out, ref, s)


@pytest.mark.parametrize("s", SCALES)
def test_fa_aware_choice_is_scale_invariant(s):
    # FA's ratios are invariant to a common scale; D on median scales with it
    h = scale_honest()
    ref, ri = attack("fa_aware", h, 3, rule="median", return_info=True)
    out, info = attack("fa_aware", h * s, 3, rule="median", return_info=True)
    assert info.parameter == ri.parameter and info.feasible == ri.feasible
    assert info.byzantine_ratio == pytest.approx(ri.byzantine_ratio, rel=1e-9)
    assert info.honest_ratio == pytest.approx(ri.honest_ratio, rel=1e-9)
    assert math.isfinite(info.deviation) and ri.deviation > 0
    assert info.deviation == pytest.approx(s * ri.deviation, rel=1e-9)
    assert_scaled(out, ref, s)


@pytest.mark.parametrize("s", [2.0**-560, 2.0**-100, 2.0**100, 2.0**560])
def test_min_max_min_sum_gamma_exact_under_powers_of_two(s):
    # dividing by powers of two is exact: the closed forms give the same gamma up to s
    h = honest_stack(15, h=9, n=50)
    d = np.sign(h.mean(axis=0))
    assert min_max_gamma(h * s, d) == min_max_gamma(h, d) * s
    assert min_sum_gamma(h * s, d) == min_sum_gamma(h, d) * s
    assert min_max_gamma(h * s, d * s) == min_max_gamma(h, d)
