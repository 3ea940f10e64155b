"""Robust aggregation inside DistributedDataParallel: a communication hook that all-gathers
each gradient bucket from every rank and aggregates the whole model with a flagcore rule.

Whole-model aggregation at bucket speed (``whole_model=True``, the default): DDP hands the
hook one bucket at a time (a flat slice of the gradients, about ``bucket_cap_mb`` MiB), while
the backward pass is still running. Each bucket is all-gathered asynchronously; when its
gather completes, a completion callback adds the bucket's (p, p) Gram matrix to the step's
sum (coordinate-wise rules without pre-aggregation skip the Gram and aggregate the bucket
right away). When the last bucket of the step has arrived, the rule's p-space part runs once
on the whole model's Gram (``flagcore.rules.gram_plan``: Krum scores, Weiszfeld, clipping, the
Flag Aggregator's IRLS, Bulyan's selection, NNM mixing) and every bucket is finished with one
weighted sum (or a coordinate rule on the selected / mixed rows). The result equals
``flagcore.aggregate(whole_model_stack, rule, ...)`` to rounding (the Gram is summed in another
order), whatever the bucket layout, and is bitwise the same on every rank.

``whole_model=False`` aggregates each bucket as its own problem (block-wise: for rules that
look at whole vectors, a different rule; for coordinate-wise rules the same).

Failure model: see ``flagcore.distributed._wire`` (a malformed contribution becomes a NaN row,
excluded and counted against f, named in ``stats.last_rejected`` on every rank) and
``register_robust_hook`` (a dead or stalled rank is named within ``timeout``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._common import (
    ArrivalBarrier,
    CommStats,
    Completion,
    all_gather_flat,
    check_attack_params,
    check_process_group,
    check_resume_state,
    check_store,
    check_timeout,
    contribution_of,
    default_store,
    derive_seed,
    fingerprint,
    record_nonfinite_mask,
    rule_params_with_defaults,
    timed,
    torch_dist,
    validate_attack,
    validate_rule,
)
from ._wire import HEADER_BYTES, pack, payload_bytes, unpack
from .errors import RankFailureError, ReplicaDivergenceError

log = logging.getLogger("flagcore.distributed")


@dataclass
class RobustHookState:
    """State of one robust hook (this rank). Returned by ``register_robust_hook``; read
    ``stats`` for timings, the ranks that sent non-finite values and the rejected (malformed)
    contributions; ``last_plan`` is the whole-model plan of the last step (whole_model=True)."""

    rule: str
    rule_params: dict[str, Any]
    attack: Any
    attack_params: dict[str, Any]
    seed: int
    timeout: float | None
    process_group: Any
    rank: int  # global rank of this process
    ranks: tuple[
        Any, ...
    ]  # global ranks of the group, in group order (row i of a stack = ranks[i])
    whole_model: bool = True
    barrier: ArrivalBarrier | None = None
    stats: CommStats = field(default_factory=CommStats)
    bucket_calls: dict[int, int] = field(default_factory=dict)  # bucket index -> calls so far
    rule_obj: Any = None  # the configured flagcore rule, built once
    last_plan: Any = None
    steps: int = 0  # steps completed (last buckets seen)
    # why the last gathered bucket rejected this rank's own row as out of step ("" if it did not)
    self_out_of_step: str = ""
    _pending: list[Any] = field(default_factory=list)
    _lock: Any = field(default_factory=threading.Lock)

    def state_dict(self) -> dict[str, Any]:
        """What the steps so far changed in the hook, to resume a run from a checkpoint:
        ``{"steps", "bucket_calls" (bucket index -> calls), "rule_state" (the rule's
        Rule.state_dict())}``. The model and the optimizer are the caller's to save, as
        always. Take it between steps (after ``optimizer.step()``).

        A resumed run goes on with the same rule state and call counts, but its first step
        runs on DDP's initial bucket layout (DDP rebuilds its buckets after a fresh model's
        first step; the uninterrupted run had the rebuilt ones). Coordinate-wise rules are
        bitwise the same (tested); rules that weight the rows by the Gram (geometric median,
        centered clipping, the Flag Aggregator, ...) add the whole-model Gram in another order
        there and differ at rounding level from then on (tested: within 1e-6 relative after
        three steps); and a drawing ``attack`` draws in the bucket's flat layout, so in that
        step its noise lands on other coordinates. The parameter server, whose flat gradient
        has one fixed order, resumes bit for bit."""
        return {
            "steps": self.steps,
            "bucket_calls": dict(self.bucket_calls),
            "rule_state": self.rule_obj.state_dict(),
        }

    def load_state_dict(self, state: Any) -> None:
        """Resume: every rank loads the ``state_dict()`` it saved into the state of a freshly
        registered hook (same arguments, the restored model), before the first backward pass.
        The call counts go on from there (attack seeds and the buckets' message tags depend on
        them), the rule's state as the rule's ``load_state_dict``. Checked first (RuntimeError
        after the first step; ValueError / TypeError naming the key): a refused state changes
        nothing."""
        fn = "RobustHookState.load_state_dict"
        keys = ("steps", "bucket_calls", "rule_state")
        check_resume_state(fn, state, keys, self.steps > 0 or bool(self.bucket_calls))
        calls = state["bucket_calls"]
        if not isinstance(calls, dict) or not all(
            type(k) is int and k >= 0 and type(v) is int and v >= 0 for k, v in calls.items()
        ):
            raise ValueError(
                f"{fn}: state['bucket_calls'] must map bucket indices (int >= 0) to call counts "
                f"(int >= 0), got {calls!r:.200}"
            )
        self.rule_obj._load_state(state["rule_state"], fn, "state['rule_state']")
        self.steps = int(state["steps"])
        self.bucket_calls = dict(calls)


@dataclass
class _Bucket:
    """One bucket of the current step: its gather and what its completion callback made."""

    index: int
    call: int
    buf: Any
    gathered: Any
    where: str
    t_launch: float
    k: int | None = None
    work: Any = None
    done: Any = None  # the gather's future chained with the completion callback
    result: Any = None  # whole_model: the future handed to DDP, completed at the end of the step
    stack: Any = None
    bad: dict[int, str] = field(default_factory=dict)
    gram: Any = None
    out: Any = None
    excl: Any = None


def register_robust_hook(
    ddp_model: Any,
    rule: str = "flag",
    attack: Any = None,
    *,
    whole_model: bool = True,
    attack_params: dict[str, Any] | None = None,
    seed: int = 0,
    timeout: float | None = 300.0,
    process_group: Any = None,
    store: Any = None,
    **rule_params: Any,
) -> RobustHookState:
    """Make ``ddp_model`` (a torch DistributedDataParallel) aggregate gradients with a
    flagcore rule instead of averaging them.

    Every rank all-gathers every gradient bucket from all ranks of the group (row i = the i-th
    rank of the group) and computes the same aggregate: with ``whole_model=True`` (default)
    exactly ``flagcore.aggregate(whole_model_stack, rule, **rule_params)`` (to rounding), the
    rule's p-space solve running once per step after the last bucket arrived (see the module
    docstring); with ``whole_model=False`` each bucket separately. Every rank runs the same
    code on the same data, so all replicas get the same update and never drift (bitwise, on
    identical hardware). The rule object is built once (``flagcore.rules.make_rule``) and
    reused, so stateful options (bucketing's shuffle stream) advance once per step.

    Parameters
    ----------
    rule, **rule_params : the flagcore rule and its parameters. For ``rule="flag"`` without an
        explicit ``scale``, ``scale="median_norm"`` is used (the paper's scaling has no gradient
        magnitude, so learning rates tuned for the mean would not transfer). centered_clipping
        takes no ``reference`` here.
    whole_model : True: whole-model aggregation with per-bucket overlap. False: block-wise.
    attack, attack_params : make THIS rank Byzantine (for experiments): it sends
        ``flagcore.attacks.attack(attack, own[None], 1, seed=s, **attack_params)`` instead of its
        gradient bucket ``own``, where ``s`` is derived from (seed, rank, bucket, call). The rank
        is not omniscient: its own gradient is the attack's only "honest" input. ``attack`` may
        also be a callable ``attack(own, s)`` returning what to send (any tensor: one of another
        size or dtype is rejected by every rank, see below).
    timeout : seconds. At the last bucket of each step every rank waits at most this long (the
        first step at least 60 s: ranks reach it at different times) for
        the step's gathers, then raises RankFailureError naming the ranks that never launched
        their gather (dead, or stalled anywhere in the step); if every rank launched, a probe
        through the c10d store names those that no longer answer (within another ``timeout``).
        Costs one small store request per bucket. None: no check (a stalled peer is then only
        caught by the process group's own timeout, ``init_process_group(timeout=...)``; keep
        that one larger than ``timeout`` in any case).
    process_group : the group to aggregate over (default: the default group).
    store : the c10d store for the liveness check (default: the default group's store). Its
        keys are named after the order in which hooks / parameter servers are created in a
        process, so every rank must create them in the same order (as with collectives).

    Malformed contributions: a rank whose bucket has another number of values or another dtype
    than the bucket (or is out of step) never puts it on the wire; every rank replaces its row
    by NaN, the rule excludes it and counts it against f for that step (f_eff = max(f - e, 0)),
    and ``stats.last_rejected`` holds e.g. "rank 2 sent a bucket of 1005 float64 values,
    expected 1000 float32" on every rank (also logged as a warning on logger
    "flagcore.distributed"). NaN/Inf values are excluded the same way (every flagcore rule
    excludes non-finite workers); ``stats.last_nonfinite_ranks`` says who sent them.

    Returns the hook's RobustHookState (its ``stats`` split the time into liveness check,
    communication and aggregation).
    """
    fn = "register_robust_hook"
    dist = torch_dist()
    from torch.nn.parallel import DistributedDataParallel

    from ..rules import make_rule

    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(
            f"{fn}: ddp_model must be a torch DistributedDataParallel, got "
            f"{type(ddp_model).__name__}"
        )
    if not dist.is_initialized():
        raise ValueError(
            f"{fn}: torch.distributed is not initialised (call init_process_group first)"
        )
    if not isinstance(whole_model, bool):
        raise TypeError(f"{fn}: whole_model must be a bool, got {whole_model!r}")
    timeout = check_timeout(fn, timeout)
    ranks = check_process_group(fn, dist, process_group)
    check_store(fn, dist, store)
    params = rule_params_with_defaults(rule, rule_params)
    if params.get("reference") is not None:
        raise ValueError(
            f"{fn}: centered_clipping takes no reference in the DDP hook (the reference is a "
            f"whole-model vector); got a {type(params['reference']).__name__}"
        )
    validate_rule(fn, rule, params, len(ranks))
    attack_params = check_attack_params(fn, attack_params)
    validate_attack(fn, attack, attack_params)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{fn}: seed must be an int, got {seed!r}")
    rank = dist.get_rank()
    state = RobustHookState(
        rule,
        params,
        attack,
        attack_params,
        seed,
        timeout,
        process_group,
        rank,
        ranks,
        whole_model=whole_model,
        rule_obj=make_rule(rule, _fn=fn, **params),
    )
    if timeout is not None:
        state.barrier = ArrivalBarrier(
            store if store is not None else default_store(dist), "hook", rank, ranks, timeout
        )
    ddp_model.register_comm_hook(state, robust_hook)
    return state


def robust_hook(state: RobustHookState, bucket):  # type: ignore[no-untyped-def]
    """The DDP communication hook (registered by ``register_robust_hook``): bucket is a
    dist.GradBucket, the result a torch.futures.Future[torch.Tensor]. Those two are not
    annotated because DDP compares annotations to the real classes, and this module's
    annotations are strings (``from __future__ import annotations``)."""
    try:
        return _hook(state, bucket)
    except BaseException:
        state._pending = []  # a failed step leaves nothing behind for the next one
        raise


def _hook(state: RobustHookState, bucket):  # type: ignore[no-untyped-def]
    import torch

    dist = torch_dist()
    buf = bucket.buffer()
    idx = bucket.index()
    call = state.bucket_calls.get(idx, 0)
    state.bucket_calls[idx] = call + 1
    own = contribution_of(
        state.attack, state.attack_params, buf, derive_seed(state.seed, state.rank, idx, call)
    )
    p, n = len(state.ranks), buf.numel()
    # the header's tag: the bucket, this rank's call of it and a fingerprint of the bucket's
    # parameters; the receivers check it against the majority's (see _majority_tag)
    tag_b = (call << 32) | fingerprint(bucket.parameters())
    msg = pack(own, n, buf.dtype, buf.device, (idx, tag_b))
    gathered = torch.empty(p * msg.numel(), dtype=torch.uint8, device=buf.device)
    st = state.stats
    st.calls += 1
    st.elements += n
    entry = _Bucket(idx, call, buf, gathered, f"robust DDP hook, bucket {idx}, call {call}", 0.0)
    if state.barrier is not None:
        entry.k = timed(st, "barrier_s", state.barrier.launched)
    # The gather runs asynchronously and its completion callback (Gram, or the block's rule)
    # runs in the communication thread, so both overlap with the rest of the backward pass.
    entry.t_launch = time.perf_counter()
    try:
        entry.work = all_gather_flat(dist, gathered, msg, state.process_group, async_op=True)
    except RuntimeError as exc:
        if state.barrier is None:
            raise
        raise state.barrier.after_failure(entry.where, exc) from exc
    entry.done = entry.work.get_future().then(lambda fut: _received(state, entry, fut))
    if state.whole_model:
        entry.result = torch.futures.Future()
    state._pending.append(entry)
    if not bucket.is_last():
        return entry.result if state.whole_model else entry.done
    pending, state._pending = state._pending, []
    try:
        _wait_step(state, pending)
        if state.whole_model:
            timed(st, "aggregate_s", lambda: _finish_whole_model(state, pending))
    except BaseException as exc:
        # torch futures accept only an Exception: a KeyboardInterrupt (Ctrl-C while waiting)
        # is handed to them wrapped, and itself re-raised to the caller of backward()
        err = exc if isinstance(exc, Exception) else RuntimeError(f"{entry.where}: {exc!r}")
        for e in pending:
            if e.result is not None and not e.result.done():
                e.result.set_exception(err)
        raise
    return entry.result if state.whole_model else entry.done


def _received(state: RobustHookState, e: _Bucket, fut: Any) -> Any:
    """Completion callback of one bucket's gather (communication thread)."""
    from ..rules.gram_plan import block_gram, has_plan, needs_gram

    fut.value()  # re-raises a failed collective (named by _wait_step)
    t0 = time.perf_counter()
    st = state.stats
    buf = e.buf
    rows = e.gathered.view(len(state.ranks), -1)
    tag, steps = _majority_tag(rows, buf, state.ranks)
    state.self_out_of_step = steps.get(state.rank, "")
    stack, bad = unpack(rows, buf.numel(), buf.dtype, tag, state.ranks, "a bucket")
    for r, m in steps.items():
        bad[r] = m  # unpack's message has the raw tag words
    e.stack, e.bad = stack, bad
    out = None
    if state.whole_model:
        if not has_plan(state.rule_obj):  # aggregated at the end on the concatenated buckets
            nonfinite = None  # known only then
        elif needs_gram(state.rule_obj):
            e.gram = block_gram(stack)
            nonfinite = ~np.isfinite(np.diagonal(e.gram))
        else:
            # coordinate-wise: aggregate now; redone at the end only if another bucket excludes
            # more
            e.out, info = state.rule_obj(stack, return_info=True)
            e.excl = np.asarray(info.excluded, bool)
            nonfinite = e.excl
    else:
        out, info = state.rule_obj(stack, return_info=True)  # the rule's own finiteness check
        out = out.to(buf.dtype)
        nonfinite = np.asarray(info.excluded, bool)
    with state._lock:
        st.comm_s += t0 - e.t_launch
        if nonfinite is not None:
            record_nonfinite_mask(st, nonfinite, state.ranks, skip=tuple(bad))
        if bad:
            st.last_rejected = dict(bad)
            for r, m in bad.items():
                st.rejected_calls[r] = st.rejected_calls.get(r, 0) + 1
                log.warning(
                    "flagcore.distributed: %s: %s; excluded and counted against f", e.where, m
                )
        st.aggregate_s += time.perf_counter() - t0
    return out


