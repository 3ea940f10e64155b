"""How far the closed forms drift from simulation: the tandem approximation (one speed) across
loads, and the three effective rates (race, harmonic, arithmetic) with two speed levels.
--validation: the simulator against every exact result of the test suite, as one table
(bench/results/energy_validation.json). --cstates: the worked example of docs/energy.md, the
power a C-state table saves at 30 % load and its p99 cost (bench/results/energy_cstates.json).

    python bench/energy_accuracy.py [--requests 400000] [--out bench/results/energy_accuracy.json]
    python bench/energy_accuracy.py --validation [--requests 300000]
    python bench/energy_accuracy.py --cstates [--requests 1000000]
    python bench/energy_accuracy.py --scale [--sizes 10,100,1000,10000] [--baseline REV]
    python bench/energy_accuracy.py --pstates [--requests 400000]
    python bench/energy_accuracy.py --hetero [--requests 400000]

--scale: approximate() and its p99 at (n, k) = (2k, k), one and two speed levels, against the
approximate of git revision --baseline (default: the revision before the dense matrix
exponential was replaced) loaded from git and timed in the same run, up to --baseline-max-k;
both are checked to agree first (bench/results/energy_approx_scale.json). --pstates: the
worked example of docs/energy-power.md, speed levels from a CPU's P-state table (a fitted power
model, a memory-bound fraction) and the least power that meets a p99 target
(bench/results/energy_pstates.json). --hetero: approximate() with heterogeneous servers (exact
forms, bounds and approximations) and the threshold policy's exact percentiles
(exact_threshold) against simulate (bench/results/energy_hetero.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import time

from flagcore.energy import MMPP, SleepState, approximate, simulate
from flagcore.energy._json import dump as strict_dump

HERE = os.path.dirname(os.path.abspath(__file__))


def validation(requests: int) -> list:
    """(case, exact, simulated, 95% half-width, within 4 half-widths). The exact references are
    the test suite's (tests/): closed forms, CTMCs solved with numpy/scipy, matrix-geometric."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from test_energy_arrivals import mmpp_m1_mean_in_system
    from test_energy_sim import exact_chain_mean_response
    from test_energy_sleep import P_BUSY, P_IDLE, P_OFF, P_WAKE, chain_n1

    one = [(1.0, 1.0, 1.0)]
    rows = []

    def row(name, exact, s, what="mean_response_time"):
        est, hw = getattr(s, what), getattr(s, what + "_ci")
        rows.append(
            dict(case=name, metric=what, exact=exact, sim=est, ci=hw, ok=abs(est - exact) < 4 * hw)
        )

    row(
        "M/M/1, rho 0.7: E[T] = 1/(mu - lam)",
        1 / 0.3,
        simulate(1, 1, 0.7, one, requests=requests, seed=1),
    )
    row(
        "(4,1) cancel = M/M/1 at rate 4 mu",
        1 / (4 - 2.4),
        simulate(4, 1, 2.4, one, requests=requests, seed=2),
    )
    row(
        "(2,2) Flatto-Hahn, rho 0.6",
        (12 - 0.6) / 8 / 0.4,
        simulate(2, 2, 0.6, one, requests=requests, seed=3),
    )
    row(
        "(3,2) cancel, exact CTMC",
        exact_chain_mean_response(3, 2, 1.0, 1.0, nmax=60)[0],
        simulate(3, 2, 1.0, one, requests=requests, seed=4),
    )
    t, p, _ = chain_n1(1, 0.5, 1.0, 1.0, 0.5)
    s = simulate(
        1,
        1,
        0.5,
        [(1.0, P_BUSY, 1.0)],
        idle_power=P_IDLE,
        requests=requests,
        seed=5,
        sleep=[(1.0, P_OFF, 2.0, P_WAKE)],
        sleep_timer="exponential",
        wake_time="exponential",
    )
    row("M/M/1 + setup Exp(0.5) + delay-off Exp(1), CTMC: E[T]", t, s)
    row("M/M/1 + setup Exp(0.5) + delay-off Exp(1), CTMC: power", p, s, "average_power")
    t, p, _ = chain_n1(2, 1.0, 1.0, 0.5, 1.0)
    s = simulate(
        2,
        1,
        1.0,
        [(1.0, P_BUSY, 1.0)],
        idle_power=P_IDLE,
        requests=requests,
        seed=6,
        sleep=[(2.0, P_OFF, 1.0, P_WAKE)],
        sleep_timer="exponential",
        wake_time="exponential",
    )
    row("(2,1) cancel + sleep, CTMC: E[T]", t, s)
    row("(2,1) cancel + sleep, CTMC: power", p, s, "average_power")
    exact = 1 / 0.5 + (2 * 2.0 + 0.5 * 4.0) / (2 * (1 + 0.5 * 2.0))
    row(
        "M/M/1 + deterministic setup 2, M/G/1 setup decomposition",
        exact,
        simulate(1, 1, 0.5, one, requests=requests, seed=7, sleep=[(0.0, 0.0, 2.0, 1.0)]),
    )
    rates, switch = (0.2, 1.2), ((0, 0.1), (0.1, 0))
    m = MMPP(rates, switch)
    EN, _ = mmpp_m1_mean_in_system(rates, switch, 1.0)
    row(
        "MMPP(2)/M/1, matrix-geometric",
        EN / m.mean_rate,
        simulate(1, 1, m.mean_rate, one, arrivals=m, requests=requests, seed=8, batches=20),
    )
    return rows


