"""Closed forms (flagcore.energy.approximate) against exact results, each other and simulation;
sweep / pareto_front / optimize; the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _props import bounded
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
    assert [i for i, _, _ in pareto_front(res, source="race")]  # a method of the sweep
    # an unknown source returned [] and string pairs were read as numbers
    for bad in ("harmonc", "arithmetic", None):
        with pytest.raises(
            ValueError,
            match=r"pareto_front: source must be one of \['harmonic', 'race', 'sim'\] for this "
            rf"sweep, got {re.escape(repr(bad))}",
        ):
            pareto_front(res, source=bad)
    with pytest.raises(
        TypeError,
        match=r"pareto_front: points\[1\] must be an \(objective, latency\) pair of numbers, got "
        r"\('2', '4'\)",
    ):
        pareto_front([(1, 5), ("2", "4")])
    with pytest.raises(ValueError, match=r"pareto_front: metric quantile must be in \(0, 1\)"):
        pareto_front(res, metric="p100")
    # optimise the high-level probability: feasible, meets the target, nothing cheaper evaluated
    o = optimize(4, 2, 2.0, [(1.0, 1.0), (3.0, 9.0)], target=0.8)
    assert o.feasible and o.latency <= 0.8
    assert all(not r["feasible"] or r["value"] >= o.value - 1e-12 for r in o.evaluations)
    # energy rises with p here, so the optimum sits where the mean latency just meets 0.8
    p = o.probs[1]
    assert approximate(4, 2, 2.0, [(1, 1, 1 - p + 0.01), (3, 9, p - 0.01)]).mean_response_time > 0.8
    assert not optimize(4, 2, 2.0, [(1.0, 1.0), (3.0, 9.0)], target=0.01).feasible
    # the metric's errors name the function (they did not)
    with pytest.raises(
        ValueError, match=r"^optimize: metric quantile must be in \(0, 1\), got 'p100'"
    ):
        optimize(4, 2, 2.0, [(1.0, 1.0), (3.0, 9.0)], target=0.8, metric="p100")
    with pytest.raises(ValueError, match=r"^optimize: metric must be 'mean', 'mean_in_system'"):
        optimize(4, 2, 2.0, [(1.0, 1.0), (3.0, 9.0)], target=0.8, metric="median")
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


# ---------------------------------------------------------------- tails without dense expm
def _expm_survival(rates, t):
    """Independent reference: P(T > t) = e_1' expm(S t) 1 for the bidiagonal sub-generator,
    by scipy's Pade expm in float64 (small k only)."""
    linalg = pytest.importorskip("scipy.linalg")
    r = np.asarray(rates, dtype=np.float64)
    S = np.diag(-r) + np.diag(r[:-1], 1)
    return float(linalg.expm(S * t)[0].sum())


@pytest.mark.parametrize(
    "rates",
    [
        [2.0],
        [1.0, 1.7, 2.4, 3.1],  # arithmetic, distinct
        [0.3] * 6,  # Erlang
        [5.0, 3.5, 2.0, 0.5],  # arithmetic, given in decreasing order
        [3.0, 2.0, 0.5, 0.45, 7.0],  # not arithmetic: uniformisation
        [1e-3, 1.0, 1.0, 40.0],  # not arithmetic, wide spread
    ],
)
def test_hypoexponential_matches_dense_expm(rates):
    d = Hypoexponential(rates)
    mean = sum(1.0 / r for r in rates)
    assert d.mean == pytest.approx(mean, rel=1e-12)
    for t in (0.05 * mean, 0.5 * mean, mean, 3.0 * mean):
        assert d.survival(t) == pytest.approx(_expm_survival(rates, t), rel=1e-9, abs=1e-14)
    assert d.survival(0.0) == 1.0 and d.survival(-1.0) == 1.0 and d.survival(math.inf) == 0.0


