"""How far the closed forms drift from simulation: the tandem approximation (one speed) across
loads, and the three effective rates (race, harmonic, arithmetic) with two speed levels.

    python bench/energy_accuracy.py [--requests 400000] [--out bench/results/energy_accuracy.json]
"""
from __future__ import annotations

import argparse
import json
import os

from flagcore.energy import approximate, simulate

TWO = [(1.0, 1.0, 0.5), (3.0, 9.0, 0.5)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400_000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "energy_accuracy.json"))
    a = ap.parse_args()
    out = {"tandem": [], "levels": []}
    print("tandem approximation vs simulation, one speed (mu = 1): E[T], p99")
    print(f"{'(n,k)':>7} {'rho':>5} {'sim E[T]':>16} {'tandem':>8} {'err':>7} {'sim p99':>8} {'hypo p99':>8} {'err':>7}")
    for n, k in ((4, 2), (10, 5), (10, 9)):
        for rho in (0.2, 0.5, 0.7, 0.8, 0.9):
            lam = rho * n / k
            s = simulate(n, k, lam, [(1, 1, 1)], requests=a.requests, seed=1)
            ap_ = approximate(n, k, lam, [(1, 1, 1)])
            t = ap_.tandem_response_time
            e, e99 = t / s.mean_response_time - 1, ap_.p99 / s.p99 - 1
            out["tandem"].append(dict(n=n, k=k, rho=rho, sim=s.mean_response_time, ci=s.mean_response_time_ci,
                                      tandem=t, rel_err=e, sim_p99=s.p99, approx_p99=ap_.p99, p99_rel_err=e99))
            print(f"{f'({n},{k})':>7} {rho:5.2f} {s.mean_response_time:9.4f}±{s.mean_response_time_ci:.4f} {t:8.4f} "
                  f"{e:+7.1%} {s.p99:8.3f} {ap_.p99:8.3f} {e99:+7.1%}")
    print("\ntwo levels (rate 1 power 1, rate 3 power 9, p = 0.5), (4, 2): effective rates vs simulation")
    print(f"{'lam':>5} {'sim E[T]':>16} {'race':>8} {'harm.':>8} {'arith.':>8} {'sim energy':>16} {'race energy':>11}")
    for lam in (0.5, 1.5, 2.5, 3.2):
        s = simulate(4, 2, lam, TWO, requests=a.requests, seed=1)
        r = {m: approximate(4, 2, lam, TWO, method=m) for m in ("race", "harmonic", "arithmetic")}
        out["levels"].append(dict(lam=lam, sim=s.mean_response_time, ci=s.mean_response_time_ci,
                                  sim_energy=s.energy_per_request, sim_energy_ci=s.energy_per_request_ci,
                                  **{m: r[m].mean_response_time for m in r}, race_energy=r["race"].energy_per_request))
        print(f"{lam:5.2f} {s.mean_response_time:9.4f}±{s.mean_response_time_ci:.4f} {r['race'].mean_response_time:8.4f} "
              f"{r['harmonic'].mean_response_time:8.4f} {r['arithmetic'].mean_response_time:8.4f} "
              f"{s.energy_per_request:9.4f}±{s.energy_per_request_ci:.4f} {r['race'].energy_per_request:11.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
