"""One rank of the multi-process tests in test_distributed_staleness.py (run as a script, one
process per rank): ``python _dist_worker_staleness.py SCENARIO OUT_DIR``. Writes
OUT_DIR/rank<r>.json and exits with os._exit so that no teardown can hang.

Scenarios (server rank 0, workers 1-3, quorum 2, rank 3 slowed): runs (max_staleness 2 over 20
steps, unbounded over 8, max_staleness 0), stall / kill (rank 3 stops past the bound), measure
(the numbers in docs/distributed.md: ``torchrun --standalone --nproc_per_node=4
tests/_dist_worker_staleness.py measure OUT_DIR``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import torch

import _dist_launch

WORLD = 4  # _dist_launch.WORLD: server 0, workers 1-3
SLOW = 3  # the slowed worker
SLOW_S = 0.1  # its extra time per step: far above the other ranks' step on a loaded machine
QUORUM = 2
BOUND = 2
BOUND_STEPS = 20
FREE_STEPS = 8
TIMEOUT = 3.0


# -- the ranks (run as a script) --------------------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _data(rank: int) -> tuple:
    g = torch.Generator().manual_seed(3000 + rank)
    return torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)


def _train(
    rank: int,
    steps: int,
    max_staleness: int | None,
    stall_at: int | None = None,
    fail: str = "",
    slow_s: float = SLOW_S,
) -> dict:
    """SGD through the parameter server; rank SLOW sleeps ``slow_s`` before each step, and at
    ``stall_at`` sleeps 600 s (``fail`` "stall") or exits (``fail`` "kill"). Every rank records
    each step's ``last_lag`` and its thread count."""
    from flagcore.distributed import ParameterServer, assert_replicas_identical

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    timeout = TIMEOUT if stall_at is not None else 30.0
    ps = ParameterServer(
        model,
        opt,
        rule="mean",
        include_server=False,
        quorum=QUORUM,
        max_staleness=max_staleness,
        timeout=timeout,
    )
    x, y = _data(rank)
    lags, threads = [], []
    for step in range(steps):
        opt.zero_grad()
        if ps.is_worker:
            torch.nn.functional.mse_loss(model(x), y).backward()
        if rank == SLOW:
            if step == stall_at and fail == "kill":
                os._exit(17)
            time.sleep(600 if step == stall_at else slow_s)
        ps.step()
        lags.append({str(r): v for r, v in ps.last_lag.items()})
        threads.append(threading.active_count())
    ps.finish()
    st = ps.stats
    return {
        "lags": lags,
        "threads": threads,
        "max_lag": {str(r): v for r, v in st.max_lag.items()},
        "late": {str(r): v for r, v in st.late_calls.items()},
        "stale_waits": {str(r): v for r, v in st.stale_waits.items()},
        "stale_wait_s": st.stale_wait_s,
        "step_times": st.step_times,
        "digest": assert_replicas_identical(model),
    }


def _measure(rank: int) -> dict:
    """The numbers in docs/distributed.md: FC_STEPS steps (100) with rank SLOW FC_SLOW_S
    seconds (0.02) slower per step, unbounded and with max_staleness 2; the server prints the
    threads it holds at the end and its median step time."""
    steps = int(os.environ.get("FC_STEPS", "100"))
    slow_s = float(os.environ.get("FC_SLOW_S", "0.02"))
    out = {}
    for s in (None, BOUND):
        v = _train(rank, steps, s, slow_s=slow_s)
        med = sorted(v["step_times"])[steps // 2]
        out[str(s)] = {"threads": v["threads"][-1], "p50_ms": 1e3 * med, "max_lag": v["max_lag"]}
        if rank == 0:
            print(f"max_staleness={s}: {out[str(s)]}", flush=True)
    return out


def _first_k(rank: int) -> dict:
    """max_staleness=0: every step waits for all three gradients and aggregates the first two;
    every rank checks the result against the rule on the rows ``last_status`` names as used."""
    import flagcore
    from flagcore.distributed import ParameterServer

    n = 300
    model = torch.nn.Linear(n, 1, bias=False)  # n parameters; aggregate() leaves them alone
    ps = ParameterServer(
        model, rule="mean", include_server=False, quorum=QUORUM, max_staleness=0, timeout=30.0
    )
    steps = []
    for step in range(4):
        grads = {
            r: torch.randn(n, generator=torch.Generator().manual_seed(100 * step + r))
            for r in range(1, WORLD)
        }
        if rank == SLOW:
            time.sleep(0.05)
        got = ps.aggregate(grads[rank] if ps.is_worker else None)
        used = [r for r, s in ps.last_status.items() if s == "used"]
        want = flagcore.aggregate(torch.stack([grads[r] for r in used]), "mean")
        everyone = flagcore.aggregate(torch.stack(list(grads.values())), "mean")
        steps.append(
            {
                "status": {str(r): s for r, s in ps.last_status.items()},
                "equal": bool(torch.equal(got, want)),
                "differs_from_all": not bool(torch.equal(got, everyone)),
                "lag": {str(r): v for r, v in ps.last_lag.items()},
            }
        )
    ps.finish()
    return {
        "steps": steps,
        "stale_waits": {str(r): v for r, v in ps.stats.stale_waits.items()},
        "max_lag": {str(r): v for r, v in ps.stats.max_lag.items()},
    }


def main() -> None:

    from flagcore.distributed import RankFailureError

    scenario, out_dir = sys.argv[1], sys.argv[2]
    rank, _ = _dist_launch.init_rank(60)
    out: dict = {"rank": rank}
    try:
        if scenario == "runs":
            out["result"] = {
                "bounded": _train(rank, BOUND_STEPS, BOUND),
                "free": _train(rank, FREE_STEPS, None),
                "first_k": _first_k(rank),
            }
        elif scenario == "measure":  # torchrun --nproc_per_node=4 this_file measure OUT_DIR
            out["result"] = _measure(rank)
        elif scenario in ("stall", "kill"):
            _train(rank, 10, 1, stall_at=2, fail=scenario)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
    except RankFailureError as exc:
        out["error"] = _dist_launch.rank_failure(exc)
    except BaseException as exc:
        out["error"] = {"type": type(exc).__name__, "message": traceback.format_exc()}
    _dist_launch.exit_with(out_dir, rank, out)


if __name__ == "__main__":
    main()