def test_arithmetic_tail_is_the_incomplete_beta():
    """For step d > 0, exp(-d T) ~ Beta(r0 / d, k): P(T > t) = I_{exp(-d t)}(r0 / d, k)."""
    special = pytest.importorskip("scipy.special")
    for r0, d, k in ((0.7, 0.3, 1), (0.7, 0.3, 12), (2.5, 1.0, 40), (1e-3, 2.0, 200)):
        h = Hypoexponential.arithmetic(r0, d, k)
        for t in np.geomspace(0.01, 50.0, 9) * h.mean:
            if d * t > 700.0:  # exp(-d t) underflows: the reference cannot be evaluated
                continue
            ref = float(special.betainc(r0 / d, k, math.exp(-d * t)))
            assert h.survival(t) == pytest.approx(ref, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k", [1, 2, 10, 1000, 10000])
def test_arithmetic_tail_exact_at_large_k(k):
    """Rates mu, 2 mu, ..., k mu: the maximum of k i.i.d. Exp(mu), 1 - (1 - e^{-mu t})^k; step 0:
    the Erlang(k) survival, a Poisson sum computed here term by term in logs."""
    mu = 1.3
    h = Hypoexponential.arithmetic(mu, mu, k)
    for t in (0.1, 1.0, 5.0, 12.0, 30.0):
        exact = -math.expm1(k * math.log1p(-math.exp(-mu * t)))
        assert h.survival(t) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    e = Hypoexponential.arithmetic(mu, 0.0, k)
    for x in (0.5 * k, k - 0.9 * math.sqrt(k), float(k), k + 3 * math.sqrt(k) + 1):
        logs = [-x + j * math.log(x) - math.lgamma(j + 1) for j in range(k)]
        top = max(logs)
        exact = math.exp(top) * math.fsum(math.exp(v - top) for v in logs)
        assert e.survival(x / mu) == pytest.approx(exact, rel=1e-9)


def test_tail_keeps_relative_accuracy_deep_in_the_tail():
    h = Hypoexponential.arithmetic(2.0, 0.5, 3)  # rates 2, 2.5, 3
    for t in (50.0, 200.0, 300.0):
        # distinct rates: the partial-fraction sum is exact and, for large t, dominated by e^{-2t}
        ref = sum(
            math.exp(-ri * t) * math.prod(rj / (rj - ri) for rj in (2.0, 2.5, 3.0) if rj != ri)
            for ri in (2.0, 2.5, 3.0)
        )
        assert h.survival(t) == pytest.approx(ref, rel=1e-9)
    assert 0.0 < h.survival(300.0) < 1e-250


def test_order_statistic_tail_is_binomial():
    from flagcore.energy.approx import OrderStatistic

    for n, k, rate in ((5, 3, 0.7), (40, 40, 2.0), (200, 37, 1.0)):
        o = OrderStatistic(n, k, rate)
        for t in (0.05, 0.5, 2.0, 6.0):
            F = -math.expm1(-rate * t)
            exact = math.fsum(math.comb(n, j) * F**j * (1 - F) ** (n - j) for j in range(k))
            assert o.survival(t) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_hypoexponential_refuses_bad_rates():
    for bad in ([], [1.0, 0.0], [1.0, math.nan], [math.inf]):
        with pytest.raises(ValueError, match="Hypoexponential: rates must be"):
            Hypoexponential(bad)
    with pytest.raises(ValueError, match=r"Hypoexponential.arithmetic: needs r0 > 0"):
        Hypoexponential.arithmetic(0.0, 1.0, 3)
    with pytest.raises(ValueError, match=r"Hypoexponential.arithmetic: k must be"):
        Hypoexponential.arithmetic(1.0, 1.0, 0)


def test_approximate_tail_matches_the_stage_matrix():
    """approximate's percentile and deadline_miss are the tandem stages' hypoexponential."""
    for n, k, lam, lv in ((4, 2, 1.2, ONE), (6, 4, 0.5, TWO), (5, 5, 0.8, ONE), (8, 2, 3.0, ONE)):
        a = approximate(n, k, lam, lv)
        assert a.stable
        for d in (0.5, 1.0, 3.0):
            assert a.deadline_miss(d) == pytest.approx(
                _expm_survival(a.stage_rates, d), rel=1e-9, abs=1e-14
            )
        p = a.p99
        assert _expm_survival(a.stage_rates, p) == pytest.approx(0.01, rel=1e-8)
    a = approximate(6, 3, 1.0, TWO, cancel=False)  # k-th of n M/M/1 sojourns at the harmonic rate
    rate = 1.0 / (0.4 / 1.0 + 0.6 / 3.0) - 1.0
    F = -math.expm1(-rate * a.p99)
    assert math.fsum(math.comb(6, j) * F**j * (1 - F) ** (6 - j) for j in range(3)) == (
        pytest.approx(0.01, rel=1e-8)
    )


@pytest.mark.parametrize("levels", [ONE, TWO])
def test_approximate_scales_to_large_k(levels):
    """k = 5000 (the dense version took minutes for its percentiles): the pieces stay exact where
    theory gives them; timing is bench/energy_accuracy.py --scale."""
    n, k = 10000, 5000
    a = approximate(n, k, 1.0, levels)
    assert a.stable and math.isfinite(a.p99) and a.percentile(0.5) < a.p99 < a.percentile(0.999)
    if levels is ONE:
        assert a.light_traffic_response_time == pytest.approx(H(n) - H(n - k), rel=1e-12)
        assert a.energy_per_request == pytest.approx(k * 1.0, rel=1e-12)
    assert a.tandem_response_time == pytest.approx(sum(1 / s for s in a.stage_rates), rel=1e-9)
    # the tail's median sits within a few stage-spreads of the mean (most stages are fast)
    assert abs(a.percentile(0.5) - a.tandem_response_time) < 0.05 * a.tandem_response_time


# ---------------------------------------------------------------- edges of approximate
@pytest.mark.parametrize("mu", [1e-150, 1e-5, 1.0, 1e150])
@pytest.mark.parametrize("n,k", [(5, 3), (4, 2), (50, 49), (3, 1), (6, 6)])
def test_approximate_within_rounding_of_the_limit(mu, n, k):
    """A load within rounding of the limit is stable with finite latencies or stable=False
    with infinite ones, never an exception or stable=True with an infinite mean."""
    limit = n * mu / k if k < n else mu
    for frac in (1 - 1e-9, 1 - 1e-15, 1.0, 1 + 1e-15):
        for lv in ([(mu, 1.0, 1.0)], [(mu, 1.0, 0.5), (2 * mu, 3.0, 0.5)]):
            for cancel in (True, False):
                a = approximate(n, k, limit * frac, lv, cancel=cancel)
                finite = math.isfinite(a.mean_response_time)
                assert a.stable == finite == math.isfinite(a.p99), (frac, lv, cancel)
                # at frac = 1 a change of time unit can round the load to either side
                if len(lv) == 1 and (frac > 1.0 or (frac == 1.0 and mu == 1.0)):
                    assert not a.stable
                json.dumps(a.to_dict(), allow_nan=True)


@pytest.mark.parametrize("c", [1e-300, 1e300, 1e308])
def test_approximate_tails_at_extreme_rates(c):
    """At extreme absolute rates every query answers (deadline_miss at a deadline 1e300 times
    the mean used to raise OverflowError in the dense matrix exponential)."""
    a = approximate(4, 2, c, [(c, 1.0, 1.0)])
    assert a.stable and a.mean_response_time * c == pytest.approx(
        sum(1 / s for s in (4 - 2, 3 - 1)), rel=1e-12
    )
    assert a.deadline_miss(0.0) == 1.0
    assert a.deadline_miss(1e300 / c if c < 1 else 1.0) == 0.0
    assert a.deadline_miss(a.p99) == pytest.approx(0.01, rel=1e-9)


@bounded(60)
@given(
    n=st.integers(1, 60),
    kf=st.floats(0.0, 1.0),
    load=st.sampled_from([1e-12, 0.3, 0.9, 0.999999, 1 - 1e-14, 1.0, 1.5]),
    scale=st.sampled_from([1e-200, 1e-3, 1.0, 1e3, 1e200]),
    spread=st.sampled_from([None, 1.5, 40.0]),
    cancel=st.booleans(),
    method=st.sampled_from(["race", "harmonic", "arithmetic"]),
)
def test_approximate_never_raises_and_its_tail_is_a_distribution(
    n, kf, load, scale, spread, cancel, method
):
    """Any valid input up to and past the stability limit: no exception, no warning;
    stable exactly when the mean, p50 and p99 are finite; percentiles increase with q and
    deadline_miss decreases with d, within [0, 1]."""
    k = max(1, min(n, round(kf * n)))
    lv = [(scale, 1.0, 1.0)] if spread is None else [(scale, 1.0, 0.5), (scale * spread, 5.0, 0.5)]
    limit = approximate(n, k, scale * 1e-9, lv, cancel=cancel, method=method).stability_limit
    a = approximate(n, k, limit * load, lv, cancel=cancel, method=method)
    ok = math.isfinite(a.mean_response_time)
    assert a.stable == ok == math.isfinite(a.p50) == math.isfinite(a.p99)
    if not a.stable:
        assert a.deadline_miss(1e300) == 1.0
        return
    qs = [a.percentile(q) for q in (0.1, 0.5, 0.9, 0.99, 0.999999)]
    assert all(0 < x <= y for x, y in zip(qs, qs[1:]))
    ds = [a.deadline_miss(x) for x in [0.0] + qs + [qs[-1] * 10]]
    assert ds[0] == 1.0 and all(0.0 <= y <= x <= 1.0 for x, y in zip(ds, ds[1:]))
    for q, x in zip((0.1, 0.5, 0.9, 0.99), qs):
        assert a.deadline_miss(x) == pytest.approx(1 - q, rel=1e-6)


def test_hypoexponential_stiff_general_rates_do_not_hang():
    """Rates 1e-3 .. 1e6 not in progression: uniformisation would need ~1e9 steps at t = 1e3;
    the dense fallback answers at once (to ~1e-8: its squarings), and a case too large for it
    is refused with the reason instead of running for hours."""
    rates = [1e-3, 5.0, 7.0, 1e6]
    assert Hypoexponential(rates).survival(1e3) == pytest.approx(
        _expm_survival(rates, 1e3), rel=1e-6
    )
    many = [*np.linspace(1.0, 2.0, 500).tolist(), 3.3, 1e6]
    with pytest.raises(ValueError, match=r"Hypoexponential.survival: rates from 1 to 1e\+06"):
        Hypoexponential(many).survival(10.0)


def test_approximate_deadline_miss_refuses_what_is_not_a_deadline():
    a = approximate(4, 2, 1.0, ONE)
    assert a.deadline_miss(-1.0) == 1.0 and a.deadline_miss(math.inf) == 0.0
    with pytest.raises(ValueError, match="deadline_miss: d must be a number, got nan"):
        a.deadline_miss(math.nan)
    with pytest.raises(TypeError, match="deadline_miss: d must be a number, got str"):
        a.deadline_miss("2")
    with pytest.raises(ValueError, match=r"percentile: q must be in \(0, 1\), got nan"):
        a.percentile(math.nan)


# ---------------------------------------------------------------- rates far apart, random speeds
@pytest.mark.parametrize("n,ratio", [(2, 1e6), (2, 1e8), (40, 1e4), (300, 1e6), (300, 1e3)])
def test_n1_random_speeds_exact_for_rates_far_apart(n, ratio):
    # (n, 1): M/G/1 with service Exp(R), R = the sum of the n drawn rates; the reference
    # enumerates R's binomial distribution. The quadrature grid scaled by the mean rate cut the
    # slow level's tail off: the mean 84 % low and the stability limit 1.9x too high at 1e6
    lam = 1e-9
    j = np.arange(n + 1)
    pj = np.array([math.comb(n, int(i)) for i in j], dtype=np.float64) * 0.5**n
    R = j / ratio + (n - j)
    es, es2 = (pj / R).sum(), (2 * pj / R**2).sum()
    r = approximate(n, 1, lam, [(1 / ratio, 1, 0.5), (1, 1, 0.5)])
    assert r.mean_response_time == pytest.approx(es + lam * es2 / (2 * (1 - lam * es)), rel=1e-11)
    assert r.stability_limit == pytest.approx(1 / es, rel=1e-11)


def test_race_for_rates_far_apart_matches_the_chain():
    # race_integral (many cores) against the exact Markov chain at a rate ratio of 1e6; the
    # k = n energy is n sum_s p_s P_s / mu_s (it was 26 % high at n = 200)
    for k in (60, 30, 3):
        a = race_chain(60, k, [1e-6, 1.0], [0.5, 0.5])
        b = race_integral(60, k, [1e-6, 1.0], [0.5, 0.5])
        np.testing.assert_allclose(b["tau"], a["tau"], rtol=1e-10)
        np.testing.assert_allclose(b["completion_times"], a["completion_times"], rtol=1e-10)
    for n in (200, 1000):
        r = approximate(n, n, 1e-12, [(1e-6, 2.0, 0.5), (1, 3.0, 0.5)])
        assert r.energy_per_request == pytest.approx(n * (0.5 * 2.0 / 1e-6 + 0.5 * 3.0), rel=1e-12)


def test_nn_random_speeds_respects_light_traffic_and_the_simulator():
    # Nelson-Tantawi at the race rate was 10-19 % below the exact light-traffic limit (the
    # expected largest of n service times) and 16 % below the simulator at (4, 4), lam = 0.5
    lv = [(0.1, 1, 0.5), (1, 1, 0.5)]
    for n in (2, 3, 8):
        r = approximate(n, n, 1e-4, lv)
        light = r.light_traffic_response_time
        assert light <= r.mean_response_time <= light * 1.002
        assert r.lower_bound <= r.mean_response_time <= r.upper_bound
    r = approximate(4, 4, 0.5, [(1, 1, 0.5), (3, 9, 0.5)])
    s = simulate(4, 4, 0.5, [(1, 1, 0.5), (3, 9, 0.5)], requests=200_000, seed=3)
    assert abs(r.mean_response_time / s.mean_response_time - 1) < 0.04
    assert r.lower_bound <= s.mean_response_time <= r.upper_bound
    assert r.percentile(0.5) < r.percentile(0.99)


def test_n1_random_speeds_percentiles_are_the_exact_mixture():
    # the same servers as one level set used the tandem's tail (p99 1.039); given per server
    # with one rate moved by 1e-9 they got the exact M/G/1 mixture (1.221): now both exact
    from flagcore.energy.approx import mg1_hyperexponential_sojourn

    lv = [(1, 1, 0.5), (3, 9, 0.5)]
    r = approximate(3, 1, 1.0, lv)
    assert r.percentile_method.startswith("exact")
    R = np.array([3.0, 5.0, 7.0, 9.0])  # 0..3 cores at rate 3
    p = np.array([1, 3, 3, 1]) / 8.0
    ref = mg1_hyperexponential_sojourn(1.0, R, p)
    for q in (0.5, 0.99):
        t = r.percentile(q)
        assert ref.survival(t) == pytest.approx(1 - q, rel=1e-9)
    moved = approximate(3, 1, 1.0, [lv, lv, [(1, 1, 0.5), (3 + 1e-9, 9, 0.5)]])
    assert moved.percentile(0.99) == pytest.approx(r.percentile(0.99), rel=1e-8)


def test_sweep_over_p_splits_the_rest_by_the_given_probabilities():
    # the docstring said so, but the given probabilities were dropped: 1 - p always went to
    # the first level
    lv = [(1.0, 1.0, 0.25), (2.0, 3.0, 0.75), (3.0, 9.0)]
    res = sweep(4, 2, 1.0, lv, values=[0.2, 0.6], run_simulation=False, methods=("race",))
    assert [pt.probs for pt in res.points] == [
        pytest.approx((0.2, 0.6, 0.2)),
        pytest.approx((0.1, 0.3, 0.6)),
    ]
    res = sweep(4, 2, 1.0, [(1.0, 1.0), (2.0, 3.0), (3.0, 9.0)], values=[0.2],
                run_simulation=False, methods=("race",))  # fmt: skip
    assert res.points[0].probs == pytest.approx((0.8, 0.0, 0.2))  # none given: the first
    with pytest.raises(ValueError, match=r"sweep: with over='p' give probabilities"):
        sweep(4, 2, 1.0, [(1.0, 1.0, 0.5), (2.0, 3.0), (3.0, 9.0)], values=[0.2],
              run_simulation=False)  # fmt: skip