def hetero(requests: int) -> list:
    """approximate() with heterogeneous servers, and exact_threshold's percentiles, against
    simulate: (case, metric, reference, its nature, simulated, 95% half-width, relative error,
    whether an exact value is within 4 half-widths (+ the histogram's 2^-8 for percentiles) or
    a bound holds)."""
    from flagcore.energy import ThresholdPolicy, exact_threshold
    from flagcore.energy._stats import PERCENTILE_RELATIVE_ERROR

    A, B, D = [(1.0, 1.0, 1.0)], [(2.0, 3.0, 1.0)], [(1.5, 2.0, 1.0)]
    C = [(0.5, 0.4, 0.5), (3.0, 6.0, 0.5)]
    E = [(3.0, 9.0, 1.0)]
    rows = []

    def add(name, metric, ref, nature, s):
        if metric in ("p50", "p90", "p99"):
            q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}[metric]
            est, hw = s.percentile(q), s.percentile_ci(q)
            slack = 4 * hw + PERCENTILE_RELATIVE_ERROR * ref
        else:
            est, hw = getattr(s, metric), getattr(s, metric + "_ci")
            slack = 4 * hw
        if nature == "upper bound":
            ok = est < ref + slack
        elif nature == "lower bound":
            ok = est > ref - slack
        elif nature == "exact":
            ok = abs(est - ref) < slack
        else:
            ok = None
        rows.append(
            dict(
                case=name,
                metric=metric,
                reference=ref,
                nature=nature,
                sim=est,
                ci=hw,
                rel_err=ref / est - 1,
                ok=ok,
            )
        )

    cases = [
        ("(3,1) cancel, rates 1, 1.5, 2, lam 2", 3, 1, 2.0, [A, D, B], True),
        ("(3,1) cancel, one server with two levels, lam 2", 3, 1, 2.0, [A, B, C], True),
        ("(3,3), rates 1, 1.5, 2, lam 0.5", 3, 3, 0.5, [A, D, B], True),
        ("(3,3), rates 1, 1.5, 2, lam 0.8", 3, 3, 0.8, [A, D, B], True),
        ("(3,3), one server with two levels, lam 0.4", 3, 3, 0.4, [A, B, C], True),
        ("(3,1) no cancel, rates 1, 1.5, 2, lam 0.5", 3, 1, 0.5, [A, D, B], False),
        ("(3,2) no cancel, rates 1, 1.5, 2, lam 0.5", 3, 2, 0.5, [A, D, B], False),
        ("(4,2) cancel, rates 1, 1, 2, 3, lam 1", 4, 2, 1.0, [A, A, B, E], True),
        ("(4,2) cancel, rates 1, 1, 2, 3, lam 2", 4, 2, 2.0, [A, A, B, E], True),
        ("(4,2) cancel, rates 1, 1, 2, 3, lam 2.8", 4, 2, 2.8, [A, A, B, E], True),
        ("(4,2) cancel, mixed servers, lam 1", 4, 2, 1.0, [A, B, C, D], True),
        ("(4,3) cancel, mixed servers, lam 0.8", 4, 3, 0.8, [A, B, C, D], True),
    ]
    for i, (name, n, k, lam, sets, cancel) in enumerate(cases):
        a = approximate(n, k, lam, sets, cancel=cancel, idle_power=0.1)
        s = simulate(n, k, lam, sets, cancel=cancel, idle_power=0.1, requests=requests, seed=40 + i)
        mm = a.mean_method
        mean_nature = (
            "exact"
            if mm.startswith("exact")
            else "upper bound"
            if "upper bound" in mm
            else "lower bound"
            if "lower bound" in mm
            else "approximation"
        )
        add(name, "mean_response_time", a.mean_response_time, mean_nature, s)
        pn = "exact" if a.percentile_method.startswith("exact") else "approximation"
        if mean_nature in ("upper bound", "lower bound"):
            pn = mean_nature  # associated sojourns: the bound holds for every quantile
        add(name, "p99", a.p99, pn, s)
        en = "exact" if (k == 1 and cancel) or k == n or not cancel else "approximation"
        add(name, "energy_per_request", a.energy_per_request, en, s)
    th_cases = [
        ("M/M/1, threshold T = 2 (rates 1, 2), lam 0.7", 1, 0.7, [(1.0, 1.0), (2.0, 4.0)], [2]),
        (
            "M/M/1, three levels, thresholds (1, 4), lam 0.7",
            1,
            0.7,
            [(0.8, 0.5), (1.0, 1.0), (2.5, 6.0)],
            [1, 4],
        ),
        (
            "(2,1) cancel, heterogeneous, T = 2, lam 1.8",
            2,
            1.8,
            [[(1.0, 1.0), (2.0, 4.0)], [(0.5, 0.4), (3.0, 7.0)]],
            [2],
        ),
    ]
    for i, (name, n, lam, levels, th) in enumerate(th_cases):
        ex = exact_threshold(lam, levels, ThresholdPolicy(th), n=n)
        s = simulate(n, 1, lam, levels, policy=ThresholdPolicy(th), requests=requests, seed=60 + i)
        for metric, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            add(name + ", tagged chain", metric, ex.percentile(q), "exact", s)
    return rows


