"""Helpers shared by the benchmark scripts (run as `python bench/<script>.py`)."""

from __future__ import annotations

import os
import subprocess


def svd_flag_torch(
    x, r: int, lam: float = 0.0, max_iter: int = 1, eps: float = 1e-7, tol: float = 1e-10
):
    """The authors' method: per iteration, the n x m matrix of weighted columns (m = p, or
    p + p(p-1) with lam > 0) and its SVD; then agg = (1/r) sum_i Y Y^T x_i."""
    import torch

    xh = torch.nn.functional.normalize(x, dim=1)  # (p, n)
    p = xh.shape[0]
    mu2 = (lam / (p * (p - 1))) ** 2 if lam > 0 and p > 1 else 0.0
    ii, jj = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    off = ii != jj
    ii, jj = ii[off], jj[off]
    ii, jj = ii.to(x.device), jj.to(x.device)
    w = torch.ones(p, dtype=xh.dtype, device=x.device)
    v = torch.full((len(ii),), mu2, dtype=xh.dtype, device=x.device)

    def solve(w, v):
        cols = [xh * w.sqrt()[:, None]]
        if mu2 > 0:
            cols.append((xh[ii] - xh[jj]) * v.sqrt()[:, None])
        a = torch.cat(cols).T  # (n, m)
        return torch.linalg.svd(a, full_matrices=False)[0][:, :r]

    def objective(y):
        proj = xh @ y
        f = torch.sqrt(torch.clamp(1 - (proj**2).sum(1), min=0)).sum()
        if mu2 > 0:
            f = f + mu2 * torch.sqrt(torch.abs(1 - ((proj[ii] - proj[jj]) ** 2).sum(1))).sum()
        return float(f)

    f_prev = p + mu2 * p * (p - 1)
    y = None
    for it in range(1, max_iter + 1):
        yn = solve(w, v)
        fn = objective(yn)
        if it > 1 and not fn < f_prev:
            break
        y = yn
        if not (f_prev - fn > tol) or not fn > tol:
            break
        f_prev = fn
        proj = xh @ y
        w = 1 / torch.sqrt(torch.abs(1 - (proj**2).sum(1)) + eps)
        if mu2 > 0:
            v = mu2 / torch.sqrt(torch.abs(1 - ((proj[ii] - proj[jj]) ** 2).sum(1)) + eps)
    return y @ (xh @ y).sum(0) / r


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        return "unknown"


def check_out_dir(ap, out: str) -> None:
    """Stops the run (argparse error) before any work when --out's directory is missing or not
    writable, so that no measurement is lost at the end."""
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        ap.error(f"--out: directory {out_dir} does not exist or is not writable")


def parse_sizes(ap, text: str) -> list[tuple[int, int]]:
    """The (p, n) pairs of a --sizes value "p:n,p:n,..." (n may be written 1e6); an argparse
    error naming the bad item when one is not a pair of positive numbers."""
    sizes = []
    for item in text.split(","):
        try:
            p, n = item.split(":")
            sizes.append((int(p), int(float(n))))
        except ValueError:
            ap.error(f"--sizes: expected p:n pairs, got {item!r}")
        if sizes[-1][0] < 1 or sizes[-1][1] < 1:
            ap.error(f"--sizes: p and n must be >= 1, got {item!r}")
    return sizes


def best_time(fn, repeat: int, warmup: bool = True) -> float:
    """Seconds: the fastest of `repeat` calls, after one warm-up call when `warmup`."""
    import time

    if warmup:
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def run_meta(script: str, argv, threads: int) -> dict:
    """What a results file records about its run: date, commit, command, machine, versions and
    flagcore.build_info()."""
    import datetime
    import platform
    import sys

    import numpy as np
    import torch

    import flagcore

    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(),
        command=f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        threads=threads,
        torch=torch.__version__,
        numpy=np.__version__,
        build=flagcore.build_info(),
    )


def write_results(path: str, script: str, argv, threads: int, records: list) -> None:
    """Writes {"meta": run_meta(...), "results": records} as JSON to path and says so."""
    import json

    with open(path, "w") as f:
        json.dump(
            dict(meta=run_meta(script, argv, threads), results=records), f, indent=1, default=str
        )
    print(f"wrote {path}")
