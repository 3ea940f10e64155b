"""Peak memory of every attack at large n, against the size of its input (the baseline) and
against flagcore's estimate (flagcore.attacks._attack_need, the MemoryError check before an
attack runs), each case in a fresh process (VmHWM growth over the call, after a small warm-up
call; Linux only):

    python bench/bench_attack_memory.py
    python bench/bench_attack_memory.py --cases 12:12:4000000:float32 --attacks fa_aware,min_max

A case is h:f:n:dtype (honest rows, attackers, coordinates, input dtype); the adaptive attacks
that need a rule target "mean" (optimal_alie, optimal_ipm); the others run as the harness calls
them without one (min_max and min_sum agnostic, fa_aware against FA). "peak/input": the peak
over the input's bytes; "peak/est": over the estimate (at most 1: the check never lets through
what it should refuse). Writes JSON (default bench/results/attack_memory.json) and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import check_out_dir, write_results
from flagcore._table import print_table
from flagcore.attacks import ALL_ATTACKS

DEFAULT_CASES = "32:4:2000000:float32,12:12:4000000:float32,12:3:4000000:float64"

PROG = """
import json, numpy as np, flagcore
from flagcore import attacks
flagcore.set_num_threads(2)
def status(key):
    with open("/proc/self/status") as fh:
        return int(fh.read().split(key)[1].split()[0]) * 1024
name, h, f, n, dtype = {name!r}, {h}, {f}, {n}, {dtype!r}
rule = "mean" if name in ("optimal_alie", "optimal_ipm") else None
x = np.random.default_rng(0).standard_normal((h, n)).astype(dtype)
attacks.attack(name, x[:, :100].copy(), f, rule=rule)  # imports and first-call set-up
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM back to the resident size
base = status("VmRSS:")
attacks.attack(name, x, f, rule=rule)
peak = status("VmHWM:") - base
est = None
if hasattr(attacks, "_attack_need"):
    est = attacks._attack_need(name, attacks._honest_rows(x, "b")[0], f, rule is not None)
print(json.dumps(dict(input=x.nbytes, peak=peak, estimate=est)))
"""


def parse_cases(ap: argparse.ArgumentParser, text: str) -> list[tuple[int, int, int, str]]:
    cases = []
    for item in text.split(","):
        try:
            h, f, n, dtype = item.split(":")
            case = (int(h), int(f), int(float(n)), dtype)
        except ValueError:
            ap.error(f"--cases: expected h:f:n:dtype items, got {item!r}")
        if case[0] < 2 or case[1] < 1 or case[2] < 1 or dtype not in ("float32", "float64"):
            ap.error(f"--cases: need h >= 2, f >= 1, n >= 1, float32/float64; got {item!r}")
        cases.append(case)
    return cases


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", default=DEFAULT_CASES, help="h:f:n:dtype items, comma-separated")
    ap.add_argument("--attacks", default=",".join(ALL_ATTACKS))
    ap.add_argument("--out", default="bench/results/attack_memory.json")
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        ap.error("reads VmHWM from /proc/self/status: Linux only")
    names = args.attacks.split(",")
    bad = [a for a in names if a not in ALL_ATTACKS]
    if bad:
        ap.error(f"--attacks: unknown attack {bad[0]!r}")
    cases = parse_cases(ap, args.cases)
    check_out_dir(ap, args.out)
    records, rows = [], []
    for h, f, n, dtype in cases:
        for name in names:
            code = PROG.format(name=name, h=h, f=f, n=n, dtype=dtype)
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(attack=name, h=h, f=f, n=n, dtype=dtype)
            records.append(r)
            est = r["estimate"]
            rows.append(
                [
                    name,
                    f"{h}:{f}:{n:.0e}:{dtype}",
                    f"{r['input'] / 2**20:.0f}",
                    f"{r['peak'] / 2**20:.0f}",
                    f"{r['peak'] / r['input']:.2f}",
                    "-" if est is None else f"{est / 2**20:.0f}",
                    "-" if est is None else f"{r['peak'] / est:.2f}",
                ]
            )
            print(f"{name} {h}:{f}:{n}:{dtype} done", flush=True)
    write_results(args.out, "bench_attack_memory.py", argv, 2, records)
    print_table(
        "attack peak memory (MiB, VmHWM growth in a fresh process)",
        ["attack", "h:f:n:dtype", "input", "peak", "peak/input", "estimate", "peak/est"],
        rows,
    )


if __name__ == "__main__":
    main()
