"""A synchronous parameter server over torch.distributed (the Flag Aggregator paper's setting).

One rank (the server, rank 0 by default) gathers the flattened gradients of the worker ranks,
aggregates them with a flagcore rule over the whole model (one (p, n) stack per step, n = all
parameters), and sends back either the aggregate (``mode="gradients"``: every rank then takes
the same optimizer step) or the updated parameters (``mode="parameters"``: only the server
keeps an optimizer). Every rank calls the same methods in the same order::

    ps = ParameterServer(model, optimizer, rule="flag")
    for x, y in batches:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        ps.step()  # gather -> aggregate on the server -> broadcast -> optimizer step
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from .._arrays import check_choice, check_int
from ._common import (
    WAIT_SLICE_S,
    ArrivalBarrier,
    CommStats,
    Completion,
    check_attack_params,
    check_process_group,
    check_rank,
    check_resume_state,
    check_store,
    check_timeout,
    contribution_of,
    default_store,
    derive_seed,
    fingerprint,
    instance_id,
    record_nonfinite_mask,
    rule_params_with_defaults,
    timed,
    torch_dist,
    validate_attack,
    validate_rule,
    wait_event,
)
from ._wire import (
    HEADER_BYTES,
    describe_mismatch,
    dtype_code,
    dtype_name,
    pack,
    payload_bytes,
    unpack,
)
from .errors import RankFailureError

MODES = ("gradients", "parameters")
log = logging.getLogger("flagcore.distributed")

# status of a rank in a step, sent by the server with the result so every rank can name it
_STATUS_NAMES = ("used", "late", "rejected", "not a worker", "missing", "non-finite")
USED, LATE, REJECTED, NOT_WORKER, MISSING, NONFINITE = 0, 1, 2, 3, 4, 5


class ParameterServer:
    """Synchronous parameter server with optional backup workers (see the module docstring).

    Parameters
    ----------
    params : a torch.nn.Module or an iterable of parameters (those with requires_grad are
        used); all of one dtype and device. Every rank must hold the same number of values
        and dtype (checked here, collectively: every rank raises ValueError naming the ranks
        that differ) and the same initial values (seed the model, or ``broadcast_parameters()``).
    optimizer : the torch optimizer over ``params``; needed by ``step`` (in mode "parameters"
        only on the server). None when only ``aggregate`` / ``aggregate_gradients`` are used.
    rule, **rule_params : the flagcore rule (built once with ``flagcore.rules.make_rule`` and
        reused); ``rule="flag"`` defaults to scale="median_norm".
    server_rank : global rank of the server.
    include_server : the server also trains and sends its gradient (default). False is the
        paper's setting: the server only aggregates (it may skip the backward pass:
        ``ps.is_worker`` is False there).
    mode : "gradients" (send the aggregate back; each rank steps its own optimizer, identical
        on every rank because every rank gets the same aggregate) or "parameters" (the server
        steps, then sends the parameters).
    quorum : None (wait for every worker) or k: backup workers, as TensorFlow's
        SyncReplicasOptimizer's ``replicas_to_aggregate``: the server aggregates the first k
        worker gradients of the step to arrive (rows in rank order) and drops the others,
        counted per rank in ``stats.late_calls``; a late worker still receives and applies the
        step's result, so replicas stay identical. The server's own gradient (include_server)
        counts as arrived at once. The rule's preconditions must hold for k rows (checked
        here). Call ``finish()`` after the last step. Needs gloo. ``stats.step_times`` holds
        each step's time on each rank (the server's is the PS step time;
        ``predict_step_time`` models it).
    max_staleness : None (default: unbounded) or s >= 0, with a quorum only: a bound on how far
        a worker left out of the quorum may fall behind, as in stale synchronous parallel (Ho
        et al., NIPS 2013). Before the server aggregates step t, every worker's gradient of
        step t - s and earlier must have arrived (it is still dropped, not aggregated); the
        server waits for it within the step's ``timeout``, and a worker that does not deliver
        it is a failed rank (RankFailureError naming it, on every rank, as for a worker missing
        from the quorum). So no worker is ever more than s steps behind the server, and the
        server holds at most about s + 1 receives and s + 1 result sends in flight per worker
        (a waiting thread and a buffer each). The cost: once a slow worker is s steps behind,
        the server goes at its pace. s = 0 waits for every gradient of the step and still
        aggregates only the first k. None keeps a worker that is slower than the quorum at
        every step falling further behind, with one receive, one send, two threads and a
        result buffer more per step it is behind (for transient stragglers, the purpose of
        backup workers, the lag stays small; ``stats.max_lag`` shows it). Refused (ValueError)
        without a quorum below the number of workers, where no worker can fall behind.
        ``ps.last_lag`` ({worker rank: steps whose gradient had not arrived when the last
        step was aggregated}), ``stats.max_lag`` (every rank), ``stats.stale_waits`` and
        ``stats.stale_wait_s`` (the server's waits for stale workers) report it.
    attack, attack_params, seed : make THIS rank Byzantine (experiments): it sends
        ``flagcore.attacks.attack(attack, own[None], 1, seed=s, **attack_params)`` instead of its
        flattened gradient, s derived from (seed, rank, step), or ``attack(own, s)`` for a
        callable attack; its own gradient is the only "honest" input the attack sees.
    timeout : seconds a rank waits for a step's messages: the server for the quorum (and the
        older gradients ``max_staleness`` waits for, within the same deadline), a worker
        for the result (2 x timeout: the server itself may wait ``timeout`` for a slow worker).
        On expiry RankFailureError names the ranks that did not arrive (the server tells every
        worker which ones, so every rank raises the same error); None: wait forever.
    process_group, store : the group (default: the default group) and the c10d store for the
        liveness check (default: the default group's store). Every rank must create its
        parameter servers and hooks in the same order (the store keys are numbered by it).

    Malformed gradients: a rank's own ``flat_gradient`` argument that is not a 1-D tensor of
    the model's number of values raises (TypeError / ValueError, on that rank, before anything
    is sent or counted; the other ranks then wait for it and time out). A gradient of another
    dtype, and whatever a callable ``attack`` returns that is not a 1-D tensor of the model's
    size and dtype (another size, dtype or shape, or not a tensor), is never put on the wire
    (``flagcore.distributed._wire``): that rank sends NaN with a header saying what it had, the
    server excludes the row (counted against f), and every rank gets ``stats.last_rejected`` =
    {rank: "rank 2 sent a gradient of 1005 float64 values, expected 1000 float32"} (or "... of
    shape (1000, 1), expected (1000,)") with the result. Messages are sent point to point
    (isend/irecv) with a tag per step, so a late gradient never mixes with the next step's.
    """

    def __init__(
        self,
        params: Any,
        optimizer: Any = None,
        *,
        rule: str = "flag",
        server_rank: int = 0,
        include_server: bool = True,
        mode: str = "gradients",
        quorum: int | None = None,
        max_staleness: int | None = None,
        attack: Any = None,
        attack_params: dict[str, Any] | None = None,
        seed: int = 0,
        timeout: float | None = 300.0,
        process_group: Any = None,
        store: Any = None,
        **rule_params: Any,
    ) -> None:
        fn = "ParameterServer"
        dist = torch_dist()
        from ..rules import make_rule

        if not dist.is_initialized():
            raise ValueError(
                f"{fn}: torch.distributed is not initialised (call init_process_group first)"
            )
        self.params = _check_params(fn, params)
        if not self.params:
            raise ValueError(f"{fn}: params holds no parameter that requires grad")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"{fn}: params must share one dtype and device, got dtypes "
                f"{sorted(map(str, dtypes))} "
                f"and devices {sorted(map(str, devices))}"
            )
        if optimizer is not None and not all(
            callable(getattr(optimizer, a, None)) for a in ("step", "zero_grad")
        ):
            raise TypeError(
                f"{fn}: optimizer must be None or a torch optimizer (with step() and zero_grad()), "
                f"got {optimizer!r} ({type(optimizer).__name__})"
            )
        self.optimizer = optimizer
        self.mode = check_choice(mode, fn, "mode", MODES)
        if not isinstance(include_server, bool):
            raise TypeError(f"{fn}: include_server must be a bool, got {include_server!r}")
        self.timeout = check_timeout(fn, timeout)
        self.group = process_group
        self.ranks = check_process_group(fn, dist, process_group)
        check_store(fn, dist, store)
        self.rank = dist.get_rank()
        self.server_rank = check_rank(fn, "server_rank", server_rank, self.ranks)
        self.include_server = include_server
        self.workers = tuple(r for r in self.ranks if include_server or r != self.server_rank)
        if not self.workers:
            raise ValueError(
                f"{fn}: no worker rank left (a group of one with include_server=False)"
            )
        self.quorum = (
            len(self.workers)
            if quorum is None
            else check_int(quorum, fn, "quorum", low=1, high=len(self.workers))
        )
        self.max_staleness = _check_max_staleness(fn, max_staleness, quorum, len(self.workers))
        if self.quorum < len(self.workers) and dist.get_backend(process_group) != "gloo":
            raise ValueError(
                f"{fn}: quorum needs the gloo backend (it finds the first arrivals by waiting on "
                f"point-to-point receives in threads; NCCL's wait does not block the host), got "
                f"backend {dist.get_backend(process_group)!r}"
            )
        self.rule = rule
        self.rule_params = rule_params_with_defaults(rule, rule_params)
        validate_rule(fn, rule, self.rule_params, self.quorum, sum(p.numel() for p in self.params))
        self.rule_obj = make_rule(rule, _fn=fn, **self.rule_params)
        self.attack = attack
        self.attack_params = check_attack_params(fn, attack_params)
        validate_attack(fn, attack, self.attack_params)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{fn}: seed must be an int, got {seed!r}")
        self.seed = seed
        self.numel = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.stats = CommStats()
        self.steps = 0
        self.barrier = None
        if self.timeout is not None:
            self.barrier = ArrivalBarrier(
                store if store is not None else default_store(dist),
                "ps",
                self.rank,
                self.ranks,
                self.timeout,
            )
        # tags of this instance's messages: its creation number (the same on every rank, like
        # the store keys) and the step, so messages of instances and steps never mix
        self._tag_base = (instance_id("ps-tags", self.ranks) % 256) << 21
        # this rank's sends still in flight (a _Waiter each, key = the destination rank), and
        # those that failed (reported by finish(): a failed send was never delivered)
        self._outstanding: list[_Waiter] = []
        self._send_failures: list[_Waiter] = []
        # the server's dropped receives still in flight, (step, rank, waiter) in step order, and
        # each rank's first dropped receive that failed (step, error): a worker's lag, and what
        # max_staleness waits for
        self._dropped: list[tuple[int, int, _Waiter]] = []
        self._dropped_failed: dict[int, tuple[int, BaseException]] = {}
        self.last_lag: dict[int, int] = {}
        self._t_prev: float | None = None
        self._check_signatures(fn)

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What the steps so far changed here, to resume a run from a checkpoint:
        ``{"steps": steps taken, "rule_state": the rule's Rule.state_dict()}`` (the server's
        holds the rule's generator and centered clipping's previous aggregate; the workers'
        never run the rule). The model and the optimizer are the caller's to save, as
        always. Each rank saves its own (take it between steps, after ``aggregate`` /
        ``step`` returned)."""
        return {"steps": self.steps, "rule_state": self.rule_obj.state_dict()}

    def load_state_dict(self, state: Any) -> None:
        """Resume: every rank loads the ``state_dict()`` it saved into a freshly built
        ParameterServer (same arguments, the restored model), before its first step. The step
        count goes on from there (attack seeds and message tags depend on it), the rule's
        state as the rule's ``load_state_dict``. Checked first (RuntimeError after the first
        step; ValueError / TypeError naming the key): a refused state changes nothing."""
        fn = "ParameterServer.load_state_dict"
        check_resume_state(fn, state, ("steps", "rule_state"), self.steps > 0)
        self.rule_obj._load_state(state["rule_state"], fn, "state['rule_state']")
        self.steps = int(state["steps"])

    @property
    def is_server(self) -> bool:
        return bool(self.rank == self.server_rank)

    @property
    def is_worker(self) -> bool:
        return bool(self.rank in self.workers)

    # -- collectives -------------------------------------------------------------------------

    def _collective(self, where: str, op: Any, min_wait: float = 0.0) -> None:
        """Run an asynchronous collective ``op()`` (returns a work) with the deadline check
        (``timeout``, or ``min_wait`` seconds if longer)."""
        k = (
            timed(self.stats, "barrier_s", self.barrier.launched)
            if self.barrier is not None
            else None
        )

        def run() -> None:
            try:
                work = op()
            except RuntimeError as exc:
                if self.barrier is None:
                    raise
                raise self.barrier.after_failure(where, exc) from exc
            if self.barrier is None:
                Completion(work).wait(None)  # sliced: a Ctrl-C is honoured while waiting
            else:
                assert k is not None and self.timeout is not None  # a barrier implies both
                self.barrier.wait_work(
                    work, k, where, time.monotonic() + max(self.timeout, min_wait)
                )

        timed(self.stats, "comm_s", run)

    def _check_signatures(self, fn: str) -> None:
        """Every rank must send the same number of values of one dtype (gloo aborts a process
        that receives another size): checked once, collectively, with a fixed-size message."""
        import torch

        dist = torch_dist()
        p = len(self.ranks)
        own = torch.tensor([self.numel, dtype_code(self.dtype)], dtype=torch.int64)
        dev = self.device if dist.get_backend(self.group) != "gloo" else torch.device("cpu")
        out = torch.empty(2 * p, dtype=torch.int64, device=dev)
        # ranks construct at different times (start-up): a longer wait than a step's
        self._collective(
            "parameter server (model check)",
            lambda: _all_gather(dist, out, own.to(dev), self.group),
            min_wait=60.0,
        )
        sig = out.view(p, 2).cpu().tolist()
        ref = sig[self.ranks.index(self.server_rank)]
        differ = [
            f"rank {r} has {s[0]} {dtype_name(s[1])} parameters"
            for r, s in zip(self.ranks, sig)
            if s != ref
        ]
        if differ:
            raise ValueError(
                f"{fn}: the ranks disagree on the model: {'; '.join(differ)}; the server "
                f"(rank {self.server_rank}) has {ref[0]} {dtype_name(ref[1])}"
            )

    def _reap(self) -> None:
        """Forget the sends that completed; keep the failed ones for finish()."""
        self._send_failures += [w for w in self._outstanding if w.done.is_set() and w.error]
        self._outstanding = [w for w in self._outstanding if not w.done.is_set()]

    # -- one step ----------------------------------------------------------------------------

    def aggregate(self, flat_gradient: Any = None) -> Any:
        """Collective (every rank of the group calls it): the server receives the workers' flat
        gradients (n,) (the first ``quorum`` to arrive), aggregates them with the rule (rows in
        rank order) and sends the result to every rank; returns it (n,) on every rank. A
        non-worker server may pass None. A Byzantine rank's attack is applied here.

        ``flat_gradient`` must be a 1-D tensor of the model's n values (TypeError / ValueError
        otherwise, raised here before anything is sent, so this rank stays in step: fix the
        argument and call again); another dtype is sent as NaN and rejected on every rank (see
        the class docstring), as is a malformed output of a callable attack."""
        return self._step(flat_gradient, "gradients")

    def _step(self, flat_gradient: Any, mode: str) -> Any:
        import torch

        dist = torch_dist()
        fn = "ParameterServer.aggregate"
        t_call = time.perf_counter()
        t_start = self._t_prev if self._t_prev is not None else t_call
        # the caller's own argument is checked before any state changes: a malformed one raises
        # here, on this rank, and the server stays in step with the other ranks
        if flat_gradient is None:
            if self.is_worker:
                raise ValueError(f"{fn}: rank {self.rank} is a worker and must pass its gradient")
        else:
            if not isinstance(flat_gradient, torch.Tensor):
                raise TypeError(
                    f"{fn}: flat_gradient must be a torch tensor, got "
                    f"{type(flat_gradient).__name__}"
                )
            if flat_gradient.dim() != 1:
                # not flattened here: a (2, n/2) tensor of the right size is almost always the
                # wrong tensor (a parameter's gradient, a batch), and reshaping it hid that
                raise ValueError(
                    f"{fn}: flat_gradient must be 1-D (the flattened gradient), got shape "
                    f"{tuple(flat_gradient.shape)}"
                )
            flat_gradient = flat_gradient.detach()
            if flat_gradient.numel() != self.numel:
                raise ValueError(
                    f"{fn}: flat_gradient must have {self.numel} elements, got "
                    f"{flat_gradient.numel()}"
                )
            # the device only: a gradient of another dtype goes to the wire format as it is,
            # which sends NaN and says so (every rank then has the reason in last_rejected);
            # converting it here hid it (a complex gradient lost its imaginary part, a float64
            # 1e300 became Inf and was reported as non-finite)
            flat_gradient = flat_gradient.to(device=self.device)
        step = self.steps
        self.steps += 1
        st = self.stats
        st.calls += 1
        st.elements += self.numel
        self._reap()
        k = timed(st, "barrier_s", self.barrier.launched) if self.barrier is not None else None
        where = f"parameter server step {step}"
        tag = self._tag_base + (2 * step) % (1 << 21)
        p = len(self.ranks)
        res_bytes = payload_bytes(self.numel, self.dtype) + HEADER_BYTES * (p + 1)
        msg = None
        # a fingerprint of this rank's parameters, once per step: a worker sends it in its
        # header, the server compares the workers' with it (see _serve)
        fp = fingerprint(self.params)
        if self.is_worker:
            own = contribution_of(
                self.attack,
                self.attack_params,
                flat_gradient,
                derive_seed(self.seed, self.rank, step),
            )
            # the header's second word: the fingerprint, which the server compares with its
            # own: a worker whose replica forked (it called aggregate twice in a step, or
            # skipped an optimizer step) is rejected and named on every rank
            msg = pack(own, self.numel, self.dtype, self.device, (step, fp))
        if self.is_server:
            result = timed(
                st, "comm_s", lambda: self._serve(step, tag, msg, res_bytes, where, k, mode, fp)
            )
        else:
            t0 = time.perf_counter()
            send = (
                dist.isend(msg, self.server_rank, group=self.group, tag=tag)
                if msg is not None
                else None
            )
            if send is not None:
                self._outstanding.append(_Waiter(send, msg, key=self.server_rank))
            result = torch.empty(res_bytes, dtype=torch.uint8, device=self.device)
            recv = dist.irecv(result, self.server_rank, group=self.group, tag=tag + 1)
            if self.barrier is None:
                Completion(recv).wait(None)  # sliced: a Ctrl-C is honoured while waiting
            else:
                assert k is not None and self.timeout is not None  # a barrier implies both
                self.barrier.wait_work(recv, k, where, time.monotonic() + 2 * self.timeout)
            st.comm_s += time.perf_counter() - t0
        out = self._read_result(result, step, where)
        now = time.perf_counter()
        st.step_times.append(now - t_start)
        self._t_prev = now
        return out

    def _serve(
        self,
        step: int,
        tag: int,
        own_msg: Any,
        res_bytes: int,
        where: str,
        k: int | None,
        mode: str,
        fp: int,
    ) -> Any:
        """Server side of one step: receive the quorum, aggregate, send the result. ``fp``: the
        fingerprint of the server's parameters, which every worker's must equal."""
        import torch

        dist = torch_dist()
        msg_bytes = payload_bytes(self.numel, self.dtype) + HEADER_BYTES
        arrivals: queue.Queue[Any] = queue.Queue()
        recvs: dict[int, tuple[Any, Any]] = {}
        arrived: list[Any] = []
        for r in self.workers:
            if r == self.rank:
                arrived.append(r)
                continue
            buf = torch.empty(msg_bytes, dtype=torch.uint8, device=self.device)
            # gloo's point-to-point works report completion only through wait(): one waiting
            # thread per receive, so the first ``quorum`` arrivals can be taken in order
            recvs[r] = (
                _Waiter(dist.irecv(buf, r, group=self.group, tag=tag), buf, arrivals, r),
                buf,
            )
        if own_msg is not None:
            recvs[self.rank] = (None, own_msg)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        waiting = [r for r in self.workers if r != self.rank]
        while len(arrived) < self.quorum:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._abort(step, tag, res_bytes, waiting, where)
            try:  # in slices, so that a Ctrl-C is honoured while waiting
                r, err = arrivals.get(
                    timeout=WAIT_SLICE_S if left is None else min(left, WAIT_SLICE_S)
                )
            except queue.Empty:
                continue
            if err is not None:
                # tell the other ranks first (they wait for this step's result), then raise
                self._abort(step, tag, res_bytes, [r], where, failed=err)
            arrived.append(r)
            waiting.remove(r)
        used = sorted(arrived, key=self.ranks.index)
        late = [r for r in self.workers if r not in used]
        for r in late:  # dropped: its waiting thread finishes when the gradient comes
            self.stats.late_calls[r] = self.stats.late_calls.get(r, 0) + 1
            self._dropped.append((step, r, recvs[r][0]))
        self._wait_stale(step, tag, res_bytes, where, deadline)
        lags = self._lags(step)
        rows = torch.stack([recvs[r][1] for r in used])
        stack, bad = unpack(rows, self.numel, self.dtype, (step, fp), used, "a gradient")
        t0 = time.perf_counter()
        agg, info = self.rule_obj(
            stack, return_info=True
        )  # info.excluded: the rule's finiteness check
        record_nonfinite_mask(self.stats, np.asarray(info.excluded, bool), used, skip=tuple(bad))
        self.stats.aggregate_s += time.perf_counter() - t0
        if mode == "parameters":
            self._write(agg, "grad")
            self.optimizer.step()
            payload = torch.cat([q.detach().reshape(-1) for q in self.params])
        else:
            payload = agg
        status = []
        for r in self.ranks:
            if r in bad:
                status.append(REJECTED)
            elif r in self.stats.last_nonfinite_ranks:
                status.append(NONFINITE)
            elif r in used:
                status.append(USED)
            elif r in late:
                status.append(LATE)
            else:
                status.append(NOT_WORKER)
        heads = _heads(
            self,
            step,
            0,
            len(used),
            status,
            {r: _claimed(rows, used, r, self, step, fp) for r in bad},
            lags,
        )
        result = torch.empty(res_bytes, dtype=torch.uint8, device=self.device)
        nb = payload_bytes(self.numel, self.dtype)
        result[:nb].view(self.dtype).copy_(payload.reshape(-1))
        result[nb:].copy_(heads.to(self.device))
        sends = self._send_all(result, tag)
        if not late:
            # without a quorum every worker is waiting for this message already: wait until it
            # is delivered (gloo's isend completes only then), so the server never runs ahead
            # and exits with results undelivered; with a quorum, ``finish`` does it at the end
            end = None if self.timeout is None else time.monotonic() + self.timeout
            for w in sends:
                wait_event(w.done, end)
        return result

    def _prune_dropped(self) -> None:
        """Forget the dropped receives that completed; keep each rank's first failed one."""
        pending = []
        for t, r, w in self._dropped:
            if not w.done.is_set():
                pending.append((t, r, w))
            elif w.error is not None and r not in self._dropped_failed:
                self._dropped_failed[r] = (t, w.error)
        self._dropped = pending

    def _wait_stale(
        self, step: int, tag: int, res_bytes: int, where: str, deadline: float | None
    ) -> None:
        """``max_staleness`` s: wait (until the step's ``deadline``, in slices) until every
        worker's gradient of step ``step - s`` and earlier has arrived; a worker whose receive
        failed or that does not deliver in time gets the missing-worker abort (``_abort``)."""
        s = self.max_staleness
        if s is None:
            return
        oldest = step - s  # the newest step whose gradients must all have arrived
        t0 = time.perf_counter()
        waited: set[int] = set()
        while True:
            self._prune_dropped()
            for r, (t, err) in self._dropped_failed.items():
                if t <= oldest:
                    self._abort(step, tag, res_bytes, [r], where, failed=err)
            due = [(t, r, w) for t, r, w in self._dropped if t <= oldest]
            if not due:
                break
            waited.update(r for _, r, _ in due)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                missing = sorted({r for _, r, _ in due}, key=self.ranks.index)
                whose = "its gradient" if len(missing) == 1 else "their gradients"
                self._abort(
                    step,
                    tag,
                    res_bytes,
                    missing,
                    where,
                    detail=f"{whose} of step {oldest}, max_staleness {s}",
                )
            # one slice at most, then the failures and the deadline are checked again
            slice_s = WAIT_SLICE_S if left is None else min(left, WAIT_SLICE_S)
            wait_event(due[0][2].done, time.monotonic() + slice_s)
        if waited:
            st = self.stats
            st.stale_wait_s += time.perf_counter() - t0
            for r in waited:
                st.stale_waits[r] = st.stale_waits.get(r, 0) + 1

    def _lags(self, step: int) -> dict[int, int]:
        """{worker: steps up to ``step`` whose gradient from it has not arrived} (0: none)."""
        self._prune_dropped()
        first = {r: t for r, (t, _) in self._dropped_failed.items()}
        for t, r, _ in self._dropped:
            first[r] = min(first.get(r, t), t)
        return {r: step + 1 - first[r] if r in first else 0 for r in self.workers}

    def _send_all(self, result: Any, tag: int, tolerant: bool = False) -> list[Any]:
        """Send ``result`` to every other rank; ``tolerant`` (an abort): a send that fails at
        once (the connection to a dead rank is closed) is skipped, the others still go out."""
        dist = torch_dist()
        sends = []
        for r in self.ranks:
            if r == self.rank:
                continue
            try:
                work = dist.isend(result, r, group=self.group, tag=tag + 1)
            except RuntimeError:
                if not tolerant:
                    raise
                continue
            sends.append(_Waiter(work, result, key=r))
        self._outstanding.extend(sends)
        return sends

    def _abort(
        self,
        step: int,
        tag: int,
        res_bytes: int,
        missing: list[Any],
        where: str,
        failed: BaseException | None = None,
        detail: str = "",
    ) -> None:
        """The quorum did not arrive in time (or receiving from a worker failed: ``failed``), or
        a stale worker's older gradient (``detail`` says which, in the server's message): tell
        every rank who is missing, then raise the same error here."""
        import torch

        status = [MISSING if r in missing else USED for r in self.ranks]
        heads = _heads(self, step, 1 if failed is None else 2, 0, status, {})
        result = torch.zeros(res_bytes, dtype=torch.uint8, device=self.device)
        result[payload_bytes(self.numel, self.dtype) :].copy_(heads.to(self.device))
        sends = self._send_all(result, tag, tolerant=True)
        # give the error a moment to reach the living workers before this rank goes on
        end = time.monotonic() + min(self.timeout or 5.0, 5.0)
        for w in sends:
            if w.key not in missing:
                wait_event(w.done, end)
        if failed is not None:
            raise RankFailureError(
                f"flagcore.distributed: {where}: receiving rank(s) {missing}'s gradient failed "
                f"(the rank died or its connection broke); seen from rank {self.rank} (the "
                f"server): {failed}",
                missing_ranks=missing,
                where=where,
                timeout=self.timeout,
            ) from failed
        raise RankFailureError(
            f"flagcore.distributed: {where}: rank(s) {missing} did not arrive within "
            f"{self.timeout:g} s (dead or stalled{'; waiting for ' + detail if detail else ''}); "
            f"seen from rank {self.rank} (the server, quorum {self.quorum})",
            missing_ranks=missing,
            where=where,
            timeout=self.timeout,
        )

    def _read_result(self, result: Any, step: int, where: str) -> Any:
        """Every rank: the payload (n,) of the server's message, and the per-rank status in it."""
        import torch

        nb = payload_bytes(self.numel, self.dtype)
        p = len(self.ranks)
        words = (
            torch.empty(HEADER_BYTES * (p + 1), dtype=torch.uint8)
            .copy_(result[nb:])
            .view(torch.int64)
        )
        heads = words.view(p + 1, 4).tolist()
        g_step, abort = heads[0][0], heads[0][1]
        if g_step != step:
            raise RankFailureError(
                f"flagcore.distributed: {where}: the server's result is for step {g_step} "
                f"(the ranks are out of step); seen from rank {self.rank}",
                where=where,
            )
        status = dict(zip(self.ranks, heads[1:]))
        if abort:
            missing = [r for r, h in status.items() if h[0] == MISSING]
            if abort == 2:
                raise RankFailureError(
                    f"flagcore.distributed: {where}: receiving rank(s) {missing}'s gradient "
                    f"failed (the rank died or its connection broke); reported by the server "
                    f"(rank {self.server_rank}) to rank {self.rank}",
                    missing_ranks=missing,
                    where=where,
                    timeout=self.timeout,
                )
            raise RankFailureError(
                f"flagcore.distributed: {where}: rank(s) {missing} did not arrive within "
                f"{self.timeout:g} s "
                f"(dead or stalled); reported by the server (rank {self.server_rank}) to rank "
                f"{self.rank}",
                missing_ranks=missing,
                where=where,
                timeout=self.timeout,
            )
        bad = {}
        for r, h in status.items():
            if h[0] == REJECTED:
                bad[r] = describe_mismatch(
                    f"rank {r} sent a gradient", h[1], h[2], self.numel, self.dtype
                )
                if h[1] == -2:
                    bad[r] = f"rank {r} sent a gradient out of step (for another step than {step})"
                elif h[1] == -3:
                    bad[r] = (
                        f"rank {r} is out of step: its parameters differ from the server's "
                        f"(rank {self.server_rank}) at step {step} (an extra aggregate call or a "
                        f"missed optimizer step forked its replica)"
                    )
        st = self.stats
        if bad:
            st.last_rejected = bad
            for r, m in bad.items():
                st.rejected_calls[r] = st.rejected_calls.get(r, 0) + 1
                log.warning(
                    "flagcore.distributed: %s: %s; excluded and counted against f", where, m
                )
        if not self.is_server:
            for r, h in status.items():
                if h[0] == LATE:
                    st.late_calls[r] = st.late_calls.get(r, 0) + 1
            record_nonfinite_mask(st, [h[0] == NONFINITE for h in status.values()], self.ranks)
        self.last_status = {r: _STATUS_NAMES[h[0]] for r, h in status.items()}
        self.last_lag = {r: int(status[r][3]) for r in self.workers}
        for r, lag in self.last_lag.items():
            if lag > st.max_lag.get(r, 0):
                st.max_lag[r] = lag
        return result[:nb].view(self.dtype)

    def flat_gradient(self) -> Any:
        """This rank's gradients as one (n,) tensor (zeros for parameters without .grad)."""
        import torch

        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self.params
            ]
        )

    def _write(self, flat: Any, attr: str) -> None:
        import torch

        off = 0
        with torch.no_grad():
            for p in self.params:
                chunk = flat[off : off + p.numel()].view_as(p)
                off += p.numel()
                if attr == "grad":
                    if p.grad is None:
                        p.grad = chunk.clone()
                    else:
                        p.grad.copy_(chunk)
                else:
                    p.copy_(chunk)

    def aggregate_gradients(self) -> Any:
        """Collective: replace every rank's ``.grad`` by the aggregate of the workers'
        gradients; returns the flat aggregate. For loops that step the optimizer themselves."""
        agg = self.aggregate(self.flat_gradient() if self.is_worker else None)
        self._write(agg, "grad")
        return agg

    def step(self) -> None:
        """Collective: one synchronous parameter-server step after ``backward()``.

        mode "gradients": aggregate, write it to ``.grad``, ``optimizer.step()`` on every rank.
        mode "parameters": aggregate on the server, ``optimizer.step()`` there, then send the
        parameters to every rank.
        """
        if self.optimizer is None and (self.mode == "gradients" or self.is_server):
            raise ValueError(
                "ParameterServer.step: no optimizer was given (pass one, or call "
                "aggregate_gradients)"
            )
        if self.mode == "gradients":
            self.aggregate_gradients()
            self.optimizer.step()
            return
        flat = self._step(self.flat_gradient() if self.is_worker else None, "parameters")
        if not self.is_server:
            self._write(flat, "param")

    def broadcast_parameters(self) -> None:
        """Collective: copy the server's parameters to every rank (for a common start)."""
        import torch

        dist = torch_dist()
        flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self._collective(
            "parameter server (initial parameters)",
            lambda: dist.broadcast(flat, src=self.server_rank, group=self.group, async_op=True),
        )
        if not self.is_server:
            self._write(flat, "param")

    def finish(self, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout`` s, a real number in (0, 1e7]) until this rank's outstanding
        messages are delivered: the results sent to late workers, a late worker's gradient.
        Call it on every rank after the last step (before ``shutdown``) when a quorum is used.

        Raises RankFailureError (``missing_ranks``: the ranks they were sent to) when messages
        are still undelivered at the deadline, or when a send failed (its connection broke: the
        rank died) at any time since the start: those ranks did not receive them (dead,
        stalled, or not calling ``finish`` / their step), and leaving silently would hide it."""
        limit = check_timeout("ParameterServer.finish", timeout, allow_none=False)
        end = time.monotonic() + limit
        for w in self._outstanding:
            wait_event(w.done, end)  # sliced: a Ctrl-C is honoured while waiting
        self._reap()
        pending, failed = self._outstanding, self._send_failures
        if pending or failed:
            to = sorted({w.key for w in pending + failed if w.key is not None})
            what = []
            if failed:
                first = failed[0].error
                what.append(
                    f"{len(failed)} failed (to rank(s) "
                    f"{sorted({w.key for w in failed if w.key is not None})}; first: "
                    f"{type(first).__name__}: {first})"
                )
            if pending:
                what.append(
                    f"{len(pending)} still undelivered after {limit:g} s (to rank(s) "
                    f"{sorted({w.key for w in pending if w.key is not None})})"
                )
            raise RankFailureError(
                f"flagcore.distributed: ParameterServer.finish: message(s) from rank "
                f"{self.rank} to rank(s) {to} not delivered: {'; '.join(what)} (dead or stalled)",
                missing_ranks=to,
                where="ParameterServer.finish",
                timeout=limit,
            )


def _check_max_staleness(fn: str, value: Any, quorum: Any, workers: int) -> int | None:
    """``max_staleness``: None or an int >= 0, and only with a quorum below ``workers`` (without
    one every step waits for every worker, so a bound would be ignored: refused instead)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{fn}: max_staleness must be None or an int >= 0 (steps), got {value!r} "
            f"({type(value).__name__})"
        )
    if value < 0:
        raise ValueError(f"{fn}: max_staleness must be None or an int >= 0 (steps), got {value}")
    if quorum is None or quorum == workers:
        given = "quorum is None" if quorum is None else f"quorum={quorum} is every worker"
        raise ValueError(
            f"{fn}: max_staleness={int(value)} bounds how far a worker left out of the quorum "
            f"may fall behind, but {given} (every step waits for all {workers} workers, so it "
            f"would be ignored); pass a quorum below {workers} or leave max_staleness None"
        )
    return int(value)


