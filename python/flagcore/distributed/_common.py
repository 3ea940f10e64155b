"""Pieces shared by the DDP hook and the parameter server: rank-liveness checks through the
c10d store, argument checks, Byzantine contributions, and timing counters."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._arrays import check_float, check_int
from .errors import RankFailureError

_instance_ids = itertools.count()


def torch_dist() -> Any:
    """torch.distributed, with a clear error when torch (or its distributed package) is absent."""
    try:
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - torch is optional for flagcore, not here
        raise ImportError("flagcore.distributed needs torch with torch.distributed") from exc
    if not dist.is_available():  # pragma: no cover
        raise ImportError("flagcore.distributed: this torch build has no torch.distributed")
    return dist


def group_ranks(dist: Any, group: Any) -> tuple[int, ...]:
    """Global ranks of ``group`` (None = the default group), in group-rank order."""
    if group is None:
        return tuple(range(dist.get_world_size()))
    return tuple(int(r) for r in dist.get_process_group_ranks(group))


def all_gather_flat(dist: Any, out: Any, tensor: Any, group: Any, async_op: bool = False) -> Any:
    """All-gather ``tensor`` (n,) from every rank of ``group`` into ``out`` (p * n,), rank order.
    gloo accepts only this concatenated form; newer torch renamed the call."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, tensor, group=group, async_op=async_op)


def check_timeout(fn: str, timeout: Any) -> float | None:
    if timeout is None:
        return None
    return check_float(timeout, fn, "timeout", low=0.0, strict_low=True)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (base seed, rank, step, bucket): the same on every run and
    independent between ranks, steps and buckets."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        2, dtype=np.uint32
    )
    return int((int(state[0]) << 31) ^ int(state[1]))


def rule_params_with_defaults(rule: str, params: dict[str, Any]) -> dict[str, Any]:
    """For training, "flag" defaults to scale="median_norm": the paper's scaling returns a
    direction of norm at most p / r with no gradient magnitude, so a learning rate tuned for the
    mean would not transfer. An explicit ``scale`` is kept."""
    out = dict(params)
    if rule == "flag" and "scale" not in out:
        out["scale"] = "median_norm"
    return out


def validate_rule(fn: str, rule: Any, params: dict[str, Any], p: int) -> None:
    """Run the rule once on a tiny stack so that a bad name or parameter raises now, on every
    rank, with flagcore's own message, instead of inside the first backward pass."""
    from .. import aggregate

    if not isinstance(rule, str):
        raise TypeError(f"{fn}: rule must be a str, got {rule!r} ({type(rule).__name__})")
    probe = np.arange(p * 3, dtype=np.float64).reshape(p, 3) + 1.0
    aggregate(probe, rule, **params)


def validate_attack(fn: str, attack: Any, params: dict[str, Any]) -> None:
    from .. import attacks

    if callable(attack) and not isinstance(attack, str):
        if params:
            raise ValueError(
                f"{fn}: attack_params are for a named attack, got a callable attack and {params!r}"
            )
        return
    if attack is None:
        if params:
            raise ValueError(f"{fn}: attack_params given without an attack: {params!r}")
        return
    if not isinstance(attack, str):
        raise TypeError(
            f"{fn}: attack must be None, an attack name (str) or a callable, got {attack!r}"
        )
    out = attacks.attack(attack, np.ones((1, 3)), 1, seed=0, **params)
    if tuple(out.shape) != (1, 3):
        raise ValueError(
            f"{fn}: attack {attack!r} returned shape {tuple(out.shape)} for f=1, n=3; expected (1, "
            "3)"
        )


def byzantine_contribution(attack: str, params: dict[str, Any], own: Any, seed: int) -> Any:
    """What a Byzantine rank sends instead of its gradient ``own`` (a 1-D tensor): the attack
    applied with this rank's own gradient as the only "honest" input (a single rank does not
    see the others' gradients: attacks built from honest statistics, e.g. ALIE, then see a
    standard deviation of zero)."""
    from .. import attacks

    out = attacks.attack(attack, own.reshape(1, -1), 1, seed=seed, **params)
    return out.reshape(own.shape).to(dtype=own.dtype, device=own.device)


def contribution_of(attack: Any, params: dict[str, Any], own: Any, seed: int) -> Any:
    """What this rank sends for its 1-D tensor ``own``: itself, the named attack's output, or
    whatever the callable ``attack(own, seed)`` returns (checked by the wire format, not here)."""
    if attack is None:
        return own
    if callable(attack) and not isinstance(attack, str):
        return attack(own, seed)
    return byzantine_contribution(attack, params, own, seed)