#: The worked example's C-state table (time unit: ms; per-core power in W). Exit latencies and
#: target residencies are the intel_idle table of a Skylake-SP server (C1 2 us / 2 us, C1E
#: 10 us / 20 us, C6 133 us / 600 us); the powers are illustrative per-core figures.
P_ACTIVE, P_POLL = 10.0, 4.0
CSTATES = [
    SleepState(0.002, 2.5, 0.002, P_ACTIVE),  # C1 after 2 us idle
    SleepState(0.018, 1.5, 0.010, P_ACTIVE),  # C1E after 20 us
    SleepState(0.580, 0.1, 0.133, P_ACTIVE),
]  # C6 after 600 us


def cstates(requests: int) -> dict:
    """(4, 3) fork-join with cancellation, service 1 ms mean (exponential), 30 % utilisation."""
    n, k, lam = 4, 3, 0.4  # k lam / (n mu) = 0.3
    lv = [(1.0, P_ACTIVE, 1.0)]
    configs = [
        ("no C-states (idle in C0 at 4 W)", None),
        ("C1 only", CSTATES[:1]),
        ("C1 + C1E", CSTATES[:2]),
        ("C1 + C1E + C6", CSTATES),
        ("C6 only, after 600 us", [SleepState(0.6, 0.1, 0.133, P_ACTIVE)]),
    ]
    out = {
        "model": dict(
            n=n,
            k=k,
            arrival_rate_per_ms=lam,
            service_mean_ms=1.0,
            busy_power_w=P_ACTIVE,
            idle_power_w=P_POLL,
            cstates=[list(c) for c in CSTATES],
        ),
        "rows": [],
    }
    base = None
    for name, st in configs:
        s = simulate(n, k, lam, lv, idle_power=P_POLL, requests=requests, seed=1, sleep=st)
        if base is None:
            base = s
        out["rows"].append(
            dict(
                config=name,
                power_w=s.average_power,
                power_ci=s.average_power_ci,
                saving=1 - s.average_power / base.average_power,
                p99_ms=s.p99,
                p99_ci=s.percentile_ci(0.99),
                mean_ms=s.mean_response_time,
                split_w={
                    key: float(sum(v) if hasattr(v, "__len__") else v)
                    for key, v in s.power_split.items()
                },
                wakeups_per_request=s.wakeups_per_request,
            )
        )
    return out


