"""Trace replay with the full metrics: simulate(..., arrivals=Trace(times, sizes)).

Against the path-wise event loop (simulate_trace, itself checked against the max-plus
recursion in test_energy_sim.py): the same departures give the same mean response time,
wasted time and energy to rounding; against a model run when the trace is Poisson (within the
runs' confidence intervals); and the energy and time-share identities. Every run is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from flagcore.energy import SleepState, ThresholdPolicy, Trace, simulate, simulate_trace


def poisson_trace(lam, R, seed):
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / lam, R))


@pytest.mark.parametrize("n,k,cancel", [(3, 2, True), (3, 2, False), (4, 1, True), (2, 2, True)])
def test_trace_replay_matches_the_path_wise_loop(n, k, cancel):
    R = 5000
    a = poisson_trace(0.5 if not cancel else 0.8, R, 1)
    s = np.random.default_rng(2).exponential(1.0, (R, n))
    ref = simulate_trace(n, k, a, s, cancel=cancel)
    r = simulate(n, k, None, [(1.0, 1.0, 1.0)], arrivals=Trace(a, sizes=s), cancel=cancel)
    T = ref["response_times"]
    assert r.requests == R
    assert r.mean_response_time == pytest.approx(float(T.mean()), rel=1e-12)
    assert r.wasted_time_per_request == pytest.approx(
        float(ref["wasted"].mean()), rel=1e-9, abs=1e-15
    )
    # power 1 at rate 1: a request's energy is its busy time
    assert r.energy_per_request == pytest.approx(float(ref["busy"].mean()), rel=1e-12)
    # the window runs from the first arrival until the system empties: the last departure
    # with cancellation, else the last task's end (each server FCFS over every request)
    end = float(ref["departures"].max())
    if not cancel:
        f = np.zeros(n)
        for i in range(R):
            f = np.maximum(a[i], f) + s[i]
        end = float(f.max())
    assert r.window == pytest.approx(end - a[0], rel=1e-12)
    assert float(np.sum(r.busy_time)) == pytest.approx(float(ref["busy"].sum()), rel=1e-12)
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(T, q, method="inverted_cdf"))
        assert r.percentile(q) == pytest.approx(exact, rel=2 * r.percentile_relative_error)
    assert r.stable and r.stability_note == "trace replay: not checked"


def test_poisson_trace_agrees_with_the_model_run():
    lam, R = 1.0, 200_000
    a = poisson_trace(lam, R, 7)
    kw = dict(levels=[(1.0, 1.0, 0.5), (2.0, 3.0, 0.5)], idle_power=0.3)
    tr = simulate(4, 2, None, arrivals=Trace(a), warmup=20_000, seed=1, **kw)
    mo = simulate(4, 2, lam, requests=R - 20_000, seed=2, **kw)
    for name in ("mean_response_time", "average_power", "energy_per_request"):
        x, y = getattr(tr, name), getattr(mo, name)
        hw = np.hypot(getattr(tr, name + "_ci"), getattr(mo, name + "_ci"))
        assert abs(x - y) < 4 * hw, (name, x, y, hw)
    assert abs(tr.p99 - mo.p99) < 4 * np.hypot(tr.percentile_ci(0.99), mo.percentile_ci(0.99))


def test_trace_without_sizes_draws_the_work_and_one_size_per_request_broadcasts():
    a = poisson_trace(0.5, 3000, 3)
    det = simulate(3, 2, None, [(1.0, 1.0, 1.0)], arrivals=Trace(a), service="deterministic")
    ones = simulate(3, 2, None, [(1.0, 1.0, 1.0)], arrivals=Trace(a, sizes=np.ones(a.size)))
    assert det.mean_response_time == ones.mean_response_time
    assert det.average_power == ones.average_power


def test_trace_identities_with_sleep_and_warmup():
    a = poisson_trace(1.0, 20_000, 4)
    r = simulate(
        4,
        3,
        None,
        [(1.0, 2.0, 0.5), (2.0, 5.0, 0.5)],
        arrivals=Trace(a),
        warmup=1000,
        idle_power=0.4,
        sleep=[SleepState(0.3, 0.05, 0.1, 3.0)],
        seed=5,
    )
    assert r.requests == 19_000
    tot = sum(float(np.sum(v)) for v in r.power_split.values())
    assert tot == pytest.approx(r.average_power, rel=1e-12)
    shares = float(np.sum(r.utilisation)) + r.idle_fraction + float(np.sum(r.sleep_fraction))
    assert shares + r.wake_fraction == pytest.approx(1.0, abs=1e-9)
    assert r.params["arrivals"] == {"kind": "trace", "requests": 20_000, "sizes": False}


@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(arrival_rate=1.0), ValueError, "arrival_rate must be None with a Trace"),
        (dict(requests=5), ValueError, "requests must be None or"),
        (dict(warmup=4), ValueError, "warmup must be an int <= 3"),
        (
            dict(arrivals=Trace([0.0, 2.0, 1.0, 3.0])),
            ValueError,
            r"non-decreasing, got 1.0 at index 2",
        ),
        (dict(arrivals=Trace([0.0, np.nan, 1.0, 3.0])), ValueError, "finite"),
        (dict(arrivals=Trace([[0.0, 1.0]])), ValueError, "1-D"),
        (
            dict(arrivals=Trace([0.0, 1.0, 2.0, 3.0], sizes=np.ones((4, 3)))),
            ValueError,
            r"\(4, 2\)",
        ),
        (
            dict(arrivals=Trace([0.0, 1.0, 2.0, 3.0], sizes=[1, 1, -1, 1])),
            ValueError,
            "sizes must be finite",
        ),
        (dict(arrivals=Trace(["a"])), TypeError, "Trace.arrivals"),
    ],
)
def test_bad_traces_are_refused(kw, err, match):
    args = dict(arrival_rate=None, arrivals=Trace([0.0, 1.0, 2.0, 3.0]))
    args.update(kw)
    with pytest.raises(err, match=match) as e:
        simulate(2, 1, levels=[(1, 1, 1)], **args)
    assert "simulate" in str(e.value)


def test_a_model_run_needs_an_arrival_rate():
    with pytest.raises(ValueError, match="only a Trace"):
        simulate(2, 1, None, [(1, 1, 1)], requests=100)


def test_trace_with_heterogeneous_servers_and_a_policy():
    # (2, 1) with cancellation, rates 1 and 2: M/M/1 at rate 3 on a replayed Poisson trace
    a = poisson_trace(1.2, 60_000, 8)
    r = simulate(2, 1, None, [[(1.0, 1.0, 1.0)], [(2.0, 3.0, 1.0)]], arrivals=Trace(a), warmup=5000)
    assert abs(r.mean_response_time - 1.0 / (3.0 - 1.2)) < 4 * r.mean_response_time_ci
    p = simulate(
        2,
        1,
        None,
        [[(1.0, 1.0), (2.0, 2.0)], [(2.0, 3.0), (3.0, 5.0)]],
        policy=ThresholdPolicy(2),
        arrivals=Trace(a[:5000]),
        sleep=[SleepState(0.1, 0.01, 0.05, 1.0)],
    )
    tot = sum(float(np.sum(v)) for v in p.power_split.values())
    assert tot == pytest.approx(p.average_power, rel=1e-12)
    assert p.params["policy"] == {"kind": "threshold", "thresholds": [2]}
