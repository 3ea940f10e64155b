"""Overhead of flagcore's robust DDP hook against plain DDP allreduce.

    python bench/bench_distributed.py --sizes 1e4,1e5,1e6 --world 4 --repeat 20

Launches --world CPU processes on this machine (gloo, localhost), each training the same MLP
with about n parameters on a fixed batch, and measures per step (forward + backward, which
includes DDP's communication):
  - plain DDP (allreduce, DDP's default hook);
  - flagcore's hook for each --rules, split into liveness check (c10d store), communication
    (all_gather) and aggregation (the rule on the (world, bucket) stack);
and, outside DDP, one allreduce against one all_gather of the whole n-element gradient.
With --device cuda (and a GPU) it also times the rules on the same bucket shapes on the GPU
(CUDA events), in this process, against the same rules on the CPU.

Before timing it checks that the hook with rule "mean" gives DDP's gradients (to float32
rounding) and that all replicas agree bitwise. Rank 0's numbers are reported; medians over
--repeat steps after --warmup steps. Timings taken while other jobs use the CPU are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_sizes(text: str) -> list:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="robust DDP hook vs plain DDP allreduce")
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1e4,1e5,1e6"),
                    help="model sizes (number of parameters), comma-separated")
    ap.add_argument("--world", type=int, default=4, help="processes")
    ap.add_argument("--rules", default="mean,median,flag")
    ap.add_argument("--repeat", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and flagcore threads per process")
    ap.add_argument("--bucket-cap-mb", type=float, default=None, help="DDP bucket size (default: DDP's)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="hook liveness timeout; every rule is also timed without the check (async gather)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: also time the rules on the bucket shapes on the GPU")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "distributed.json"))
    ap.add_argument("--_worker", nargs=2, metavar=("OUT_DIR", "CONFIG"), help=argparse.SUPPRESS)
    return ap


# -- one rank ---------------------------------------------------------------------------------

def make_model(n: int) -> object:
    import torch

    d = max(2, int((n / 2) ** 0.5))  # two d x d layers with biases: 2 (d^2 + d) ~ n
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.Tanh(), torch.nn.Linear(d, d)), d


def worker(out_dir: str, cfg: dict) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    import flagcore
    from flagcore.distributed import assert_replicas_identical, register_robust_hook, shutdown

    torch.set_num_threads(cfg["threads"])
    flagcore.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank = dist.get_rank()
    results = []
    kw = {} if cfg["bucket_cap_mb"] is None else {"bucket_cap_mb": cfg["bucket_cap_mb"]}

    def run(n: int, rule: str | None, timeout: float | None = None) -> dict:
        model, d = make_model(n)
        ddp = torch.nn.parallel.DistributedDataParallel(model, **kw)
        state = register_robust_hook(ddp, rule, timeout=timeout) if rule else None
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(32, d, generator=g)
        times = []
        for step in range(cfg["warmup"] + cfg["repeat"]):
            if step == cfg["warmup"] and state is not None:
                state.stats.reset()
            ddp.zero_grad(set_to_none=False)
            dist.barrier()  # steps start together: waiting for a slow rank is not counted
            t0 = time.perf_counter()
            ddp(x).square().mean().backward()
            times.append(time.perf_counter() - t0)
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        for p in model.parameters():  # make the replicas comparable: one SGD step
            p.data.add_(p.grad, alpha=-0.01)
        assert_replicas_identical(model)
        out = {"target": n, "n": sum(p.numel() for p in model.parameters()), "rule": rule or "ddp",
               "liveness": timeout is not None, "step_ms": 1e3 * statistics.median(times[cfg["warmup"]:]), "grads": grads}
        if state is not None:
            st, steps = state.stats, cfg["repeat"]
            out.update(buckets=len(state.bucket_calls), barrier_ms=1e3 * st.barrier_s / steps,
                       comm_ms=1e3 * st.comm_s / steps, aggregate_ms=1e3 * st.aggregate_s / steps)
            out["bucket_sizes"] = bucket_sizes(ddp)
        return out

    for n in cfg["sizes"]:
        base = run(n, None)
        for rule in cfg["rules"]:
            for timeout in (cfg["timeout"], None):
                r = run(n, rule, timeout)
                if rule == "mean":  # correctness before trusting the timings
                    err = float((r["grads"] - base["grads"]).abs().max())
                    scale = float(base["grads"].abs().max())
                    if err > 1e-5 * max(scale, 1e-30):
                        raise SystemExit(f"hook mean differs from DDP allreduce by {err} (scale {scale}) at n={n}")
                r.pop("grads")
                results.append(r)
        base.pop("grads")
        results.append(base)
        results.append(collectives(n, cfg))
    if rank == 0:
        Path(out_dir, "rank0.json").write_text(json.dumps(results))
    shutdown()


def bucket_sizes(ddp: object) -> list:
    """Element counts of DDP's buckets (from the reducer's logging data when available)."""
    try:
        data = ddp._get_ddp_logging_data()
        return [int(s) for s in str(data.get("bucket_sizes", "")).split(",") if s.strip()]
    except Exception:  # noqa: BLE001 - informational only
        return []


def collectives(n: int, cfg: dict) -> dict:
    """One allreduce vs one all_gather of an n-element float32 tensor (no DDP, no compute)."""
    import torch
    import torch.distributed as dist

    from flagcore.distributed._common import all_gather_flat

    world = dist.get_world_size()
    t = torch.randn(n)
    out = torch.empty(world * n)
    res = {"target": n, "n": n, "rule": "collectives"}
    for name, op in (("allreduce_ms", lambda: dist.all_reduce(t)),
                     ("all_gather_ms", lambda: all_gather_flat(dist, out, t, None))):
        times = []
        for i in range(cfg["warmup"] + cfg["repeat"]):
            dist.barrier()
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
        res[name] = 1e3 * statistics.median(times[cfg["warmup"]:])
    return res


# -- GPU aggregation of the same bucket shapes --------------------------------------------------

def gpu_aggregation(shapes: list, rules: list, repeat: int, warmup: int) -> list:
    import torch

    import flagcore

    if not flagcore.cuda_available():
        print("GPU aggregation: skipped (no CUDA device, or flagcore built without CUDA)")
        return []
    rows = []
    for p, n in shapes:
        g = torch.Generator().manual_seed(0)
        cpu = torch.randn(p, n, generator=g)
        gpu = cpu.cuda()
        for rule in rules:
            params = {"scale": "median_norm"} if rule == "flag" else {}
            want = flagcore.aggregate(cpu, rule, **params)
            got = flagcore.aggregate(gpu, rule, **params).cpu()
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                raise SystemExit(f"GPU {rule} differs from CPU at shape {(p, n)}")
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ts = []
            for i in range(warmup + repeat):
                start.record()
                flagcore.aggregate(gpu, rule, **params)
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end))
            tc = []
            for i in range(warmup + repeat):
                t0 = time.perf_counter()
                flagcore.aggregate(cpu, rule, **params)
                tc.append(1e3 * (time.perf_counter() - t0))
            rows.append({"p": p, "n": n, "rule": rule, "gpu_ms": statistics.median(ts[warmup:]),
                         "cpu_ms": statistics.median(tc[warmup:])})
    return rows


# -- driver -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: dict, world: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
                   OMP_NUM_THREADS=str(cfg["threads"]), FLAGCORE_NUM_THREADS=str(cfg["threads"]))
        procs = [subprocess.Popen([sys.executable, __file__, "--_worker", tmp, json.dumps(cfg)],
                                  env=dict(env, RANK=str(r))) for r in range(world)]
        deadline = time.monotonic() + 3600
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise SystemExit("benchmark processes did not finish within an hour")
        if any(codes):
            raise SystemExit(f"benchmark processes failed with exit codes {codes}")
        return json.loads(Path(tmp, "rank0.json").read_text())


def main() -> None:
    args = make_parser().parse_args()
    if args._worker:
        worker(args._worker[0], json.loads(args._worker[1]))
        return
    from flagcore._table import print_table

    rules = [r for r in args.rules.split(",") if r]
    cfg = {"sizes": args.sizes, "rules": rules, "repeat": args.repeat, "warmup": args.warmup,
           "threads": args.threads, "bucket_cap_mb": args.bucket_cap_mb, "timeout": args.timeout}
    results = launch(cfg, args.world)
    rows, coll_rows = [], []
    for n in args.sizes:
        base = next(r for r in results if r["target"] == n and r["rule"] == "ddp")
        rows.append([base["n"], "ddp", "", base["step_ms"], 0.0, "", "", "", ""])
        for r in results:
            if r["target"] == n and r["rule"] in rules:
                rows.append([r["n"], r["rule"], "yes" if r["liveness"] else "no", r["step_ms"],
                             r["step_ms"] - base["step_ms"], r["barrier_ms"] if r["liveness"] else "",
                             r["comm_ms"], r["aggregate_ms"], r["buckets"]])
        c = next(r for r in results if r["target"] == n and r["rule"] == "collectives")
        coll_rows.append([n, c["allreduce_ms"], c["all_gather_ms"], c["all_gather_ms"] / c["allreduce_ms"]])
    print(f"Robust DDP hook vs DDP allreduce: {args.world} CPU processes x {args.threads} thread(s), rank 0.\n"
          "step: median ms per forward + backward (incl. communication); +ms: step - DDP's step; check:\n"
          "liveness check through the c10d store (yes/no, then its ms per step, waiting for slower ranks\n"
          "included); gather: all_gather ms per step, launch to completion (asynchronous: it overlaps\n"
          "the backward); agg: the rule's ms per step (in the gather's completion callback)")
    print_table("robust DDP hook",
                ["params", "rule", "check", "step", "+ms", "check", "gather", "agg", "bkts"], rows)
    print_table("one collective of the whole gradient, float32, median ms",
                ["n", "allreduce", "all_gather", "ratio"], coll_rows)
    gpu_rows = []
    if args.device == "cuda":
        shapes = sorted({(args.world, s) for r in results if r.get("bucket_sizes") for s in r["bucket_sizes"]})
        gpu_rows = gpu_aggregation(shapes, rules, args.repeat, args.warmup)
        if gpu_rows:
            print_table("Aggregation of the same buckets: GPU (CUDA events) vs CPU, ms",
                        ["p", "n", "rule", "GPU ms", "CPU ms"],
                        [[r["p"], r["n"], r["rule"], r["gpu_ms"], r["cpu_ms"]] for r in gpu_rows])
    import flagcore

    out = {"config": dict(cfg, world=args.world), "build": flagcore.build_info(), "ddp": results,
           "gpu_aggregation": gpu_rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
