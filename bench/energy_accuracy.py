"""How far the closed forms drift from simulation: the tandem approximation (one speed) across
loads, and the three effective rates (race, harmonic, arithmetic) with two speed levels.
--validation: the simulator against every exact result of the test suite, as one table
(bench/results/energy_validation.json). --cstates: the worked example of docs/energy.md, the
power a C-state table saves at 30 % load and its p99 cost (bench/results/energy_cstates.json).

    python bench/energy_accuracy.py [--requests 400000] [--out bench/results/energy_accuracy.json]
    python bench/energy_accuracy.py --validation [--requests 300000]
    python bench/energy_accuracy.py --cstates [--requests 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys

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


TWO = [(1.0, 1.0, 0.5), (3.0, 9.0, 0.5)]


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
    a = ap.parse_args()
    which = "validation" if a.validation else "cstates" if a.cstates else "accuracy"
    a.out = a.out or os.path.join(HERE, "results", f"energy_{which}.json")
    if not os.access(os.path.dirname(os.path.abspath(a.out)), os.W_OK):
        ap.error(f"--out: cannot write into {os.path.dirname(os.path.abspath(a.out))}")
    if a.validation:
        rows = validation(a.requests)
        print(f"{'case':<62} {'exact':>9} {'simulated':>18} ok")
        for r in rows:
            print(
                f"{r['case']:<62} {r['exact']:9.4f} {r['sim']:9.4f} ± {r['ci']:.4f} {'yes' if r['ok'] else 'NO'}"
            )
        with open(a.out, "w") as f:
            strict_dump({"requests": a.requests, "rows": rows}, f, indent=2)
        print(f"wrote {a.out}")
        return 0 if all(r["ok"] for r in rows) else 1
    if a.cstates:
        res = cstates(a.requests)
        print(
            f"{'configuration':<34} {'power W':>14} {'saving':>7} {'p99 ms':>14} {'wake-ups/req':>12}"
        )
        for r in res["rows"]:
            print(
                f"{r['config']:<34} {r['power_w']:7.3f} ± {r['power_ci']:.3f} {r['saving']:7.1%} "
                f"{r['p99_ms']:7.3f} ± {r['p99_ci']:.3f} {r['wakeups_per_request']:12.3f}"
            )
        with open(a.out, "w") as f:
            strict_dump(res, f, indent=2)
        print(f"wrote {a.out}")
        return 0
    out = {"tandem": [], "levels": []}
    print("tandem approximation vs simulation, one speed (mu = 1): E[T], p99")
    print(
        f"{'(n,k)':>7} {'rho':>5} {'sim E[T]':>16} {'tandem':>8} {'err':>7} {'sim p99':>8} {'hypo p99':>8} {'err':>7}"
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
                f"{f'({n},{k})':>7} {rho:5.2f} {s.mean_response_time:9.4f}±{s.mean_response_time_ci:.4f} {t:8.4f} "
                f"{e:+7.1%} {s.p99:8.3f} {ap_.p99:8.3f} {e99:+7.1%}"
            )
    print(
        "\ntwo levels (rate 1 power 1, rate 3 power 9, p = 0.5), (4, 2): effective rates vs simulation"
    )
    print(
        f"{'lam':>5} {'sim E[T]':>16} {'race':>8} {'harm.':>8} {'arith.':>8} {'sim energy':>16} {'race energy':>11}"
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
            f"{lam:5.2f} {s.mean_response_time:9.4f}±{s.mean_response_time_ci:.4f} {r['race'].mean_response_time:8.4f} "
            f"{r['harmonic'].mean_response_time:8.4f} {r['arithmetic'].mean_response_time:8.4f} "
            f"{s.energy_per_request:9.4f}±{s.energy_per_request_ci:.4f} {r['race'].energy_per_request:11.4f}"
        )
    with open(a.out, "w") as f:
        strict_dump(out, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
