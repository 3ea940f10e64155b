"""Closed forms (flagcore.energy.approximate) against exact results, each other and simulation;
sweep / pareto_front / optimize; the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flagcore.energy import approximate, optimize, pareto_front, simulate, sweep
from flagcore.energy.approx import Hypoexponential, race_chain, race_integral

ONE = [(1.0, 1.0, 1.0)]
TWO = [(1.0, 1.0, 0.4), (3.0, 9.0, 0.6)]
THREE = [(0.5, 0.3, 0.2), (1.0, 1.0, 0.5), (2.5, 7.0, 0.3)]


def H(j):
    return sum(1.0 / i for i in range(1, j + 1))


@pytest.mark.parametrize(
    "n,k,levels", [(4, 2, TWO), (6, 5, TWO), (5, 1, THREE), (7, 3, THREE), (3, 3, ONE)]
)
def test_race_chain_equals_quadrature(n, k, levels):
    rates = [lv[0] for lv in levels]
    probs = [lv[2] for lv in levels]
    a, b = race_chain(n, k, rates, probs), race_integral(n, k, rates, probs)
    np.testing.assert_allclose(a["tau"], b["tau"], rtol=1e-8)
    np.testing.assert_allclose(a["completion_times"], b["completion_times"], rtol=1e-8)


@pytest.mark.parametrize("n,k", [(1, 1), (4, 2), (10, 5), (6, 6)])
def test_single_speed_exact_pieces(n, k):
    mu, lam = 2.0, 0.3
    a = approximate(n, k, lam, [(mu, 5.0, 1.0)])
    assert a.energy_per_request == pytest.approx(k * 5.0 / mu, rel=1e-12)  # k P / mu
    assert a.light_traffic_response_time == pytest.approx((H(n) - H(n - k)) / mu, rel=1e-12)
    assert a.stage_rates == pytest.approx([(n - i) * mu - (k - i) * lam for i in range(k)])
    assert a.tandem_response_time == pytest.approx(sum(1 / s for s in a.stage_rates), rel=1e-12)
    assert a.busy_cores.sum() == pytest.approx(k * lam / mu, rel=1e-12)
    if k == n:
        assert a.tandem_response_time == pytest.approx(
            H(n) / (mu - lam), rel=1e-12
        )  # = the upper bound
    # light traffic: the tandem tends to the isolated race
    tiny = approximate(n, k, 1e-9, [(mu, 5.0, 1.0)])
    assert tiny.tandem_response_time == pytest.approx((H(n) - H(n - k)) / mu, rel=1e-6)


def test_exact_special_cases_and_methods():
    a = approximate(1, 1, 0.6, ONE)
    assert a.mean_method.startswith("exact") and a.mean_response_time == pytest.approx(2.5)
    assert a.percentile(0.99) == pytest.approx(-math.log(0.01) / 0.4, rel=1e-9)
    assert a.deadline_miss(3.0) == pytest.approx(math.exp(-1.2), rel=1e-9)
    a = approximate(2, 2, 0.5, ONE)
    assert a.mean_method == "exact (Flatto-Hahn)" and a.mean_response_time == pytest.approx(
        11.5 / 8 / 0.5
    )
    assert "Nelson-Tantawi" in approximate(5, 5, 0.5, ONE).mean_method
    r = {
        m: approximate(4, 2, 2.0, TWO, method=m).effective_rate
        for m in ("race", "harmonic", "arithmetic")
    }
    assert r["harmonic"] < r["race"] < r["arithmetic"]
    # k = n energy identity with random speeds, with and without cancellation
    for cancel in (True, False):
        e = approximate(3, 3, 0.5, TWO, cancel=cancel).energy_per_request
        assert e == pytest.approx(3 * sum(p * P / m for m, P, p in TWO), rel=1e-9)


def test_hypoexponential_tail():
    rates = [3.0, 2.0, 0.5]
    d = Hypoexponential(rates)
    for t in (0.1, 1.0, 5.0, 20.0):
        c = sum(
            math.exp(-ri * t) * math.prod(rj / (rj - ri) for rj in rates if rj != ri)
            for ri in rates
        )
        assert d.survival(t) == pytest.approx(c, rel=1e-9, abs=1e-14)
    e = Hypoexponential([1.5] * 4)  # equal rates: Erlang
    for t in (0.5, 2.0, 8.0):
        x = 1.5 * t
        assert e.survival(t) == pytest.approx(
            math.exp(-x) * sum(x**j / math.factorial(j) for j in range(4)), rel=1e-9
        )


def test_unstable_is_reported_not_raised():
    a = approximate(4, 2, 5.0, TWO)
    assert not a.stable and math.isinf(a.mean_response_time) and math.isinf(a.p99)
    assert a.stability_limit < 5.0
    with pytest.raises(ValueError, match="method must be"):
        approximate(4, 2, 1.0, TWO, method="geometric")
    with pytest.raises(ValueError, match="k must be in"):
        approximate(2, 3, 1.0, TWO)


@pytest.mark.parametrize("lam", [1.0, 3.0])
def test_race_energy_close_to_simulation(lam):
    """SPEC: the race estimate of energy per request was seen within ~1% of simulation."""
    s = simulate(4, 2, lam, TWO, requests=200_000, seed=3)
    a = approximate(4, 2, lam, TWO)
    assert (
        abs(a.energy_per_request - s.energy_per_request)
        < 0.01 * s.energy_per_request + 4 * s.energy_per_request_ci
    )
    assert np.all(np.abs(a.utilisation - s.utilisation) < 0.01 + 0.02 * s.utilisation)


def test_sweep_pareto_and_optimize():
    res = sweep(
        4,
        2,
        2.0,
        [(1.0, 1.0), (3.0, 9.0)],
        values=[0.0, 0.3, 0.6, 1.0],
        requests=30_000,
        methods=("race", "harmonic"),
    )
    assert res.points[0].sim is None and "unstable" in res.points[0].note  # 2*2 >= 4*1
    assert all(pt.sim is not None for pt in res.points[1:])
    rows = res.rows()
    assert (
        rows[-1]["sim_mean"] < rows[1]["sim_mean"]
        and rows[-1]["sim_energy"] > rows[1]["sim_energy"]
    )
    front = pareto_front(res)
    es = [e for _, e, _ in front]
    ls = [lat for _, _, lat in front]
    assert es == sorted(es) and ls == sorted(ls, reverse=True) and len(front) == 3
    assert pareto_front([(1, 5), (2, 4), (2, 6), (3, 1), (4, 1)]) == [
        (0, 1, 5),
        (1, 2, 4),
        (3, 3, 1),
    ]
    # optimise the high-level probability: feasible, meets the target, nothing cheaper evaluated
    o = optimize(4, 2, 2.0, [(1.0, 1.0), (3.0, 9.0)], target=0.8)
    assert o.feasible and o.latency <= 0.8
    assert all(not r["feasible"] or r["value"] >= o.value - 1e-12 for r in o.evaluations)
    # energy rises with p here, so the optimum sits where the mean latency just meets 0.8
    p = o.probs[1]
    assert approximate(4, 2, 2.0, [(1, 1, 1 - p + 0.01), (3, 9, p - 0.01)]).mean_response_time > 0.8
    assert not optimize(4, 2, 2.0, [(1.0, 1.0), (3.0, 9.0)], target=0.01).feasible
    o = optimize(
        4,
        2,
        2.0,
        [(1.0, 1.0), (3.0, 9.0)],
        target=3.0,
        metric="p99",
        evaluator="simulate",
        grid=3,
        refine=0,
        requests=20_000,
    )
    assert o.feasible and o.latency + o.latency_ci <= 3.0


# ---------------------------------------------------------------- CLI
def test_cli(tmp_path, capsys):
    from flagcore.cli import main

    js = tmp_path / "sim.json"
    assert (
        main(
            [
                "energy",
                "simulate",
                "--n",
                "4",
                "--k",
                "2",
                "--lam",
                "2",
                "--levels",
                "1:1:0.5,3:9:0.5",
                "--requests",
                "20000",
                "--deadline",
                "2",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    d = json.loads(js.read_text())
    assert d["params"]["n"] == 4 and d["mean_response_time"] > 0 and "0.99" in d["percentiles"]
    assert (
        main(
            [
                "energy",
                "approx",
                "--n",
                "4",
                "--k",
                "2",
                "--lam",
                "2",
                "--levels",
                "1:1:0.5,3:9:0.5",
            ]
        )
        == 0
    )
    out = tmp_path / "plots"
    assert (
        main(
            [
                "energy",
                "sweep",
                "--n",
                "4",
                "--k",
                "2",
                "--lam",
                "2",
                "--levels",
                "1:1,3:9",
                "--values",
                "0.2:1:3",
                "--requests",
                "10000",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for f in ("latency_vs_x.png", "energy_vs_x.png", "tradeoff.png", "sweep.json"):
        assert (out / f).stat().st_size > 0
    assert (
        main(
            [
                "energy",
                "optimize",
                "--n",
                "4",
                "--k",
                "2",
                "--lam",
                "2",
                "--levels",
                "1:1,3:9",
                "--target",
                "0.8",
            ]
        )
        == 0
    )
    assert "least energy" in capsys.readouterr().out
    assert (
        main(["energy", "simulate", "--n", "2", "--k", "3", "--lam", "1", "--levels", "1:1:1"]) == 2
    )
    assert "k must be in" in capsys.readouterr().err
    assert (
        main(
            [
                "energy",
                "simulate",
                "--n",
                "2",
                "--k",
                "1",
                "--lam",
                "1",
                "--levels",
                "1:1:0.5,2:1:0.2",
            ]
        )
        == 2
    )
    assert "sum to 1" in capsys.readouterr().err
