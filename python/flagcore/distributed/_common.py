"""Pieces shared by the DDP hook and the parameter server: rank-liveness checks through the
c10d store, argument checks, Byzantine contributions, and timing counters."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._arrays import check_float, check_int, check_state_keys
from .errors import RankFailureError

_instance_counters: dict[tuple[Any, ...], Any] = {}


def instance_id(kind: str, ranks: Sequence[int]) -> int:
    """The number of earlier ``instance_id(kind, ranks)`` calls in this process: the same on
    every member of ``ranks`` as long as they create their hooks, servers and checks of one kind
    on one group in the same order. Counted per (kind, group), not per process: one process-wide
    counter, advanced only by the members of a subgroup (an assert_replicas_identical on it),
    gave the next call on the whole group another store prefix on those ranks (they waited
    for keys the others wrote elsewhere, and the others read stale keys)."""
    key = (kind, tuple(int(r) for r in ranks))
    counter = _instance_counters.setdefault(key, itertools.count())
    return int(next(counter))


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


# the longest timeout accepted (seconds, about 116 days): far below what datetime.timedelta,
# the c10d store and threading accept (2.9e11 s, 8.6e13 s, 9.2e9 s), so a valid timeout never
# overflows later inside a wait
MAX_TIMEOUT = 1e7


def check_timeout(fn: str, timeout: Any, name: str = "timeout", *, allow_none: bool = True) -> Any:
    """A timeout in seconds: a real number in (0, MAX_TIMEOUT], or None ("no timeout") where
    ``allow_none``."""
    if timeout is None and allow_none:
        return None
    if timeout is None:
        raise TypeError(f"{fn}: {name} must be a real number of seconds, got None")
    v = check_float(timeout, fn, name, low=0.0, strict_low=True)
    if v > MAX_TIMEOUT:
        hint = " (None waits without a limit)" if allow_none else ""
        raise ValueError(
            f"{fn}: {name} must be at most {MAX_TIMEOUT:g} s (about 116 days){hint}, got {v:g}"
        )
    return v


def check_process_group(fn: str, dist: Any, group: Any) -> tuple[int, ...]:
    """The global ranks of ``group`` (None: the default group), refusing what is not a
    torch.distributed ProcessGroup this process belongs to."""
    if group is not None and group is getattr(dist.GroupMember, "NON_GROUP_MEMBER", object()):
        raise ValueError(
            f"{fn}: this process (rank {dist.get_rank()}) is not a member of process_group (call "
            f"{fn} only on the group's ranks)"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"{fn}: process_group must be None or a torch.distributed ProcessGroup (from "
            f"dist.new_group), got {group!r} ({type(group).__name__})"
        )
    try:
        ranks = group_ranks(dist, group)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{fn}: process_group {group!r} is not a group this process knows ({exc})"
        ) from None
    if dist.get_rank() not in ranks:
        raise ValueError(
            f"{fn}: this process (rank {dist.get_rank()}) is not in process_group's ranks "
            f"{list(ranks)}"
        )
    return ranks


def check_store(fn: str, dist: Any, store: Any) -> Any:
    """``store`` if it is None or a c10d Store."""
    if store is not None and not isinstance(store, dist.Store):
        raise TypeError(
            f"{fn}: store must be None or a torch.distributed Store (e.g. dist.TCPStore), got "
            f"{store!r} ({type(store).__name__})"
        )
    return store


def check_attack_params(fn: str, attack_params: Any) -> dict[str, Any]:
    """A copy of ``attack_params`` (None: empty), which must be a dict with str keys."""
    if attack_params is None:
        return {}
    if not isinstance(attack_params, dict) or not all(isinstance(k, str) for k in attack_params):
        raise TypeError(
            f"{fn}: attack_params must be None or a dict of parameter names to values, got "
            f"{attack_params!r} ({type(attack_params).__name__})"
        )
    return dict(attack_params)


def check_resume_state(fn: str, state: Any, keys: tuple[str, ...], started: bool) -> None:
    """A hook's or parameter server's ``state_dict()`` given to ``load_state_dict``: a dict
    with exactly ``keys`` ("steps" a count >= 0; "rule_state" is checked by the rule when it
    loads it), loaded only before the first step (``started`` False). Raises naming fn and
    the argument."""
    if started:
        raise RuntimeError(
            f"{fn}: load_state_dict resumes a run in a freshly built object, before its first "
            f"step; this one has already run (build a new one, load, then step)"
        )
    check_state_keys(fn, state, keys)
    check_int(state["steps"], fn, "state['steps']", low=0)


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


def validate_rule(fn: str, rule: Any, params: dict[str, Any], p: int, n: int | None = None) -> None:
    """Run the rule once on a tiny stack so that a bad name or parameter raises now, on every
    rank, with flagcore's own message naming ``fn``, instead of inside the first backward
    pass. A ``reference`` must hold the model's ``n`` values (the probe runs with a reference
    of its own size: the model's would not fit the tiny stack)."""
    from ..rules import make_rule

    if not isinstance(rule, str):
        raise TypeError(f"{fn}: rule must be a str, got {rule!r} ({type(rule).__name__})")
    ref = params.get("reference")
    if isinstance(ref, str):
        raise ValueError(
            f"{fn}: reference={ref!r} is not supported here (pass an array or tensor, or no "
            "reference)"
        )
    probe_params = dict(params)
    if ref is not None:
        shape = tuple(getattr(ref, "shape", np.shape(ref)))
        if n is not None and int(np.prod(shape)) != n:
            raise ValueError(
                f"{fn}: reference must hold the model's {n} values (one flattened gradient), "
                f"got shape {shape}"
            )
        probe_params["reference"] = np.zeros(3)
    probe = np.arange(p * 3, dtype=np.float64).reshape(p, 3) + 1.0
    make_rule(rule, _fn=fn, **probe_params)(probe)


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
    if attack not in attacks.ALL_ATTACKS:
        raise ValueError(
            f"{fn}: attack must be None, a callable or one of {', '.join(attacks.ALL_ATTACKS)}, "
            f"got {attack!r}"
        )
    try:
        out = attacks.attack(attack, np.ones((1, 3)), 1, seed=0, **params)
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"{fn}: attack_params {params!r} do not suit attack {attack!r}: {exc}"
        ) from None
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
    max_lag: (parameter server with a quorum, every rank) global rank -> the most steps whose
    gradient from it had not yet arrived when the server aggregated a step (0: never behind;
    at most ``max_staleness``); stale_waits, stale_wait_s: (the server, with ``max_staleness``)
    global rank -> steps at which the server waited for that rank's older gradients before
    aggregating, and the seconds it waited in all.
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
    max_lag: dict[int, int] = field(default_factory=dict)
    stale_waits: dict[int, int] = field(default_factory=dict)
    stale_wait_s: float = 0.0

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
            "max_lag": dict(self.max_lag),
            "stale_waits": dict(self.stale_waits),
            "stale_wait_s": self.stale_wait_s,
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


