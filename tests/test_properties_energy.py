"""Property-based tests (hypothesis) of flagcore.energy: simulate, approximate, sweep, optimize.

Random valid parameter sets (n, k, 1-3 speed levels, a load below the stability limit, any
service distribution, with and without cancellation) must satisfy the simulator's sample-path
invariants (Little's law, completion balance, utilisations and idle fraction summing to one,
power at least the idle floor, ordered percentiles, no waste when k = n), be reproducible bit
for bit (also across thread counts), and agree with the closed forms where those are exact
(energy with one speed). Random invalid ones (each a valid set with one field broken) are
refused with a ValueError/TypeError naming the function and the argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _props import bounded
from flagcore.energy import approximate, optimize, simulate, sweep

SERVICES = [
    "exponential",
    "deterministic",
    ("erlang", 3),
    ("gamma", 0.5),
    ("lognormal", 1.0),
    ("pareto", 3.5),
    ("empirical", [0.5, 1.0, 3.0]),
]


@st.composite
def valid_params(draw):
    n = draw(st.integers(1, 8))
    k = draw(st.integers(1, n))
    m = draw(st.integers(1, 3))
    rates = sorted(
        draw(
            st.lists(
                st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]), min_size=m, max_size=m, unique=True
            )
        )
    )
    powers = [r**2 for r in rates]  # P ~ rate^2 (DVFS-like)
    w = draw(st.lists(st.integers(1, 4), min_size=m, max_size=m))
    probs = [x / sum(w) for x in w]
    probs[-1] = 1.0 - math.fsum(probs[:-1])
    levels = [(r, pw, p) for r, pw, p in zip(rates, powers, probs)]
    cancel = draw(st.booleans())
    load = draw(st.sampled_from([0.1, 0.3, 0.5]))
    # a load safely below every capacity the model has: k * lam < n * slowest rate, and
    # lam * E[service] < 1 per server, whatever the cancellation
    lam = load * min(n * rates[0] / k, 1.0 / math.fsum(p / r for r, _, p in levels))
    service = draw(st.sampled_from(SERVICES))
    idle = draw(st.sampled_from([0.0, 0.3]))
    seed = draw(st.integers(0, 2**32))
    return dict(
        n=n,
        k=k,
        arrival_rate=lam,
        levels=levels,
        cancel=cancel,
        service=service,
        idle_power=idle,
        seed=seed,
    )


def _sim(prm, **kw):
    kw.setdefault("requests", 4000)
    kw.setdefault("on_unstable", "return")
    return simulate(
        prm["n"],
        prm["k"],
        prm["arrival_rate"],
        prm["levels"],
        cancel=prm["cancel"],
        service=prm["service"],
        idle_power=prm["idle_power"],
        seed=prm["seed"],
        **kw,
    )


@bounded(40)
@given(prm=valid_params())
def test_simulate_invariants(prm):
    """Random valid (n, k, levels, load, service, cancel): Little's law, completion balance,
    utilisation + idle = 1, power above the idle floor, ordered percentiles, no waste when k = n,
    bit-reproducible.
    """
    n, k = prm["n"], prm["k"]
    res = _sim(prm)
    assert res.requests == 4000
    fields = [
        res.mean_response_time,
        res.mean_in_system,
        res.energy_per_request,
        res.average_power,
        res.throughput,
        res.window,
        res.idle_fraction,
        res.wasted_time_per_request,
    ]
    assert all(math.isfinite(v) for v in fields), fields
    assert (
        res.mean_response_time > 0
        and res.energy_per_request >= 0
        and res.wasted_time_per_request >= 0
    )
    assert np.all(res.utilisation >= 0) and res.utilisation.sum() <= 1 + 1e-9
    assert abs(res.idle_fraction - (1 - res.utilisation.sum())) < 1e-9
    assert res.average_power >= prm["idle_power"] * n * res.idle_fraction * (1 - 1e-12)
    # Little's law on one sample path: equal up to the window's edge effects
    assert (
        abs(res.mean_in_system - res.throughput * res.mean_response_time)
        <= 0.05 * res.mean_in_system + 0.05
    )
    # each measured request completes k tasks (n without cancellation), up to the window edges
    per_req = k if prm["cancel"] else n
    total = float(res.completion_rate.sum() * res.window)
    assert abs(total - per_req * res.requests) <= 0.05 * per_req * res.requests + 4 * n
    if k == n:
        assert res.wasted_time_per_request == 0.0
    qs = [res.percentile(q) for q in (0.1, 0.5, 0.9, 0.99)]
    assert all(a <= b for a, b in zip(qs, qs[1:])) and qs[0] > 0
    assert 0.0 <= res.deadline_miss(res.p50) <= 1.0
    # reproducible bit for bit, also when replications run on other threads
    again = _sim(prm)
    assert (
        again.mean_response_time == res.mean_response_time
        and again.energy_per_request == res.energy_per_request
    )
    np.testing.assert_array_equal(again.histogram, res.histogram)


@bounded(12)
@given(prm=valid_params())
def test_simulate_replications_do_not_depend_on_threads(prm):
    """Replications on 1 or 3 threads give identical estimates."""
    a = _sim(prm, requests=1500, replications=3, threads=1)
    b = _sim(prm, requests=1500, replications=3, threads=3)
    assert (a.mean_response_time, a.energy_per_request, a.average_power) == (
        b.mean_response_time,
        b.energy_per_request,
        b.average_power,
    )


@bounded(25)
@given(prm=valid_params())
def test_approximate_invariants_and_exact_energy(prm):
    """Closed forms for every method: finite energy, inf latency exactly when unstable,
    bounds ordered
    (one speed), energy equal to the simulation where exact.
    """
    n, k, lam, lv = prm["n"], prm["k"], prm["arrival_rate"], prm["levels"]
    for method in ("race", "harmonic", "arithmetic"):
        a = approximate(
            n, k, lam, lv, idle_power=prm["idle_power"], method=method, cancel=prm["cancel"]
        )
        assert a.energy_per_request >= 0 and math.isfinite(a.energy_per_request)
        assert np.all(a.utilisation >= 0)
        if len(lv) == 1 and prm["cancel"]:  # the proven bounds: one speed, with cancellation
            assert a.lower_bound <= a.upper_bound * (1 + 1e-12), (
                method,
                a.lower_bound,
                a.upper_bound,
            )
            if a.stable:
                assert a.lower_bound <= a.mean_response_time * (1 + 1e-12) or k == 1
        elif len({r for r, _, _ in lv}) > 1 and prm["cancel"]:
            assert math.isnan(a.lower_bound) and math.isnan(a.upper_bound)  # no proven bound: NaN
        if not prm["cancel"]:
            assert math.isnan(a.upper_bound) and a.lower_bound > 0
            if len(lv) == 1:  # one speed: (H_n - H_{n-k}) / mu <= (H_n - H_{n-k}) / (mu - lam)
                assert a.lower_bound <= a.mean_response_time * (1 + 1e-12)
            # with several speeds the harmonic-rate approximation can fall below the
            # light-traffic bound at light load (documented in approximate())
        if a.stable:
            assert 0 < a.mean_response_time < math.inf and a.p50 <= a.p99
        else:
            assert a.mean_response_time == math.inf
    if len(lv) == 1 and prm["service"] == "exponential":
        # one speed: the race energy is exact (with or without cancellation)
        res = _sim(prm, requests=20_000)
        a = approximate(n, k, lam, lv, cancel=prm["cancel"])
        assert (
            abs(res.energy_per_request - a.energy_per_request)
            <= 5 * res.energy_per_request_ci + 0.03 * a.energy_per_request
        )


# ---------------------------------------------------------------- invalid parameter sets
BREAKS = [
    ("n", 0, ValueError, "n must be >= 1"),
    ("n", 2.5, TypeError, "n must be an int"),
    ("k", 0, ValueError, "k must be in"),
    ("k", 99, ValueError, "k must be in"),
    ("arrival_rate", 0.0, ValueError, "arrival_rate must be positive"),
    ("arrival_rate", float("nan"), ValueError, "arrival_rate must be positive"),
    ("arrival_rate", float("inf"), ValueError, "arrival_rate must be positive"),
    ("arrival_rate", "1", TypeError, "arrival_rate must be a number"),
    ("levels", [], ValueError, "levels must be a non-empty list"),
    ("levels", [(1.0, 1.0)], ValueError, r"levels\[0\] must be \(rate, power, probability\)"),
    ("levels", [(-1.0, 1.0, 1.0)], ValueError, r"levels\[0\].rate must be positive"),
    ("levels", [(float("nan"), 1.0, 1.0)], ValueError, r"levels\[0\].rate must be positive"),
    ("levels", [(1.0, -1.0, 1.0)], ValueError, r"levels\[0\].power must be >= 0"),
    ("levels", [(1.0, 1.0, 1.5)], ValueError, r"levels\[0\].probability must be in \[0, 1\]"),
    ("levels", [(1.0, 1.0, 0.5), (2.0, 1.0, 0.4)], ValueError, "level probabilities must sum to 1"),
    ("levels", "fast", ValueError, "levels must be a non-empty list"),
    ("idle_power", -1.0, ValueError, "idle_power must be >= 0"),
    ("idle_power", float("nan"), ValueError, "idle_power must be >= 0"),
    ("service", "weibull", ValueError, "service must be one of"),
    ("service", ("weibull", 2.0), ValueError, "service must be one of"),
    ("service", 3, ValueError, "service must be a name or"),
    ("service", ("pareto", 1.0), ValueError, "Pareto alpha must be > 1"),
    ("service", ("erlang", 2.5), ValueError, "Erlang shape must be an integer"),
    ("service", ("empirical", [1.0, -1.0]), ValueError, "empirical service samples must be finite"),
    ("service", "erlang", ValueError, "needs a parameter"),
    ("cancel", "yes", TypeError, "cancel must be a bool"),
]
SIM_ONLY = [
    ("requests", 0, ValueError, "requests must be an int >= 1"),
    ("warmup", -1, ValueError, "warmup must be an int >= 0"),
    ("seed", -1, ValueError, r"seed must be an int in \[0, 2\^64\)"),
    ("seed", 2**64, ValueError, r"seed must be an int in \[0, 2\^64\)"),
    ("threads", 0, ValueError, "threads must be an int >= 1"),
    ("replications", 0, ValueError, "replications must be an int >= 1"),
    ("batches", 0, ValueError, "batches must be an int >= 1"),
    ("on_unstable", "ignore", ValueError, "on_unstable must be"),
    ("redraw_on_arrival", 1, TypeError, "redraw_on_arrival must be a bool"),
    ("max_in_system", 0, ValueError, "max_in_system must be an int >= 1"),
]
APPROX_ONLY = [("method", "geometric", ValueError, "method must be one of")]


def _call(fn_name, prm, field, value):
    args = dict(prm)
    kw = dict(
        cancel=args.pop("cancel"),
        service=args.pop("service"),
        idle_power=args.pop("idle_power"),
        seed=args.pop("seed"),
    )
    if field in ("n", "k", "arrival_rate", "levels"):
        args[field] = value
    else:
        kw[field] = value
    pos = (args["n"], args["k"], args["arrival_rate"], args["levels"])
    if fn_name == "simulate":
        kw.setdefault("requests", 500)
        return simulate(*pos, **kw)
    kw.pop("service")
    kw.pop("seed")
    return approximate(*pos, **kw)


@bounded(80)
@given(
    prm=valid_params(),
    brk=st.sampled_from(BREAKS + SIM_ONLY + APPROX_ONLY),
    fn=st.sampled_from(["simulate", "approximate"]),
)
def test_invalid_parameter_sets_are_refused(prm, brk, fn):
    """A valid set with one field broken is refused by simulate/approximate with
    ValueError/TypeError
    naming the field.
    """
    field, value, exc, msg = brk
    if (fn == "approximate" and (brk in SIM_ONLY or field == "service")) or (
        fn == "simulate" and brk in APPROX_ONLY
    ):
        fn = "simulate" if fn == "approximate" else "approximate"
    if field == "k" and value == 99 and prm["n"] >= 99:
        return
    with pytest.raises(exc, match=f"^{fn}: .*{msg}"):
        _call(fn, prm, field, value)


@bounded(20)
@given(prm=valid_params(), factor=st.sampled_from([1.0, 1.5, 10.0]))
def test_certainly_unstable_loads_are_refused_with_the_reason(prm, factor):
    """Loads no speed choice can carry: simulate refuses them with the reason, approximate reports
    stable=False.
    """
    n, k, lv = prm["n"], prm["k"], prm["levels"]
    lam = factor * n * max(r for r, _, _ in lv) / k  # k * lam >= n * fastest rate
    with pytest.raises(ValueError, match=r"^simulate: k \* arrival_rate = .* the load is unstable"):
        simulate(n, k, lam, lv, cancel=prm["cancel"], requests=100)
    a = approximate(n, k, lam, lv, cancel=prm["cancel"])  # the closed forms report, not raise
    assert not a.stable and a.mean_response_time == math.inf


@bounded(15)
@given(
    prm=valid_params().filter(lambda d: len(d["levels"]) >= 2),
    target_factor=st.sampled_from([0.5, 1.0, 1.5, 3.0]),
)
def test_sweep_and_optimize(prm, target_factor):
    """sweep's probability grids are distributions; optimize returns the cheapest feasible
    evaluation
    or reports infeasible; bad targets/values refused.
    """
    n, k, lam, lv = prm["n"], prm["k"], prm["arrival_rate"], prm["levels"]
    sw = sweep(
        n, k, lam, lv, over="p", values=[0.0, 0.5, 1.0], run_simulation=False, cancel=prm["cancel"]
    )
    assert len(sw.points) == 3 and all(pt.sim is None for pt in sw.points)
    for pt in sw.points:
        assert abs(sum(pt.probs) - 1) < 1e-12 and all(0 <= p <= 1 for p in pt.probs)
    base = approximate(n, k, lam, lv, cancel=prm["cancel"]).mean_response_time
    target = target_factor * base
    res = optimize(
        n,
        k,
        lam,
        [(r, pw) for r, pw, _ in lv],
        target=target,
        cancel=prm["cancel"],
        grid=5,
        refine=1,
    )
    feasible = [e for e in res.evaluations if e["feasible"]]
    assert res.feasible == bool(feasible)
    if res.feasible:
        assert res.latency <= target and res.value == min(e["value"] for e in feasible)
        assert abs(sum(res.probs) - 1) < 1e-9
    with pytest.raises(ValueError, match=r"^optimize: target must be positive"):
        optimize(n, k, lam, [(r, pw) for r, pw, _ in lv], target=-1.0)
    with pytest.raises(ValueError, match=r"^sweep: values must not be empty"):
        sweep(n, k, lam, lv, values=[])
