"""One rank of the multi-process tests in test_distributed_production.py (run as a script, one
process per rank): ``python _dist_worker_prod.py SCENARIO OUT_DIR``. Writes OUT_DIR/rank<r>.json
and exits with os._exit so that no teardown can hang.

Scenarios: whole_model (the hook's whole-model result vs flagcore.aggregate of every rank's
gradient over several bucket layouts and rules), malformed (rank 2 sends malformed buckets /
gradients: every rank names it and goes on), stall_hook (rank 1 stalls inside a step, after
launching its first bucket), quorum (a parameter server with backup workers and a slowed rank).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import torch

import _dist_launch
import flagcore
from flagcore.distributed import (
    ParameterServer,
    RankFailureError,
    assert_replicas_identical,
    register_robust_hook,
)

D = 12
BAD = 2  # the rank that sends malformed contributions


def rank_data(rank: int) -> tuple:
    g = torch.Generator().manual_seed(2000 + rank)
    x = torch.randn(64, D, generator=g)
    y = torch.randn(64, 1, generator=g) + rank * 0.3
    return x, y


def new_model() -> torch.nn.Module:
    torch.manual_seed(0)
    dims = [D, 40, 40, 40, 30, 1]  # bucket_cap_mb 0.001 / 0.01 / 25: 4 / 2 / 1 buckets
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def local_grad(rank: int) -> torch.Tensor:
    """The flat gradient rank ``rank`` computes at the initial parameters (every rank can
    rebuild every other rank's)."""
    m = new_model()
    x, y = rank_data(rank)
    torch.nn.functional.mse_loss(m(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in m.parameters()])


def ddp_grad(
    rank: int, rule: str, cap: float, whole_model: bool = True, attack=None, steps: int = 2, **kw
) -> tuple:
    """Gradient of the DDP model after ``steps`` backward passes at the initial parameters
    (DDP rebuilds its buckets after the first), the hook state and the replica digest."""
    model = new_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cap)
    state = register_robust_hook(
        ddp, rule, attack if rank == BAD else None, whole_model=whole_model, timeout=30.0, **kw
    )
    x, y = rank_data(rank)
    for _ in range(steps):
        ddp.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    with torch.no_grad():  # take a step so the replica check sees the aggregate
        for p in model.parameters():
            p -= 0.1 * p.grad
    return flat, state, assert_replicas_identical(model)


def whole_model(rank: int, world: int) -> dict:
    grads = torch.stack([local_grad(r) for r in range(world)])
    out = {}
    for rule, kw in (
        ("flag", {}),
        ("krum", {"f": 0}),
        ("geometric_median", {}),
        ("median", {}),
        ("multi_krum", {"f": 0, "m": 2}),
        ("mean", {}),
    ):
        want = flagcore.aggregate(
            grads, rule, **(dict(kw, scale="median_norm") if rule == "flag" else kw)
        )
        for cap in (0.001, 0.01, 25.0):
            got, state, digest = ddp_grad(rank, rule, cap, **kw)
            out[f"{rule}/{cap}"] = {
                "relerr": float((got - want).abs().max() / want.abs().max()),
                "digest": digest,
                "buckets": len(state.bucket_calls),
                "calls": state.stats.calls,
            }
    # a rule gram_plan does not cover (simulated): the hook aggregates the concatenated buckets
    from flagcore.rules import gram_plan

    real = gram_plan.has_plan
    gram_plan.has_plan = lambda rule: False
    try:
        want = flagcore.aggregate(grads, "krum", f=0)
        got, state, digest = ddp_grad(rank, "krum", 0.001, f=0)
        out["fallback/krum"] = {
            "relerr": float((got - want).abs().max() / want.abs().max()),
            "digest": digest,
            "buckets": len(state.bucket_calls),
            "plan": state.last_plan is not None,
        }
    finally:
        gram_plan.has_plan = real
    # block-wise: the same for a coordinate rule, another rule for flag when buckets split the model
    want = flagcore.aggregate(grads, "median")
    got, state, _ = ddp_grad(rank, "median", 0.001, whole_model=False)
    out["blockwise/median"] = {
        "relerr": float((got - want).abs().max() / want.abs().max()),
        "buckets": len(state.bucket_calls),
    }
    want = flagcore.aggregate(grads, "flag", scale="median_norm")
    got, state, _ = ddp_grad(rank, "flag", 0.001, whole_model=False)
    out["blockwise/flag"] = {
        "relerr": float((got - want).abs().max() / want.abs().max()),
        "buckets": len(state.bucket_calls),
    }
    return out


