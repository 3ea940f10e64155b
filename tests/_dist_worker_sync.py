"""One rank of the multi-process tests in test_distributed_sync.py (run as a script, one process
per rank): ``python _dist_worker_sync.py SCENARIO OUT_DIR``. Writes OUT_DIR/rank<r>.json and
exits with os._exit so that no teardown can hang. The c10d store is served by the test process
(FC_STORE_PORT), so no rank's exit takes it down.

Scenarios (FC_* environment variables configure them):
  hook_sigint / ps_sigint: one rank stalls at step 2; another gets SIGINT while it waits for
      it (inside backward() / ParameterServer.step) and records what it raised and how long
      after the signal.
  hook_extra / hook_skip: rank 1 runs an extra backward pass at step 2 / skips step 2.
  ps_twice: rank 1 calls aggregate twice at step 1.
  ps_exit: rank 2 exits at step 1.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import threading
import time
import traceback

import torch
import torch.distributed as dist

import flagcore
from flagcore.distributed import (
    ParameterServer,
    RankFailureError,
    assert_replicas_identical,
    parameter_digest,
    register_robust_hook,
)

E = os.environ.get


def timeout_env() -> float | None:
    v = E("FC_TIMEOUT", "30")
    return None if v == "none" else float(v)


def new_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 40), torch.nn.Tanh(),
        torch.nn.Linear(40, 1),
    )  # fmt: skip


def rank_data(rank: int) -> tuple:
    g = torch.Generator().manual_seed(3000 + rank)
    return torch.randn(32, 12, generator=g), torch.randn(32, 1, generator=g)


def sigint_later(delay: float, sent: list) -> None:
    """SIGINT this process ``delay`` seconds from now (as a Ctrl-C would); the time in sent."""

    def fire() -> None:
        time.sleep(delay)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


def interrupted(run_step, rank: int, victim: int, staller: int) -> dict:
    """Steps 0 and 1 normally (DDP rebuilds its buckets at step 1 with a collective of its
    own); at step 2 ``staller`` sleeps and ``victim`` gets SIGINT 1 s into its wait. Returns
    what the victim raised and the latency."""
    run_step()
    run_step()
    if rank == staller:
        time.sleep(120)  # killed by the test
    sent: list = []
    if rank == victim:
        sigint_later(1.0, sent)
    t0 = time.monotonic()
    try:
        run_step()
        return {"raised": None}
    except BaseException as exc:
        t = time.monotonic()
        c0 = time.process_time()
        time.sleep(0.5)  # nothing keeps spinning after the interrupt
        return {
            "raised": type(exc).__name__,
            "message": str(exc)[:500],
            "latency_s": t - sent[0] if sent else None,
            "wait_s": t - t0,
            "cpu_s_idle": time.process_time() - c0,
        }


def hook_sigint(rank: int, world: int) -> dict:
    model = new_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.01)
    register_robust_hook(ddp, "mean", whole_model=E("FC_WHOLE", "1") == "1", timeout=timeout_env())
    x, y = rank_data(rank)

    def run_step() -> None:
        ddp.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()

    return interrupted(run_step, rank, victim=0, staller=1)


def ps_sigint(rank: int, world: int) -> dict:
    model = new_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ps = ParameterServer(model, opt, rule="mean", timeout=timeout_env())
    x, y = rank_data(rank)

    def run_step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        ps.step()

    return interrupted(run_step, rank, victim=1, staller=0)  # the worker waits for the server


def hook_out_of_step(rank: int, world: int) -> dict:
    """5 steps; rank 1 runs an extra backward at step 2 (FC_CASE=extra) or skips step 2
    (skip). Records each step's rejections and digest, what the last step raised, and the
    replica check."""
    case = E("FC_CASE")
    model = new_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.01)
    state = register_robust_hook(ddp, "mean", timeout=timeout_env())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x, y = rank_data(rank)
    out: dict = {"steps": {}}
    for s in range(5):
        opt.zero_grad()
        if rank == 1 and s == 2 and case == "skip":
            continue
        if rank == 1 and s == 2 and case == "extra":
            torch.nn.functional.mse_loss(ddp(x), y).backward()
            opt.zero_grad()
        try:
            torch.nn.functional.mse_loss(ddp(x), y).backward()
        except RankFailureError as exc:
            out["raised"] = {"step": s, "missing": list(exc.missing_ranks)}
            if "this rank was itself rejected as out of step" in str(exc):
                out["raised"]["forked_self"] = True
            break
        except RuntimeError as exc:  # ReplicaDivergenceError (DDP may re-raise it as such)
            out["diverged"] = {"step": s, "message": str(exc)}
            break
        opt.step()
        out["steps"][s] = {
            "rejected": {str(k): v for k, v in state.stats.last_rejected.items()},
            "digest": parameter_digest(model),
        }
        state.stats.last_rejected = {}
    out["rejected_calls"] = {str(k): v for k, v in state.stats.rejected_calls.items()}
    out["replicas"] = replica_check(model)
    return out


def replica_check(model: torch.nn.Module) -> dict:
    try:
        return {"digest": assert_replicas_identical(model, timeout=30.0)}
    except RuntimeError as exc:
        return {"type": type(exc).__name__, "message": str(exc)}


def ps_twice(rank: int, world: int) -> dict:
    model = new_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ps = ParameterServer(model, opt, rule="mean", timeout=timeout_env())
    x, y = rank_data(rank)
    out: dict = {"steps": {}}
    for s in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        try:
            if rank == 1 and s == 1:
                ps.aggregate(ps.flat_gradient())  # the extra call
            ps.step()
        except RankFailureError as exc:
            out["raised"] = {"step": s, "missing": list(exc.missing_ranks)}
            break
        out["steps"][s] = {
            "status": {str(k): v for k, v in ps.last_status.items()},
            "rejected": {str(k): v for k, v in ps.stats.last_rejected.items()},
            "digest": parameter_digest(model),
        }
        ps.stats.last_rejected = {}
    out["replicas"] = replica_check(model)
    return out


def ps_exit(rank: int, world: int) -> dict:
    model = new_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ps = ParameterServer(model, opt, rule="mean", timeout=timeout_env())
    x, y = rank_data(rank)
    for s in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if rank == 2 and s == 1:
            os._exit(3)
        t0 = time.monotonic()
        try:
            ps.step()
        except RankFailureError as exc:
            return {
                "step": s,
                "missing": list(exc.missing_ranks),
                "message": str(exc),
                "after_s": time.monotonic() - t0,
            }
    return {"step": None}


SCENARIOS = {
    "hook_sigint": hook_sigint,
    "ps_sigint": ps_sigint,
    "hook_out_of_step": hook_out_of_step,
    "ps_twice": ps_twice,
    "ps_exit": ps_exit,
}


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    pg_timeout = datetime.timedelta(seconds=120)
    store = dist.TCPStore("127.0.0.1", int(os.environ["FC_STORE_PORT"]), world, False, pg_timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=pg_timeout)
    out: dict = {"rank": rank, "flagcore": flagcore.__file__}
    try:
        out["result"] = SCENARIOS[scenario](rank, world)
    except BaseException as exc:
        out["error"] = {"type": type(exc).__name__, "message": traceback.format_exc()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
