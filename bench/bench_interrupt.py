"""How fast Ctrl-C stops flagcore's long native calls (issue 11: within 1 s of SIGINT, raising
KeyboardInterrupt in the caller, no thread left busy).

    python bench/bench_interrupt.py
    python bench/bench_interrupt.py --cases eigh:4096 --signals 20

Each case runs in a child process: once to completion (its call time T), then --signals times
with SIGINT sent at (k + 0.5) / signals * T after the call starts, k = 0 .. signals - 1, so the
signals fall evenly over the whole call, including the stretches inside single LAPACK calls
(the two halves of the tridiagonal divide and conquer). The latency is the time from sending the
signal to the child's report that KeyboardInterrupt reached Python; the child then sleeps 0.5 s
and reports the CPU time all its threads used meanwhile (about 0 when no thread is left busy).
Cases (NAME:P): eigh (flagcore's eigensolver of a p x p symmetric matrix, top p/2 pairs: the IRLS
solve), gram (the float32 Gram of p rows of 5e7 / p columns), fa (flag_aggregate, 5 IRLS steps,
same data). Writes JSON (default bench/results/interrupt.json) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

from _common import check_out_dir, write_results
from flagcore._table import print_table

CHILD = r"""
import sys, time
import numpy as np
import flagcore
from flagcore._backend import core
name, p = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
if name == "eigh":
    g = rng.standard_normal((p, p))
    g = g + g.T
    call = lambda: core.eigh_top(g, p // 2)
else:
    x = rng.standard_normal((p, max(1, 50_000_000 // p)), dtype=np.float32)
    if name == "gram":
        call = lambda: core.gram(x[None])
    else:
        call = lambda: flagcore.flag_aggregate(x, max_iter=5)
print("started", flush=True)
t0 = time.monotonic()
try:
    call()
    print("finished", time.monotonic() - t0, flush=True)
except KeyboardInterrupt:
    print("interrupted", time.monotonic() - t0, flush=True)
    c0 = time.process_time()
    time.sleep(0.5)
    print("idle_cpu", time.process_time() - c0, flush=True)
"""

DEFAULT = "eigh:4096,gram:1024,gram:4096,fa:1024"


def run_child(name: str, p: int, threads: int, delay: float | None) -> dict:
    """One child process; SIGINT `delay` seconds after the call starts (None: let it finish)."""
    env = dict(os.environ, FLAGCORE_NUM_THREADS=str(threads))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, name, str(p)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        if line != "started":
            raise RuntimeError(f"child {name}:{p} did not start: {line!r} {proc.stderr.read()}")
        sent = None
        if delay is not None:
            time.sleep(delay)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
        kind, value = proc.stdout.readline().split()
        got = time.monotonic()
        rest = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = {"outcome": kind, "call_s": float(value)}
    if sent is not None and kind == "interrupted":
        out["latency_s"] = got - sent
    for ln in rest.splitlines():
        if ln.startswith("idle_cpu"):
            out["idle_cpu_s"] = float(ln.split()[1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", default=DEFAULT, help="comma-separated NAME:P (default %(default)s)")
    ap.add_argument(
        "--signals", type=int, default=12, help="SIGINTs per case, spread over the call"
    )
    ap.add_argument("--threads", type=int, default=2, help="FLAGCORE_NUM_THREADS of the child")
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "interrupt.json")
    )
    args = ap.parse_args(argv)
    check_out_dir(ap, args.out)
    if args.signals < 1 or args.threads < 1:
        ap.error(f"--signals and --threads must be >= 1, got {args.signals} and {args.threads}")
    cases = []
    for item in args.cases.split(","):
        name, _, p = item.partition(":")
        if name not in ("eigh", "gram", "fa") or not p.isdigit() or int(p) < 2:
            ap.error(f"--cases: expected NAME:P (NAME eigh, gram or fa; P >= 2), got {item!r}")
        cases.append((name, int(p)))

    records, rows = [], []
    for name, p in cases:
        full = run_child(name, p, args.threads, None)
        if full["outcome"] != "finished":
            raise RuntimeError(f"{name}:{p} did not finish: {full}")
        t = full["call_s"]
        shots = []
        for k in range(args.signals):
            delay = (k + 0.5) / args.signals * t
            r = run_child(name, p, args.threads, delay)
            r["delay_s"] = delay
            shots.append(r)
            print(f"{name}:{p} SIGINT at {delay:.2f} s of {t:.2f}: {r}", flush=True)
        lat = [s["latency_s"] for s in shots if "latency_s" in s]
        missed = sum(1 for s in shots if s["outcome"] != "interrupted")
        idle = max((s.get("idle_cpu_s", 0.0) for s in shots), default=0.0)
        worst = max(lat) if lat else float("nan")
        rec = dict(
            case=name,
            p=p,
            threads=args.threads,
            call_s=t,
            shots=shots,
            worst_latency_s=worst,
            median_latency_s=statistics.median(lat) if lat else float("nan"),
            not_interrupted=missed,
            max_idle_cpu_s=idle,
            goal_met=bool(lat) and worst <= 1.0 and idle < 0.1,
        )
        records.append(rec)
        rows.append(
            [
                name,
                str(p),
                f"{t:.2f}",
                str(len(lat)),
                str(missed),
                f"{rec['median_latency_s'] * 1e3:.0f}",
                f"{worst * 1e3:.0f}",
                f"{idle:.3f}",
                "met" if rec["goal_met"] else "MISSED",
            ]
        )
    print_table(
        f"Ctrl-C latency ({args.threads} threads; ms unless said)",
        [
            "case",
            "p",
            "call s",
            "interrupted",
            "finished first",
            "median",
            "worst",
            "idle CPU s",
            "<= 1 s",
        ],
        rows,
    )
    write_results(args.out, "bench_interrupt.py", argv, args.threads, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
