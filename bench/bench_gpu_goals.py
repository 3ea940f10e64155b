"""The GPU issue's four goals, measured in one short run (part of bench/gpu_check.sh):

1. FA, 1 step, p = 15, n = 1e8 float32: time / torch.mean(X, 0) (goal <= 2.2x) and the fraction
   of the device copy bandwidth that its two reads of X reach (goal >= 85 %).
2. Per-layer FA of a ResNet-50-sized model (~160 layers, 25.6M parameters, p = 15) in one
   flag_aggregate_layers call vs the per-layer torch.mean loop (goal <= 2.5x).
3. Coordinate-wise median (flagcore.aggregate(x, "median")) vs torch.median(x, dim=0)
   (goal >= 10x faster), p = 15, n = 2.5e7.
4. The IRLS alone at p = 1024 (b = 1): time, to show it is not a one-block bottleneck.

Every case is checked against flagcore's CPU path on the same values before it is timed. Times are
medians of CUDA-event timings after warm-up. Writes JSON (--out). Exits 0 with a message when no GPU
is visible or flagcore was built without CUDA.

    python bench/bench_gpu_goals.py --out bench/results/gpu_goals.json [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np

import flagcore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import git_commit
from bench_flag_cuda import copy_bandwidth, make_input, rel_err, resnet50_sizes, time_cuda

GOALS = dict(fa_over_mean=2.2, fa_bw_frac=0.85, layers_over_mean_loop=2.5, median_speedup=10.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="n = 2.5e7 for goal 1 (a rehearsal size)")
    ap.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = ap.parse_args(argv)
    if args.out:
        d = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(d) or not os.access(d, os.W_OK):
            print(
                f"bench_gpu_goals: --out folder {d!r} does not exist or is not writable",
                file=sys.stderr,
            )
            return 2
    try:
        import torch
    except ImportError:
        print("bench_gpu_goals: torch is not installed; nothing to measure")
        return 0
    if not flagcore.cuda_available() or not torch.cuda.is_available():
        why = (
            "flagcore was built without CUDA"
            if not flagcore.build_info()["cuda_compiled"]
            else "no CUDA device is visible"
        )
        print(f"bench_gpu_goals: {why}; nothing to measure (run this on a GPU machine)")
        return 0

    props = torch.cuda.get_device_properties(0)
    res: dict = dict(
        schema="flagcore.gpu_goals/1",
        device=props.name,
        sms=props.multi_processor_count,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        goals=GOALS,
    )
    bw = copy_bandwidth(torch, 5)
    res["copy_bandwidth_Bps"] = bw
    print(f"{props.name}: device copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)

    # 1. FA p = 15, n = 1e8 vs mean
    p, n = 15, (25_000_000 if args.quick else 100_000_000)
    x = make_input(torch, p, n, torch.float32, seed=1)
    err = rel_err(
        flagcore.flag_aggregate(x[:, :1_000_000], r=8, max_iter=1).double().cpu().numpy(),
        flagcore.flag_aggregate(x[:, :1_000_000].cpu().numpy(), r=8, max_iter=1),
    )
    if not err < 1e-4:
        print(f"CORRECTNESS FAILURE (FA vs CPU): {err:.2e}", file=sys.stderr)
        return 1
    t_mean = time_cuda(torch, [lambda: x.mean(0)], args.repeat)
    t_fa = time_cuda(torch, [lambda: flagcore.flag_aggregate(x, r=8, max_iter=1)], args.repeat)
    frac = (2 * p * n * 4 + n * 4) / (t_fa * 1e-3) / bw
    res["fa"] = dict(
        p=p,
        n=n,
        mean_ms=t_mean,
        fa_ms=t_fa,
        fa_over_mean=t_fa / t_mean,
        fa_bw_frac=frac,
        rel_err=err,
    )
    print(
        f"1. FA p={p} n={n:.0e}: {t_fa:.3f} ms, mean {t_mean:.3f} ms, ratio {t_fa / t_mean:.2f} "
        f"(goal <= {GOALS['fa_over_mean']}), {frac * 100:.0f} % of copy bandwidth (goal >= 85 %)",
        flush=True,
    )
    del x
    torch.cuda.empty_cache()

    # 2. per-layer FA vs the per-layer mean loop
    sizes = resnet50_sizes()
    g = torch.Generator(device="cuda").manual_seed(2)
    layers = [torch.randn((15, s), generator=g, device="cuda") for s in sizes]
    got = flagcore.flag_aggregate_layers(layers[:8], r=8)
    exp = flagcore.flag_aggregate_layers([t.cpu().numpy() for t in layers[:8]], r=8)
    err2 = max(rel_err(a.double().cpu().numpy(), b) for a, b in zip(got, exp))
    if not err2 < 1e-4:
        print(f"CORRECTNESS FAILURE (layers vs CPU): {err2:.2e}", file=sys.stderr)
        return 1
    t_loop = time_cuda(torch, [lambda: [t.mean(0) for t in layers]], args.repeat)
    t_layers = time_cuda(torch, [lambda: flagcore.flag_aggregate_layers(layers, r=8)], args.repeat)
    res["layers"] = dict(
        layers=len(sizes),
        params=int(sum(sizes)),
        p=15,
        mean_loop_ms=t_loop,
        fa_layers_ms=t_layers,
        ratio=t_layers / t_loop,
        rel_err=err2,
    )
    print(
        f"2. per-layer FA ({len(sizes)} layers, {sum(sizes) / 1e6:.1f}M): {t_layers:.3f} ms "
        f"vs mean loop {t_loop:.3f} ms = {t_layers / t_loop:.2f}x "
        f"(goal <= {GOALS['layers_over_mean_loop']})",
        flush=True,
    )
    layers.clear()
    torch.cuda.empty_cache()

    # 3. median
    x = torch.randn((15, 25_000_000), generator=g, device="cuda")
    med = flagcore.aggregate(x[:, :200_000], "median").cpu().numpy()
    ref = np.median(x[:, :200_000].cpu().numpy().astype(np.float64), axis=0)
    err3 = float(np.max(np.abs(med - ref)))
    if not err3 < 1e-6:
        print(f"CORRECTNESS FAILURE (median vs numpy): {err3:.2e}", file=sys.stderr)
        return 1
    t_tm = time_cuda(torch, [lambda: torch.median(x, dim=0)], args.repeat)
    t_fm = time_cuda(torch, [lambda: flagcore.aggregate(x, "median")], args.repeat)
    res["median"] = dict(
        p=15, n=25_000_000, torch_median_ms=t_tm, flagcore_ms=t_fm, speedup=t_tm / t_fm
    )
    print(
        f"3. median p=15 n=2.5e7: flagcore {t_fm:.3f} ms vs torch.median {t_tm:.3f} ms "
        f"= {t_tm / t_fm:.1f}x (goal >= {GOALS['median_speedup']}x)",
        flush=True,
    )
    del x
    torch.cuda.empty_cache()

    # 4. IRLS at p = 1024 (data small: n = 4096)
    x = torch.randn((1024, 4096), generator=g, device="cuda")
    t_big = time_cuda(torch, [lambda: flagcore.flag_aggregate(x, max_iter=1)], 3, warmup=1)
    t_gram = time_cuda(torch, [lambda: x @ x.T], 3, warmup=1)
    res["irls_p1024"] = dict(p=1024, n=4096, fa_ms=t_big, gram_mm_ms=t_gram)
    print(f"4. FA p=1024 n=4096 (IRLS-bound): {t_big:.1f} ms (x @ x.T {t_gram:.2f} ms)", flush=True)

    met = dict(
        fa_over_mean=res["fa"]["fa_over_mean"] <= GOALS["fa_over_mean"],
        fa_bw_frac=res["fa"]["fa_bw_frac"] >= GOALS["fa_bw_frac"],
        layers=res["layers"]["ratio"] <= GOALS["layers_over_mean_loop"],
        median=res["median"]["speedup"] >= GOALS["median_speedup"],
    )
    res["met"] = met
    print("goals met:", json.dumps(met), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1, allow_nan=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