def _check_params(fn: str, params: Any) -> list[Any]:
    """The parameters that require grad of ``params``: a torch.nn.Module or an iterable of leaf
    tensors (Parameters). A single tensor is refused: iterating it gives its rows, views whose
    .grad autograd never fills, so the aggregate would be written where no optimizer reads it."""
    import torch

    if isinstance(params, torch.Tensor):
        raise TypeError(
            f"{fn}: params must be a torch.nn.Module or an iterable of Parameters, got a single "
            f"{type(params).__name__} of shape {tuple(params.shape)} (iterating it would give "
            "its rows); pass [w]"
        )
    if isinstance(params, torch.nn.Module):
        items = list(params.parameters())
    else:
        if isinstance(params, (str, bytes, dict)) or not hasattr(params, "__iter__"):
            raise TypeError(
                f"{fn}: params must be a torch.nn.Module or an iterable of Parameters, got "
                f"{params!r} ({type(params).__name__})"
            )
        items = list(params)
        for i, q in enumerate(items):
            if not isinstance(q, torch.Tensor):
                raise TypeError(
                    f"{fn}: params[{i}] must be a torch Parameter (a leaf tensor), got "
                    f"{type(q).__name__}"
                )
            if q.requires_grad and not q.is_leaf:
                raise ValueError(
                    f"{fn}: params[{i}] is not a leaf tensor (a view or the result of an "
                    "operation): autograd never fills its .grad; pass the Parameters themselves"
                )
    return [q for q in items if q.requires_grad]


