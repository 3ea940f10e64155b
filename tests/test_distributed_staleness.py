"""The parameter server's staleness bound (``max_staleness``, stale synchronous parallel) with
backup workers: 4 real gloo processes on 127.0.0.1 (server rank 0, workers 1-3, quorum 2, rank
3 slowed; tests/_dist_worker_staleness.py, launched by tests/_dist_launch.py), plus argument
checks in a world of one."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import _dist_launch  # noqa: E402 - after the torch check
from _dist_worker_staleness import (  # noqa: E402
    BOUND,
    BOUND_STEPS,
    QUORUM,
    SLOW,
    WORLD,
)

WORKER = Path(__file__).with_name("_dist_worker_staleness.py")


# -- the tests --------------------------------------------------------------------------------


def _launch(scenario: str, out: Path, **kw: object) -> dict:
    assert _dist_launch.WORLD == WORLD
    return _dist_launch.launch(WORKER, scenario, out, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    res = _launch("runs", tmp_path_factory.mktemp("staleness"), deadline=120)
    assert sorted(res) == list(range(WORLD)), f"missing results: {sorted(res)}"
    for r, v in res.items():
        assert "error" not in v, f"rank {r}: {v['error']['message']}"
    return {r: v["result"] for r, v in res.items()}


def test_bound_holds_the_slow_worker_within_max_staleness(runs: dict) -> None:
    srv = runs[0]["bounded"]
    slow = [lag[str(SLOW)] for lag in srv["lags"]]
    assert len(slow) == BOUND_STEPS
    assert max(slow) == BOUND, slow  # it fell behind, and never further than the bound
    assert all(v <= BOUND for lag in srv["lags"] for v in lag.values()), srv["lags"]
    for r in range(WORLD):  # every rank got each step's lags with the result
        assert runs[r]["bounded"]["lags"] == srv["lags"]
        assert runs[r]["bounded"]["max_lag"][str(SLOW)] == BOUND
        assert max(runs[r]["bounded"]["max_lag"].values()) == BOUND
        assert runs[r]["bounded"]["digest"] == srv["digest"]  # bitwise replicas
    assert srv["late"][str(SLOW)] >= BOUND_STEPS - 2  # its gradients are still dropped
    # the server waited for it at most steps once it was BOUND behind (measured: 18 of 20)
    assert srv["stale_waits"][str(SLOW)] >= 5 and srv["stale_wait_s"] > 0.0
    # in-flight receives and sends (a thread each) stay bounded: no growth from step 5 to 20
    # (unbounded, 15 more steps behind would be about 30 more threads)
    t5, t20 = srv["threads"][4], srv["threads"][19]
    assert t20 <= t5 + 4, srv["threads"]


def test_without_a_bound_the_lag_grows(runs: dict) -> None:
    srv = runs[0]["free"]
    slow = [lag[str(SLOW)] for lag in srv["lags"]]
    # the server's steps take a few ms, the slow worker's SLOW_S: it falls behind every step
    assert slow[-1] >= 4 and slow[-1] > BOUND, slow
    assert srv["max_lag"][str(SLOW)] == max(slow)
    assert srv["stale_waits"] == {} and srv["stale_wait_s"] == 0.0
    for r in range(WORLD):
        assert runs[r]["free"]["digest"] == srv["digest"]


def test_zero_staleness_waits_for_all_and_aggregates_the_first_k(runs: dict) -> None:
    srv = runs[0]["first_k"]
    for r in range(WORLD):
        v = runs[r]["first_k"]
        for s in v["steps"]:
            assert s["equal"] and s["differs_from_all"], (r, s)
            assert sorted(s["status"].values()).count("used") == QUORUM, s
            assert list(s["status"].values()).count("late") == 1, s
            assert set(s["lag"].values()) == {0}, s  # every gradient arrived before the step
        assert v["max_lag"] == {}
        assert v["steps"] == srv["steps"]
    assert sum(srv["stale_waits"].values()) >= 1  # it waited for the late one


@pytest.mark.parametrize("fail", ["stall", "kill"])
def test_a_worker_past_the_bound_is_named_like_a_dead_one(tmp_path: Path, fail: str) -> None:
    # max_staleness 1: rank 3 stops before its step 2 (a late worker, never needed for the
    # quorum), so the server's step 3 needs its step-2 gradient: a stalled rank is named after
    # TIMEOUT, a dead one (its receive fails) at once, and the server tells the other workers.
    # Unbounded, nothing waits for a late worker's gradient: the others go on without noticing.
    store = _dist_launch.host_store()
    t0 = time.monotonic()
    res = _launch(
        fail,
        tmp_path,
        deadline=60,
        expect_exit={SLOW: fail},
        env={"FC_STORE_PORT": str(store.port)},
    )
    assert time.monotonic() - t0 < 45
    assert sorted(res) == [0, 1, 2]
    for r in (0, 1, 2):
        err = res[r]["error"]
        assert err["type"] == "RankFailureError" and err["missing"] == [SLOW], err
        if fail == "stall":
            want = f"parameter server step 3: rank(s) [{SLOW}] did not arrive within 3 s"
            assert want in err["message"], err
        else:  # step 2 if the failure comes before the quorum closes, else the bound's step 3
            assert re.search(
                rf"parameter server step [23]: receiving rank\(s\) \[{SLOW}\]'s gradient failed",
                err["message"],
            ), err
    if fail == "stall":
        msg = res[0]["error"]["message"]
        assert "(dead or stalled; waiting for its gradient of step 2, max_staleness 1)" in msg


# -- argument checks (before any communication) ------------------------------------------------


def test_max_staleness_argument_errors(world_of_one: object) -> None:
    from flagcore.distributed import ParameterServer

    model = torch.nn.Linear(3, 1)
    for bad in (True, 1.0, 2.5, "2", [1]):
        with pytest.raises(
            TypeError,
            match=rf"ParameterServer: max_staleness must be None or an int >= 0 \(steps\), got "
            rf"{re.escape(repr(bad))} \({type(bad).__name__}\)",
        ):
            ParameterServer(model, quorum=1, max_staleness=bad)
    with pytest.raises(
        ValueError,
        match=r"ParameterServer: max_staleness must be None or an int >= 0 \(steps\), got -1$",
    ):
        ParameterServer(model, quorum=1, max_staleness=-1)
    # a bound without a quorum below the number of workers would be ignored: refused
    with pytest.raises(
        ValueError,
        match=r"ParameterServer: max_staleness=2 bounds how far a worker left out of the quorum "
        r"may fall behind, but quorum is None \(every step waits for all 1 workers",
    ):
        ParameterServer(model, max_staleness=2)
    with pytest.raises(ValueError, match=r"but quorum=1 is every worker"):
        ParameterServer(model, quorum=1, max_staleness=0)
    ps = ParameterServer(model, rule="mean", max_staleness=None)  # the default: unbounded
    assert ps.max_staleness is None
    ps.aggregate(torch.ones(4))
    assert ps.last_lag == {0: 0} and ps.stats.max_lag == {}
