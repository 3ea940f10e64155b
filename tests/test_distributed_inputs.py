"""Argument checks of flagcore.distributed, in one process (a world of one with gloo): every bad
input raises naming the public function and the argument, nothing is corrected silently, and a
malformed contribution (another shape too) is rejected and named, never flattened."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from flagcore.distributed import (  # noqa: E402 - after the torch check
    ParameterServer,
    RankFailureError,
    assert_replicas_identical,
    lognormal_times,
    parameter_digest,
    predict_step_time,
    register_robust_hook,
    shutdown,
)
from flagcore.distributed._wire import HEADER_BYTES, pack, unpack  # noqa: E402


def _ddp(n: int = 3) -> object:
    torch.manual_seed(0)
    return torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(n, 1))


# -- 6: a contribution of the right size in another shape is rejected, never flattened ----------


def test_wire_rejects_other_shapes_and_names_them() -> None:
    g = torch.arange(4, dtype=torch.float32)
    sent = [
        g,
        g.reshape(4, 1),
        g.reshape(1, 4),
        g.reshape(2, 2),
        g.reshape(2, 1, 2),
        g.reshape(4, 1).double(),  # another dtype too: the dtype message
        g[:2].reshape(2, 1),  # another size too: the size message
    ]
    rows = torch.stack([pack(c, 4, torch.float32, "cpu", (0, 0)) for c in sent])
    assert rows.shape == (7, 16 + HEADER_BYTES)
    stack, bad = unpack(rows, 4, torch.float32, (0, 0), range(7), "a gradient")
    assert torch.equal(stack[0], g) and stack[1:].isnan().all()
    assert bad == {
        1: "rank 1 sent a gradient of shape (4, 1), expected (4,)",
        2: "rank 2 sent a gradient of shape (1, 4), expected (4,)",
        3: "rank 3 sent a gradient of shape (2, 2), expected (4,)",
        4: "rank 4 sent a gradient of shape of 3 dimensions, expected (4,)",
        5: "rank 5 sent a gradient of 4 float64 values, expected 4 float32",
        6: "rank 6 sent a gradient of 2 float32 values, expected 4 float32",
    }


def test_wire_rejects_a_scalar_for_one_value() -> None:
    rows = torch.stack([pack(torch.tensor(2.0), 1, torch.float32, "cpu", (1, 2))])
    stack, bad = unpack(rows, 1, torch.float32, (1, 2), (3,), "a bucket")
    assert stack.isnan().all()
    assert bad == {3: "rank 3 sent a bucket of shape (), expected (1,)"}


def test_ps_rejects_a_callable_attack_of_another_shape(world_of_one: object) -> None:
    model = torch.nn.Linear(3, 1)
    ps = ParameterServer(model, rule="mean", attack=lambda g, s: g.reshape(4, 1))
    out = ps.aggregate(torch.ones(4))
    assert torch.equal(out, torch.zeros(4))  # the only worker is excluded: 0, not its gradient
    assert ps.stats.last_rejected == {0: "rank 0 sent a gradient of shape (4, 1), expected (4,)"}
    assert ps.last_status == {0: "rejected"}
    assert ps.stats.rejected_calls == {0: 1}


def test_hook_rejects_a_callable_attack_of_another_shape(world_of_one: object) -> None:
    ddp = _ddp(4)
    state = register_robust_hook(ddp, "mean", lambda b, s: b.reshape(-1, 1))
    ddp(torch.randn(3, 4)).sum().backward()
    assert all((p.grad == 0).all() for p in ddp.module.parameters())
    assert state.stats.last_rejected == {0: "rank 0 sent a bucket of shape (5, 1), expected (5,)"}


# -- 7: the caller's malformed gradient raises before any state changes ------------------------


def test_aggregate_bad_argument_leaves_the_server_in_step(world_of_one: object) -> None:
    ps = ParameterServer(torch.nn.Linear(3, 1), rule="mean")
    bad = [torch.zeros(5), torch.ones(2, 2), [0.0] * 4, None]
    for g in bad:
        with pytest.raises((TypeError, ValueError), match=r"ParameterServer\.aggregate: "):
            ps.aggregate(g)
    assert ps.steps == 0 and ps.stats.calls == 0 and ps.stats.elements == 0
    assert torch.equal(ps.aggregate(torch.ones(4)), torch.ones(4))
    assert ps.steps == 1 and ps.stats.calls == 1


# -- 8: params and optimizer ---------------------------------------------------------------


def test_ps_refuses_a_bare_tensor_and_other_params(world_of_one: object) -> None:
    w = torch.nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(
        TypeError,
        match=r"ParameterServer: params must be a torch.nn.Module or an iterable of Parameters, "
        r"got a single Parameter of shape \(2, 3\).*pass \[w\]",
    ):
        ParameterServer(w, opt, rule="mean")
    with pytest.raises(TypeError, match=r"ParameterServer: params must be .* got 5 \(int\)"):
        ParameterServer(5, opt)
    with pytest.raises(TypeError, match=r"ParameterServer: params\[0\] must be a torch Parameter"):
        ParameterServer([np.zeros(3)], opt)
    with pytest.raises(TypeError, match=r"ParameterServer: params\[1\] must be a torch Parameter"):
        ParameterServer([w, "b"], opt)
    with pytest.raises(TypeError, match="ParameterServer: params must be"):
        ParameterServer({"w": w}, opt)
    with pytest.raises(ValueError, match=r"ParameterServer: params\[0\] is not a leaf tensor"):
        ParameterServer(list(w), opt)  # the rows of w: views whose .grad autograd never fills
    # the right way: [w] aggregates and steps w itself
    ps = ParameterServer([w], opt, rule="mean")
    (w * torch.arange(6.0).reshape(2, 3)).sum().backward()
    ps.step()
    torch.testing.assert_close(w.detach(), 1 - 0.1 * torch.arange(6.0).reshape(2, 3))


def test_ps_refuses_an_optimizer_without_step(world_of_one: object) -> None:
    m = torch.nn.Linear(3, 1)
    with pytest.raises(
        TypeError,
        match=r"ParameterServer: optimizer must be None or a torch optimizer \(with step\(\) and "
        r"zero_grad\(\)\), got 5 \(int\)",
    ):
        ParameterServer(m, 5)

    class StepOnly:
        def step(self) -> None:
            pass

    with pytest.raises(TypeError, match="ParameterServer: optimizer must be None or"):
        ParameterServer(m, StepOnly())


# -- 9: finish -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "exc", "msg"),
    [
        (-1, ValueError, r"timeout must be > 0.0, got -1.0"),
        (float("nan"), ValueError, "timeout must be finite, got nan"),
        (float("inf"), ValueError, "timeout must be finite, got inf"),
        (1e14, ValueError, r"timeout must be at most 1e\+07 s"),
        ("x", TypeError, r"timeout must be a real number, got 'x' \(str\)"),
        (None, TypeError, "timeout must be a real number of seconds, got None"),
    ],
)
def test_finish_checks_its_timeout(
    world_of_one: object, timeout: object, exc: type, msg: str
) -> None:
    ps = ParameterServer(torch.nn.Linear(3, 1), rule="mean")
    with pytest.raises(exc, match="ParameterServer.finish: " + msg):
        ps.finish(timeout)  # type: ignore[arg-type]


class _FakeSend:
    """A send in ParameterServer._outstanding (a _Waiter's interface) to rank ``key``: still
    pending, or completed (``done``) with ``error``."""

    arrivals = None

    def __init__(self, key: int, error: BaseException | None = None, done: bool = False):
        self.key, self.error, self.done = key, error, threading.Event()
        if done:
            self.done.set()


def test_finish_raises_when_messages_stay_undelivered(world_of_one: object) -> None:
    ps = ParameterServer(torch.nn.Linear(3, 1), rule="mean")
    ps.finish(0.01)  # nothing outstanding: returns
    ps._outstanding.append(_FakeSend(3))  # type: ignore[arg-type]  # never completes
    with pytest.raises(
        RankFailureError,
        match=r"ParameterServer.finish: message\(s\) from rank 0 to rank\(s\) \[3\] not "
        r"delivered: 1 still undelivered after 0.05 s \(to rank\(s\) \[3\]\)",
    ) as ei:
        ps.finish(0.05)
    assert ei.value.missing_ranks == (3,)


def test_finish_reports_a_send_that_failed(world_of_one: object) -> None:
    """A result send whose connection broke (the late worker died) completes with an error:
    finish() treated it as delivered and returned, and the run then hung in the next collective."""
    ps = ParameterServer(torch.nn.Linear(3, 1), rule="mean")
    failed = _FakeSend(2, RuntimeError("Connection closed by peer"), done=True)
    ps._outstanding.append(failed)  # type: ignore[arg-type]
    ps._reap()  # as every step does: the completed send leaves the list, its failure is kept
    assert ps._outstanding == []
    with pytest.raises(
        RankFailureError,
        match=r"to rank\(s\) \[2\] not delivered: 1 failed \(to rank\(s\) \[2\]; first: "
        r"RuntimeError: Connection closed by peer\)",
    ) as ei:
        ps.finish(0.05)
    assert ei.value.missing_ranks == (2,)


# -- 10: timeouts have an upper bound --------------------------------------------------------


def test_timeouts_are_bounded(world_of_one: object) -> None:
    m = torch.nn.Linear(3, 1)
    for big in (1e7 + 1, 1e14, 1e15, 1e300):
        with pytest.raises(ValueError, match=r"ParameterServer: timeout must be at most 1e\+07 s"):
            ParameterServer(m, timeout=big)
        with pytest.raises(
            ValueError, match=r"register_robust_hook: timeout must be at most 1e\+07 s"
        ):
            register_robust_hook(_ddp(), timeout=big)
        with pytest.raises(ValueError, match=r"shutdown: timeout must be at most 1e\+07 s"):
            shutdown(timeout=big)
    ps = ParameterServer(m, rule="mean", timeout=1e7)  # the bound itself works
    assert torch.equal(ps.aggregate(torch.ones(4)), torch.ones(4))
    assert ParameterServer(m, rule="mean", timeout=None).timeout is None
    ddp = _ddp()
    state = register_robust_hook(ddp, "mean", timeout=1e7)
    ddp(torch.randn(2, 3)).sum().backward()
    assert state.steps == 1


# -- 11: messages name the public function and the argument ---------------------------------


def test_hook_messages_name_the_function_and_argument(world_of_one: object) -> None:
    fn = "register_robust_hook"
    cases = [
        (dict(rule="nope"), ValueError, rf"{fn}: rule must be one of mean, .*got 'nope'"),
        (dict(rule="krum", f=1), ValueError, rf"{fn}: rule 'krum' needs p >= 2f \+ 3"),
        (dict(rule="flag", foo=1), TypeError, rf"{fn}: rule 'flag' takes no parameter 'foo'"),
        (dict(attack="nope"), ValueError, rf"{fn}: attack must be None, a callable or one of"),
        (
            dict(attack="random", attack_params=5),
            TypeError,
            rf"{fn}: attack_params must be None or a dict .*got 5 \(int\)",
        ),
        (
            dict(attack="random", attack_params={"nope": 1}),
            TypeError,
            rf"{fn}: attack_params \{{'nope': 1\}} do not suit attack 'random'",
        ),
        (dict(process_group=5), TypeError, rf"{fn}: process_group must be None or a .*got 5"),
        (dict(store=5), TypeError, rf"{fn}: store must be None or a torch.distributed Store"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            register_robust_hook(_ddp(), **kw)


def test_ps_messages_name_the_function_and_argument(world_of_one: object) -> None:
    fn = "ParameterServer"
    m = torch.nn.Linear(3, 1)
    cases = [
        (dict(rule="nope"), ValueError, rf"{fn}: rule must be one of mean, .*got 'nope'"),
        (dict(rule="krum", f=1), ValueError, rf"{fn}: rule 'krum' needs p >= 2f \+ 3"),
        (dict(attack="nope"), ValueError, rf"{fn}: attack must be None, a callable or one of"),
        (dict(attack="random", attack_params=[1]), TypeError, rf"{fn}: attack_params must be"),
        (dict(process_group="g"), TypeError, rf"{fn}: process_group must be None or a"),
        (dict(store=5), TypeError, rf"{fn}: store must be None or a torch.distributed Store"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ParameterServer(m, **kw)


def test_tools_name_their_argument(world_of_one: object) -> None:
    with pytest.raises(
        TypeError, match=r"parameter_digest: module must be a torch\.nn\.Module, got Tensor"
    ):
        parameter_digest(torch.zeros(3))
    with pytest.raises(
        TypeError, match=r"assert_replicas_identical: module must be a torch\.nn\.Module, got int"
    ):
        assert_replicas_identical(5)
    m = torch.nn.Linear(3, 1)
    assert assert_replicas_identical(m) == parameter_digest(m)


def test_rank_failure_error_checks_missing_ranks() -> None:
    with pytest.raises(TypeError, match="RankFailureError: missing_ranks must be a sequence"):
        RankFailureError("x", missing_ranks=["a"])
    assert RankFailureError("x", missing_ranks=[np.int64(2)]).missing_ranks == (2,)


def test_predict_step_time_messages() -> None:
    fn = "predict_step_time"
    cases = [
        (dict(overhead="x"), TypeError, rf"{fn}: overhead must be a real number, got 'x'"),
        (dict(overhead=None), TypeError, rf"{fn}: overhead must be a real number, got None"),
        (dict(seed="a"), TypeError, rf"{fn}: seed must be an int, got 'a'"),
        (dict(seed=-1), ValueError, rf"{fn}: seed must be in \[0, inf\], got -1"),
        (dict(steps=1.0), TypeError, rf"{fn}: steps must be an int, got 1.0"),
        (dict(quorum=1.0), TypeError, rf"{fn}: quorum must be an int, got 1.0"),
    ]
    for kw, exc, msg in cases:
        args = {"quorum": 1, **kw}
        with pytest.raises(exc, match=msg):
            predict_step_time([1.0], **args)
    with pytest.raises(ValueError, match=rf"{fn}: worker_times up to 1e\+308 s are too long"):
        predict_step_time([1e308, 1.0], 1, steps=3)


def test_lognormal_times_checks_its_arguments() -> None:
    fn = "lognormal_times"
    with pytest.raises(ValueError, match=rf"{fn}: mean must be > 0.0, got -1.0"):
        lognormal_times(-1, 0.5)
    with pytest.raises(ValueError, match=rf"{fn}: mean must be > 0.0, got 0.0"):
        lognormal_times(0, 0.5)
    with pytest.raises(ValueError, match=rf"{fn}: sigma must be >= 0.0, got -1.0"):
        lognormal_times(1, -1)
    with pytest.raises(ValueError, match=rf"{fn}: sigma must be finite, got nan"):
        lognormal_times(1, float("nan"))
    with pytest.raises(TypeError, match=rf"{fn}: mean must be a real number, got 'a'"):
        lognormal_times("a", 1)
    with pytest.raises(ValueError, match=rf"{fn}: shift must be >= 0.0, got -5.0"):
        lognormal_times(1, 0.1, shift=-5)
    res = predict_step_time([lognormal_times(1.0, 0.0, shift=0.5)], 1, steps=5)
    assert res["mean"] == pytest.approx(1.5)


# -- 12: predict_step_time corrects nothing --------------------------------------------------


def test_predict_step_time_refuses_instead_of_correcting() -> None:
    fn = "predict_step_time"
    with pytest.raises(TypeError, match=rf"{fn}: worker_times\[0\] must be a number, .*'0.5'"):
        predict_step_time(["0.5"], 1, steps=3)
    with pytest.raises(TypeError, match=rf"{fn}: worker_times\[0\] must hold real numbers"):
        predict_step_time([["0.5", "1"]], 1, steps=3)
    with pytest.raises(TypeError, match=rf"{fn}: worker_times\[0\] must hold real numbers"):
        predict_step_time([[True, False]], 1, steps=3)
    with pytest.raises(ValueError, match=rf"{fn}: worker_times\[0\] must be 1-D, got shape"):
        predict_step_time([[[1.0], [2.0]]], 1, steps=3)
    with pytest.raises(
        ValueError,
        match=rf"{fn}: worker_times\[0\] \(a callable\)'s result must be 1-D, got shape \(3, 1\)",
    ):
        predict_step_time([lambda rng, m: np.ones((m, 1))], 1, steps=3)
    with pytest.raises(TypeError, match=rf"{fn}: worker_times must be a sequence .* got a dict"):
        predict_step_time({0: 1.0, 1: 2.0}, 1, steps=3)
    with pytest.raises(TypeError, match=rf"{fn}: worker_times\[0\] must be a number"):
        predict_step_time([None], 1, steps=3)
    # what is right still works: numbers, 1-D arrays, samplers returning (m,)
    res = predict_step_time([1, np.array([2.0, 2.0]), lambda rng, m: np.full(m, 3.0)], 3, steps=4)
    assert res["mean"] == pytest.approx(3.0)


def test_fingerprint_takes_views_at_any_offset_and_many_tensors() -> None:
    # a Parameter viewing a flat buffer at a byte offset not divisible by 8 (and fp16 at an odd
    # element) made the int64 view raise inside the hook and ps.step on every rank
    from flagcore.distributed._common import fingerprint

    flat = torch.randn(45)
    views = [flat[15:45].view(6, 5), torch.randn(31, dtype=torch.float16)[1:], flat[1:2]]
    copies = [v.clone() for v in views]  # the same bytes at offset 0
    assert fingerprint(views) == fingerprint(copies)
    big = torch.randn(1 << 19)  # 2 MiB: summed where it is
    many = [torch.randn(8, 8) for _ in range(400)]
    base = fingerprint([big, *many, *views])
    assert base == fingerprint([big.clone(), *[m.clone() for m in many], *copies])
    for k in (0, 5, 401):  # one ulp anywhere moves it
        ts = [big.clone(), *[m.clone() for m in many], *[v.clone() for v in views]]
        t = ts[k].view(-1)
        t[0] = torch.nextafter(t[0], torch.tensor(float("inf"), dtype=t.dtype))
        assert fingerprint(ts) != base, k
    assert fingerprint([torch.zeros(0)]) == 0


def test_instance_ids_are_counted_per_group() -> None:
    # one process-wide counter, advanced only by the members of a subgroup (an
    # assert_replicas_identical on it), gave the next barrier of the whole group another store
    # prefix on those ranks: they waited for keys the others wrote elsewhere
    from flagcore.distributed._common import instance_id

    a0 = instance_id("t-kind", [0, 1, 2])
    instance_id("t-kind", [0, 1])  # a subgroup's check on ranks 0 and 1 only
    assert instance_id("t-kind", [0, 1, 2]) == a0 + 1
    assert instance_id("t-other", [0, 1, 2]) == 0


# -- 11: the end-of-run points (assert_replicas_identical, shutdown) -------------------------


def test_wait_marked_names_the_ranks_that_never_mark() -> None:
    """The store's host waits, polled, for the others' marks (shutdown waited in a blocking
    store.wait that ignored Ctrl-C and named nobody on timeout)."""
    import time

    from flagcore.distributed._common import ArrivalBarrier

    store = torch.distributed.HashStore()
    first = ArrivalBarrier(store, "t-marks", 0, [0, 4, 7], 0.2)
    t0 = time.monotonic()
    with pytest.raises(RankFailureError, match=r"end: rank\(s\) \[4, 7\] did not arrive") as ei:
        first.wait_marked("done", "end")
    assert ei.value.missing_ranks == (4, 7) and time.monotonic() - t0 < 2.0
    for r in (4, 7):
        other = ArrivalBarrier(store, "t-marks", r, [0, 4, 7], 0.2)
        other.prefix = first.prefix  # in one process each instance gets a new number
        other.mark("done")
    first.wait_marked("done", "end")  # returns at once


def test_parameter_server_takes_a_whole_model_reference(world_of_one: object) -> None:
    """A centered_clipping reference of the model's size was refused at construction ("reference
    must have shape (3,)": the rule was probed on a (p, 3) stack); one of another size is
    refused naming the model's size."""
    import flagcore

    m = torch.nn.Linear(3, 1)  # 4 parameters
    ref = np.array([0.5, -0.5, 0.25, 1.0])
    ps = ParameterServer(m, rule="centered_clipping", reference=ref, tau=10.0, iterations=1)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    want = flagcore.aggregate(
        g[None].double().numpy(), "centered_clipping", reference=ref, tau=10.0, iterations=1
    )
    np.testing.assert_allclose(ps.aggregate(g).double().numpy(), want, rtol=1e-6)
    with pytest.raises(
        ValueError,
        match=r"ParameterServer: reference must hold the model's 4 values \(one flattened "
        r"gradient\), got shape \(5,\)",
    ):
        ParameterServer(m, rule="centered_clipping", reference=np.zeros(5))
