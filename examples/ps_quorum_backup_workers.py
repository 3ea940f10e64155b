"""Backup workers: a parameter server that aggregates the first k of n gradients of each step,
measured against flagcore.energy's (n, k) fork-join prediction.

    torchrun --standalone --nproc_per_node=5 examples/ps_quorum_backup_workers.py --quorum 3

Rank 0 is the server (it only aggregates); ranks 1..n are workers. Each worker's step takes its
real gradient computation plus a simulated compute time drawn (seeded) from a lognormal of mean
--work-ms; the ranks in --slow take --slow-ms longer. The script runs --steps steps with no
quorum and with --quorum k, then predicts both step-time distributions with
``flagcore.distributed.predict_step_time`` from the same worker-time distributions plus the
overhead measured in a first run without simulated compute, and prints measured vs predicted
quantiles (and writes them to --out as JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np
import torch
import torch.distributed as dist

from flagcore.distributed import (
    ParameterServer,
    assert_replicas_identical,
    predict_step_time,
    shutdown,
)
from flagcore.distributed.quorum import lognormal_times


def run(args: argparse.Namespace, quorum: int | None, work: bool) -> list:
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ps = ParameterServer(
        model, opt, rule=args.rule, include_server=False, quorum=quorum, timeout=60.0
    )
    gen = torch.Generator().manual_seed(100 + rank)
    slow = {int(r) for r in args.slow.split(",") if r}
    draw = lognormal_times(
        args.work_ms / 1e3, args.sigma, shift=(args.slow_ms / 1e3 if rank in slow else 0.0)
    )
    rng = np.random.default_rng(1000 + rank)
    for _ in range(args.steps):
        opt.zero_grad()
        if ps.is_worker:
            x = torch.randn(16, 32, generator=gen)
            torch.nn.functional.cross_entropy(
                model(x), torch.randint(0, 4, (16,), generator=gen)
            ).backward()
            if work:
                time.sleep(float(draw(rng, 1)[0]))
        ps.step()
    ps.finish()
    assert_replicas_identical(model)
    return ps.stats.step_times[1:]  # the first step includes the start-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quorum", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--work-ms", type=float, default=20.0, help="mean simulated compute per step")
    ap.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma of the compute time")
    ap.add_argument("--slow", default="4", help="comma-separated slowed worker ranks")
    ap.add_argument(
        "--slow-ms", type=float, default=60.0, help="extra time of a slowed rank per step"
    )
    ap.add_argument("--rule", default="median")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    n = world - 1
    # the same loops without the simulated compute: the overhead (communication, gradients,
    # aggregation) of each setting, added to the model's prediction
    base = {
        "all": run(args, None, work=False),
        f"quorum {args.quorum}": run(args, args.quorum, work=False),
    }
    measured = {
        "all": run(args, None, work=True),
        f"quorum {args.quorum}": run(args, args.quorum, work=True),
    }
    if rank == 0:
        overhead = {name: float(np.median(t)) for name, t in base.items()}
        slow = {int(r) for r in args.slow.split(",") if r}
        times = [
            lognormal_times(
                args.work_ms / 1e3, args.sigma, args.slow_ms / 1e3 if r in slow else 0.0
            )
            for r in range(1, world)
        ]
        rows = []
        print(
            f"{n} workers (slowed: {sorted(slow)} by {args.slow_ms:g} ms), compute lognormal mean "
            f"{args.work_ms:g} ms sigma {args.sigma:g}; overhead without it (measured): "
            + ", ".join(f"{name} {1e3 * v:.2f} ms" for name, v in overhead.items())
        )
        print(
            f"{'':12s} {'measured ms (p50 / p90 / mean)':>34s} "
            f"{'predicted ms (p50 / p90 / mean)':>34s}"
        )
        for (name, t), k in zip(measured.items(), (None, args.quorum)):
            pred = predict_step_time(times, k, overhead=overhead[name], seed=1)
            t = np.asarray(t)
            m = (np.percentile(t, 50), np.percentile(t, 90), t.mean())
            q = (pred["p50"], pred["p90"], pred["mean"])
            print(
                f"{name:12s} {' / '.join(f'{1e3 * v:8.2f}' for v in m):>34s} "
                f"{' / '.join(f'{1e3 * v:8.2f}' for v in q):>34s}"
            )
            rows.append(
                {
                    "quorum": k,
                    "overhead_s": overhead[name],
                    "measured_s": t.tolist(),
                    "predicted": {x: pred[x] for x in ("p50", "p90", "p99", "mean")},
                }
            )
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "runs": rows}, f, indent=1)
    shutdown()


if __name__ == "__main__":
    main()
