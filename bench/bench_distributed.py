"""Step time of robust distributed training against plain DDP allreduce.

    python bench/bench_distributed.py --sizes 1e6,1e7 --world 4 --repeat 5

Launches --world CPU processes on this machine (gloo, localhost), each training the same MLP
with about n parameters on a fixed batch, and measures per step (forward + backward + the
gradient exchange, after a barrier so that all ranks start together):

  ddp            plain DDP (allreduce, DDP's default buckets);
  hook-1bucket   flagcore's hook with every parameter in one bucket (the old workaround for
                 whole-model rules: no overlap with the backward pass);
  hook-whole     flagcore's hook with DDP's buckets, whole_model=True (exact whole-model rule,
                 per-bucket overlap): the default;
  hook-block     the same, whole_model=False (each bucket its own problem);
  ps             ParameterServer (rank 0 also a worker), mode "gradients": backward, then the
                 exchange, then the optimizer step (SGD);
  ps-quorum      the same with quorum = world - 1 (backup workers; all ranks equally fast here);

for each rule in --rules, plus the bytes sent over the network per step (all ranks together,
from the message sizes: ring allreduce 2 (p-1) 4n, ring all_gather p (p-1) (4n + 32), parameter
server (p-1) (4n + 32) up and (p-1) (4n + 32 (p+1)) down).

Correctness before timing: the hook with rule "mean" gives DDP's gradients (to float32
rounding); hook-whole and the parameter server give hook-1bucket's whole-model aggregate (to
1e-5 relative); replicas agree bitwise after every configuration. Rank 0's numbers (medians
over --repeat steps after --warmup) are reported. Timings taken while other jobs use the CPU are
noisy: compare ratios within one run.
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
    ap = argparse.ArgumentParser(description="robust distributed training vs plain DDP allreduce")
    ap.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes("1e6,1e7"),
        help="model sizes (number of parameters), comma-separated",
    )
    ap.add_argument("--world", type=int, default=4, help="processes")
    ap.add_argument(
        "--rules", default="flag", help="rules timed (mean is always checked against DDP)"
    )
    ap.add_argument("--repeat", type=int, default=5, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch and flagcore threads per process")
    ap.add_argument(
        "--bucket-cap-mb", type=float, default=None, help="DDP bucket size (default: DDP's)"
    )
    ap.add_argument(
        "--timeout", type=float, default=120.0, help="liveness timeout of the hook and the server"
    )
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: also time the rules on the bucket shapes on the GPU",
    )
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "distributed.json")
    )
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
    from flagcore.distributed import (
        ParameterServer,
        assert_replicas_identical,
        register_robust_hook,
        shutdown,
    )

    torch.set_num_threads(cfg["threads"])
    flagcore.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    results = []

    def run(n: int, kind: str, rule: str | None) -> dict:
        model, d = make_model(n)
        cap = {"hook-1bucket": 1e6}.get(kind, cfg["bucket_cap_mb"])
        state = ps = None
        if kind.startswith("ps"):
            net = model
            opt = torch.optim.SGD(
                model.parameters(), lr=0.0
            )  # lr 0: every step sees the same gradients
            ps = ParameterServer(
                model,
                opt,
                rule=rule,
                timeout=cfg["timeout"],
                quorum=world - 1 if kind == "ps-quorum" else None,
            )
        else:
            net = torch.nn.parallel.DistributedDataParallel(
                model, **({} if cap is None else {"bucket_cap_mb": cap})
            )
            if kind != "ddp":
                state = register_robust_hook(
                    net, rule, whole_model=kind != "hook-block", timeout=cfg["timeout"]
                )
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(32, d, generator=g)
        times = []
        for step in range(cfg["warmup"] + cfg["repeat"]):
            if step == cfg["warmup"] and state is not None:
                state.stats.reset()
            net.zero_grad(set_to_none=False)
            dist.barrier()  # steps start together: waiting for a slow rank is not counted
            t0 = time.perf_counter()
            net(x).square().mean().backward()
            if ps is not None:
                ps.step()
            times.append(time.perf_counter() - t0)
        if ps is not None:
            ps.finish()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        for p in model.parameters():  # make the replicas comparable: one SGD step
            p.data.add_(p.grad, alpha=-0.01)
        assert_replicas_identical(model)
        out = {
            "target": n,
            "n": sum(p.numel() for p in model.parameters()),
            "kind": kind,
            "rule": rule or "allreduce",
            "step_ms": 1e3 * statistics.median(times[cfg["warmup"] :]),
            "grads": grads,
            "bytes_per_step": bytes_per_step(kind, n_params(model), world),
        }
        if state is not None:
            st, steps = state.stats, cfg["repeat"]
            out.update(
                buckets=len(state.bucket_calls),
                barrier_ms=1e3 * st.barrier_s / steps,
                comm_ms=1e3 * st.comm_s / steps,
                aggregate_ms=1e3 * st.aggregate_s / steps,
            )
        elif kind == "ddp":
            out["buckets"] = len(bucket_sizes(net)) or ""
        return out

    def check(a: dict, b: dict, tol: float) -> None:
        err = float((a["grads"] - b["grads"]).abs().max())
        scale = float(b["grads"].abs().max())
        if err > tol * max(scale, 1e-30):
            raise SystemExit(
                f"{a['kind']} {a['rule']} differs from {b['kind']} {b['rule']} by {err} "
                f"(scale {scale}) at n={a['n']}"
            )

    for n in cfg["sizes"]:
        base = run(n, "ddp", None)
        check(run(n, "hook-whole", "mean"), base, 1e-5)  # the hook's mean is DDP's allreduce
        batch = [base]
        for rule in cfg["rules"]:
            one = run(n, "hook-1bucket", rule)
            batch.append(one)
            for kind in ("hook-whole", "hook-block", "ps", "ps-quorum"):
                r = run(n, kind, rule)
                if kind in ("hook-whole", "ps"):
                    check(r, one, 1e-5)  # whole-model aggregate, whatever the buckets
                batch.append(r)
        for r in batch:
            r.pop("grads")
        results.extend(batch)
        results.append(collectives(n, cfg))
    if rank == 0:
        Path(out_dir, "rank0.json").write_text(json.dumps(results))
    shutdown()


def n_params(model: object) -> int:
    return sum(p.numel() for p in model.parameters())


def bytes_per_step(kind: str, n: int, p: int) -> int:
    """Bytes sent over the network per step, all ranks together, from the message sizes."""
    if kind == "ddp":
        return 2 * (p - 1) * 4 * n  # ring allreduce
    if kind.startswith("hook"):
        return p * (p - 1) * (4 * n + 32)  # ring all_gather of payload + header
    return (p - 1) * (4 * n + 32) + (p - 1) * (4 * n + 32 * (p + 1))  # PS: up, then down


def bucket_sizes(ddp: object) -> list:
    """Element counts of DDP's buckets (from the reducer's logging data when available)."""
    try:
        data = ddp._get_ddp_logging_data()
        return [int(s) for s in str(data.get("bucket_sizes", "")).split(",") if s.strip()]
    except Exception:
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
    for name, op in (
        ("allreduce_ms", lambda: dist.all_reduce(t)),
        ("all_gather_ms", lambda: all_gather_flat(dist, out, t, None)),
    ):
        times = []
        for _i in range(cfg["warmup"] + cfg["repeat"]):
            dist.barrier()
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
        res[name] = 1e3 * statistics.median(times[cfg["warmup"] :])
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
            for _i in range(warmup + repeat):
                start.record()
                flagcore.aggregate(gpu, rule, **params)
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end))
            tc = []
            for _i in range(warmup + repeat):
                t0 = time.perf_counter()
                flagcore.aggregate(cpu, rule, **params)
                tc.append(1e3 * (time.perf_counter() - t0))
            rows.append(
                {
                    "p": p,
                    "n": n,
                    "rule": rule,
                    "gpu_ms": statistics.median(ts[warmup:]),
                    "cpu_ms": statistics.median(tc[warmup:]),
                }
            )
    return rows


# -- driver -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: dict, world: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
            WORLD_SIZE=str(world),
            OMP_NUM_THREADS=str(cfg["threads"]),
            FLAGCORE_NUM_THREADS=str(cfg["threads"]),
        )
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--_worker", tmp, json.dumps(cfg)],
                env=dict(env, RANK=str(r)),
            )
            for r in range(world)
        ]
        deadline = time.monotonic() + 3600
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise SystemExit("benchmark processes did not finish within an hour") from None
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
    cfg = {
        "sizes": args.sizes,
        "rules": rules,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "threads": args.threads,
        "bucket_cap_mb": args.bucket_cap_mb,
        "timeout": args.timeout,
    }
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    results = launch(cfg, args.world)
    load_after = os.getloadavg()
    rows, coll_rows = [], []
    for n in args.sizes:
        base = next(r for r in results if r["target"] == n and r["kind"] == "ddp")
        for r in results:
            if r["target"] != n or r["rule"] == "collectives":
                continue
            rows.append(
                [
                    r["n"],
                    r["kind"],
                    r["rule"],
                    r["step_ms"],
                    r["step_ms"] / base["step_ms"],
                    r["bytes_per_step"] / 2**20,
                    r.get("comm_ms", ""),
                    r.get("aggregate_ms", ""),
                    r.get("buckets", ""),
                ]
            )
        c = next(r for r in results if r["target"] == n and r["rule"] == "collectives")
        coll_rows.append(
            [n, c["allreduce_ms"], c["all_gather_ms"], c["all_gather_ms"] / c["allreduce_ms"]]
        )
    print(
        f"Robust distributed training vs DDP allreduce: {args.world} CPU processes x "
        f"{args.threads} thread(s),\n"
        "rank 0. step: median ms per forward + backward + exchange; x ddp: step / DDP's step; MiB: "
        "sent\n"
        "over the network per step, all ranks; gather / agg: the hook's all_gather (launch to "
        "completion,\n"
        "overlapping the backward) and aggregation ms per step; bkts: buckets per step"
    )
    print_table(
        "step time",
        ["params", "config", "rule", "step ms", "x ddp", "MiB", "gather", "agg", "bkts"],
        rows,
    )
    print_table(
        "one collective of the whole gradient, float32, median ms",
        ["n", "allreduce", "all_gather", "ratio"],
        coll_rows,
    )
    gpu_rows = []
    if args.device == "cuda":
        shapes = sorted({(args.world, r["n"]) for r in results if r.get("kind") == "hook-1bucket"})
        gpu_rows = gpu_aggregation(shapes, rules, args.repeat, args.warmup)
        if gpu_rows:
            print_table(
                "Aggregation of the same buckets: GPU (CUDA events) vs CPU, ms",
                ["p", "n", "rule", "GPU ms", "CPU ms"],
                [[r["p"], r["n"], r["rule"], r["gpu_ms"], r["cpu_ms"]] for r in gpu_rows],
            )
    import flagcore

    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    out = {
        "config": dict(cfg, world=args.world),
        "build": flagcore.build_info(),
        "ddp": results,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "gpu_aggregation": gpu_rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
