"""The simulator and the closed forms at their edges (issue 15's hostile probe): near the
stability limit, extreme service distributions and rates, huge counts, memory that follows the
work, bounded design searches, strict JSON, the energy split identity, progress and the bound
native types. Every run is seeded."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from flagcore import _core
from flagcore.energy import UnstableError, approximate, optimize, simulate, sweep

ONE = [(1.0, 1.0, 1.0)]
TWO = [(1.0, 1.0, 0.4), (3.0, 9.0, 0.6)]


# ---------------------------------------------------------------- near the stability limit
def test_run_near_the_stability_limit_is_flagged():
    """(4, 2) at lam = 1.9999 (limit 2): the estimate keeps growing with the run length, so it
    must not be reported as a stable steady-state value."""
    with pytest.raises(UnstableError, match="simulate: the estimates have not converged"):
        simulate(4, 2, 1.9999, ONE, requests=50_000, seed=1)
    r = simulate(4, 2, 1.9999, ONE, requests=50_000, seed=1, on_unstable="return")
    assert not r.stable and "relaxation times" in r.stability_note
    with pytest.warns(RuntimeWarning, match="not converged"):
        simulate(1, 1, 0.999, ONE, requests=20_000, seed=2, on_unstable="warn")


def test_moderate_loads_are_not_flagged():
    for n, k, lam in ((1, 1, 0.9), (4, 2, 1.6), (3, 3, 0.8)):
        r = simulate(n, k, lam, ONE, requests=100_000, seed=3)
        assert r.stable, r.stability_note


# ---------------------------------------------------------------- service distributions
def test_empirical_samples_whose_sum_overflows():
    big = np.array([1e308, 1e308, 3e307, 1.0])
    a = simulate(4, 2, 1.0, ONE, requests=5000, seed=4, service=("empirical", big))
    b = simulate(4, 2, 1.0, ONE, requests=5000, seed=4, service=("empirical", big * 1e-300))
    assert a.mean_response_time > 0 and a.energy_per_request > 0
    # the shape is what matters: the same normalised table, the same run
    assert a.mean_response_time == b.mean_response_time
    assert a.energy_per_request == b.energy_per_request


@pytest.mark.parametrize(
    "service,what", [(("lognormal", 30.0), "lognormal sigma"), (("gamma", 1e-300), "gamma shape")]
)
def test_service_whose_mean_is_carried_by_unreachable_draws_is_refused(service, what):
    with pytest.raises(ValueError, match=f"simulate: {what} must be"):
        simulate(4, 2, 1.0, ONE, requests=1000, service=service)


# ---------------------------------------------------------------- counts beyond native ranges
@pytest.mark.parametrize(
    "kw,what",
    [
        (dict(warmup=2**63 - 10), "warmup"),
        (dict(requests=2**60), "requests"),
        (dict(requests=2**52, warmup=2**53 - 2**51), "warmup \\+ requests"),
        (dict(replications=2**40), "replications"),
        (dict(threads=10**6), "threads"),
        (dict(batches=10**9), "batches"),
        (dict(max_in_system=2**70), "max_in_system"),
        (dict(requests=10**11, batches=2), "requests / batches"),
    ],
)
def test_counts_beyond_native_ranges_get_clear_errors(kw, what):
    kw = dict(dict(requests=1000), **kw)
    with pytest.raises(ValueError, match=f"^simulate: {what}"):
        simulate(4, 2, 1.0, ONE, **kw)


def test_huge_n_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"^simulate: n must be <="):
        simulate(2**40, 2, 1.0, ONE, requests=1000)


def test_native_config_refuses_overflowing_warmup():
    cfg = _core.SimConfig()
    cfg.requests, cfg.warmup, cfg.batches = 10, 2**63 - 5, 1
    with pytest.raises(ValueError, match="warmup"):
        _core.forkjoin_simulate(cfg)


def test_memory_follows_the_work():
    """1000 replications of 1000 requests each: the old per-replication histograms took ~5 MB
    each (5 GB here); now the run's peak memory grows by a few MB."""
    code = textwrap.dedent("""
        import resource
        from flagcore.energy import simulate
        simulate(4, 2, 1.0, [(1.0, 1.0, 1.0)], requests=1000, seed=0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = simulate(4, 2, 1.0, [(1.0, 1.0, 1.0)], requests=1000, replications=1000, threads=2,
                     seed=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024, sum(len(b) for _, b, _ in r._rep_hists))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    grown_mb, entries = out.split()
    assert float(grown_mb) < 150, out
    assert int(entries) <= 1000 * 1000  # sparse: at most one entry per measured request


# ---------------------------------------------------------------- approximate at its edges
def test_approximate_at_the_stability_limit_reports_unstable():
    for n, k, lam, lv in (
        (1, 1, 1.0, ONE),
        (4, 2, 2.0, ONE),
        (2, 2, 1.0, ONE),
        (4, 1, 4.0, ONE),
        (3, 1, 6.0, [(1.0, 1.0, 0.5), (3.0, 1.0, 0.5)]),
    ):
        for cancel in (True, False):
            r = approximate(n, k, lam, lv, cancel=cancel)
            assert not r.stable and math.isinf(r.mean_response_time), (n, k, lam, cancel)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_approximate_is_invariant_under_the_time_unit(scale):
    for n, k, lam, lv in ((4, 2, 1.2, ONE), (5, 3, 1.0, TWO), (3, 1, 2.0, TWO), (4, 4, 0.5, ONE)):
        ref = approximate(n, k, lam, lv)
        r = approximate(n, k, lam * scale, [(a * scale, p, q) for a, p, q in lv])
        assert r.stable == ref.stable
        assert r.mean_response_time * scale == pytest.approx(ref.mean_response_time, rel=1e-9)
        assert r.energy_per_request * scale == pytest.approx(ref.energy_per_request, rel=1e-9)
        assert r.average_power == pytest.approx(ref.average_power, rel=1e-9)
        assert r.percentile(0.99) * scale == pytest.approx(ref.percentile(0.99), rel=1e-6)


def test_approximate_refuses_rates_too_far_apart():
    with pytest.raises(ValueError, match="approximate: the rates of the levels in use span"):
        approximate(3, 3, 1.0, [(1e-300, 1.0, 0.5), (1e300, 1.0, 0.5)])


def test_race_quadrature_completion_times_match_the_direct_sum():
    """The O(k) accumulation gives the same E[i-th completion] as summing each binomial CDF."""
    from flagcore.energy.approx import _GL, _binom_cdf_below, race_integral

    n, k, rates, probs = 30, 12, [1.0, 3.0], [0.3, 0.7]
    got = race_integral(n, k, rates, probs)["completion_times"]
    x, w = _GL
    x, w = 0.5 * (x + 1.0), 0.5 * w
    from flagcore.energy.approx import harmonic_number

    scale = (harmonic_number(n) - harmonic_number(n - k)) / float(np.dot(probs, rates)) + 1e-300
    t = scale * x / (1.0 - x)
    jac = scale / (1.0 - x) ** 2
    F = 1.0 - (np.array(probs)[:, None] * np.exp(-np.array(rates)[:, None] * t[None, :])).sum(
        axis=0
    )
    ref = [float((_binom_cdf_below(n, i, F) * w * jac).sum()) for i in range(1, k + 1)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


# ---------------------------------------------------------------- design searches
def test_optimize_refuses_a_grid_too_large_with_the_grid_that_fits():
    levels = [(1.0 + i, (1.0 + i) ** 2) for i in range(12)]
    with pytest.raises(
        ValueError, match=r"optimize: grid=11 over 12 levels has 352,716 .*grid=\d+ gives"
    ):
        optimize(50, 10, 1.0, levels, target=1.0)


def test_simplex_grid_is_generated_directly():
    from flagcore.energy.design import _simplex_grid, grid_size

    for m, grid in ((1, 5), (2, 11), (3, 6), (5, 4)):
        pts = _simplex_grid(m, grid - 1)
        assert len(pts) == grid_size(m, grid) == len(set(pts))
        assert all(abs(sum(p) - 1.0) < 1e-12 and min(p) >= 0 for p in pts)


def test_sweep_refuses_a_string_of_values():
    with pytest.raises(TypeError, match="sweep: values must be a sequence"):
        sweep(4, 2, 1.0, [(1.0, 1.0), (3.0, 9.0)], values="0.5", run_simulation=False)


# ---------------------------------------------------------------- strict JSON
def test_energy_json_is_strict(tmp_path):
    from flagcore.cli import main

    def strict(s):
        return json.loads(s, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))

    js = tmp_path / "approx.json"
    # unstable load: infinite latencies become null
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
                "5",
                "--levels",
                "1:1:1",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    d = strict(js.read_text())
    assert d["race"]["mean_response_time"] is None and d["race"]["stable"] is False
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
                "1",
                "--levels",
                "1:1:1",
                "--requests",
                "2000",
                "--no-progress",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    strict(js.read_text())


# ---------------------------------------------------------------- the energy split
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(cancel=False),
        dict(redraw_on_arrival=True, switch_energy=0.3),
        dict(idle_power=0.5, switch_energy=0.1),
        dict(idle_power=0.4, sleep=[(0.5, 0.1, 0.2, 3.0), (2.0, 0.0, 1.0, 2.0)]),
        dict(replications=3, idle_power=0.2),
    ],
)
def test_energy_split_sums_to_the_total(kw):
    n, k, lam = 4, 2, 1.0
    r = simulate(n, k, lam, TWO, requests=30_000, seed=11, **kw)
    ps, es = r.power_split, r.energy_split
    parts = [np.sum(v) for v in ps.values()]
    assert set(ps) == {"busy", "wasted", "idle", "sleep", "wakeup", "switching"}
    assert all(p >= 0 for p in parts)
    assert math.fsum(parts) == pytest.approx(r.average_power, rel=1e-12)
    assert math.fsum(np.sum(v) for v in es.values()) == pytest.approx(
        r.total_energy_per_request, rel=1e-12
    )
    assert r.total_energy_per_request == pytest.approx(r.average_power / r.throughput, rel=1e-12)
    # busy + wasted is the dynamic energy of the window
    assert np.sum(ps["busy"]) + ps["wasted"] == pytest.approx(
        r.average_power - ps["idle"] - np.sum(ps["sleep"]) - ps["wakeup"] - ps["switching"],
        rel=1e-12,
    )
    # wasted: the window's share matches the per-request accounting within the statistics
    assert es["wasted"] == pytest.approx(r.wasted_energy_per_request, rel=0.03, abs=1e-9)
    if not kw.get("switch_energy"):
        assert ps["switching"] == 0.0
    if kw.get("cancel") is False:
        assert ps["wasted"] > 0  # late tasks run to completion and cost energy
    fractions = r.utilisation.sum() + r.idle_fraction + r.sleep_fraction.sum() + r.wake_fraction
    assert fractions == pytest.approx(1.0, rel=1e-12)


def test_energy_split_k_equals_n_wastes_nothing():
    r = simulate(3, 3, 0.5, ONE, requests=20_000, seed=12, idle_power=0.3)
    assert r.power_split["wasted"] == 0.0 and r.energy_split["wasted"] == 0.0
    # busy energy per request = k P / mu exactly in expectation
    assert r.energy_split["busy"][0] == pytest.approx(3.0, rel=0.03)


# ---------------------------------------------------------------- progress
def test_progress_callback_runs_on_the_calling_thread_and_can_stop_the_run():
    seen = []
    me = threading.get_ident()
    simulate(
        4,
        2,
        1.5,
        ONE,
        requests=300_000,
        seed=1,
        progress=lambda d, t: seen.append((threading.get_ident(), d, t)),
    )
    assert seen and all(tid == me for tid, _, _ in seen)
    assert seen[-1][1] == seen[-1][2] == 330_000
    assert all(a[1] <= b[1] for a, b in zip(seen, seen[1:]))

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop()

    with pytest.raises(Stop):
        simulate(4, 2, 1.5, ONE, requests=10**9, seed=1, progress=stop)


# ---------------------------------------------------------------- bound native types
def test_native_types_have_names():
    cfg = _core.SimConfig()
    assert cfg.service == _core.ServiceKind.exponential
    cfg.n, cfg.k, cfg.arrival_rate, cfg.requests, cfg.warmup, cfg.batches = 4, 2, 1.0, 2000, 100, 8
    cfg.service = _core.ServiceKind.deterministic
    (rep,) = _core.forkjoin_simulate(cfg, replications=1, threads=1)
    cols = rep.batch.dtype.names
    assert cols[:3] == ("requests", "sum_response", "sum_energy") and "in_system_at_end" in cols
    assert rep.batch.shape == (8,) and rep.batch["requests"].sum() == rep.measured == 2000
    assert rep.hist_count.sum() == 2000
    assert {int(b) for b in rep.hist_batch} == set(range(8))
    with pytest.raises(TypeError):
        cfg.service = 3  # an enum, not a bare integer
