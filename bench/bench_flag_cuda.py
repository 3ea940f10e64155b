"""Flag Aggregator on a CUDA GPU: flagcore's kernels vs X.mean(0), vs the SVD-per-iteration
method (torch.linalg.svd of the n x p matrix per iteration, as the authors' code does), vs the
device copy bandwidth; plus ~160 per-layer tensors of ResNet-50 size in one batched call vs the
same data flattened. One script for the whole measurement (it fits a 30-minute GPU lease).

    python bench/bench_flag_cuda.py                  # everything (about 3-6 minutes on an H100)
    python bench/bench_flag_cuda.py --quick          # headline sizes only
    python bench/bench_flag_cuda.py --sizes 15:25600000 --dtypes float32 --repeat 50

Before timing, every configuration is checked against flagcore's CPU path on the same (rounded)
data (on the first 1e6 columns; the whole tensor for the headline size). Times are medians of
CUDA-event timings after warm-up, rotating among input copies when one copy would fit in L2.
The floor is bytes moved / measured copy bandwidth, bytes = two reads of X plus one write of
the aggregate for FA, one read plus one write for the mean. Writes
bench/results/flag_cuda_<gpu>.json.
Exits 0 with a message when there is no GPU (or flagcore was built without CUDA).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time

import numpy as np

import flagcore
from _common import git_commit, svd_flag_torch

TOL = {"float32": 1e-4, "float16": 3e-3, "bfloat16": 2e-2}
GOALS = dict(fa_over_mean=2.5, frac_copy_bw=0.70, svd_speedup=100.0, layers_over_flat=1.5)


def time_cuda(torch, fns, repeat: int, warmup: int = 3) -> float:
    """Median milliseconds of fns[i % len(fns)]() over `repeat` runs, each bracketed by CUDA
    events."""
    for i in range(warmup):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    ts = []
    for i in range(repeat):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fns[i % len(fns)]()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def copy_bandwidth(torch, repeat: int) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    n = 1 << 29  # 2 GiB of float32
    src = torch.empty(n, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = time_cuda(torch, [lambda: dst.copy_(src)], repeat)
    return 2 * n * 4 / (ms * 1e-3)


def make_input(torch, p: int, n: int, dtype, seed: int):
    """Honest workers share a direction plus noise; p // 5 byzantine ones send U[0, 1) (the FA
    paper's attack). Generated on the GPU in float32 chunks, then cast."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.empty((p, n), dtype=dtype, device="cuda")
    byz = max(1, p // 5)
    step = max(1, (1 << 27) // p)
    for k0 in range(0, n, step):
        k1 = min(n, k0 + step)
        true = torch.randn(k1 - k0, generator=g, device="cuda")
        honest = true + torch.randn((p - byz, k1 - k0), generator=g, device="cuda")
        scale = torch.linspace(0.5, 2.0, p - byz, device="cuda")[:, None]
        x[: p - byz, k0:k1] = (honest * scale).to(dtype)
        x[p - byz :, k0:k1] = torch.rand((byz, k1 - k0), generator=g, device="cuda").to(dtype)
    return x


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check(torch, x, r: int, max_iter: int, full: bool) -> float:
    """GPU FA vs the CPU path on the same rounded values (first 1e6 columns unless full)."""
    xs = x if full else x[:, : min(x.shape[1], 1_000_000)]
    got = flagcore.flag_aggregate(xs, r=r, max_iter=max_iter, tol=0.0)
    exp = flagcore.flag_aggregate(xs.float().cpu().numpy(), r=r, max_iter=max_iter, tol=0.0)
    return rel_err(got.double().cpu().numpy(), exp)


def resnet50_sizes() -> list:
    try:
        import torchvision

        return [int(p.numel()) for p in torchvision.models.resnet50().parameters()]
    except Exception:
        rng = np.random.default_rng(0)
        s = np.exp(rng.uniform(np.log(64), np.log(2.4e6), 161))
        s = np.maximum(1, np.round(s * 25_557_032 / s.sum())).astype(int)
        return s.tolist()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        default="15:25600000,7:25600000,30:25600000,60:25600000,128:25600000,"
        "15:1000000,15:10000000,15:100000000",
        help="comma list of p:n",
    )
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--svd-max-n", type=float, default=3e7, help="run the SVD method up to this n")
    ap.add_argument("--svd-max-p", type=int, default=60)
    ap.add_argument(
        "--max-input-gb", type=float, default=20.0, help="skip configurations whose input is larger"
    )
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer batched case")
    ap.add_argument(
        "--quick", action="store_true", help="p = 15, n = 25.6M and the layers case only"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_flag_cuda: torch is not installed; nothing to measure")
        return 0
    if not flagcore.cuda_available() or not torch.cuda.is_available():
        why = (
            "flagcore was built without CUDA"
            if not flagcore.build_info()["cuda_compiled"]
            else "no CUDA device is visible"
        )
        print(f"bench_flag_cuda: {why}; nothing to measure (run this on a GPU machine)")
        return 0

    props = torch.cuda.get_device_properties(0)
    gpu = props.name
    tag = re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_").lower()
    out_path = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"flag_cuda_{tag}.json"
    )
    sizes = [tuple(int(float(v)) for v in s.split(":")) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [(15, 25_600_000)]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    t_start = time.time()
    bw = copy_bandwidth(torch, max(5, args.repeat // 2))
    print(
        f"GPU {gpu}, {props.multi_processor_count} SMs; device copy bandwidth {bw / 1e12:.2f} TB/s "
        "(read + write)",
        flush=True,
    )

    records, rows = [], []
    for dname in dtypes:
        dt = getattr(torch, dname)
        es = torch.empty((), dtype=dt).element_size()
        for p, n in sizes:
            gb = p * n * es / 1e9
            if gb > args.max_input_gb:
                print(
                    f"skip p={p} n={n:.0e} {dname}: {gb:.1f} GB input > --max-input-gb", flush=True
                )
                continue
            r = (p + 1) // 2
            x = make_input(torch, p, n, dt, seed=p * 7 + n % 1000)
            headline = (p, n) == (15, 25_600_000)
            err = check(torch, x, r, 5, full=headline and dname == "float32")
            if not err < TOL[dname]:
                print(
                    f"CORRECTNESS FAILURE p={p} n={n} {dname}: rel err {err:.2e} vs the CPU path",
                    file=sys.stderr,
                )
                return 1
            nbuf = max(
                1, min(4, math.ceil(200e6 / (p * n * es)))
            )  # defeat L2 (50 MB) on small inputs
            xs = [x] + [x.clone() for _ in range(nbuf - 1)]
            reps = args.repeat if n <= 3e7 else max(5, args.repeat // 4)
            t_mean = time_cuda(torch, [lambda xx=xx: xx.mean(0) for xx in xs], reps)
            t_fa = {}
            iters = {}
            for it in (1, 5):
                t_fa[it] = time_cuda(
                    torch,
                    [
                        lambda xx=xx, it=it, r=r: flagcore.flag_aggregate(
                            xx, r=r, max_iter=it, tol=0.0
                        )
                        for xx in xs
                    ],
                    reps,
                )
                iters[it] = int(
                    flagcore.flag_aggregate(x, r=r, max_iter=it, tol=0.0, return_info=True)[
                        1
                    ].iterations
                )
            t_svd = {1: None, 5: None}
            if n <= args.svd_max_n and p <= args.svd_max_p:
                for it in (1, 5):
                    try:
                        t_svd[it] = time_cuda(
                            torch,
                            [lambda it=it, x=x, r=r: svd_flag_torch(x.float(), r, 0.0, it)],
                            2,
                            warmup=1,
                        )
                    except RuntimeError as exc:  # cuSOLVER refuses some tall shapes
                        print(f"  SVD baseline p={p} n={n:.0e} failed: {exc}"[:300], flush=True)
                        break
            bytes_fa = 2 * p * n * es + n * es
            bytes_mean = p * n * es + n * es
            floor_fa, floor_mean = bytes_fa / bw * 1e3, bytes_mean / bw * 1e3
            for it in (1, 5):
                rec = dict(
                    dtype=dname,
                    p=p,
                    n=n,
                    r=r,
                    max_iter=it,
                    iterations_done=iters[it],
                    mean_ms=t_mean,
                    fa_ms=t_fa[it],
                    svd_ms=t_svd[it],
                    floor_fa_ms=floor_fa,
                    floor_mean_ms=floor_mean,
                    fa_over_mean=t_fa[it] / t_mean,
                    fa_bw_frac=(bytes_fa / (t_fa[it] * 1e-3)) / bw,
                    svd_over_fa=(t_svd[it] / t_fa[it]) if t_svd[it] else None,
                    rel_err_vs_cpu=err,
                    input_copies=nbuf,
                )
                records.append(rec)
                rows.append(
                    [
                        dname,
                        p,
                        f"{n:.3g}",
                        it,
                        f"{t_mean:.3f}",
                        f"{floor_mean:.3f}",
                        f"{t_fa[it]:.3f}",
                        f"{floor_fa:.3f}",
                        f"{rec['fa_over_mean']:.2f}",
                        f"{rec['fa_bw_frac'] * 100:.0f}%",
                        "-" if t_svd[it] is None else f"{t_svd[it]:.1f}",
                        "-" if t_svd[it] is None else f"{rec['svd_over_fa']:.0f}x",
                        f"{err:.1e}",
                    ]
                )
            print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)
            del xs, x
            torch.cuda.empty_cache()

    layer_recs = []
    if not args.no_layers:
        ls = resnet50_sizes()
        total = sum(ls)
        for dname in dtypes:
            dt = getattr(torch, dname)
            es = torch.empty((), dtype=dt).element_size()
            p, r = 15, 8
            x = make_input(torch, p, total, dt, seed=99)
            layers = list(torch.split(x, ls, dim=1))
            outs = flagcore.flag_aggregate_layers(layers, r=r, max_iter=5, tol=0.0)
            worst = 0.0
            for q in list(range(0, len(layers), max(1, len(layers) // 12))):
                exp = flagcore.flag_aggregate(
                    layers[q].float().cpu().numpy(), r=r, max_iter=5, tol=0.0
                )
                worst = max(worst, rel_err(outs[q].double().cpu().numpy(), exp))
            if not worst < TOL[dname]:
                print(
                    f"CORRECTNESS FAILURE layers {dname}: rel err {worst:.2e} vs the CPU path",
                    file=sys.stderr,
                )
                return 1
            for it in (1, 5):
                t_flat = time_cuda(
                    torch,
                    [lambda x=x, r=r, it=it: flagcore.flag_aggregate(x, r=r, max_iter=it, tol=0.0)],
                    args.repeat,
                )
                t_layers = time_cuda(
                    torch,
                    [
                        lambda layers=layers, r=r, it=it: flagcore.flag_aggregate_layers(
                            layers, r=r, max_iter=it, tol=0.0
                        )
                    ],
                    args.repeat,
                )
                t_loop = time_cuda(
                    torch,
                    [
                        lambda layers=layers, r=r, it=it: [
                            flagcore.flag_aggregate(v, r=r, max_iter=it, tol=0.0) for v in layers
                        ]
                    ],
                    max(3, args.repeat // 4),
                )
                floor = (2 * p * total * es + total * es) / bw * 1e3
                rec = dict(
                    dtype=dname,
                    layers=len(ls),
                    n=total,
                    p=p,
                    r=r,
                    max_iter=it,
                    flat_ms=t_flat,
                    layers_ms=t_layers,
                    python_loop_ms=t_loop,
                    floor_ms=floor,
                    layers_over_flat=t_layers / t_flat,
                    rel_err_vs_cpu=worst,
                )
                layer_recs.append(rec)
                print(
                    f"  layers {dname} it={it}: flat {t_flat:.3f} ms, batched {t_layers:.3f} ms "
                    f"({rec['layers_over_flat']:.2f}x), python loop {t_loop:.1f} ms, floor "
                    f"{floor:.3f} ms",
                    flush=True,
                )
            del x, layers, outs
            torch.cuda.empty_cache()

    from flagcore._table import print_table

    print_table(
        f"Flag Aggregator on {gpu} (median ms; floor = bytes / {bw / 1e12:.2f} TB/s copy "
        "bandwidth)",
        [
            "dtype",
            "p",
            "n",
            "iters",
            "mean",
            "mean floor",
            "FA",
            "FA floor",
            "FA/mean",
            "FA % copy bw",
            "SVD method",
            "SVD/FA",
            "err vs CPU",
        ],
        rows,
    )
    head = [rec for rec in records if rec["p"] == 15 and rec["n"] == 25_600_000]
    goals = dict(
        fa_le_2_5x_mean=all(rec["fa_over_mean"] <= GOALS["fa_over_mean"] for rec in head)
        if head
        else None,
        fa_ge_70pct_copy_bw=all(rec["fa_bw_frac"] >= GOALS["frac_copy_bw"] for rec in head)
        if head
        else None,
        svd_ge_100x=all(
            rec["svd_over_fa"] >= GOALS["svd_speedup"] for rec in head if rec["svd_over_fa"]
        )
        if head
        else None,
        layers_le_1_5x_flat=all(
            rec["layers_over_flat"] <= GOALS["layers_over_flat"] for rec in layer_recs
        )
        if layer_recs
        else None,
    )
    print(
        "goals at p = 15, n = 25.6M (all dtypes, 1 and 5 iterations):",
        ", ".join(
            f"{k}: {'met' if v else ('MISSED' if v is not None else 'not measured')}"
            for k, v in goals.items()
        ),
    )
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(),
        gpu=gpu,
        sms=props.multi_processor_count,
        copy_bandwidth_Bps=bw,
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        host=platform.node(),
        build=flagcore.build_info(),
        wall_s=time.time() - t_start,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as fh:
        json.dump(dict(meta=meta, goals=goals, results=records, layers=layer_recs), fh, indent=2)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
