"""Launching the ranks of a multi-process test (one process per rank, gloo on 127.0.0.1) with
a hard deadline, shared by the test_distributed*.py files; and, inside a rank script
(tests/_dist_worker*.py), joining the group (``init_rank``) and leaving with the rank's result
(``exit_with``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

WORLD = 4


def init_rank(seconds: float) -> tuple[int, int]:
    """In a rank process: join the gloo group the launcher set up, through the store the test
    process hosts (FC_STORE_PORT, as torchrun's agent does) or env:// (rank 0 hosts it at
    MASTER_ADDR:MASTER_PORT); one torch thread. Returns (rank, world size)."""
    import datetime

    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=seconds)
    if "FC_STORE_PORT" in os.environ:
        port = int(os.environ["FC_STORE_PORT"])
        store = dist.TCPStore("127.0.0.1", port, world, False, timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    return rank, world


def rank_failure(exc: Any) -> dict:
    """A rank's result "error" entry for a RankFailureError: its message and missing ranks."""
    return {"type": "RankFailureError", "message": str(exc), "missing": list(exc.missing_ranks)}


def exit_with(out_dir: str, rank: int, out: dict) -> None:
    """Write OUT_DIR/rank<r>.json and leave with os._exit(0), so that no teardown can hang."""
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    worker: Path,
    scenario: str,
    out_dir: Path,
    *,
    deadline: float,
    env: dict | None = None,
    expect_exit: dict | None = None,
    world: int = WORLD,
) -> dict:
    """Run the ``world`` ranks of ``scenario``; wait for at most ``deadline`` seconds for the
    ranks not listed in ``expect_exit`` (rank -> "killed"/"stalled"/why it is not waited for),
    kill everything left, return {rank: result json} for the ranks that wrote one."""
    port = free_port()
    base = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        FLAGCORE_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    procs = []
    for r in range(world):
        log = open(out_dir / f"rank{r}.log", "w")  # noqa: SIM115 - closed by the caller after wait()
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(worker), scenario, str(out_dir)],
                    env=dict(base, RANK=str(r)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    expect_exit = expect_exit or {}
    end = time.monotonic() + deadline
    try:
        for r, (p, _) in enumerate(procs):
            if r in expect_exit:
                continue
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                logs = "\n".join(
                    (out_dir / f"rank{q}.log").read_text()[-2000:] for q in range(world)
                )
                pytest.fail(
                    f"scenario {scenario}: rank {r} still running after {deadline} s (hang)\n{logs}"
                )
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    results = {}
    for r in range(world):
        f = out_dir / f"rank{r}.json"
        if f.exists():
            results[r] = json.loads(f.read_text())
    return results


def host_store() -> object:
    """A c10d TCPStore served by this (test) process, like torchrun's agent serves one: the
    ranks' exits then cannot take the store down while survivors still read it."""
    import datetime

    import torch.distributed

    return torch.distributed.TCPStore(
        "127.0.0.1", 0, None, True, datetime.timedelta(seconds=60), wait_for_workers=False
    )
