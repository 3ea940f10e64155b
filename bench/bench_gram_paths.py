"""Every float32 Gram path this CPU can run, per p, in one process on the same data and threads,
with torch ``X @ X.T`` as the baseline (the issue 11 goal is Gram <= 0.55x X @ X.T). This is
the measurement behind the thresholds of csrc/flag/gram_cpu.cpp (which kernel ``auto`` runs at
which p on which instruction set):

    python bench/bench_gram_paths.py
    python bench/bench_gram_paths.py --sizes 64:1000000,1024:50000 --repeat 9

The paths, forced one at a time (``_core.set_simd_level``, ``_core.set_gram_amx``):
"openblas" (the "generic" level: above p = 32 the OpenBLAS path, below the portable register
kernel), "avx2" (the AVX2 register kernel up to p = 36, the packed AVX2 kernel to 2048, OpenBLAS
above), "avx512" (the AVX-512 FMA kernels, tiles off), "amx" (the AMX tiles at every p > 32), and
"auto" (what flagcore picks). Only the ones the CPU supports are timed. The variants alternate
within each repetition (torch, a 0.3 s pause, since torch's threads spin for a while after a
call, then each path once, in an order that rotates from one repetition to the next: the
first one after the pause measured slower), so a drift of the machine weighs on all of them
alike; the table gives each one's fastest repetition, the JSON keeps them all (in the order
of the repetitions). Every path is first checked
against a float64 NumPy Gram of the first 20000 columns (max |error| over the Cauchy-Schwarz
bound). Writes JSON (default bench/results/gram_paths_<instruction set>.json) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import flagcore
from _common import check_out_dir, parse_sizes, write_results
from flagcore import _core
from flagcore._table import print_table

DEFAULT = (
    "33:1000000,36:1000000,40:1000000,48:1000000,64:1000000,96:600000,128:500000,192:300000,"
    "256:200000,384:120000,512:100000,768:60000,1024:50000,2048:20000,4096:10000"
)


def rel_err(g: np.ndarray, ref: np.ndarray) -> float:
    """max |g - ref| over the Cauchy-Schwarz bound sqrt(ref_ii ref_jj)."""
    d = np.sqrt(np.diag(ref))
    return float(np.max(np.abs(g - ref) / np.outer(d, d)))


def paths() -> list[tuple[str, str, str]]:
    """(name, simd level, AMX switch) of every path this CPU runs."""
    info = flagcore.build_info()
    simd = info["simd_supported"]
    out = [("openblas", "generic", "auto")]
    if simd in ("avx2", "avx512"):
        out.append(("avx2", "avx2", "auto"))
    if simd == "avx512":
        out.append(("avx512", "avx512", "off"))
        try:
            _core.set_gram_amx("on")
            out.append(("amx", "avx512", "on"))
        except ValueError:
            pass
        finally:
            _core.set_gram_amx("auto")
    out.append(("auto", "auto", "auto"))
    return out


def use(level: str, amx: str) -> None:
    _core.set_simd_level(level)
    _core.set_gram_amx(amx)


def main(argv=None) -> int:
    simd = flagcore.build_info()["simd_supported"]
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default=DEFAULT, help="comma-separated p:n (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions, fastest taken")
    ap.add_argument("--threads", type=int, default=0, help="threads (0: all cores)")
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "results", f"gram_paths_{simd}.json"),
    )
    args = ap.parse_args(argv)
    check_out_dir(ap, args.out)
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    sizes = parse_sizes(ap, args.sizes)
    import torch

    threads = args.threads or os.cpu_count() or 1
    flagcore.set_num_threads(threads)
    torch.set_num_threads(threads)
    variants = paths()
    names = [v[0] for v in variants]
    records, rows = [], []
    try:
        for p, n in sizes:
            x = np.random.default_rng(p).standard_normal((p, n), dtype=np.float32)
            xt = torch.from_numpy(x)
            head = np.ascontiguousarray(x[:, : min(n, 20000)])
            h64 = head.astype(np.float64)
            ref = h64 @ h64.T
            errs = {}
            for name, level, amx in variants:
                use(level, amx)
                errs[name] = rel_err(_core.gram(head[None])[0], ref)
                _core.gram(x[None])  # warm-up (buffers, pages)
            t: dict[str, list[float]] = {k: [] for k in ["torch_mm", *names]}
            xt @ xt.T
            for rep in range(args.repeat):
                t0 = time.perf_counter()
                xt @ xt.T
                t["torch_mm"].append(time.perf_counter() - t0)
                time.sleep(0.3)
                # the order rotates: the first path after torch ran slower here (AMD EPYC: the
                # same OpenBLAS code 1364-2155 ms first against 1065-1424 third at p = 4096)
                k = rep % len(variants)
                for name, level, amx in variants[k:] + variants[:k]:
                    use(level, amx)
                    t0 = time.perf_counter()
                    _core.gram(x[None])
                    t[name].append(time.perf_counter() - t0)
            use("auto", "auto")
            best = {k: min(v) for k, v in t.items()}
            records.append(dict(p=p, n=n, times_s=t, err=errs))
            mm = best["torch_mm"]
            rows.append(
                [p, n, mm * 1e3]
                + [best[k] * 1e3 for k in names]
                + [best[k] / mm for k in names]
                + [max(errs.values())]
            )
            print(f"p={p} done", flush=True)
    finally:
        use("auto", "auto")
    print_table(
        f"float32 Gram paths ({threads} threads, ms, fastest of {args.repeat} alternating)",
        ["p", "n", "X@X.T", *names, *[f"{k}/mm" for k in names], "max err"],
        rows,
    )
    write_results(args.out, "bench_gram_paths.py", argv, threads, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