def _majority_tag(rows: Any, buf: Any, ranks: Any) -> tuple[tuple[int, int], dict[int, str]]:
    """The tag (bucket, call << 32 | parameter fingerprint) most of the gathered headers carry
    and {rank: message} for the rows tagged otherwise (a tie for the most: ReplicaDivergenceError
    on every rank). Every rank sees the same headers, so every rank takes the same tag and rejects
    the same rows, the out-of-step rank its own: a rank that ran an extra or skipped a
    backward pass (its call counts differ) or whose parameters forked (an extra or missed
    optimizer step) is excluded and named on every rank, and the replicas keep agreeing."""
    import torch

    nb = payload_bytes(buf.numel(), buf.dtype)
    head = torch.empty((rows.shape[0], HEADER_BYTES), dtype=torch.uint8).copy_(rows[:, nb:])
    tags = [(int(h[0]), int(h[1])) for h in head.view(torch.int64).tolist()]
    top = Counter(tags).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        # no majority (two ranks that disagree, or groups of equal size): which replica forked
        # cannot be told, and excluding the group of the higher ranks blamed an honest rank
        groups: dict[str, list[int]] = {}
        for r, t in zip(ranks, tags):
            groups.setdefault(
                f"bucket {t[0]}, call {t[1] >> 32}, fingerprint {t[1] & 0xFFFFFFFF:08x}", []
            ).append(int(r))
        said = "; ".join(f"ranks {v}: {k}" for k, v in groups.items())
        raise ReplicaDivergenceError(
            f"robust DDP hook: the ranks disagree with no majority ({said}): flagcore cannot "
            "tell which replica forked (an extra or a missed backward or optimizer step); "
            "restart from a checkpoint",
            groups=groups,
            where="robust DDP hook",
        )
    want = top[0][0]
    out = {}
    for r, t in zip(ranks, tags):
        if t == want:
            continue
        call, fp = t[1] >> 32, t[1] & 0xFFFFFFFF
        w_call, w_fp = want[1] >> 32, want[1] & 0xFFFFFFFF
        if t[0] != want[0]:
            out[r] = (
                f"rank {r} is out of step: it sent bucket {t[0]} where most ranks sent bucket "
                f"{want[0]} (its buckets differ)"
            )
        elif call != w_call:
            out[r] = (
                f"rank {r} is out of step: it sent call {call} of bucket {t[0]}, most ranks "
                f"call {w_call} (it ran an extra or skipped a backward pass)"
            )
        else:
            out[r] = (
                f"rank {r} is out of step: its parameters differ from most ranks' (fingerprint "
                f"{fp:08x}, most ranks {w_fp:08x}; an extra or missed optimizer step forked "
                f"its replica)"
            )
    return want, out