@dataclass
class CommStats:
    """Counters of a hook or a parameter server (this rank), in seconds of wall time.

    barrier_s: liveness checks through the c10d store (waiting for slower ranks included);
    comm_s: the collectives (all_gather / gather + broadcast), from launch to completion (the
    hook's gather is asynchronous and overlaps the backward pass); aggregate_s: the rule (with
    the non-finite scan). calls: collectives issued; elements: gradient entries this rank sent.
    nonfinite_calls: global rank -> number of calls in which it sent NaN or Inf;
    last_nonfinite_ranks: those of the last call (the rule's policy decides what they do to
    the aggregate). rejected_calls: global rank -> number of calls in which it sent a malformed
    contribution (wrong size, dtype, or out of step), which was replaced by NaN and so excluded
    and counted against f; last_rejected: {rank: message} of the last call that rejected one.
    step_times: (parameter server) seconds per step, see ``ParameterServer``; late_calls:
    (parameter server with a quorum) global rank -> steps whose quorum closed without it.
    """

    calls: int = 0
    elements: int = 0
    barrier_s: float = 0.0
    comm_s: float = 0.0
    aggregate_s: float = 0.0
    nonfinite_calls: dict[int, int] = field(default_factory=dict)
    last_nonfinite_ranks: tuple[int, ...] = ()
    rejected_calls: dict[int, int] = field(default_factory=dict)
    last_rejected: dict[int, str] = field(default_factory=dict)
    step_times: list[Any] = field(default_factory=list)
    late_calls: dict[int, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "elements": self.elements,
            "barrier_s": self.barrier_s,
            "comm_s": self.comm_s,
            "aggregate_s": self.aggregate_s,
            "nonfinite_calls": dict(self.nonfinite_calls),
            "last_nonfinite_ranks": list(self.last_nonfinite_ranks),
            "rejected_calls": dict(self.rejected_calls),
            "last_rejected": {int(k): v for k, v in self.last_rejected.items()},
            "step_times": list(self.step_times),
            "late_calls": dict(self.late_calls),
        }


def record_nonfinite_mask(
    stats: CommStats, bad: Any, ranks: Sequence[int], skip: Sequence[int] = ()
) -> None:
    """Note the ranks whose row is flagged in ``bad`` (the rule's own exclusion of non-finite
    workers: no extra pass over the data); ranks in ``skip``, already rejected as malformed,
    are not counted again."""
    names = tuple(r for r, b in zip(ranks, bad) if b and r not in skip)
    stats.last_nonfinite_ranks = names
    for r in names:
        stats.nonfinite_calls[r] = stats.nonfinite_calls.get(r, 0) + 1