MALFORMED = {
    "long": lambda g, s: torch.zeros(g.numel() + 5, dtype=torch.float64),
    "short": lambda g, s: g[:-3].clone(),
    "dtype": lambda g, s: g.to(torch.float64),
    "nan": lambda g, s: torch.full_like(g, float("nan")),
    "notensor": lambda g, s: [1.0, 2.0],
}


def malformed(rank: int, world: int) -> dict:
    grads = torch.stack([local_grad(r) for r in range(world)])
    out = {}
    excluded = grads.clone()
    excluded[BAD] = float("nan")
    want = flagcore.aggregate(excluded, "median")  # the bad rank's row excluded, counted against f
    for case, fn in MALFORMED.items():
        got, state, digest = ddp_grad(rank, "median", 0.001, attack=fn, steps=2)
        out[f"hook/{case}"] = {
            "relerr": float((got - want).abs().max() / want.abs().max()),
            "digest": digest,
            "rejected": {str(k): v for k, v in state.stats.last_rejected.items()},
            "rejected_calls": state.stats.rejected_calls,
            "nonfinite": list(state.stats.last_nonfinite_ranks),
            "buckets": len(state.bucket_calls),
            "calls": state.stats.calls,
        }
    for case, fn in MALFORMED.items():
        model = new_model()
        ps = ParameterServer(model, rule="median", attack=fn if rank == BAD else None, timeout=30.0)
        got = ps.aggregate(grads[rank])
        out[f"ps/{case}"] = {
            "relerr": float((got - want).abs().max() / want.abs().max()),
            "rejected": {str(k): v for k, v in ps.stats.last_rejected.items()},
            "nonfinite": list(ps.stats.last_nonfinite_ranks),
            "numel": ps.numel,
            "status": {str(k): v for k, v in ps.last_status.items()},
        }
    return out


def stall_hook(rank: int, world: int) -> dict:
    timeout = float(os.environ["FC_TIMEOUT"])

    def stall(g: torch.Tensor, s: int) -> torch.Tensor:  # rank 1, step 3, its second bucket
        stall.calls += 1
        if stall.calls == 3 * stall.per_step + 2:
            time.sleep(600)
        return g

    stall.calls = 0
    stall.per_step = 10**9
    model = new_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.001)
    state = register_robust_hook(ddp, "median", stall if rank == 1 else None, timeout=timeout)
    x, y = rank_data(rank)
    for step in range(6):
        if step == 1:
            stall.per_step = len(state.bucket_calls)  # buckets per step, after DDP's first pass
        STEP_START[0] = time.monotonic()
        ddp.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
    return {}


STEP_START = [
    0.0
]  # monotonic start of the current step (stall_hook): the error comes this much later


def quorum(rank: int, world: int) -> dict:
    """Server rank 0 (not a worker), workers 1..3, quorum 2, rank 3 slowed by 0.25 s a step."""
    out = {}
    for q in (2, None):
        model = new_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        ps = ParameterServer(model, opt, rule="mean", include_server=False, quorum=q, timeout=30.0)
        x, y = rank_data(rank)
        for _ in range(6):
            opt.zero_grad()
            if ps.is_worker:
                torch.nn.functional.mse_loss(model(x), y).backward()
            if rank == 3:
                time.sleep(0.25)
            ps.step()
        ps.finish()
        out[str(q)] = {
            "step_times": ps.stats.step_times,
            "late": ps.stats.late_calls,
            "status": {str(k): v for k, v in ps.last_status.items()},
            "digest": assert_replicas_identical(model),
        }
    return out


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    rank, world = _dist_launch.init_rank(120)
    out: dict = {"rank": rank}
    t0 = time.perf_counter()
    try:
        out["result"] = {
            "whole_model": whole_model,
            "malformed": malformed,
            "stall_hook": stall_hook,
            "quorum": quorum,
        }[scenario](rank, world)
    except RankFailureError as exc:
        out["error"] = {
            **_dist_launch.rank_failure(exc),
            "after_step_start_s": time.monotonic() - STEP_START[0],
        }
    except BaseException as exc:
        out["error"] = {"type": type(exc).__name__, "message": traceback.format_exc()}
    out["elapsed_s"] = time.perf_counter() - t0
    _dist_launch.exit_with(out_dir, rank, out)


if __name__ == "__main__":
    main()
