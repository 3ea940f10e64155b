"""Fork-join simulator speed: flagcore's C++ event loop against SimPy and Ciw on the same model,
and against an older flagcore build (--baseline), in one run.

Model: (n, k) fork-join, Poisson arrivals, exponential service, one speed level, FCFS servers,
cancellation of the n - k late tasks (SimPy: by interrupting their processes). Cases: M/M/1,
(4, 2) and (10, 5), load 0.7-0.75. Correctness first: flagcore's M/M/1 mean against 1/(mu-lam),
and flagcore against SimPy on every case (within their combined 95% confidence intervals).
Then requests per second on one thread (best of --repeat), and replications on 1..T threads.
Ciw (no fork-join) runs M/M/1, checked against 1/(mu - lam). The feature cases time flagcore's
event loop with the model options on (two speed levels, sleep states, MMPP arrivals) and off,
and, with --baseline DIR (a directory holding an older `flagcore` package, e.g. main's build),
the same cases with that build in a subprocess: the new options must cost nothing when off, and
results for a seed are the same bits. The goals: (4, 2) with cancellation at >= 10 M requests/s
and (100, 50) at >= 15 M tasks/s, one thread (printed with the table, stored under "goals").

    python bench/bench_energy.py [--requests 1000000] [--simpy-requests 50000]
                                 [--ciw-requests 20000]
                                 [--repeat 3] [--threads 1,2] [--baseline DIR]
                                 [--out bench/results/energy.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np

from flagcore.energy import MMPP, DeadlinePolicy, SleepState, ThresholdPolicy, Trace, simulate
from flagcore.energy._json import dump as strict_dump
from flagcore.energy._stats import half_width

#: Event-loop speed cases: name, n, k, arrival rate, options (one thread, requests/s and tasks/s)
FEATURE_CASES = [
    ("M/M/1", 1, 1, 0.7, {}),
    ("(4,2) cancel", 4, 2, 1.5, {}),
    ("(100,50) cancel", 100, 50, 1.5, {}),
    ("(4,2) two levels", 4, 2, 1.5, {"levels": [(1.0, 1.0, 0.5), (3.0, 9.0, 0.5)]}),
    (
        "(4,2) sleep states",
        4,
        2,
        1.5,
        {"sleep": [SleepState(0.5, 0.1, 0.2, 2.0), SleepState(5.0, 0.0, 1.0, 2.0)]},
    ),
    ("(4,2) MMPP", 4, 2, 1.5, {"arrivals": MMPP((0.5, 2.5), ((0, 0.2), (0.2, 0)))}),
    (
        "(4,2) threshold",
        4,
        2,
        1.5,
        {"levels": [(1.0, 1.0), (3.0, 9.0)], "policy": ThresholdPolicy(2)},
    ),
    (
        "(4,2) deadline",
        4,
        2,
        1.5,
        {"levels": [(1.0, 1.0), (3.0, 9.0)], "policy": DeadlinePolicy(2.0)},
    ),
    (
        "(4,2) hetero",
        4,
        2,
        1.5,
        {"levels": [[(1.0, 1.0, 1.0)], [(1.5, 2.0, 1.0)], [(2.0, 4.0, 1.0)], [(1.0, 1.0, 1.0)]]},
    ),
    ("(4,2) trace", 4, 2, 1.5, {"trace": True}),
]
#: Speed goals (issue 15), one thread, by CPU time: case name -> (measure, minimum)
GOALS = {"(4,2) cancel": ("requests_per_s_cpu", 10e6), "(100,50) cancel": ("tasks_per_s_cpu", 15e6)}

# The baseline times the same FEATURE_CASES with its own flagcore: this file is loaded as a
# module in a child process whose path puts the older package first.
_BASELINE_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_energy_baseline", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
feats = mod.time_features(int(sys.argv[2]), int(sys.argv[3]))
print(json.dumps({f["name"]: f["requests_per_s_cpu"] for f in feats}))
"""