def default_store(dist: Any) -> Any:
    """The store of the default process group (the one init_process_group / torchrun set up)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


class ArrivalBarrier:
    """Names the ranks that do not reach a collective within ``timeout`` seconds.

    On call k every rank sets its key ``<prefix>/<k>/<rank>`` in the c10d store and waits for
    the keys of all ``ranks``; k counts calls, so it is the same on every rank (collectives are
    issued in the same order everywhere anyway). On timeout the ranks whose key is absent are
    named in a RankFailureError. A rank that has passed call k deletes its key of call k - 1:
    every rank has passed call k - 1 by then, so no one still waits for it.

    A stalled rank and a dead rank look the same here (neither arrives); a dead rank may also
    make a collective fail fast, which ``run`` turns into the same error after a probe.
    """

    def __init__(
        self, store: Any, kind: str, rank: int, ranks: Sequence[int], timeout: float
    ) -> None:
        self.store = store
        self.prefix = f"flagcore/{kind}/{next(_instance_ids)}"
        self.rank = int(rank)
        self.ranks = tuple(ranks)
        self.timeout = float(timeout)
        self._k = 0
        self._launch = 0
        self._probe = 0
        self._last_key: str | None = None

    def _key(self, tag: str, k: int, r: int) -> str:
        return f"{self.prefix}/{tag}/{k}/{r}"

    def _wait_all(self, tag: str, k: int, where: str) -> None:
        store = self.store
        keys = [self._key(tag, k, r) for r in self.ranks]
        try:
            store.set(keys[self.ranks.index(self.rank)], b"1")
            store.wait(keys, datetime.timedelta(seconds=self.timeout))
            return
        except RuntimeError as exc:  # DistStoreError (timeout) or a lost store connection
            cause = exc
        try:
            missing = [r for r, key in zip(self.ranks, keys) if not store.check([key])]
        except RuntimeError as exc2:
            raise RankFailureError(
                f"flagcore.distributed: {where}: the c10d store is unreachable from rank "
                f"{self.rank} "
                f"({exc2}); the process that hosts it (the torchrun agent, or rank 0 with "
                f"init_method tcp:// / env://) has probably died",
                where=where,
                timeout=self.timeout,
            ) from cause
        if not missing:  # every key arrived just after the wait gave up: not a failure
            return
        raise RankFailureError(
            f"flagcore.distributed: {where}: rank(s) {missing} did not arrive within "
            f"{self.timeout:g} s (dead or stalled); seen from rank {self.rank}",
            missing_ranks=missing,
            where=where,
            timeout=self.timeout,
        ) from cause

    def arrive(self, where: str) -> None:
        """Block until every rank has arrived at this call, or raise RankFailureError."""
        k = self._k
        self._k += 1
        self._wait_all("a", k, where)
        if self._last_key is not None:
            # cleanup only; a lost store surfaces at the next arrival
            with contextlib.suppress(RuntimeError):
                self.store.delete_key(self._last_key)
        self._last_key = self._key("a", k, self.rank)

    # -- launch counters: cheaper than ``arrive`` (one store request per collective, no waiting)
    def launched(self) -> int:
        """Record (one store request, no waiting) that this rank is about to launch its next
        collective; returns that collective's number k (the same on every rank)."""
        k = self._launch
        self._launch += 1
        self.store.set(f"{self.prefix}/l/{self.rank}", str(k).encode())
        return k

    def behind(self, k: int) -> list[Any]:
        """Ranks that have not launched collective k (their counter is older, or absent)."""
        out = []
        for r in self.ranks:
            key = f"{self.prefix}/l/{r}"
            if not self.store.check([key]) or int(self.store.get(key)) < k:
                out.append(r)
        return out

    def wait_work(self, work: Any, k: int, where: str, deadline: float | None) -> None:
        """Wait for an asynchronous collective (number k) until ``deadline`` (a
        time.monotonic() value; None: no limit). On a timeout or a failed collective raise
        RankFailureError naming the ranks that never launched it (dead, or stalled after their
        previous collective); if every rank launched it, probe which ranks still answer."""
        try:
            if deadline is None:
                work.wait()
            else:
                remaining = max(deadline - time.monotonic(), 1e-3)
                work.wait(timeout=datetime.timedelta(seconds=remaining))
            return
        except RuntimeError as exc:
            cause = exc
        try:
            missing = self.behind(k)
        except RuntimeError as exc2:
            raise RankFailureError(
                f"flagcore.distributed: {where}: the c10d store is unreachable from rank "
                f"{self.rank} "
                f"({exc2}); the process that hosts it (the torchrun agent, or rank 0 with "
                f"init_method tcp:// / env://) has probably died",
                where=where,
                timeout=self.timeout,
            ) from cause
        if missing:
            raise RankFailureError(
                f"flagcore.distributed: {where}: rank(s) {missing} did not arrive within "
                f"{self.timeout:g} s (dead or stalled); seen from rank {self.rank}",
                missing_ranks=missing,
                where=where,
                timeout=self.timeout,
            ) from cause
        raise self.after_failure(where, cause) from cause

    def after_failure(self, where: str, exc: BaseException) -> RankFailureError:
        """A collective failed after every rank had arrived (a peer died in between, or the
        process group's own timeout fired). Probe which ranks still answer and return the
        error to raise: RankFailureError naming those that do not answer within the timeout
        (a rank whose collective succeeded does not probe either, and is named too)."""
        k = self._probe
        self._probe += 1
        try:
            self._wait_all("probe", k, f"{where} (the collective failed: {exc})")
        except RankFailureError as err:
            return err
        return RankFailureError(
            f"flagcore.distributed: {where}: the collective failed on rank {self.rank} although "
            f"every rank is still reachable: {exc}",
            where=where,
            timeout=self.timeout,
        )


def timed(stats: CommStats, attr: str, op: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return op()
    finally:
        setattr(stats, attr, getattr(stats, attr) + time.perf_counter() - t0)


def check_rank(fn: str, name: str, value: Any, ranks: Sequence[int]) -> int:
    v = check_int(value, fn, name, low=0)
    if v not in ranks:
        raise ValueError(f"{fn}: {name} must be one of the group's ranks {list(ranks)}, got {v}")
    return v
