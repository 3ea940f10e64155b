"""One rank of the multi-process tests in test_distributed.py (run as a script, one process
per rank, by ``launch`` there): ``python _dist_worker.py SCENARIO OUT_DIR``. Writes
OUT_DIR/rank<r>.json and exits with os._exit so that no teardown can hang."""

from __future__ import annotations

import os
import sys
import time
import traceback

import torch

import _dist_launch
import flagcore
from flagcore import attacks
from flagcore.distributed import (
    ParameterServer,
    RankFailureError,
    assert_replicas_identical,
    register_robust_hook,
)
from flagcore.distributed._common import derive_seed

BYZANTINE = 3
D = 10  # features of the regression task
STEPS = 60
LR = 0.1


def rank_data(rank: int) -> tuple:
    """Each rank's shard of one linear regression task (same true weights, own samples)."""
    g = torch.Generator().manual_seed(1000 + rank)
    w_true = torch.linspace(-1.0, 1.0, D)
    x = torch.randn(200, D, generator=g)
    y = x @ w_true + 0.5 + 0.1 * torch.randn(200, generator=g)
    return x, y[:, None]


def new_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(D, 1)


def flat_params(model: torch.nn.Module) -> list:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def train_ddp(
    rank: int,
    rule: str | None,
    attack: str | None,
    stop_at: int | None = None,
    timeout: float = 30.0,
    bucket_cap_mb: float | None = None,
) -> dict:
    model = new_model()
    kw = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
    ddp = torch.nn.parallel.DistributedDataParallel(model, **kw)
    state = None
    if rule is not None:
        state = register_robust_hook(
            ddp, rule, attack if rank == BYZANTINE else None, seed=7, timeout=timeout
        )
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    x, y = rank_data(rank)
    for step in range(STEPS):
        if stop_at is not None and step == stop_at:
            misbehave(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    digest = assert_replicas_identical(model)
    out = {"params": flat_params(model), "digest": digest}
    if state is not None:
        out["stats"] = state.stats.as_dict()
        out["buckets"] = sorted(state.bucket_calls)
    return out


def train_ps(
    rank: int,
    rule: str,
    attack: str | None,
    mode: str,
    stop_at: int | None = None,
    timeout: float = 30.0,
) -> dict:
    model = new_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ps = ParameterServer(
        model,
        opt,
        rule=rule,
        mode=mode,
        attack=attack if rank == BYZANTINE else None,
        seed=7,
        timeout=timeout,
    )
    x, y = rank_data(rank)
    for step in range(STEPS):
        if stop_at is not None and step == stop_at:
            misbehave(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        ps.step()
    return {
        "params": flat_params(model),
        "digest": assert_replicas_identical(model),
        "stats": ps.stats.as_dict(),
    }


def misbehave(rank: int, step: int) -> None:
    what = os.environ.get("FC_TEST_FAIL", "")
    if what == f"kill{rank}":
        os._exit(17)
    if what == f"stall{rank}":
        time.sleep(600)


def ps_equivalence(rank: int, world: int) -> dict:
    """PS aggregates vs flagcore.aggregate on the stack every rank can rebuild locally."""
    n = 1000
    grads = [torch.randn(n, generator=torch.Generator().manual_seed(50 + r)) for r in range(world)]
    checks = {}
    for rule in ("mean", "median", "flag"):
        for include_server in (True, False):
            for attack in (None, "sign_flip"):
                model = torch.nn.Linear(n, 1, bias=False)  # n parameters, only shapes matter
                ps = ParameterServer(
                    model,
                    rule=rule,
                    include_server=include_server,
                    seed=3,
                    attack=attack if rank == BYZANTINE else None,
                    timeout=30.0,
                )
                got = ps.aggregate(grads[rank] if ps.is_worker else None)
                rows = []
                for r in ps.workers:
                    g = grads[r]
                    if attack is not None and r == BYZANTINE:
                        g = attacks.attack(attack, g[None], 1, seed=derive_seed(3, r, 0))[0]
                    rows.append(g)
                want = flagcore.aggregate(
                    torch.stack(rows), rule, **({"scale": "median_norm"} if rule == "flag" else {})
                )
                key = f"{rule}/server={include_server}/attack={attack}"
                checks[key] = {
                    "equal": bool(torch.equal(got, want)),
                    "maxdiff": float((got - want).abs().max()),
                }
    return checks


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    rank, world = _dist_launch.init_rank(60)
    out: dict = {"rank": rank}
    t0 = time.perf_counter()
    try:
        if scenario == "train":
            out["clean"] = train_ddp(rank, None, None)
            out["mean_clean"] = train_ddp(rank, "mean", None)
            for rule in ("mean", "median", "flag"):
                out[f"{rule}_random"] = train_ddp(rank, rule, "random")
            out["flag_nan"] = train_ddp(rank, "flag", "nan", bucket_cap_mb=1e-6)
            out["ps_flag_random"] = train_ps(rank, "flag", "random", "parameters")
            out["ps_median_random"] = train_ps(rank, "median", "random", "gradients")
            out["ps_equivalence"] = ps_equivalence(rank, world)
        elif scenario == "kill_hook":
            train_ddp(rank, "flag", "random", stop_at=5, timeout=float(os.environ["FC_TIMEOUT"]))
        elif scenario == "stall_ps":
            train_ps(
                rank,
                "median",
                None,
                "gradients",
                stop_at=5,
                timeout=float(os.environ["FC_TIMEOUT"]),
            )
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
    except RankFailureError as exc:
        out["error"] = _dist_launch.rank_failure(exc)
    except RuntimeError as exc:  # DDP re-raises a hook's error as RuntimeError
        out["error"] = {"type": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:
        out["error"] = {"type": type(exc).__name__, "message": traceback.format_exc()}
    out["elapsed_s"] = time.perf_counter() - t0
    _dist_launch.exit_with(out_dir, rank, out)


if __name__ == "__main__":
    main()