def time_features(requests: int, repeat: int) -> list:
    out = []
    for name, n, k, lam, opt in FEATURE_CASES:
        opt = dict(opt)
        levels = opt.pop("levels", [(1.0, 1.0, 1.0)])
        req = requests if n < 50 else max(requests // 20, 1000)
        if opt.pop("trace", False):  # a Poisson trace of the same rate, replayed
            times = np.cumsum(np.random.default_rng(0).exponential(1.0 / lam, req))
            opt.update(arrivals=Trace(times), requests=None)
            lam_arg = None
        else:
            opt["requests"] = req
            lam_arg = lam
        best = min(
            simulate(n, k, lam_arg, levels, warmup=0, seed=s, threads=1, **opt).cpu_seconds
            for s in range(repeat)
        )
        out.append(
            dict(
                name=name,
                n=n,
                k=k,
                requests=req,
                requests_per_s_cpu=req / best,
                tasks_per_s_cpu=req * n / best,
            )
        )
    return out


def time_baseline(path: str, requests: int, repeat: int) -> dict:
    """Requests/s (CPU time) of every FEATURE_CASES case with the flagcore package in `path`."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _BASELINE_CHILD,
            os.path.abspath(__file__),
            str(requests),
            str(repeat),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout)


def ciw_mm1(lam: float, mu: float, customers: int, seed: int) -> np.ndarray:
    import ciw

    ciw.seed(seed)
    net = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=lam)],
        service_distributions=[ciw.dists.Exponential(rate=mu)],
        number_of_servers=[1],
    )
    sim = ciw.Simulation(net)
    sim.simulate_until_max_customers(customers, method="Finish")
    recs = sorted(sim.get_all_records(), key=lambda r: r.arrival_date)
    return np.array([r.exit_date - r.arrival_date for r in recs])


CASES = [  # name, n, k, arrival rate (mu = 1)
    ("M/M/1", 1, 1, 0.7),
    ("(4,2) cancel", 4, 2, 1.5),
    ("(10,5) cancel", 10, 5, 1.5),
]


def simpy_forkjoin(n: int, k: int, lam: float, mu: float, requests: int, seed: int) -> np.ndarray:
    """The same model written the usual SimPy way: a process per task, a Resource per server,
    the k-th completion interrupts the request's other task processes."""
    import simpy

    env = simpy.Environment()
    servers = [simpy.Resource(env, capacity=1) for _ in range(n)]
    rng = random.Random(seed)
    out = []

    class Req:
        __slots__ = ("arrival", "done", "procs")

    def task(rq: Req, j: int):
        with servers[j].request() as slot:
            try:
                yield slot
                yield env.timeout(rng.expovariate(mu))
            except simpy.Interrupt:
                return  # cancelled, queued or running; leaving `with` frees the server
            rq.done += 1
            if rq.done == k:
                out.append(env.now - rq.arrival)
                me = env.active_process
                for p in rq.procs:
                    if p is not me and p.is_alive:
                        p.interrupt()

    def source():
        for _ in range(requests):
            yield env.timeout(rng.expovariate(lam))
            rq = Req()
            rq.arrival, rq.done = env.now, 0
            rq.procs = [env.process(task(rq, j)) for j in range(n)]

    env.process(source())
    env.run()
    return np.array(out)


def batch_ci(x: np.ndarray, batches: int = 20) -> float:
    m = len(x) // batches
    return half_width(x[: m * batches].reshape(batches, m).mean(axis=1))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--requests", type=int, default=1_000_000, help="flagcore: measured requests per run"
    )
    ap.add_argument(
        "--simpy-requests", type=int, default=50_000, help="SimPy: requests per run (it is slow)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per case (best is reported)")
    ap.add_argument("--threads", default="1,2", help="thread counts for the replication scaling")
    ap.add_argument("--replications", type=int, default=4)
    ap.add_argument(
        "--ciw-requests", type=int, default=20_000, help="Ciw: customers per run (M/M/1)"
    )
    ap.add_argument(
        "--baseline", metavar="DIR", help="directory with an older flagcore package to time beside"
    )
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "energy.json")
    )
    a = ap.parse_args()
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        ap.error(f"--out: directory {out_dir} does not exist or is not writable")

    rows, results = (
        [],
        {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "requests": a.requests,
            "simpy_requests": a.simpy_requests,
            "cases": [],
        },
    )
    lvl = [(1.0, 1.0, 1.0)]
    warm = a.requests // 10
    simulate(4, 2, 1.5, lvl, requests=100_000)  # warm-up (page faults, code)

    for name, n, k, lam in CASES:
        # correctness: flagcore against SimPy (and the exact M/M/1 mean)
        fc = simulate(n, k, lam, lvl, requests=a.requests, seed=1)
        sp_t = simpy_forkjoin(n, k, lam, 1.0, a.simpy_requests, seed=1)
        sp_t = sp_t[len(sp_t) // 10 :]
        sp_mean, sp_ci = float(sp_t.mean()), batch_ci(sp_t)
        agree = abs(fc.mean_response_time - sp_mean) < 1.5 * (fc.mean_response_time_ci + sp_ci)
        if n == 1:
            assert abs(fc.mean_response_time - 1 / (1 - lam)) < 4 * fc.mean_response_time_ci, (
                "M/M/1 mean is off"
            )
        assert agree, f"{name}: flagcore {fc.mean_response_time} vs SimPy {sp_mean} ± {sp_ci}"

        # speed: one thread, best of --repeat (requests simulated, warm-up included), by wall
        # time and by the thread's CPU time (the latter is what other processes on a shared
        # machine do not distort)
        best_w = best_c = math.inf
        for _ in range(a.repeat):
            r = simulate(n, k, lam, lvl, requests=a.requests, seed=2, threads=1)
            best_w, best_c = min(best_w, r.wall_seconds), min(best_c, r.cpu_seconds)
        fc_w, fc_c = (a.requests + warm) / best_w, (a.requests + warm) / best_c
        sp_bw = sp_bc = math.inf
        for _ in range(a.repeat):
            t0, c0 = time.perf_counter(), time.thread_time()
            simpy_forkjoin(n, k, lam, 1.0, a.simpy_requests, seed=3)
            sp_bw, sp_bc = min(sp_bw, time.perf_counter() - t0), min(sp_bc, time.thread_time() - c0)
        sp_w, sp_c = a.simpy_requests / sp_bw, a.simpy_requests / sp_bc
        case = dict(
            name=name,
            n=n,
            k=k,
            arrival_rate=lam,
            flagcore_mean=fc.mean_response_time,
            flagcore_ci=fc.mean_response_time_ci,
            simpy_mean=sp_mean,
            simpy_ci=sp_ci,
            flagcore_requests_per_s_wall=fc_w,
            flagcore_requests_per_s_cpu=fc_c,
            flagcore_events_per_s_cpu=r.events_per_second,
            simpy_requests_per_s_wall=sp_w,
            simpy_requests_per_s_cpu=sp_c,
            speedup_wall=fc_w / sp_w,
            speedup_cpu=fc_c / sp_c,
        )
        results["cases"].append(case)
        rows.append(
            [
                name,
                f"{fc.mean_response_time:.4f} ± {fc.mean_response_time_ci:.4f}",
                f"{sp_mean:.4f} ± {sp_ci:.4f}",
                f"{fc_w / 1e6:.2f} M / {fc_c / 1e6:.2f} M",
                f"{sp_w / 1e3:.1f} k / {sp_c / 1e3:.1f} k",
                f"{fc_w / sp_w:.0f}x / {fc_c / sp_c:.0f}x",
            ]
        )

    # replications on several threads: wall time of `replications` runs of the (4,2) case
    scale = []
    for t in [int(x) for x in a.threads.split(",")]:
        t0 = time.perf_counter()
        r = simulate(
            4, 2, 1.5, lvl, requests=a.requests, replications=a.replications, threads=t, seed=5
        )
        wall = time.perf_counter() - t0
        scale.append(
            dict(
                threads=t,
                wall_s=wall,
                requests_per_s=a.replications * (a.requests + warm) / wall,
                busy_cores=r.cpu_seconds / wall,
            )
        )
    results["replication_scaling"] = scale

    # Ciw, M/M/1 (it has no fork-join): correctness, then speed
    lam_c = 0.7
    ct = ciw_mm1(lam_c, 1.0, a.ciw_requests, seed=1)
    ct = ct[len(ct) // 10 :]
    c_mean, c_ci = float(ct.mean()), batch_ci(ct)
    assert abs(c_mean - 1 / (1 - lam_c)) < 4 * c_ci + 0.05 / (1 - lam_c), (
        f"Ciw M/M/1 mean {c_mean} is off"
    )
    c_best = c_cpu = math.inf
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        ciw_mm1(lam_c, 1.0, a.ciw_requests, seed=2)
        c_best, c_cpu = min(c_best, time.perf_counter() - t0), min(c_cpu, time.thread_time() - c0)
    mm1 = next(c for c in results["cases"] if c["n"] == 1)
    results["ciw_mm1"] = dict(
        mean=c_mean,
        ci=c_ci,
        exact=1 / (1 - lam_c),
        customers=a.ciw_requests,
        requests_per_s_wall=a.ciw_requests / c_best,
        requests_per_s_cpu=a.ciw_requests / c_cpu,
        flagcore_speedup_cpu=mm1["flagcore_requests_per_s_cpu"] / (a.ciw_requests / c_cpu),
    )

    # the event loop with the model options on and off, and the older build
    feats = time_features(a.requests, a.repeat)
    results["features"] = feats
    base = time_baseline(a.baseline, a.requests, a.repeat) if a.baseline else {}
    results["baseline"] = dict(path=a.baseline, requests_per_s_cpu=base) if a.baseline else None

    try:
        load = os.getloadavg()
        results["load_average"] = load
    except OSError:
        load = None
    print(f"\nload average during the run: {load} (other processes slow the wall-time rates)")
    print(
        f"fork-join simulation speed ({os.cpu_count()} CPUs; flagcore {a.requests:,} requests/run, "
        f"SimPy {a.simpy_requests:,}; one thread)"
    )
    print("rates: by wall time / by the thread's CPU time (best of --repeat)")
    hdr = ["case", "flagcore E[T]", "SimPy E[T]", "flagcore req/s", "SimPy req/s", "speed-up"]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    print("  ".join(h.rjust(x) for h, x in zip(hdr, w)))
    for r in rows:
        print("  ".join(v.rjust(x) for v, x in zip(r, w)))
    print(f"\nreplications of (4,2) ({a.replications} x {a.requests:,} requests):")
    for s in scale:
        print(
            f"  threads={s['threads']}: {s['wall_s']:.2f} s, {s['requests_per_s'] / 1e6:.2f} M "
            "requests/s "
            f"(speed-up {scale[0]['wall_s'] / s['wall_s']:.2f}x; CPU time / wall = "
            f"{s['busy_cores']:.2f} cores busy)"
        )
    c = results["ciw_mm1"]
    print(
        f"\nCiw M/M/1 (lam 0.7, {a.ciw_requests:,} customers): E[T] {c['mean']:.3f} ± "
        f"{c['ci']:.3f} "
        f"(exact {c['exact']:.3f}); {c['requests_per_s_cpu'] / 1e3:.1f} k customers/s CPU; "
        "flagcore "
        f"{c['flagcore_speedup_cpu']:.0f}x faster"
    )
    results["goals"] = {
        name: dict(
            measure=measure,
            minimum=minimum,
            value=next(f[measure] for f in feats if f["name"] == name),
            met=next(f[measure] for f in feats if f["name"] == name) >= minimum,
        )
        for name, (measure, minimum) in GOALS.items()
    }
    print("\nevent loop, one thread, by CPU time (best of --repeat):")
    print(f"  {'case':<20} {'requests/s':>12} {'tasks/s':>12} {'baseline req/s':>15} {'ratio':>6}")
    for f_ in feats:
        b = base.get(f_["name"])
        ratio = f"{f_['requests_per_s_cpu'] / b:.2f}" if b else ""
        bs = f"{b / 1e6:.2f} M" if b else ""
        print(
            f"  {f_['name']:<20} {f_['requests_per_s_cpu'] / 1e6:>10.2f} M "
            f"{f_['tasks_per_s_cpu'] / 1e6:>10.2f} M "
            f"{bs:>15} {ratio:>6}"
        )
    for name, g in results["goals"].items():
        print(
            f"  goal {name}: {g['measure']} >= {g['minimum'] / 1e6:.0f} M: "
            f"{g['value'] / 1e6:.2f} M, {'met' if g['met'] else 'MISSED'}"
        )
    with open(a.out, "w") as f:
        strict_dump(results, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