def fingerprint(tensors: Any) -> int:
    """A 32-bit fingerprint of the bytes of ``tensors`` (an iterable of tensors, in order):
    the same on every rank whose tensors are bitwise equal, and another one when a replica
    forked by an extra or a missed optimizer step (which moves many values by different
    amounts). Sent in the headers of the hook and the parameter server, so that such a rank is
    detected at its next message. An accident detector, not a checksum an attacker cannot
    forge (a rank writes its own header anyway): it is the wrapping sum of the bytes read as
    int64 words (exact in any order, so the thread count does not matter), which changes that
    cancel (+1 ulp here, -1 ulp there, two words swapped) do not move.

    Cost: one pass at memory speed and one host synchronisation. Tensors of at least 1 MiB
    whose bytes start on an 8-byte boundary are summed where they are (10 ms for 50M float32 on
    the 2-core build machine); the others (views at any offset, fp16 at an odd element, small
    tensors) are copied into one buffer per device first and summed once, so a model of many
    small tensors costs a few torch calls per tensor (a loop of ~10 calls each cost 50 us per
    tensor: a 400-tensor model stepped 2-4x slower)."""
    import torch

    big: list[Any] = []
    small: dict[Any, list[Any]] = {}
    for t in tensors:
        if t.numel() == 0:
            continue
        b = t.detach().reshape(-1).view(torch.uint8)
        if b.numel() >= (1 << 20) and b.numel() % 8 == 0 and b.storage_offset() % 8 == 0:
            big.append(b)
        else:
            small.setdefault(b.device, []).append(b)
    sums = [b.view(torch.int64).sum() for b in big]
    for dev, parts in small.items():
        s = torch.cat(parts)  # a new buffer: offset 0
        pad = (-s.numel()) % 8
        if pad:
            s = torch.cat([s, torch.zeros(pad, dtype=torch.uint8, device=dev)])
        sums.append(s.view(torch.int64).sum())
    if not sums:
        return 0
    h = 0
    for v in torch.stack([x.to("cpu") for x in sums]).tolist():
        h = (h * 1000003 + (int(v) & 0xFFFFFFFFFFFFFFFF)) % 4294967291
    return h


