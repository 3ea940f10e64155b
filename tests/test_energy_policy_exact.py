"""The threshold policy's exact response-time distribution (flagcore.energy.exact_threshold).

The tagged-request absorbing chain against: the M/M/1 sojourn Exp(mu - lambda) when every
level has one rate (every t, to 1e-10), M/M/1 at the summed rate for (n, 1) with cancellation;
a dense NumPy birth-death chain for the stationary metrics; Little's law (the chain's E[T]
equals the birth-death E[N] / lambda, a property over random policies); and simulate's p50 /
p90 / p99 (n = 1 with two and three levels, (2, 1) with cancellation and heterogeneous
servers) within 4 of the run's 95% half-widths (batch quantiles, SimResult.percentile_ci)
plus the histogram's resolution (2^-8 relative). Every run is seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagcore.energy import ThresholdPolicy, exact_threshold, simulate
from flagcore.energy._stats import PERCENTILE_RELATIVE_ERROR

SLOW, FAST = (1.0, 1.0), (2.0, 4.0)


def dense_birth_death(lam, rate_of_q, power_of_q, idle, nmax=3000):
    """E[N] and mean power of the birth-death chain with service rate rate_of_q(q), by brute
    force over q = 0..nmax (independent of the package's closed-form tail)."""
    logpi = np.zeros(nmax)
    for q in range(1, nmax):
        logpi[q] = logpi[q - 1] + math.log(lam / rate_of_q(q))
    pi = np.exp(logpi - logpi.max())
    pi /= pi.sum()
    pw = np.array([idle] + [power_of_q(q) for q in range(1, nmax)])
    return float(np.arange(nmax) @ pi), float(pw @ pi)


def level_of(q, thresholds):
    return sum(q > t for t in thresholds)


# ---------------------------------------------------------------- exact limits
@pytest.mark.parametrize("lam,mu", [(0.7, 1.0), (0.2, 3.0), (0.95, 1.0)])
def test_one_rate_is_the_mm1_sojourn(lam, mu):
    # two levels with the same rate: the threshold changes the power only
    r = exact_threshold(lam, [(mu, 1.0), (mu, 5.0)], 3)
    for t in (0.1, 1.0, 5.0, 20.0, 60.0):
        assert r.survival(t) == pytest.approx(math.exp(-(mu - lam) * t), rel=1e-8, abs=1e-11)
    for q in (0.5, 0.9, 0.99, 0.999):
        assert r.percentile(q) == pytest.approx(-math.log1p(-q) / (mu - lam), rel=1e-9)
    assert r.mean_response_time == pytest.approx(1.0 / (mu - lam), rel=1e-12)
    assert r.error_bound <= 2e-12


def test_n1_cancel_heterogeneous_one_rate_is_mm1_at_the_summed_rate():
    sets = [[(1.0, 1.0), (1.0, 2.0)], [(2.5, 3.0), (2.5, 4.0)], [(0.5, 1.0), (0.5, 1.0)]]
    r = exact_threshold(2.0, sets, 1, n=3)
    for q in (0.5, 0.9, 0.99):
        assert r.percentile(q) == pytest.approx(-math.log1p(-q) / (4.0 - 2.0), rel=1e-9)


@pytest.mark.parametrize(
    "levels,thresholds,lam",
    [
        ([SLOW, FAST], (2,), 0.7),
        ([(0.8, 0.5), SLOW, (2.5, 6.0)], (1, 4), 0.9),
        ([SLOW, FAST], (0,), 1.5),
    ],
)
def test_stationary_metrics_equal_a_dense_birth_death_chain(levels, thresholds, lam):
    r = exact_threshold(lam, levels, ThresholdPolicy(list(thresholds)), idle_power=0.2)
    en, pw = dense_birth_death(
        lam,
        lambda q: levels[level_of(q, thresholds)][0],
        lambda q: levels[level_of(q, thresholds)][1],
        0.2,
    )
    assert r.mean_in_system == pytest.approx(en, rel=1e-10)
    assert r.mean_response_time == pytest.approx(en / lam, rel=1e-10)
    assert r.average_power == pytest.approx(pw, rel=1e-10)
    assert r.stationary.sum() == pytest.approx(1.0, abs=1e-11)


@settings(max_examples=25, deadline=None)
@given(
    rates=st.lists(st.floats(0.2, 5.0), min_size=2, max_size=3),
    gaps=st.lists(st.integers(0, 4), min_size=2, max_size=2),
    load=st.floats(0.05, 0.9),
    n=st.integers(1, 3),
)
def test_little_the_tagged_chain_mean_is_the_birth_death_mean(rates, gaps, load, n):
    m = len(rates)
    thresholds = list(np.cumsum(gaps[: m - 1]))
    levels = [(r, 1.0 + i) for i, r in enumerate(rates)]
    lam = load * n * rates[-1]
    r = exact_threshold(lam, levels, ThresholdPolicy(thresholds), n=n)
    assert r.sojourn_mean == pytest.approx(r.mean_response_time, rel=1e-8)
    # the CDF is a distribution: monotone, bounds ordered and within error_bound
    ts = np.linspace(0.0, 4.0 * r.p99, 9)
    sf = [r.survival(t) for t in ts]
    assert all(a >= b - 1e-15 for a, b in zip(sf, sf[1:]))
    for t in ts:
        lo, hi = r.survival_bounds(t)
        assert lo <= hi <= lo + r.error_bound + 1e-15


# ---------------------------------------------------------------- against the simulator
CASES = {
    "two levels, T = 2": dict(n=1, arrival_rate=0.7, levels=[SLOW, FAST], thresholds=(2,)),
    "three levels, T = (1, 4)": dict(
        n=1, arrival_rate=0.7, levels=[(0.8, 0.5), SLOW, (2.5, 6.0)], thresholds=(1, 4)
    ),
    "(2,1) cancel, heterogeneous, T = 2": dict(
        n=2,
        arrival_rate=1.8,
        levels=[[(1.0, 1.0), (2.0, 4.0)], [(0.5, 0.4), (3.0, 7.0)]],
        thresholds=(2,),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_simulated_percentiles_match_the_exact_distribution(case):
    c = CASES[case]
    ex = exact_threshold(
        c["arrival_rate"], c["levels"], ThresholdPolicy(list(c["thresholds"])), n=c["n"]
    )
    r = simulate(
        c["n"],
        1,
        c["arrival_rate"],
        c["levels"],
        policy=ThresholdPolicy(list(c["thresholds"])),
        requests=1_000_000,
        seed=21,
    )
    for q in (0.5, 0.9, 0.99):
        exact = ex.percentile(q)
        tol = 4.0 * r.percentile_ci(q) + PERCENTILE_RELATIVE_ERROR * exact
        assert abs(r.percentile(q) - exact) < tol, (q, r.percentile(q), exact, tol)
        d = ex.percentile(q)
        assert abs(r.deadline_miss(d) - (1 - q)) < 4.0 * r.deadline_miss_ci(d) + 1e-3
    assert abs(r.mean_response_time - ex.mean_response_time) < 4.0 * r.mean_response_time_ci


# ---------------------------------------------------------------- inputs
@pytest.mark.parametrize(
    "args,kw,match",
    [
        ((2.0, [SLOW, FAST], 2), {}, "unstable"),
        ((0.7, [SLOW, FAST], (1, 2)), {}, "needs m - 1 = 1 thresholds"),
        ((0.7, [SLOW, FAST], 2), dict(n=0), "n must be"),
        ((0.7, [SLOW, FAST], 2), dict(tol=0.5), "tol must be"),
        ((0.7, [[SLOW, FAST], [SLOW]], 2), dict(n=2), "same number of levels"),
        ((0.7, [[SLOW, FAST]] * 3, 2), dict(n=2), "must list n = 2 level sets, got 3"),
        ((1.999999, [SLOW, FAST], 2), {}, "too close to the stability limit"),
        ((-1.0, [SLOW, FAST], 2), {}, "arrival_rate must be positive"),
    ],
)
def test_bad_input_is_refused(args, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        exact_threshold(*args, **kw)
    assert "exact_threshold" in str(e.value)


def test_percentile_beyond_the_truncation_error_is_refused():
    r = exact_threshold(0.7, [SLOW, FAST], 2, tol=1e-6)
    with pytest.raises(ValueError, match="within the truncation error"):
        r.percentile(1 - 1e-7)
    with pytest.raises(ValueError, match="q must be in"):
        r.percentile(1.0)


def test_switches_and_switch_energy_against_the_simulator():
    sets = [[(1.0, 1.0), (2.0, 4.0)], [(0.5, 0.4), (3.0, 7.0)]]
    ex = exact_threshold(1.8, sets, 2, n=2, idle_power=0.1, switch_energy=0.3)
    r = simulate(
        2,
        1,
        1.8,
        sets,
        policy=ThresholdPolicy(2),
        idle_power=0.1,
        switch_energy=0.3,
        requests=400_000,
        seed=23,
    )
    # every server changes level when q crosses the threshold: n switches per crossing
    assert r.switches_per_request == pytest.approx(ex.switches_per_request, rel=0.02)
    assert abs(r.average_power - ex.average_power) < 4 * r.average_power_ci
    assert ex.energy_per_request == pytest.approx(ex.average_power / 1.8, rel=1e-15)


def test_to_dict_is_strict_json():
    import json

    d = exact_threshold(0.7, [SLOW, FAST], 2).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["percentiles"]["0.99"] == pytest.approx(5.038974, rel=1e-6)