class _Waiter:
    """Waits for a point-to-point work in a daemon thread (gloo's isend/irecv report completion
    only through wait()); keeps the buffer alive until then. On completion sets ``error`` (the
    work's exception or None), then ``done``, and puts (key, error) on ``arrivals``."""

    def __init__(self, work: Any, buf: Any, arrivals: Any = None, key: Any = None) -> None:
        self.work, self.buf, self.arrivals, self.key = work, buf, arrivals, key
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        err = None
        try:
            self.work.wait()
        except BaseException as exc:
            err = exc
        self.error = err
        self.done.set()
        if self.arrivals is not None:
            self.arrivals.put((self.key, err))


def _all_gather(dist: Any, out: Any, own: Any, group: Any) -> Any:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, own, group=group, async_op=True)


def _claimed(
    rows: Any, used: list[Any], r: int, ps: ParameterServer, step: int, fp: int
) -> tuple[Any, ...]:
    """(numel, dtype code) rank r's header claimed (-2 when its tag was another step's, -3
    when its parameter fingerprint was not the server's ``fp``)."""
    import torch

    nb = payload_bytes(ps.numel, ps.dtype)
    h = (
        torch.empty(HEADER_BYTES, dtype=torch.uint8)
        .copy_(rows[used.index(r), nb:])
        .view(torch.int64)
        .tolist()
    )
    if h[0] != step:
        return (-2, -2)
    if h[1] != fp:
        return (-3, -3)
    return (h[2], h[3])


def _heads(
    ps: ParameterServer,
    step: int,
    abort: int,
    used: int,
    status: list[Any],
    claimed: dict[int, tuple[int, int]],
    lags: dict[int, int] | None = None,
) -> Any:
    """The result's header: [step, abort, rows used, 0], then per rank [status, the numel and
    dtype code its header claimed (when rejected), its lag (``ParameterServer.last_lag``)]."""
    import torch

    h = [[step, abort, used, 0]]
    for r, s in zip(ps.ranks, status):
        c = claimed.get(r, (0, 0))
        h.append([s, c[0], c[1], (lags or {}).get(r, 0)])
    return torch.tensor(h, dtype=torch.int64).reshape(-1).view(torch.uint8)
