"""Robust aggregation inside DistributedDataParallel: a communication hook that all-gathers
each gradient bucket from every rank and aggregates it with a flagcore rule.

Per-bucket semantics: DDP hands the hook one bucket at a time (a flat slice of the model's
gradients, about ``bucket_cap_mb`` MiB, parameters in roughly reverse order), so the rule runs
on each bucket separately: a (p, n_bucket) stack, p = number of ranks. For coordinate-wise
rules (mean, median, trimmed mean, ...) this is exactly whole-model aggregation; for rules that
look at whole vectors (flag, krum, geometric median, ...) each bucket gets its own subspace /
selection, which is a different (block-wise) rule. For whole-model aggregation put every
parameter in one bucket: ``DistributedDataParallel(model, bucket_cap_mb=<more than the model's
gradient size in MiB>)`` (parameters of different dtypes or devices still get separate
buckets). Large buckets lose DDP's overlap of communication with the backward pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ._common import (ArrivalBarrier, CommStats, all_gather_flat, byzantine_contribution,
                      check_timeout, default_store, derive_seed, group_ranks, record_nonfinite,
                      rule_params_with_defaults, timed, torch_dist, validate_attack, validate_rule)


@dataclass
class RobustHookState:
    """State of one robust hook (this rank). Returned by ``register_robust_hook``; read
    ``stats`` for timings and for the ranks that sent non-finite values."""

    rule: str
    rule_params: dict
    attack: str | None
    attack_params: dict
    seed: int
    timeout: float | None
    process_group: Any
    rank: int  # global rank of this process
    ranks: tuple  # global ranks of the group, in group order (row i of a stack = ranks[i])
    barrier: ArrivalBarrier | None = None
    stats: CommStats = field(default_factory=CommStats)
    bucket_calls: dict = field(default_factory=dict)  # bucket index -> calls so far


def register_robust_hook(ddp_model: Any, rule: str = "flag", attack: str | None = None, *,
                         attack_params: dict | None = None, seed: int = 0,
                         timeout: float | None = 300.0, process_group: Any = None,
                         store: Any = None, **rule_params: Any) -> RobustHookState:
    """Make ``ddp_model`` (a torch DistributedDataParallel) aggregate gradients with a
    flagcore rule instead of averaging them.

    For every bucket, every rank all-gathers the bucket from all ranks of the group into a
    (p, n) stack (row i = the i-th rank of the group), calls
    ``flagcore.aggregate(stack, rule, **rule_params)`` and writes the result into its gradients.
    Every rank runs the same code on the same stack, so all replicas get the same update and
    never drift (bitwise, on identical hardware: flagcore's kernels do not depend on the thread
    count). See the module docstring for the per-bucket semantics and whole-model aggregation.

    Parameters
    ----------
    rule, **rule_params : the flagcore rule and its parameters. For ``rule="flag"`` without an
        explicit ``scale``, ``scale="median_norm"`` is used (the paper's scaling has no gradient
        magnitude, so learning rates tuned for the mean would not transfer).
    attack, attack_params : make THIS rank Byzantine (for experiments): it sends
        ``flagcore.attacks.attack(attack, own[None], 1, seed=s, **attack_params)`` instead of its
        gradient ``own``, where ``s`` is derived from (seed, rank, bucket, call). The rank is not
        omniscient: its own gradient is the attack's only "honest" input.
    timeout : seconds a rank waits for the others at each bucket before raising
        RankFailureError naming the ranks that did not arrive (dead or stalled). The check goes
        through the c10d store (3 small store requests per bucket) before the bucket's
        all_gather is launched. None disables it: a stalled peer is then only caught by the
        process group's own timeout (``init_process_group(timeout=...)``; keep that one >=
        ``timeout`` in any case, it also guards the collective itself). The all_gather is
        asynchronous and the rule runs when it completes, overlapping the rest of the backward.
    process_group : the group to aggregate over (default: the default group).
    store : the c10d store for the liveness check (default: the default group's store). Its
        keys are named after the order in which hooks / parameter servers are created in a
        process, so every rank must create them in the same order (as with collectives).

    Returns the hook's RobustHookState (its ``stats`` split the time into liveness check,
    communication and aggregation). NaN/Inf sent by a rank are given to the rule as they are
    (its documented policy decides; "mean" propagates them); ``stats.last_nonfinite_ranks``
    says who sent them.
    """
    fn = "register_robust_hook"
    dist = torch_dist()
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(f"{fn}: ddp_model must be a torch DistributedDataParallel, got {type(ddp_model).__name__}")
    if not dist.is_initialized():
        raise ValueError(f"{fn}: torch.distributed is not initialised (call init_process_group first)")
    timeout = check_timeout(fn, timeout)
    ranks = group_ranks(dist, process_group)
    params = rule_params_with_defaults(rule, rule_params)
    validate_rule(fn, rule, params, len(ranks))
    attack_params = dict(attack_params or {})
    validate_attack(fn, attack, attack_params)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{fn}: seed must be an int, got {seed!r}")
    rank = dist.get_rank()
    state = RobustHookState(rule, params, attack, attack_params, seed, timeout, process_group, rank, ranks)
    if timeout is not None:
        state.barrier = ArrivalBarrier(store if store is not None else default_store(dist), "hook",
                                       rank, ranks, timeout)
    ddp_model.register_comm_hook(state, robust_hook)
    return state


def robust_hook(state: RobustHookState, bucket):  # type: ignore[no-untyped-def]
    """The DDP communication hook (registered by ``register_robust_hook``): bucket is a
    dist.GradBucket, the result a torch.futures.Future[torch.Tensor]. Those two are not
    annotated because DDP compares annotations to the real classes, and this module's
    annotations are strings (``from __future__ import annotations``)."""
    import torch

    dist = torch_dist()
    buf = bucket.buffer()
    idx = bucket.index()
    call = state.bucket_calls.get(idx, 0)
    state.bucket_calls[idx] = call + 1
    own = buf
    if state.attack is not None:
        own = byzantine_contribution(state.attack, state.attack_params, buf,
                                     derive_seed(state.seed, state.rank, idx, call))
    own = own.contiguous()
    p, n = len(state.ranks), buf.numel()
    gathered = torch.empty(p * n, dtype=buf.dtype, device=buf.device)
    st = state.stats
    st.calls += 1
    st.elements += n

    def finish() -> Any:
        def agg() -> Any:
            from .. import aggregate

            stack = gathered.view(p, n)
            record_nonfinite(st, stack, state.ranks)
            return aggregate(stack, state.rule, **state.rule_params).to(buf.dtype)

        return timed(st, "aggregate_s", agg)

    where = f"robust DDP hook, bucket {idx}, call {call}"
    if state.barrier is not None:
        timed(st, "barrier_s", lambda: state.barrier.arrive(where))

    # The gather runs asynchronously and the rule runs in its completion callback, so both
    # overlap with the backward pass of the layers still to come (as DDP's allreduce does).
    t_launch = time.perf_counter()
    try:
        work = all_gather_flat(dist, gathered, own, state.process_group, async_op=True)
    except RuntimeError as exc:
        if state.barrier is None:
            raise
        raise state.barrier.after_failure(where, exc) from exc

    def done(fut: Any) -> Any:
        st.comm_s += time.perf_counter() - t_launch
        try:
            fut.value()  # re-raises a failed collective
        except RuntimeError as exc:
            if state.barrier is None:
                raise
            raise state.barrier.after_failure(where, exc) from exc
        return finish()

    return work.get_future().then(done)