# the longest a wait blocks in C++ (or on a lock) before Python gets to handle signals: a
# Ctrl-C (SIGINT -> KeyboardInterrupt) is honoured within about this time while a rank waits
WAIT_SLICE_S = 0.05


def wait_event(event: threading.Event, deadline: float | None) -> bool:
    """Wait for ``event`` until ``deadline`` (a time.monotonic() value; None: no limit) in
    slices of WAIT_SLICE_S, so that signals are handled while waiting; True if it was set."""
    while True:
        if deadline is None:
            step = WAIT_SLICE_S
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return event.is_set()
            step = min(WAIT_SLICE_S, left)
        if event.wait(step):
            return True


class Completion:
    """The completion of a c10d work (or a torch future) as a threading.Event that the main
    thread can wait on in slices (``wait``): a blocking ``work.wait()`` runs in C++ and delays
    a Ctrl-C until it returns. Works with a future get a done-callback; gloo's point-to-point
    works have none and report completion only through wait() (a wait with a short timeout
    closes the connection), so one daemon thread waits for them (blocked, not busy, if this
    rank gives up first). ``error``: the work's exception, re-raised by ``wait``."""

    def __init__(self, work: Any = None, future: Any = None) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None
        fut = future
        if fut is None:
            try:
                fut = work.get_future()
            except RuntimeError:  # "Work::getFuture not implemented" (gloo send / recv)
                fut = None
        if fut is not None:
            fut.add_done_callback(self._future_done)
        else:
            threading.Thread(
                target=self._wait_work, args=(work,), daemon=True, name="flagcore-wait"
            ).start()

    def _future_done(self, fut: Any) -> None:
        try:
            fut.wait()  # done: returns at once, or raises the collective's error
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        self.event.set()

    def _wait_work(self, work: Any) -> None:
        try:
            work.wait()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        self.event.set()

    def wait(self, deadline: float | None) -> bool:
        """True once the work completed (its error re-raised), False at ``deadline``."""
        if not wait_event(self.event, deadline):
            return False
        if self.error is not None:
            raise self.error
        return True


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
        group = "-".join(str(int(r)) for r in ranks)
        self.prefix = f"flagcore/{kind}/{group}/{instance_id(kind, ranks)}"
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
            # polled rather than store.wait(keys, timeout), which blocks in C++ (no Ctrl-C)
            deadline = time.monotonic() + self.timeout
            pause = 1e-3
            while not store.check(keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{where}: the store keys of call {k} did not all appear")
                time.sleep(min(pause, left))
                pause = min(2 * pause, WAIT_SLICE_S)
            return
        except (RuntimeError, TimeoutError) as exc:  # a timeout or a lost store connection
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

    # -- one-off points (the end of a run): ``mark`` on the ranks that go on, ``wait_marked`` on
    # the one that must leave last (the store's host), named by ``tag``
    def mark(self, tag: str) -> None:
        """Record (one store request, no waiting) that this rank has reached point ``tag``."""
        self.store.set(self._key(tag, 0, self.rank), b"1")

    def wait_marked(self, tag: str, where: str) -> None:
        """Mark ``tag`` here and wait (polled: Ctrl-C works) until every rank has marked it, or
        raise RankFailureError naming the ranks that did not within ``timeout``."""
        self._wait_all(tag, 0, where)

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
        time.monotonic() value; None: no limit), in slices (a Ctrl-C is honoured within
        WAIT_SLICE_S). On a timeout or
        a failed collective raise RankFailureError naming the ranks that never launched it
        (dead, or stalled after their previous collective); if every rank launched it, probe
        which ranks still answer."""
        done = Completion(work)
        try:
            if done.wait(deadline):
                return
            cause: BaseException = TimeoutError(
                f"{where}: not completed within {self.timeout:g} s on rank {self.rank}"
            )
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
