"""flagcore.energy.power: P(f) = static + coeff f^alpha, memory-bound service scaling, levels from
a frequency table, and the least-squares fit; exact values, properties, fit recovery, and the
levels running through simulate / approximate / optimize."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _props import bounded
from flagcore.energy import (
    PowerModel,
    SpeedLevel,
    approximate,
    fit_power_model,
    levels_from_frequencies,
    optimize,
    service_rate,
    service_time,
    simulate,
)

TABLE = [1.0, 1.4, 1.8, 2.2, 2.6, 3.0]  # GHz


# ---------------------------------------------------------------- exact values
def test_power_model_exact_values():
    m = PowerModel(1.0, 0.5, 3.0)
    assert m.power(2.0) == 5.0 and m.power(1) == 1.5
    np.testing.assert_array_equal(m.power([1.0, 2.0, 4.0]), [1.5, 5.0, 33.0])
    assert isinstance(m.power(2.0), float) and isinstance(m.power([2.0]), np.ndarray)
    assert PowerModel(0, 0, 1).power(3.0) == 0.0 and PowerModel(2, 0, 9).power(1e300) == 2.0
    assert PowerModel(1, 1, 40).power(1e10) == math.inf  # beyond the float range, no warning


def test_service_time_and_rate_exact_values():
    assert service_time(1.5, 3.0) == 2.0  # compute-bound: 1 / f scaling
    assert service_time(1.5, 3.0, memory_fraction=1.0) == 1.0  # memory-bound: no scaling
    assert service_time(1.5, 3.0, memory_fraction=0.25) == 0.75 * 2.0 + 0.25
    assert service_rate(1.5, 3.0, 0.25, rate_at_ref=2.0) == pytest.approx(2.0 / 1.75, rel=1e-15)
    for m in (0.0, 0.1, 0.3, 0.7, 1.0):  # exactly the reference rate at the reference frequency
        assert service_time(2.6, 2.6, m) == 1.0 and service_rate(2.6, 2.6, m, 4.0) == 4.0
    np.testing.assert_allclose(
        service_time([1.0, 2.0, 4.0], 4.0, 0.5), [0.5 * 4 + 0.5, 0.5 * 2 + 0.5, 1.0], rtol=1e-15
    )


def test_levels_from_frequencies_exact():
    m = PowerModel(0.8, 0.4, 2.5)
    lv = levels_from_frequencies(TABLE, model=m, memory_fraction=0.2, rate_at_max=10.0)
    assert all(isinstance(x, SpeedLevel) for x in lv) and len(lv) == len(TABLE)
    for x, f in zip(lv, TABLE):
        assert x.rate == pytest.approx(10.0 / (0.8 * 3.0 / f + 0.2), rel=1e-14)
        assert x.power == pytest.approx(0.8 + 0.4 * f**2.5, rel=1e-14)
        assert x.probability == pytest.approx(1 / 6, rel=1e-15)
    assert lv[-1].rate == 10.0
    # measured powers, in the table's order (not sorted), explicit probabilities
    lv = levels_from_frequencies([2.0, 1.0], [7.5, 3.0], probabilities=[0.25, 0.75])
    assert [(x.rate, x.power, x.probability) for x in lv] == [(1.0, 7.5, 0.25), (0.5, 3.0, 0.75)]


# ---------------------------------------------------------------- properties
freqs = st.lists(st.floats(0.2, 6.0), min_size=2, max_size=12, unique=True)


@bounded(80)
@given(
    f=freqs,
    static=st.floats(0.0, 50.0),
    coeff=st.floats(0.0, 20.0),
    alpha=st.floats(0.3, 5.0),
    m=st.floats(0.0, 1.0),
    r=st.floats(1e-3, 1e3),
)
def test_power_and_rate_are_monotone_in_frequency(f, static, coeff, alpha, m, r):
    """Higher frequency: no less power and no lower rate (strictly higher when m < 1); a
    memory-bound share makes a slow level lose less than the frequency ratio: f/f_max <=
    rate(f)/rate(f_max) <= 1."""
    fs = np.sort(np.array(f))
    model = PowerModel(static, coeff, alpha)
    pw = model.power(fs)
    assert np.all(np.diff(pw) >= -1e-12 * pw[1:])
    lv = levels_from_frequencies(fs, model=model, memory_fraction=m, rate_at_max=r)
    rates = np.array([x.rate for x in lv])
    if m < 1.0 - 1e-12:
        # strictly higher where the frequencies differ by more than rounding (hypothesis 6.170
        # drew 0.2 and 0.20000000000000004: one ulp apart, the same rate after the division)
        assert np.all(np.diff(rates) >= 0)
        apart = np.diff(fs) > 1e-12 * fs[1:]
        assert np.all(np.diff(rates)[apart] > 0)
    else:
        np.testing.assert_allclose(rates, r, rtol=1e-12)
    ratio = rates / r
    assert np.all(ratio >= fs / fs.max() * (1 - 1e-12)) and np.all(ratio <= 1 + 1e-12)
    assert rates[-1] == r
    assert math.fsum(x.probability for x in lv) == pytest.approx(1.0, abs=1e-12)


@bounded(40)
@given(f=freqs, m1=st.floats(0.0, 1.0), m2=st.floats(0.0, 1.0))
def test_memory_bound_work_scales_less(f, m1, m2):
    """time(f) falls as the memory-bound fraction rises, for every f below the reference."""
    lo, hi = sorted((m1, m2))
    fs = np.array(f)
    fr = float(fs.max())
    assert np.all(service_time(fs, fr, hi) <= service_time(fs, fr, lo) * (1 + 1e-12))


# ---------------------------------------------------------------- fit
@pytest.mark.parametrize(
    "static,coeff,alpha", [(0.8, 0.4, 2.7), (0.0, 1.3, 3.0), (12.0, 0.05, 1.6), (3.0, 2.0, 1.0)]
)
def test_fit_recovers_known_parameters(static, coeff, alpha):
    truth = PowerModel(static, coeff, alpha)
    fit = fit_power_model(TABLE, truth.power(TABLE))
    assert fit.alpha == pytest.approx(alpha, rel=1e-7)
    assert fit.coeff == pytest.approx(coeff, rel=1e-6)
    assert fit.static == pytest.approx(static, rel=1e-6, abs=1e-9)


def test_fit_with_fixed_alpha_is_linear_least_squares():
    rng = np.random.default_rng(7)
    f = np.array(TABLE)
    p = 1.0 + 0.3 * f**2.4 + 0.05 * rng.standard_normal(f.size)
    fit = fit_power_model(f, p, alpha=3.0)
    sol, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(f), f**3.0]), p, rcond=None)
    assert fit.alpha == 3.0
    assert fit.static == pytest.approx(sol[0], rel=1e-10) and fit.coeff == pytest.approx(
        sol[1], rel=1e-10
    )


@bounded(30)
@given(
    seed=st.integers(0, 2**31 - 1),
    static=st.floats(0.1, 20.0),
    coeff=st.floats(0.05, 5.0),
    alpha=st.floats(1.0, 4.0),
    noise=st.floats(0.0, 0.05),
)
def test_fit_is_no_worse_than_the_truth_on_noisy_data(seed, static, coeff, alpha, noise):
    """Least squares: the fitted curve's squared error on the data is at most the true curve's
    (the truth is one of the candidates), and with 1-5 % noise alpha stays near the truth."""
    rng = np.random.default_rng(seed)
    f = np.linspace(0.8, 3.6, 12)
    truth = PowerModel(static, coeff, alpha)
    p = truth.power(f) * (1 + noise * rng.standard_normal(f.size))
    p = np.maximum(p, 0.0)
    fit = fit_power_model(f, p)
    sse_fit = float(((fit.power(f) - p) ** 2).sum())
    sse_true = float(((truth.power(f) - p) ** 2).sum())
    assert sse_fit <= sse_true * (1 + 1e-9) + 1e-20
    assert fit.static >= 0 and fit.coeff >= 0 and 0.5 <= fit.alpha <= 8.0


def test_fit_keeps_parameters_physical():
    """Power falling with frequency cannot be fitted with coeff >= 0: the constrained optimum
    is the constant mean (coeff = 0), not a negative dynamic part."""
    fit = fit_power_model([1.0, 2.0, 3.0, 4.0], [5.0, 4.0, 3.0, 2.0])
    assert fit.coeff == 0.0 and fit.static == pytest.approx(3.5)


# ---------------------------------------------------------------- into the model
def test_levels_run_through_simulate_approximate_and_optimize():
    """One P-state at a time: with cancellation and one speed the energy per request is exactly
    k * P / mu (approximate) and the simulator agrees within its interval; optimize accepts the
    table and meets its target."""
    model = fit_power_model(TABLE, PowerModel(0.8, 0.4, 2.7).power(TABLE))
    for j in (0, 5):
        probs = [1.0 if i == j else 0.0 for i in range(len(TABLE))]
        lv = levels_from_frequencies(
            TABLE, model=model, memory_fraction=0.3, rate_at_max=1.0, probabilities=probs
        )
        mu, pw = lv[j].rate, lv[j].power
        a = approximate(4, 2, 0.5, lv)
        assert a.energy_per_request == pytest.approx(2 * pw / mu, rel=1e-9)
        s = simulate(4, 2, 0.5, lv, requests=40_000, seed=11)
        assert abs(s.energy_per_request - 2 * pw / mu) <= 4 * s.energy_per_request_ci
    lv = levels_from_frequencies(TABLE, model=model, memory_fraction=0.3)
    o = optimize(4, 2, 0.5, lv, target=2.0, grid=5, refine=0)
    assert o.feasible and o.latency <= 2.0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: PowerModel(-1.0, 1.0, 2.0), ValueError, r"PowerModel: static must be >= 0"),
        (lambda: PowerModel(1.0, math.nan, 2.0), ValueError, r"PowerModel: coeff must be >= 0"),
        (lambda: PowerModel(1.0, 1.0, 0.0), ValueError, r"PowerModel: alpha must be positive"),
        (lambda: PowerModel(1.0, "2", 2.0), TypeError, r"PowerModel: coeff must be a number"),
        (lambda: PowerModel(1, 1, 2).power(0.0), ValueError, r"PowerModel.power: frequency"),
        (lambda: service_time(1.0, 2.0, 1.5), ValueError, r"service_time: memory_fraction .*1.5"),
        (lambda: service_time(-1.0, 2.0), ValueError, r"service_time: frequency .*-1.0"),
        (lambda: service_time(1.0, math.inf), ValueError, r"service_time: f_ref .*inf"),
        (lambda: service_rate(1.0, 2.0, 0.0, 0.0), ValueError, r"service_rate: rate_at_ref"),
        (lambda: service_rate(1.0, 2.0, -0.1), ValueError, r"service_rate: memory_fraction"),
        (lambda: service_rate([1.0, 0.0], 2.0), ValueError, r"service_rate: frequency\[1\]"),
        (
            lambda: levels_from_frequencies([1.0, 2.0]),
            ValueError,
            r"levels_from_frequencies: give exactly one of powers .* and model",
        ),
        (
            lambda: levels_from_frequencies([1.0, 2.0], [1.0, 2.0], model=PowerModel(0, 1, 2)),
            ValueError,
            r"exactly one of powers",
        ),
        (
            lambda: levels_from_frequencies([1.0, 2.0], [1.0]),
            ValueError,
            r"levels_from_frequencies: powers must have one value per frequency \(2\), got 1",
        ),
        (
            lambda: levels_from_frequencies([1.0, 1.0], [1.0, 2.0]),
            ValueError,
            r"frequencies must be distinct",
        ),
        (
            lambda: levels_from_frequencies([1.0, 0.0], [1.0, 2.0]),
            ValueError,
            r"levels_from_frequencies: frequencies\[1\] must be positive and finite, got 0.0",
        ),
        (
            lambda: levels_from_frequencies("1.0,2.0", [1.0, 2.0]),
            TypeError,
            r"frequencies must be a sequence of numbers, got str",
        ),
        (
            lambda: levels_from_frequencies([1.0, 2.0], [1.0, -2.0]),
            ValueError,
            r"powers\[1\] must be >= 0 and finite, got -2.0",
        ),
        (
            lambda: levels_from_frequencies([1.0, 2.0], [1.0, 2.0], probabilities=[0.5, 0.6]),
            ValueError,
            r"probabilities must be in \[0, 1\] and sum to 1",
        ),
        (
            lambda: levels_from_frequencies([1.0, 2.0], model=(0, 1, 2)),
            TypeError,
            r"model must be a PowerModel, got tuple",
        ),
        (
            lambda: levels_from_frequencies([1e10], model=PowerModel(0, 1, 40)),
            ValueError,
            r"model.power overflows",
        ),
        (
            lambda: fit_power_model([1.0, 2.0], [1.0, 2.0]),
            ValueError,
            r"fit_power_model: fitting alpha needs at least 3 distinct frequencies, got 2",
        ),
        (
            lambda: fit_power_model([1.0, 2.0, 3.0], [1.0, 2.0]),
            ValueError,
            r"fit_power_model: powers must have one value per frequency \(3\), got 2",
        ),
        (
            lambda: fit_power_model([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], alpha_bounds=(2, 1)),
            ValueError,
            r"fit_power_model: alpha_bounds must be \(low, high\)",
        ),
        (
            lambda: fit_power_model([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], alpha=-1),
            ValueError,
            r"fit_power_model: alpha must be positive and finite, got -1",
        ),
        (
            lambda: fit_power_model([1e9, 2e9, 3e9], [1.0, 2.0, 9.0], alpha=40.0),
            ValueError,
            r"fit_power_model: coeff = .* is not representable; give the frequencies in GHz",
        ),
        (
            lambda: fit_power_model(np.ones((2, 2)), [1.0, 2.0]),
            ValueError,
            r"fit_power_model: frequencies must be one-dimensional",
        ),
    ],
)
def test_bad_input_is_refused_with_the_reason(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("scale", [1e-200, 1e-3, 1e200])
def test_fit_is_invariant_under_the_power_unit(scale):
    """Powers in any unit (mW, W, or absurd magnitudes): the same alpha, static and coeff
    scaled with them, no overflow in the squared errors."""
    p = PowerModel(0.8, 0.4, 2.7).power(TABLE)
    ref = fit_power_model(TABLE, p)
    fit = fit_power_model(TABLE, p * scale)
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-9)
    assert fit.static == pytest.approx(ref.static * scale, rel=1e-6)
    assert fit.coeff == pytest.approx(ref.coeff * scale, rel=1e-6)
    assert fit_power_model(TABLE, [0.0] * len(TABLE)).power(2.0) == 0.0  # all-zero readings