# ---------------------------------------------------------------- --scale
#: The last revision whose approximate() used dense matrix exponentials for its percentiles.
BASELINE_REV = "ef9f0f5"


def _load_baseline(rev: str):
    """approx.py of git revision `rev`, imported as a module of the installed flagcore.energy
    package (its relative imports resolve there); None when git or the revision is missing."""
    root = os.path.dirname(HERE)
    try:
        src = subprocess.run(
            ["git", "show", f"{rev}:python/flagcore/energy/approx.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sha = subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"baseline {rev}: not available ({e}); timing the current version only")
        return None, None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "approx_baseline.py")
        with open(path, "w") as f:
            f.write(src)
        name = "flagcore.energy._approx_baseline"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return mod, sha


def _time(fn, repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def scale(
    sizes: list, repeat: int, baseline_rev: str, baseline_max_k: int, baseline_repeat: int
) -> dict:
    """approximate(2k, k, rho = 0.5) and its p99, now and at the baseline revision."""
    old, sha = (None, None) if baseline_rev == "none" else _load_baseline(baseline_rev)
    rows = []
    cases = [("one speed", [(1.0, 1.0, 1.0)]), ("two speeds", [(1.0, 1.0, 0.4), (3.0, 9.0, 0.6)])]
    for k in sizes:
        n = 2 * k
        for name, lv in cases:
            lam = 0.5 * approximate(n, k, 1e-9, lv).stability_limit
            args = (n, k, lam, lv)
            t_new, a = _time(lambda args=args: approximate(*args), repeat)
            t_p99, p99 = _time(lambda a=a: a.p99, repeat)  # percentiles are not cached
            row = dict(
                n=n,
                k=k,
                levels=name,
                arrival_rate=lam,
                mean=a.mean_response_time,
                p99=p99,
                approximate_s=t_new,
                p99_s=t_p99,
                baseline_approximate_s=None,
                baseline_p99_s=None,
                speedup_p99=None,
                speedup_total=None,
            )
            if old is not None and k <= baseline_max_k:
                tb, b = _time(lambda args=args: old.approximate(*args), baseline_repeat)
                # correctness before timing the tails: the same model, the same answers
                assert math.isclose(b.mean_response_time, a.mean_response_time, rel_tol=1e-9)
                assert math.isclose(b.energy_per_request, a.energy_per_request, rel_tol=1e-9)
                tb99, b99 = _time(lambda b=b: b.p99, baseline_repeat)
                assert math.isclose(b99, p99, rel_tol=1e-6), (b99, p99)
                row.update(
                    baseline_approximate_s=tb,
                    baseline_p99_s=tb99,
                    speedup_p99=tb99 / t_p99,
                    speedup_total=(tb + tb99) / (t_new + t_p99),
                )
            rows.append(row)
            b_txt = (
                f"{row['baseline_approximate_s']:10.4f} {row['baseline_p99_s']:10.3f} "
                f"{row['speedup_p99']:8.0f}x {row['speedup_total']:8.0f}x"
                if row["baseline_p99_s"] is not None
                else f"{'-':>10} {'-':>10} {'-':>9} {'-':>9}"
            )
            print(
                f"{n:>7} {k:>6} {name:<10} {t_new:10.4f} {t_p99:10.4f} {b_txt} {p99:10.4f}",
                flush=True,
            )
    return dict(
        repeat=repeat,
        baseline_repeat=baseline_repeat,
        baseline=baseline_rev,
        baseline_commit=sha,
        rows=rows,
    )


# ---------------------------------------------------------------- --pstates
#: The worked example of docs/energy-power.md: the non-turbo P-states of a 2.1 GHz server part
#: (a subset of its 100 MHz steps); the per-core busy powers are illustrative figures (W),
#: not a measurement: substitute RAPL or power-meter readings for a real machine.
PSTATES_GHZ = [1.0, 1.2, 1.4, 1.6, 1.8, 2.1]
PSTATES_W = [4.1, 4.8, 5.7, 6.8, 8.1, 10.0]
P_IDLE_PSTATES = 4.0  # idle in C0, as the C-state example
P99_TARGET_MS = 6.0


def pstates(requests: int) -> dict:
    """(4, 3) fork-join with cancellation, 1 ms mean task at 2.1 GHz, 0.4 requests/ms (30 %
    utilisation at full speed): every P-state alone, for a compute-bound and a partly
    memory-bound workload, by simulation; the cheapest one whose p99 (upper 95 % limit) meets
    the target; then optimize over mixes of the two P-states around it."""
    from flagcore.energy import fit_power_model, levels_from_frequencies, optimize

    n, k, lam = 4, 3, 0.4
    model = fit_power_model(PSTATES_GHZ, PSTATES_W)
    fit_err = [model.power(f) / w - 1 for f, w in zip(PSTATES_GHZ, PSTATES_W)]
    print(
        f"fit: P(f) = {model.static:.3f} + {model.coeff:.3f} f^{model.alpha:.3f} W "
        f"(largest relative error {max(abs(e) for e in fit_err):.2%})"
    )
    out = dict(
        model=dict(
            n=n,
            k=k,
            arrival_rate_per_ms=lam,
            service_mean_ms_at_max=1.0,
            idle_power_w=P_IDLE_PSTATES,
            frequencies_ghz=PSTATES_GHZ,
            powers_w=PSTATES_W,
            p99_target_ms=P99_TARGET_MS,
            requests=requests,
        ),
        fit=dict(static=model.static, coeff=model.coeff, alpha=model.alpha, rel_err=fit_err),
        rows=[],
        mixes=[],
    )
    print(
        f"{'m':>4} {'GHz':>5} {'rate/ms':>8} {'busy W':>7} {'rho':>5} {'power W':>15} "
        f"{'mJ/req':>7} {'mean ms':>8} {'p99 ms':>15} meets"
    )
    for m in (0.0, 0.3):
        for j, f in enumerate(PSTATES_GHZ):
            probs = [1.0 if i == j else 0.0 for i in range(len(PSTATES_GHZ))]
            lv = levels_from_frequencies(
                PSTATES_GHZ, PSTATES_W, memory_fraction=m, probabilities=probs
            )
            mu = lv[j].rate
            rho = k * lam / (n * mu)
            if rho >= 0.95:
                print(f"{m:4.1f} {f:5.1f} {mu:8.4f} {lv[j].power:7.2f} {rho:5.2f}  (too slow)")
                continue
            s = simulate(n, k, lam, lv, idle_power=P_IDLE_PSTATES, requests=requests, seed=1 + j)
            p99_ci = s.percentile_ci(0.99)
            meets = s.p99 + p99_ci <= P99_TARGET_MS
            out["rows"].append(
                dict(
                    memory_fraction=m,
                    ghz=f,
                    rate_per_ms=mu,
                    busy_power_w=lv[j].power,
                    utilisation=rho,
                    power_w=s.average_power,
                    power_ci=s.average_power_ci,
                    energy_mj_per_request=s.total_energy_per_request,
                    mean_ms=s.mean_response_time,
                    p99_ms=s.p99,
                    p99_ci=p99_ci,
                    meets_target=meets,
                )
            )
            print(
                f"{m:4.1f} {f:5.1f} {mu:8.4f} {lv[j].power:7.2f} {rho:5.2f} "
                f"{s.average_power:7.3f} ± {s.average_power_ci:.3f} "
                f"{s.total_energy_per_request:7.2f} {s.mean_response_time:8.3f} "
                f"{s.p99:7.3f} ± {p99_ci:.3f} {'yes' if meets else 'no'}",
                flush=True,
            )
        ok = [r for r in out["rows"] if r["memory_fraction"] == m and r["meets_target"]]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["power_w"])
        # a mix of the cheapest single P-state that meets the target and the next slower one
        j = PSTATES_GHZ.index(best["ghz"])
        if j == 0:
            continue
        pair = [j - 1, j]
        lv2 = levels_from_frequencies(
            [PSTATES_GHZ[i] for i in pair], [PSTATES_W[i] for i in pair], memory_fraction=m
        )
        # rates relative to the table's top frequency, not the pair's
        scale_ = levels_from_frequencies(PSTATES_GHZ, PSTATES_W, memory_fraction=m)
        lv2 = [(scale_[i].rate, PSTATES_W[i]) for i in pair]
        o = optimize(
            n,
            k,
            lam,
            lv2,
            target=P99_TARGET_MS,
            metric="p99",
            objective="power",
            idle_power=P_IDLE_PSTATES,
            evaluator="simulate",
            grid=6,
            refine=1,
            requests=requests,
            seed=7,
        )
        out["mixes"].append(
            dict(
                memory_fraction=m,
                ghz=[PSTATES_GHZ[i] for i in pair],
                feasible=o.feasible,
                probs=list(o.probs),
                power_w=o.value,
                p99_ms=o.latency,
                p99_ci=o.latency_ci,
                best_single_ghz=best["ghz"],
                best_single_power_w=best["power_w"],
            )
        )
        print(
            f"m = {m}: cheapest single P-state meeting p99 <= {P99_TARGET_MS} ms: "
            f"{best['ghz']} GHz at {best['power_w']:.3f} W; best mix of "
            f"{PSTATES_GHZ[pair[0]]}/{PSTATES_GHZ[pair[1]]} "
            f"GHz: p = {tuple(round(x, 3) for x in o.probs)}, "
            f"{o.value:.3f} W, p99 {o.latency:.3f} ± {o.latency_ci:.3f} ms (feasible: {o.feasible})"
        )
    full = next(r for r in out["rows"] if r["ghz"] == PSTATES_GHZ[-1])
    out["full_speed_power_w"] = full["power_w"]
    # slow down, or race to idle? The C-state table of --cstates with the full-speed P-state
    # and with the cheapest P-state that meets the target (compute-bound work, m = 0).
    out["with_cstates"] = []
    ok = [r for r in out["rows"] if r["memory_fraction"] == 0.0 and r["meets_target"]]
    best = min(ok, key=lambda r: r["power_w"]) if ok else None
    for f in sorted({PSTATES_GHZ[-1]} | ({best["ghz"]} if best else set())):
        j = PSTATES_GHZ.index(f)
        probs = [1.0 if i == j else 0.0 for i in range(len(PSTATES_GHZ))]
        lv = levels_from_frequencies(PSTATES_GHZ, PSTATES_W, probabilities=probs)
        s = simulate(
            n,
            k,
            lam,
            lv,
            idle_power=P_IDLE_PSTATES,
            requests=requests,
            seed=1 + j,
            sleep=[SleepState(a, pw, lat, PSTATES_W[j]) for a, pw, lat, _ in CSTATES],
        )
        p99_ci = s.percentile_ci(0.99)
        out["with_cstates"].append(
            dict(
                ghz=f,
                power_w=s.average_power,
                power_ci=s.average_power_ci,
                p99_ms=s.p99,
                p99_ci=p99_ci,
                mean_ms=s.mean_response_time,
                meets_target=s.p99 + p99_ci <= P99_TARGET_MS,
            )
        )
        print(
            f"{f} GHz + C1/C1E/C6: {s.average_power:.3f} ± {s.average_power_ci:.3f} W, "
            f"p99 {s.p99:.3f} ± {p99_ci:.3f} ms, mean {s.mean_response_time:.3f} ms"
        )
    return out


TWO = [(1.0, 1.0, 0.5), (3.0, 9.0, 0.5)]


def write_json(path: str, obj: object) -> None:
    """Strict JSON (no NaN/Infinity) to path, and say so."""
    with open(path, "w") as f:
        strict_dump(obj, f, indent=2)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=400_000)
    ap.add_argument(
        "--out",
        default=None,
        help="JSON output (default bench/results/energy_{accuracy,validation,cstates}.json)",
    )
    ap.add_argument(
        "--validation", action="store_true", help="the simulator against the exact results"
    )
    ap.add_argument(
        "--cstates", action="store_true", help="the worked C-state example of docs/energy.md"
    )
    ap.add_argument(
        "--scale", action="store_true", help="approximate() at large k against --baseline"
    )
    ap.add_argument("--sizes", default="10,100,1000,10000", help="--scale: values of k")
    ap.add_argument("--repeat", type=int, default=3, help="--scale: best of this many runs")
    ap.add_argument(
        "--baseline",
        default=BASELINE_REV,
        help="--scale: git revision of the approximate() to compare with ('none': skip)",
    )
    ap.add_argument(
        "--baseline-max-k", type=int, default=300, help="--scale: largest k for the baseline"
    )
    ap.add_argument(
        "--baseline-repeat", type=int, default=1, help="--scale: best of this many baseline runs"
    )
    ap.add_argument(
        "--pstates", action="store_true", help="the worked P-state example of docs/energy-power.md"
    )
    ap.add_argument(
        "--hetero",
        action="store_true",
        help="approximate() with heterogeneous servers and exact_threshold against simulate",
    )
    a = ap.parse_args()
    which = (
        "validation"
        if a.validation
        else "cstates"
        if a.cstates
        else "approx_scale"
        if a.scale
        else "pstates"
        if a.pstates
        else "hetero"
        if a.hetero
        else "accuracy"
    )
    a.out = a.out or os.path.join(HERE, "results", f"energy_{which}.json")
    if not os.access(os.path.dirname(os.path.abspath(a.out)), os.W_OK):
        ap.error(f"--out: cannot write into {os.path.dirname(os.path.abspath(a.out))}")
    if a.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {a.repeat}")
    if a.scale:
        try:
            sizes = [int(x) for x in a.sizes.split(",")]
        except ValueError:
            ap.error(f"--sizes must be comma-separated ints, got {a.sizes!r}")
        if not sizes or min(sizes) < 1:
            ap.error(f"--sizes must be positive ints, got {a.sizes!r}")
        print(
            f"{'n':>7} {'k':>6} {'levels':<10} {'approx s':>10} {'p99 s':>10} "
            f"{'base appr s':>10} {'base p99 s':>10} {'x p99':>9} {'x total':>9} {'p99':>10}"
        )
        res = scale(sizes, a.repeat, a.baseline, a.baseline_max_k, max(a.baseline_repeat, 1))
        write_json(a.out, res)
        return 0
    if a.pstates:
        res = pstates(a.requests)
        write_json(a.out, res)
        return 0
    if a.hetero:
        rows = hetero(a.requests)
        print("| case | metric | reference | nature | simulated (± 95 % half-width) | error | ok |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            ok = "" if r["ok"] is None else "yes" if r["ok"] else "NO"
            print(
                f"| {r['case']} | {r['metric']} | {r['reference']:.4f} | {r['nature']} | "
                f"{r['sim']:.4f} ± {r['ci']:.4f} | {r['rel_err']:+.1%} | {ok} |"
            )
        write_json(a.out, {"requests": a.requests, "rows": rows})
        return 0 if all(r["ok"] is not False for r in rows) else 1
    if a.validation:
        rows = validation(a.requests)
        print(f"{'case':<62} {'exact':>9} {'simulated':>18} ok")
        for r in rows:
            print(
                f"{r['case']:<62} {r['exact']:9.4f} {r['sim']:9.4f} "
                f"± {r['ci']:.4f} {'yes' if r['ok'] else 'NO'}"
            )
        write_json(a.out, {"requests": a.requests, "rows": rows})
        return 0 if all(r["ok"] for r in rows) else 1
    if a.cstates:
        res = cstates(a.requests)
        print(
            f"{'configuration':<34} {'power W':>14} "
            f"{'saving':>7} {'p99 ms':>14} {'wake-ups/req':>12}"
        )
        for r in res["rows"]:
            print(
                f"{r['config']:<34} {r['power_w']:7.3f} ± {r['power_ci']:.3f} {r['saving']:7.1%} "
                f"{r['p99_ms']:7.3f} ± {r['p99_ci']:.3f} {r['wakeups_per_request']:12.3f}"
            )
        write_json(a.out, res)
        return 0
    out = {"tandem": [], "levels": []}
    print("tandem approximation vs simulation, one speed (mu = 1): E[T], p99")
    print(
        f"{'(n,k)':>7} {'rho':>5} {'sim E[T]':>16} {'tandem':>8} "
        f"{'err':>7} {'sim p99':>8} {'hypo p99':>8} {'err':>7}"
    )
    for n, k in ((4, 2), (10, 5), (10, 9)):
        for rho in (0.2, 0.5, 0.7, 0.8, 0.9):
            lam = rho * n / k
            s = simulate(n, k, lam, [(1, 1, 1)], requests=a.requests, seed=1)
            ap_ = approximate(n, k, lam, [(1, 1, 1)])
            t = ap_.tandem_response_time
            e, e99 = t / s.mean_response_time - 1, ap_.p99 / s.p99 - 1
            out["tandem"].append(
                dict(
                    n=n,
                    k=k,
                    rho=rho,
                    sim=s.mean_response_time,
                    ci=s.mean_response_time_ci,
                    tandem=t,
                    rel_err=e,
                    sim_p99=s.p99,
                    approx_p99=ap_.p99,
                    p99_rel_err=e99,
                )
            )
            print(
                f"{f'({n},{k})':>7} {rho:5.2f} "
                f"{s.mean_response_time:9.4f}±{s.mean_response_time_ci:.4f} {t:8.4f} "
                f"{e:+7.1%} {s.p99:8.3f} {ap_.p99:8.3f} {e99:+7.1%}"
            )
    print(
        "\ntwo levels (rate 1 power 1, rate 3 power 9, "
        "p = 0.5), (4, 2): effective rates vs simulation"
    )
    print(
        f"{'lam':>5} {'sim E[T]':>16} {'race':>8} {'harm.':>8} "
        f"{'arith.':>8} {'sim energy':>16} {'race energy':>11}"
    )
    for lam in (0.5, 1.5, 2.5, 3.2):
        s = simulate(4, 2, lam, TWO, requests=a.requests, seed=1)
        r = {m: approximate(4, 2, lam, TWO, method=m) for m in ("race", "harmonic", "arithmetic")}
        out["levels"].append(
            dict(
                lam=lam,
                sim=s.mean_response_time,
                ci=s.mean_response_time_ci,
                sim_energy=s.energy_per_request,
                sim_energy_ci=s.energy_per_request_ci,
                **{m: r[m].mean_response_time for m in r},
                race_energy=r["race"].energy_per_request,
            )
        )
        print(
            f"{lam:5.2f} {s.mean_response_time:9.4f}±{s.mean_response_time_ci:.4f} "
            f"{r['race'].mean_response_time:8.4f} "
            f"{r['harmonic'].mean_response_time:8.4f} {r['arithmetic'].mean_response_time:8.4f} "
            f"{s.energy_per_request:9.4f}±{s.energy_per_request_ci:.4f} "
            f"{r['race'].energy_per_request:11.4f}"
        )
    write_json(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
