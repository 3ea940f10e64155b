"""Multi-process tests (gloo on 127.0.0.1, tests/_dist_worker_sync.py, hard deadlines) of how
flagcore.distributed keeps ranks in step: a Ctrl-C while a rank waits for a stalled peer is
honoured at once, a rank that runs an extra or skips a backward pass / aggregate call is
excluded and named on every rank (and the replica check names it instead of crashing inside
gloo), and a parameter-server worker that dies is reported to every other rank."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import _dist_launch  # noqa: E402 - after the torch check

WORKER = Path(__file__).with_name("_dist_worker_sync.py")


def launch(
    scenario: str, out: Path, world: int, *, wait_for: tuple, deadline: float, **env: str
) -> dict:
    """Run ``world`` ranks of ``scenario`` (the store hosted here, as torchrun's agent does);
    wait at most ``deadline`` s for the ranks in ``wait_for``, kill the others, return
    {rank: result} of the ranks in ``wait_for``."""
    store = _dist_launch.host_store()
    got = _dist_launch.launch(
        WORKER,
        scenario,
        out,
        deadline=deadline,
        world=world,
        env={"FC_STORE_PORT": str(store.port), **env},  # type: ignore[attr-defined]
        expect_exit={r: "not waited for" for r in range(world) if r not in wait_for},
    )
    res = {}
    for r in wait_for:
        assert r in got, (out / f"rank{r}.log").read_text()[-3000:]
        v = got[r]
        assert "error" not in v, f"rank {r}: {v['error']['message']}"
        # the ranks run the flagcore under test (an overlay on PYTHONPATH included)
        import flagcore

        assert v["flagcore"] == flagcore.__file__
        res[r] = v["result"]
    return res


# -- Ctrl-C while waiting for a stalled rank ------------------------------------------------


@pytest.mark.parametrize(
    ("whole", "timeout"), [("1", "30"), ("0", "30"), ("1", "none")], ids=["whole", "block", "none"]
)
def test_ctrl_c_in_the_hook_raises_keyboard_interrupt_at_once(
    tmp_path: Path, whole: str, timeout: str
) -> None:
    # rank 1 stalls at step 2; rank 0, waiting for its gather inside backward(), gets SIGINT
    # 1 s later: KeyboardInterrupt itself reaches the caller of backward(), well before the
    # 30 s timeout (it used to come only when the timeout ran out, and with whole_model as an
    # AssertionError from torch's Future.set_exception)
    res = launch(
        "hook_sigint", tmp_path, 2, wait_for=(0,), deadline=60, FC_WHOLE=whole, FC_TIMEOUT=timeout
    )
    v = res[0]
    assert v["raised"] == "KeyboardInterrupt", v
    assert v["latency_s"] < 0.5, v
    assert v["cpu_s_idle"] < 0.2, v  # no thread left spinning


@pytest.mark.parametrize("timeout", ["30", "none"])
def test_ctrl_c_on_a_parameter_server_worker_waiting_for_the_server(
    tmp_path: Path, timeout: str
) -> None:
    res = launch("ps_sigint", tmp_path, 2, wait_for=(1,), deadline=60, FC_TIMEOUT=timeout)
    v = res[1]
    assert v["raised"] == "KeyboardInterrupt", v
    assert v["latency_s"] < 0.5, v
    assert v["cpu_s_idle"] < 0.2, v


# -- a rank out of step in the DDP hook -----------------------------------------------------

PARAMS_DIFFER = "rank 1 is out of step: its parameters differ from most ranks'"


def test_hook_rank_with_an_extra_backward_is_named_and_excluded(tmp_path: Path) -> None:
    # rank 1 runs one extra backward pass at step 2 (and drops its result): its replica forks.
    # From then on every rank (rank 1 too) rejects rank 1's buckets, naming it, and the other
    # replicas stay identical; rank 1's surplus last backward finds nobody (named after the
    # timeout) and the replica check names rank 1 on every rank instead of aborting in gloo
    res = launch(
        "hook_out_of_step", tmp_path, 3, wait_for=(0, 1, 2), deadline=90,
        FC_CASE="extra", FC_TIMEOUT="4",
    )  # fmt: skip
    for r in range(3):
        steps = res[r]["steps"]
        want = ["0", "1", "2", "3", "4"] if r != 1 else ["0", "1", "2", "3"]  # rank 1: see below
        assert sorted(steps, key=int) == want, (r, steps)
        for s in ("0", "1"):
            assert steps[s]["rejected"] == {}
        for s in ("3", "4") if r != 1 else ("2", "3"):  # rank 1's loop is one step behind
            assert list(steps[s]["rejected"]) == ["1"], (r, s, steps[s])
            assert steps[s]["rejected"]["1"].startswith(PARAMS_DIFFER), steps[s]
        assert res[r]["rejected_calls"] == {"1": 2}  # one bucket (the model is small) x 2 steps
        assert res[r]["replicas"] == {
            "type": "RuntimeError",
            "message": "assert_replicas_identical: rank(s) [1] hold parameters that differ "
            "from rank 0's",
        }
    assert res[0]["steps"]["4"]["digest"] == res[2]["steps"]["4"]["digest"]
    assert res[1]["steps"]["3"]["digest"] != res[0]["steps"]["4"]["digest"]  # same collective
    assert "raised" not in res[0] and "raised" not in res[2]
    # its surplus backward: the others are named missing, and the error says they are probably
    # alive (this rank was rejected as out of step before)
    assert res[1]["raised"] == {"step": 4, "missing": [0, 2], "forked_self": True}


def test_hook_two_ranks_that_disagree_stop_on_both(tmp_path: Path) -> None:
    # with two ranks a fork is a 1-1 tie: the majority rule excluded the higher rank and named
    # it, whichever forked (rank 0 forking gave the same messages as rank 1 forking); now both
    # ranks raise ReplicaDivergenceError at the same collective, naming both groups
    res = launch(
        "hook_out_of_step", tmp_path, 2, wait_for=(0, 1), deadline=90,
        FC_CASE="extra", FC_TIMEOUT="4",
    )  # fmt: skip
    assert res[0]["diverged"]["step"] == 3 and res[1]["diverged"]["step"] == 2
    for r in (0, 1):
        msg = res[r]["diverged"]["message"]
        assert "robust DDP hook: the ranks disagree with no majority (ranks [0]: " in msg, msg
        assert "ranks [1]: " in msg and "cannot tell which replica forked" in msg, msg
        assert all(v["rejected"] == {} for v in res[r]["steps"].values())
        assert "rank(s) [1] hold parameters that differ" in res[r]["replicas"]["message"]


def test_hook_rank_that_skips_a_whole_step_is_named_at_the_end(tmp_path: Path) -> None:
    # rank 1 skips step 2 entirely (no backward, no optimizer step): its later passes meet the
    # others' previous ones with the same parameters and call counts, which is harmless (its
    # gradient is of the same parameters), so nothing is rejected and the replicas stay
    # identical. The others' last backward has no partner: they name rank 1 after the timeout,
    # and the replica check (through the store) agrees instead of aborting inside gloo
    res = launch(
        "hook_out_of_step", tmp_path, 3, wait_for=(0, 1, 2), deadline=90,
        FC_CASE="skip", FC_TIMEOUT="4",
    )  # fmt: skip
    for r in (0, 2):
        assert sorted(res[r]["steps"], key=int) == ["0", "1", "2", "3"]
        assert res[r]["raised"] == {"step": 4, "missing": [1]}
    assert sorted(res[1]["steps"], key=int) == ["0", "1", "3", "4"]
    assert "raised" not in res[1]
    for r in range(3):
        assert res[r]["rejected_calls"] == {}
        assert all(v["rejected"] == {} for v in res[r]["steps"].values())
    for a, b in (("2", "3"), ("3", "4")):  # rank 1's step b met the others' step a
        assert res[1]["steps"][b]["digest"] == res[0]["steps"][a]["digest"]
    digests = {res[r]["replicas"].get("digest") for r in range(3)}
    assert len(digests) == 1 and None not in digests, [res[r]["replicas"] for r in range(3)]


# -- the parameter server -------------------------------------------------------------------


def test_parameter_server_worker_calling_aggregate_twice_is_named(tmp_path: Path) -> None:
    # rank 1 calls aggregate twice at step 1: the server sees its replica differ at the next
    # message and every rank names it (status "rejected"); the others keep agreeing, and the
    # replica check names rank 1 on every rank (it used to fork silently)
    res = launch("ps_twice", tmp_path, 3, wait_for=(0, 1, 2), deadline=90, FC_TIMEOUT="3")
    msg = (
        "rank 1 is out of step: its parameters differ from the server's (rank 0) at step 2 (an "
        "extra aggregate call or a missed optimizer step forked its replica)"
    )
    for r in range(3):
        steps = res[r]["steps"]
        assert steps["0"]["rejected"] == {}
        last = steps["2"] if r != 1 else steps["1"]  # rank 1's step 1 took server step 2
        assert last["rejected"] == {"1": msg}
        assert last["status"] == {"0": "used", "1": "rejected", "2": "used"}
        assert res[r]["replicas"]["message"] == (
            "assert_replicas_identical: rank(s) [1] hold parameters that differ from rank 0's"
        )
    assert res[0]["steps"]["2"]["digest"] == res[2]["steps"]["2"]["digest"]
    assert res[1]["raised"] == {"step": 2, "missing": [0, 2]}  # its surplus call


def test_parameter_server_tells_every_worker_when_one_dies(tmp_path: Path) -> None:
    # rank 2 exits at step 1: the server's receive fails; it tells rank 1 before raising, so
    # both raise RankFailureError naming rank 2 at once (not after rank 1's 2 x 30 s wait)
    res = launch("ps_exit", tmp_path, 3, wait_for=(0, 1), deadline=60, FC_TIMEOUT="30")
    for r in (0, 1):
        v = res[r]
        assert v["step"] == 1 and v["missing"] == [2], v
        assert "receiving rank(s) [2]'s gradient failed (the rank died" in v["message"]
        assert v["after_s"] < 10, v
    assert "reported by the server (rank 0) to rank 1" in res[1]["message"]
