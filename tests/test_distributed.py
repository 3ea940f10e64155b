"""Multi-process tests of flagcore.distributed on localhost with gloo.

Every scenario runs 4 real processes (tests/_dist_worker.py, one per rank) with a hard
deadline enforced here, so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import _dist_launch  # noqa: E402 - after the torch check

WORKER = Path(__file__).with_name("_dist_worker.py")
WORLD = 4
BYZANTINE = 3


def launch(scenario: str, out_dir: Path, **kw: object) -> dict:
    return _dist_launch.launch(WORKER, scenario, out_dir, **kw)


host_store = _dist_launch.host_store


# -- training with a Byzantine rank, bitwise replicas, parameter-server equivalence ----------


@pytest.fixture(scope="module")
def train_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dist_train")
    res = launch("train", out, deadline=150)
    assert sorted(res) == list(range(WORLD)), f"missing results: {sorted(res)}"
    for r, v in res.items():
        assert "error" not in v, f"rank {r}: {v['error']['message']}"
    return res


def _dist(res: dict, run: str) -> float:
    return float(
        np.linalg.norm(np.array(res[0][run]["params"]) - np.array(res[0]["clean"]["params"]))
    )


RUNS = [
    "clean",
    "mean_clean",
    "mean_random",
    "median_random",
    "flag_random",
    "flag_nan",
    "ps_flag_random",
    "ps_median_random",
]


@pytest.mark.parametrize("run", RUNS)
def test_replicas_bitwise_identical(train_results: dict, run: str) -> None:
    # assert_replicas_identical already ran in every worker; the digests must also agree here
    digests = {train_results[r][run]["digest"] for r in range(WORLD)}
    assert len(digests) == 1
    params = [train_results[r][run]["params"] for r in range(WORLD)]
    assert all(p == params[0] for p in params)


def test_mean_hook_without_attack_matches_plain_ddp_bitwise(train_results: dict) -> None:
    # DDP's own allreduce divides each rank's gradient by 4 and sums; the hook's mean gives the
    # same float32 values here (4 is a power of two), so the runs agree bit for bit
    assert train_results[0]["mean_clean"]["digest"] == train_results[0]["clean"]["digest"]


def test_mean_breaks_under_random_attack(train_results: dict) -> None:
    assert _dist(train_results, "mean_random") > 0.15


@pytest.mark.parametrize(
    "run", ["median_random", "flag_random", "flag_nan", "ps_flag_random", "ps_median_random"]
)
def test_robust_rules_converge_to_clean_result(train_results: dict, run: str) -> None:
    d = _dist(train_results, run)
    assert d < 0.03
    assert d < _dist(train_results, "mean_random") / 8


def test_nan_rank_is_reported_and_excluded(train_results: dict) -> None:
    stats = train_results[0]["flag_nan"]["stats"]
    assert stats["nonfinite_calls"] == {str(BYZANTINE): stats["calls"]}
    assert np.all(np.isfinite(train_results[0]["flag_nan"]["params"]))
    assert len(train_results[0]["flag_nan"]["buckets"]) >= 2  # bucket_cap_mb=1e-6: per-bucket path


def test_hook_stats_split_time(train_results: dict) -> None:
    st = train_results[1]["flag_random"]["stats"]
    assert st["calls"] == 60 and st["elements"] == 60 * 11
    assert st["comm_s"] > 0 and st["aggregate_s"] > 0 and st["barrier_s"] > 0


def test_parameter_server_matches_rule_on_stacked_gradients(train_results: dict) -> None:
    checks = train_results[0]["ps_equivalence"]
    assert len(checks) == 12
    for r in range(WORLD):  # every rank received the server's aggregate, bit for bit
        assert train_results[r]["ps_equivalence"] == checks
    bad = {k: v for k, v in checks.items() if not v["equal"]}
    assert not bad


# -- failures: a dead rank and a stalled rank ------------------------------------------------

TIMEOUT = 3.0


@pytest.mark.parametrize(
    "scenario,fail,culprit",
    [
        ("kill_hook", "kill", 3),  # DDP hook; rank 3 os._exit()s at step 5
        ("kill_hook", "kill", 0),  # ... rank 0 (which also hosts nothing here: the store is ours)
        ("stall_ps", "stall", 1),  # parameter server; rank 1 sleeps at step 5
    ],
)
def test_failed_rank_is_named_within_timeout(
    tmp_path: Path, scenario: str, fail: str, culprit: int
) -> None:
    store = host_store()
    t0 = time.monotonic()
    res = launch(
        scenario,
        tmp_path,
        deadline=60,
        expect_exit={culprit: fail},
        env={
            "FC_TIMEOUT": str(TIMEOUT),
            "FC_TEST_FAIL": f"{fail}{culprit}",
            "FC_STORE_PORT": str(store.port),
        },
    )
    wall = time.monotonic() - t0
    survivors = [r for r in range(WORLD) if r != culprit]
    assert sorted(res) == survivors
    for r in survivors:
        err = res[r]["error"]
        assert err["type"] == "RankFailureError", err
        assert err["missing"] == [culprit]
        assert f"rank(s) [{culprit}] did not arrive within {TIMEOUT:g} s" in err["message"]
    assert wall < 45  # start-up + 5 steps + the timeout; a hang is caught by launch's deadline


# -- the README's torchrun command ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ddp"])
def test_example_runs_under_torchrun(tmp_path: Path, mode: str) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "train_ddp_byzantine.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        str(example),
        "--rule",
        "flag",
        "--attack",
        "random",
        "--mode",
        mode,
        "--steps",
        "20",
        "--log-every",
        "10",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", FLAGCORE_NUM_THREADS="1")
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - a hang
        pytest.fail(f"example hung: {exc}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Byzantine ranks [3] (random)" in out.stdout
    assert "step    20" in out.stdout
    assert "replicas bitwise identical on all 4 ranks" in out.stdout


def test_example_resumes_from_its_checkpoint_bit_for_bit(tmp_path: Path) -> None:
    # 8 steps straight against 4 steps with checkpoints, then a new launch that resumes from
    # them and takes the other 4: the same final parameters (the digest the example prints).
    # The parameter server with FA and a drawing attack (the hook's resume: test_rules_state.py)
    args = ["--mode", "ps", "--rule", "flag", "--attack", "random"]
    example = Path(__file__).resolve().parents[1] / "examples" / "train_ddp_byzantine.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", FLAGCORE_NUM_THREADS="1")

    def run(*extra: str) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=4", str(example), *args, "--log-every", "100", *extra]  # fmt: skip
        try:
            out = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path
            )
        except subprocess.TimeoutExpired as exc:  # pragma: no cover - a hang
            pytest.fail(f"example hung: {exc}")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    digest = re.compile(r"sha256 ([0-9a-f]{16})")
    straight = digest.findall(run("--steps", "8"))
    first = run("--steps", "4", "--checkpoint", "ck", "--checkpoint-every", "2")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [f"rank{r}.pt" for r in range(4)]
    resumed = run("--steps", "8", "--checkpoint", "ck")
    assert "resumed from ck/rank*.pt at step 4" in resumed
    assert digest.findall(resumed) == straight and digest.findall(first) != straight


# -- single-process checks (a world of one, in this process) ---------------------------------


def test_arrival_barrier_names_missing_rank() -> None:
    import torch.distributed as dist

    from flagcore.distributed import RankFailureError
    from flagcore.distributed._common import ArrivalBarrier

    store = dist.HashStore()
    b = ArrivalBarrier(store, "t", 0, (0, 1, 2), 0.2)
    store.set(f"{b.prefix}/a/0/2", b"1")  # rank 2 arrives at call 0, rank 1 never does
    t0 = time.monotonic()
    with pytest.raises(
        RankFailureError, match=r"unit test call: rank\(s\) \[1\] did not arrive within 0.2 s"
    ) as ei:
        b.arrive("unit test call")
    assert 0.15 < time.monotonic() - t0 < 5
    assert (
        ei.value.missing_ranks == (1,)
        and ei.value.where == "unit test call"
        and ei.value.timeout == 0.2
    )
    assert isinstance(ei.value, RuntimeError)


def test_arrival_barrier_passes_and_cleans_up() -> None:
    import torch.distributed as dist

    from flagcore.distributed._common import ArrivalBarrier

    store = dist.HashStore()
    b = ArrivalBarrier(store, "t", 1, (0, 1), 5.0)
    for k in range(3):
        store.set(f"{b.prefix}/a/{k}/0", b"1")
        b.arrive(f"call {k}")
    # own keys of calls 0 and 1 are deleted once call 1 / call 2 passed; call 2's stays
    assert [store.check([f"{b.prefix}/a/{k}/1"]) for k in range(3)] == [False, False, True]


def test_arrival_barrier_after_failure_names_silent_ranks() -> None:
    import torch.distributed as dist

    from flagcore.distributed._common import ArrivalBarrier

    b = ArrivalBarrier(dist.HashStore(), "t", 0, (0, 3), 0.1)
    err = b.after_failure("bucket 2", RuntimeError("Connection closed by peer"))
    assert err.missing_ranks == (3,)
    assert "Connection closed by peer" in str(err)


def test_derive_seed_deterministic_and_distinct() -> None:
    from flagcore.distributed._common import derive_seed

    seeds = {derive_seed(0, r, s, b) for r in range(4) for s in range(50) for b in range(3)}
    assert len(seeds) == 4 * 50 * 3
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert all(0 <= s < 2**63 for s in seeds)


def test_flag_defaults_to_median_norm_scale() -> None:
    from flagcore.distributed._common import rule_params_with_defaults

    assert rule_params_with_defaults("flag", {}) == {"scale": "median_norm"}
    assert rule_params_with_defaults("flag", {"scale": "paper", "r": 2}) == {
        "scale": "paper",
        "r": 2,
    }
    assert rule_params_with_defaults("median", {}) == {}


def test_hook_argument_errors(world_of_one: object) -> None:
    from flagcore.distributed import register_robust_hook

    model = torch.nn.Linear(3, 1)
    with pytest.raises(
        TypeError,
        match="register_robust_hook: ddp_model must be a torch DistributedDataParallel, got Linear",
    ):
        register_robust_hook(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    with pytest.raises(ValueError, match="rule must be one of"):
        register_robust_hook(ddp, "no_such_rule")
    with pytest.raises(
        ValueError, match="register_robust_hook: attack must be None, a callable or"
    ):
        register_robust_hook(ddp, "mean", "no_such_attack")
    with pytest.raises(ValueError, match=r"register_robust_hook: timeout must be > 0.0, got 0.0"):
        register_robust_hook(ddp, "mean", timeout=0.0)
    with pytest.raises(
        ValueError, match="register_robust_hook: attack_params given without an attack"
    ):
        register_robust_hook(ddp, "mean", attack_params={"scale": 2.0})
    with pytest.raises(TypeError, match="register_robust_hook: seed must be an int"):
        register_robust_hook(ddp, "mean", seed=1.5)


@pytest.mark.parametrize("timeout", [5.0, None])
def test_hook_in_world_of_one_gives_local_gradient(
    world_of_one: object, timeout: float | None
) -> None:
    from flagcore.distributed import register_robust_hook

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    ref = torch.nn.Linear(5, 2)
    ref.load_state_dict(model.state_dict())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = register_robust_hook(ddp, "flag", timeout=timeout)  # p = 1, median_norm: g itself
    x = torch.randn(7, 5)
    ddp(x).square().sum().backward()
    ref(x).square().sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    assert state.stats.calls >= 1 and state.stats.elements == 12
    assert (state.stats.barrier_s > 0) == (timeout is not None)


def test_byzantine_hook_sends_the_attack(world_of_one: object) -> None:
    from flagcore.distributed import register_robust_hook

    model = torch.nn.Linear(4, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = register_robust_hook(ddp, "mean", "nan")
    ddp(torch.randn(3, 4)).sum().backward()
    # the only worker sent NaN: every rule excludes non-finite workers, and a problem whose
    # workers are all excluded aggregates to zero (never NaN)
    assert all((p.grad == 0).all() for p in model.parameters())
    assert state.stats.last_nonfinite_ranks == (0,)


def test_parameter_server_argument_errors(world_of_one: object) -> None:
    from flagcore.distributed import ParameterServer

    model = torch.nn.Linear(3, 1)
    with pytest.raises(
        ValueError,
        match="ParameterServer: mode must be one of 'gradients', 'parameters', got 'weights'",
    ):
        ParameterServer(model, mode="weights")
    with pytest.raises(
        ValueError,
        match=r"ParameterServer: server_rank must be one of the group's ranks \[0\], got 1",
    ):
        ParameterServer(model, server_rank=1)
    with pytest.raises(ValueError, match="ParameterServer: no worker rank left"):
        ParameterServer(model, include_server=False)
    with pytest.raises(ValueError, match="ParameterServer: params must share one dtype"):
        ParameterServer(
            [
                torch.nn.Parameter(torch.ones(2)),
                torch.nn.Parameter(torch.ones(2, dtype=torch.float64)),
            ]
        )
    with pytest.raises(
        ValueError, match="ParameterServer: params holds no parameter that requires grad"
    ):
        ParameterServer([torch.ones(2)])
    ps = ParameterServer(model, rule="median")
    with pytest.raises(
        ValueError, match=r"ParameterServer.aggregate: flat_gradient must have 4 elements, got 3"
    ):
        ps.aggregate(torch.ones(3))
    # a tensor of the right size but not flat was flattened silently (a (2, 2) gradient of a
    # 4-parameter model was taken as the flat gradient)
    for bad in (torch.ones(2, 2), torch.ones(4, 1), torch.tensor(1.0)):
        with pytest.raises(
            ValueError,
            match=r"ParameterServer.aggregate: flat_gradient must be 1-D \(the flattened "
            rf"gradient\), got shape {re.escape(str(tuple(bad.shape)))}",
        ):
            ps.aggregate(bad)
    with pytest.raises(ValueError, match=r"ParameterServer.step: no optimizer was given"):
        ps.step()


def test_parameter_server_rejects_a_gradient_of_another_dtype(world_of_one: object) -> None:
    # it was converted to the parameters' dtype first: a complex gradient lost its imaginary
    # part and a float64 1e300 became Inf (reported as non-finite); now the wire format sends
    # NaN and every rank gets the reason, as for another rank's malformed contribution
    from flagcore.distributed import ParameterServer

    model = torch.nn.Linear(3, 1)  # 4 float32 parameters
    ps = ParameterServer(model, rule="mean")
    for bad in (
        torch.full((4,), 1e300, dtype=torch.float64),
        torch.ones(4, dtype=torch.complex64),
        torch.ones(4, dtype=torch.int64),
    ):
        out = ps.aggregate(bad)
        assert out.dtype == torch.float32 and not out.any()  # the only row excluded: zeros
        want = f"rank 0 sent a gradient of 4 {str(bad.dtype).replace('torch.', '')} values"
        assert ps.stats.last_rejected == {0: f"{want}, expected 4 float32"}
    assert torch.equal(ps.aggregate(torch.ones(4)), torch.ones(4))  # a float32 one is used


@pytest.mark.parametrize("mode", ["gradients", "parameters"])
def test_parameter_server_world_of_one_steps_like_plain_sgd(
    world_of_one: object, mode: str
) -> None:
    from flagcore.distributed import ParameterServer, assert_replicas_identical, parameter_digest

    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    ref = torch.nn.Linear(4, 3)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ps = ParameterServer(model, opt, rule="mean", mode=mode, timeout=5.0)
    for _ in range(3):
        x = torch.randn(6, 4)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
        ps.step()
        ref_opt.step()
    assert parameter_digest(model) == parameter_digest(ref)
    assert assert_replicas_identical(model) == parameter_digest(model)
    assert ps.stats.calls == 3 and ps.stats.elements == 3 * 15


def test_parameter_digest_sees_one_bit() -> None:
    from flagcore.distributed import parameter_digest

    model = torch.nn.Linear(3, 2)
    d0 = parameter_digest(model)
    with torch.no_grad():
        w = model.weight.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
    assert parameter_digest(model) != d0


def test_new_argument_errors(world_of_one: object) -> None:
    from flagcore.distributed import ParameterServer, register_robust_hook

    model = torch.nn.Linear(3, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    with pytest.raises(TypeError, match="register_robust_hook: whole_model must be a bool, got 1"):
        register_robust_hook(ddp, "mean", whole_model=1)
    with pytest.raises(
        ValueError, match="register_robust_hook: centered_clipping takes no reference"
    ):
        register_robust_hook(ddp, "centered_clipping", reference=torch.zeros(4))
    with pytest.raises(ValueError, match="attack_params are for a named attack"):
        register_robust_hook(ddp, "mean", lambda g, s: g, attack_params={"scale": 2.0})
    with pytest.raises(ValueError, match=r"ParameterServer: quorum must be in \[1, 1\], got 2"):
        ParameterServer(model, quorum=2)


def test_callable_attack_and_rejection_in_world_of_one(world_of_one: object) -> None:
    from flagcore.distributed import ParameterServer

    model = torch.nn.Linear(3, 1)
    ps = ParameterServer(
        model, rule="mean", attack=lambda g, s: g[:2]
    )  # the only worker is malformed
    out = ps.aggregate(torch.ones(4))
    assert torch.equal(out, torch.zeros(4))  # every worker excluded: the aggregate is 0, never NaN
    assert ps.stats.last_rejected == {
        0: "rank 0 sent a gradient of 2 float32 values, expected 4 float32"
    }
    assert ps.last_status == {0: "rejected"}
    assert len(ps.stats.step_times) == 1 and ps.stats.step_times[0] > 0


def test_wire_format_roundtrip() -> None:
    from flagcore.distributed._wire import HEADER_BYTES, pack, unpack

    g = torch.arange(5, dtype=torch.float32)
    rows = torch.stack(
        [
            pack(g, 5, torch.float32, "cpu", (3, 7)),
            pack(g.double(), 5, torch.float32, "cpu", (3, 7)),
            pack(g, 5, torch.float32, "cpu", (2, 7)),
        ]
    )
    assert rows.shape == (3, 20 + HEADER_BYTES)
    stack, bad = unpack(rows, 5, torch.float32, (3, 7), (0, 4, 9), "a bucket")
    assert torch.equal(stack[0], g) and stack[1:].isnan().all()
    assert bad == {
        4: "rank 4 sent a bucket of 5 float64 values, expected 5 float32",
        9: "rank 9 sent a bucket tagged (2, 7), expected (3, 7): the ranks are out of step",
    }