def _wait_step(state: RobustHookState, pending: list[Any]) -> None:
    """Wait for the step's gathers (at most ``timeout`` in all) and their callbacks."""
    # the first step may wait longer: ranks reach it at different times (start-up, first batch)
    wait = (
        None
        if state.timeout is None
        else (state.timeout if state.steps else max(state.timeout, 60.0))
    )
    state.steps += 1
    deadline = None if wait is None else time.monotonic() + wait
    # every wait is sliced (Completion): a blocking work.wait() would hold a Ctrl-C until the
    # gather completes or the timeout runs out
    for e in pending:
        if state.barrier is not None:
            try:
                state.barrier.wait_work(e.work, e.k, e.where, deadline)
            except RankFailureError as err:
                own = state.self_out_of_step
                if not own:
                    raise
                # the others did not "die": this rank forked and ran a pass they never run
                raise RankFailureError(
                    f"{err} (the others are probably alive: this rank was itself rejected as out "
                    f"of step before: {own})",
                    missing_ranks=err.missing_ranks,
                    where=err.where,
                    timeout=err.timeout,
                ) from err
        else:
            Completion(e.work).wait(None)
        Completion(future=e.done).wait(None)  # the callback's own work (re-raises its error)


def _finish_whole_model(state: RobustHookState, pending: list[Any]) -> None:
    """Solve once in p-space on the step's summed Gram, then finish every bucket."""
    import torch

    from ..rules.gram_plan import apply_plan, has_plan, needs_gram, plan_coordinate, plan_from_gram

    rule = state.rule_obj
    p = len(state.ranks)
    if not has_plan(rule):
        # a rule (or option) flagcore.rules.gram_plan does not cover: the whole stack, once
        whole, info = rule(torch.cat([e.stack for e in pending], dim=1), return_info=True)
        with state._lock:
            record_nonfinite_mask(
                state.stats,
                np.asarray(info.excluded, bool),
                state.ranks,
                skip=tuple(r for e in pending for r in e.bad),
            )
        off = 0
        for e in pending:
            n = e.buf.numel()
            # a tensor of its own: DDP reads the result with as_strided at absolute offsets
            e.result.set_result(whole[off : off + n].to(e.buf.dtype).clone())
            off += n
        state.last_plan = None
        return
    if needs_gram(rule):
        gram = np.zeros((p, p))
        for e in pending:
            gram += e.gram
        plan = plan_from_gram(rule, gram)
        for e in pending:
            e.result.set_result(apply_plan(plan, e.stack).to(e.buf.dtype))
    else:
        excl = np.any([e.excl for e in pending], axis=0)
        plan = plan_coordinate(rule, p, excl)
        for e in pending:
            same = np.array_equal(e.excl, excl)
            e.result.set_result((e.out if same else apply_plan(plan, e.stack)).to(e.buf.dtype))
    state.last_plan = plan
