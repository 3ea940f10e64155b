"""``simulate``: the event-driven (n, k) fork-join simulator (C++, csrc/sim/) and its result."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import numpy as np

from .._backend import core
from . import _stats
from ._model import (
    MMPP,
    DeadlinePolicy,
    Levels,
    LevelsLike,
    PolicyLike,
    Renewal,
    SpeedLevel,
    ThresholdPolicy,
    Trace,
    as_arrivals,
    as_levels,
    as_policy,
    as_policy_levels,
    as_service,
    as_sleep_states,
    as_trace,
    check_nk,
    check_power,
    check_rate,
)

#: Largest requests + warmup per replication (csrc/sim/forkjoin_sim.hpp kMaxRequests).
MAX_REQUESTS = 2**53
MAX_SERVERS = 1 << 20
MAX_BATCHES = 100_000
MAX_REPLICATIONS = 1 << 20
MAX_THREADS = 1024
#: A run shorter than this many relaxation times is flagged as not converged.
MIN_RELAXATION_TIMES = 10.0


class UnstableError(ValueError):
    """The run's number in system kept growing: the load is (very likely) unstable.
    ``result`` holds the flagged SimResult."""

    def __init__(self, message: str, result: SimResult):
        super().__init__(message)
        self.result = result


@dataclass
class SimResult(_stats.PercentileShortcuts):
    """Estimates of one ``simulate`` call. Every ``*_ci`` is a 95% confidence half-width (batch
    means over one replication, or the spread across replications when there are several).
    Time averages cover the window from the first measured arrival to the first arrival after
    the measured ones; per-request means cover the measured requests."""

    params: dict[str, Any]
    mean_response_time: float
    mean_response_time_ci: float
    mean_in_system: float
    mean_in_system_ci: float
    energy_per_request: float
    energy_per_request_ci: float
    average_power: float
    average_power_ci: float
    throughput: float  # measured arrivals per unit time
    utilisation: np.ndarray  # per level: fraction of core-time busy at that level
    busy_cores: np.ndarray  # per level: mean number of cores busy at that level (B_s)
    busy_time: np.ndarray  # per level: core-time busy in the window
    busy_time_per_request: np.ndarray  # per level: busy_time / measured arrivals (tau_s)
    completion_rate: np.ndarray  # per level: task completions per unit time
    idle_fraction: float
    wasted_time_per_request: float  # busy time on tasks that were cancelled or finished late
    wasted_time_per_request_ci: float
    wasted_energy_per_request: float
    window: float
    requests: int  # measured requests, all replications
    stable: bool
    stability_note: str
    events: int
    wall_seconds: float  # longest replication
    events_per_second: float  # per second of one thread's CPU time
    requests_per_second: float  # simulated (warm-up included) per second of one thread's CPU time
    cpu_seconds: float  # CPU time of all replications together
    replications: int
    histogram: np.ndarray = field(repr=False)
    _rep_hists: list[Any] = field(
        repr=False, default_factory=list
    )  # per replication: (batches, buckets)
    _minmax: tuple[float, float] = (0.0, 0.0)

    #: relative error of percentile() against the sample percentile (histogram resolution)
    percentile_relative_error: float = _stats.PERCENTILE_RELATIVE_ERROR
    #: Energy per request (window energy / measured arrivals) split by where it went:
    #: busy (per level, useful work), wasted (busy on cancelled or late tasks), idle (at
    #: idle_power), sleep (per sleep state), wakeup, switching. The parts sum to
    #: total_energy_per_request = average_power / throughput.
    energy_split: dict[str, Any] = field(default_factory=dict)
    #: The same split as average power (sums to average_power).
    power_split: dict[str, Any] = field(default_factory=dict)
    total_energy_per_request: float = math.nan
    sleep_fraction: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # per state: core-time share
    wake_fraction: float = 0.0  # core-time share spent waking up
    wakeups_per_request: float = 0.0
    switches_per_request: float = 0.0
    switch_fraction: float = 0.0  # core-time share stalled by speed switches (switch_time)

    # ------------------------------------------------------------ tails
    def percentile(self, q: float) -> float:
        """The q-quantile of the response time, q in (0, 1)."""
        q = _check_q(q)
        return _stats.hist_percentile(self.histogram, q, *self._minmax)

    def _groups(self) -> list[Any]:
        """Sparse histograms of the independent estimates: one per replication (several), else
        one per batch."""
        if len(self._rep_hists) >= 2:
            return [_stats.sparse_hist(b, c) for _, b, c in self._rep_hists]
        bat, b, c = self._rep_hists[0]
        cuts = np.flatnonzero(np.diff(bat)) + 1
        return list(zip(np.split(b, cuts), np.split(c, cuts)))

    def percentile_ci(self, q: float) -> float:
        """95% half-width of percentile(q): batch quantiles (one replication) or replication
        quantiles."""
        q = _check_q(q)
        est = [_stats.sparse_percentile(b, c, q, *self._minmax) for b, c in self._groups()]
        return _stats.half_width(np.array(est))

    def deadline_miss(self, d: float) -> float:
        """P(T > d): the fraction of requests that missed deadline d."""
        return _stats.hist_exceed(self.histogram, float(d))

    def deadline_miss_ci(self, d: float) -> float:
        est = [_stats.sparse_exceed(b, c, float(d)) for b, c in self._groups()]
        return _stats.half_width(np.array(est))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no histogram)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if k.startswith("_") or k == "histogram":
                continue
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v
        out["percentiles"] = {str(q): self.percentile(q) for q in (0.5, 0.95, 0.99, 0.999)}
        out["percentiles_ci"] = {str(q): self.percentile_ci(q) for q in (0.5, 0.95, 0.99, 0.999)}
        return out


def _check_q(q: Any) -> float:
    if (
        isinstance(q, bool)
        or not isinstance(q, (int, float, np.floating))
        or not 0.0 < float(q) < 1.0
    ):
        raise ValueError(f"percentile: q must be in (0, 1), got {q!r}")
    return float(q)


def _check_count(x: Any, fn: str, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) < lo:
        raise ValueError(f"{fn}: {what} must be an int >= {lo}, got {x!r}")
    if hi is not None and int(x) > hi:
        raise ValueError(f"{fn}: {what} must be an int <= {hi}, got {x!r}")
    return int(x)


def certainly_unstable(
    n: int, k: int, lam: float, lv: Levels, cancel: bool, redraw: bool, policy: bool = False
) -> str | None:
    """A reason when no schedule could keep up, else None. k*lam >= n * fastest rate always
    overloads; without cancellation (or with k = n, where nothing is cancelled) every server
    must serve every task, so lam * E[service] >= 1 does too (unless speeds change mid-task).
    ``policy``: a state-dependent policy picks the levels (the probabilities mean nothing):
    only the fastest rate counts."""
    fastest = lv.max_rate
    if k * lam >= n * fastest:
        return (
            f"k * arrival_rate = {k * lam:g} >= n * fastest rate = {n * fastest:g}: "
            f"the load is unstable at any speed choice"
        )
    if (not cancel or k == n) and not redraw:
        if policy:
            load = lam / fastest
        else:
            load = lam * math.fsum(p / r for r, p in zip(lv.rates, lv.probs))
        if load >= 1.0:
            why = "k = n" if cancel else "without cancellation"
            return (
                f"arrival_rate * E[service time] = {load:g} >= 1 on every server ({why}, each "
                f"server serves every task): the load is unstable"
            )
    return None


def _stability(batch_n: np.ndarray, aborted: bool, max_seen: int, cap: int) -> tuple[bool, str]:
    """batch_n: (replications, batches) time-average number in system per batch."""
    if aborted:
        return False, f"the number in system passed max_in_system = {cap}"
    b = batch_n.shape[1]
    if b < 8:
        return True, "not checked (fewer than 8 batches)"
    x = batch_n.mean(axis=0)
    idx = np.arange(b, dtype=np.float64)
    xc = idx - idx.mean()
    slope = float(xc @ (x - x.mean()) / (xc @ xc))
    resid = x - x.mean() - slope * xc
    se = math.sqrt(max(float(resid @ resid) / (b - 2), 1e-300) / float(xc @ xc))
    q = max(b // 4, 1)
    first, last = float(x[:q].mean()), float(x[-q:].mean())
    growing = slope / se > 6.0 and last > 1.5 * first + 1.0
    note = (
        f"mean number in system {first:.4g} over the first quarter of the batches, "
        f"{last:.4g} over the last (trend t = {slope / se:.3g})"
    )
    return (not growing), note


def _converged(util: float, mean_service: float, window: float) -> tuple[bool, str]:
    """Whether the run spans enough relaxation times for its estimates to mean something.

    Near the stability limit a stable queue relaxes so slowly that a run of any practical
    length still drifts (its batch means trend up while each batch looks steady). The
    relaxation time of M/M/1 at load u, tau = E[S] / (1 - sqrt(u))^2 (Morse 1955), measured
    at the run's own utilisation (busy + waking core-time share, which tends to 1 at every
    model's stability limit), is the yardstick: a run shorter than MIN_RELAXATION_TIMES tau
    is flagged."""
    if not (util > 0 and math.isfinite(util) and window > 0 and mean_service > 0):
        return True, ""
    gap = 1.0 - math.sqrt(min(util, 1.0))
    tau = math.inf if gap <= 0 else mean_service / (gap * gap)
    spans = window / tau
    if spans >= MIN_RELAXATION_TIMES:
        return True, ""
    return False, (
        f"the run covers {spans:.3g} relaxation times (utilisation {util:.6g}, relaxation "
        f"time ~ E[S]/(1-sqrt(u))^2 = {tau:.4g}, window {window:.4g}; at least "
        f"{MIN_RELAXATION_TIMES:g} are needed): the estimates have not converged and keep "
        f"changing with the run length"
    )


def simulate(
    n: int,
    k: int,
    arrival_rate: float | None,
    levels: LevelsLike,
    *,
    requests: int | None = None,
    warmup: int | None = None,
    seed: int = 0,
    idle_power: float = 0.0,
    service: Any = "exponential",
    cancel: bool = True,
    redraw_on_arrival: bool = False,
    sleep: Sequence[Any] | None = None,
    sleep_timer: str = "deterministic",
    wake_time: str = "deterministic",
    switch_energy: float = 0.0,
    switch_time: float = 0.0,
    switch_power: float = 0.0,
    policy: PolicyLike = None,
    arrivals: MMPP | Renewal | Trace | None = None,
    replications: int = 1,
    threads: int | None = None,
    batches: int = 32,
    on_unstable: str = "raise",
    max_in_system: int = 1 << 22,
    progress: bool | Callable[[int, int], None] | None = None,
) -> SimResult:
    """Simulate the (n, k) fork-join service with speed levels and energy.

    Each request is forked to all n servers (FCFS, unbounded queues) and departs at its k-th
    task completion; with ``cancel`` its other n - k tasks are then cancelled. ``levels`` is a
    list of (rate, power, probability) or SpeedLevel; a core draws a level when it starts a task
    (``redraw_on_arrival``: every core redraws at every arrival, the task in service continuing
    at the new rate). ``service`` is the unit-mean work distribution (see ``Service``).
    Heterogeneous servers: ``levels`` may be a list of n level sets, one per server (server j
    picks among its own); the per-level result arrays then run over server 0's levels, then
    server 1's, and so on.

    ``sleep``: low-power states, a list of SleepState (or (after, power, wake_latency,
    wake_power) tuples): an idle server enters state 0 after ``after`` of idleness (the
    delay-off timer), state i + 1 after a further states[i + 1].after, and work arriving at a
    sleeping server waits for a wake-up of that state's wake_latency at wake_power (a wake-up
    always completes, even when the task that caused it is cancelled). ``sleep_timer`` and
    ``wake_time``: "deterministic" or "exponential" (with those means). ``switch_energy``:
    energy of each change of a server's speed level; ``switch_time``: a stall of that length
    at ``switch_power`` per change, during which the server does no work (a stall always
    completes; a change during a stall begins at its end).

    ``policy``: None (the per-task random draw above), ThresholdPolicy(thresholds) (speed by
    the server's queue length, re-evaluated at task starts and arrivals, the task in service
    continuing at the new rate) or DeadlinePolicy(deadline, known_size) (at task start, the
    slowest level expected to meet the request's deadline, else the fastest); with a policy,
    ``levels`` may be (rate, power) pairs (probabilities are not used).

    ``arrivals``: None (Poisson), an MMPP (bursty arrivals), whose phase rates are scaled to the
    mean rate ``arrival_rate``, a Renewal process (i.i.d. inter-arrival times of a given shape,
    mean 1 / arrival_rate), or a Trace (given arrival times and optional task sizes; pass
    ``arrival_rate=None``; every request of the trace after ``warmup`` (default 0) is measured,
    ``requests`` must be None or their number, and the window runs until the system has emptied
    after the last arrival; the stability checks are skipped).

    ``requests`` (default 1,000,000) are measured after ``warmup`` discarded ones (default
    requests // 10), per replication; replications run on up to ``threads`` threads (default: as
    many as useful; never more than ``flagcore.get_num_threads()``, the native pool's size, which
    ``flagcore.set_num_threads`` changes; ``params["threads"]`` is the number asked for) with
    independent Philox streams of ``seed``; the result does not depend on ``threads``.

    Inputs that are certainly unstable raise ValueError. If the run's number in system keeps
    growing, or the run spans too few relaxation times to have converged (near the stability
    limit), ``on_unstable`` decides: "raise" (default) raises UnstableError (a ValueError;
    ``.result`` holds the flagged result), "warn" warns and returns it, "return" returns it;
    either way ``stable`` is False and ``stability_note`` says why.
    ``progress``: True draws a bar on stderr, a callable gets (done, total) about 10 times a
    second, on the calling thread (an exception it raises stops the run and propagates).
    Ctrl-C stops a run within a fraction of a second (KeyboardInterrupt).
    """
    fn = "simulate"
    n, k = check_nk(n, k, fn)
    if n > MAX_SERVERS:
        raise ValueError(f"{fn}: n must be <= {MAX_SERVERS}, got {n}")
    trace = None
    if isinstance(arrivals, Trace):
        trace = as_trace(arrivals, n, fn)
        if arrival_rate is not None:
            raise ValueError(
                f"{fn}: arrival_rate must be None with a Trace (the trace gives the arrival "
                f"times), got {arrival_rate!r}"
            )
        R = trace[0].size
        span = float(trace[0][-1] - trace[0][0])
        lam = (R - 1) / span if R > 1 and span > 0 else 1.0  # for the parameters only
        if warmup is None:
            warmup = 0
        warmup = _check_count(warmup, fn, "warmup", 0, R - 1)
        if requests is not None and requests != R - warmup:
            raise ValueError(
                f"{fn}: with a Trace, requests must be None or the trace's {R} arrivals - warmup "
                f"{warmup} = {R - warmup}, got {requests!r}"
            )
        requests = R - warmup
        mmpp = None
    else:
        if arrival_rate is None:
            raise ValueError(f"{fn}: arrival_rate is None: only a Trace gives its own arrivals")
        lam = check_rate(arrival_rate, fn)
        mmpp = as_arrivals(arrivals, fn)
        if requests is None:
            requests = 1_000_000
    pol = None
    per_server = _per_server_levels(levels)
    sets: list[Any] = []
    if per_server:
        if len(levels) != n:
            raise ValueError(
                f"{fn}: per-server levels must list n = {n} level sets, got {len(levels)}"
            )
        for j, one in enumerate(levels):
            where = f"{fn} (levels of server {j})"
            sets.append(
                as_policy_levels(one, where) if policy is not None else as_levels(one, where)
            )
        lv = Levels(
            tuple(x for st in sets for x in st.rates),
            tuple(x for st in sets for x in st.powers),
            tuple(x for st in sets for x in st.probs),
        )
        if policy is not None:
            ms = {st.m for st in sets}
            pol = as_policy(policy, max(ms), fn)
            if isinstance(pol, ThresholdPolicy) and len(ms) > 1:
                raise ValueError(
                    f"{fn}: the threshold policy needs the same number of levels on every server, "
                    f"got {[st.m for st in sets]}"
                )
    elif policy is not None:
        lv = as_policy_levels(levels, fn)
        pol = as_policy(policy, lv.m, fn)
    else:
        lv = as_levels(levels, fn)
    p0 = check_power(idle_power, fn)
    svc = as_service(service, fn)
    states = as_sleep_states(sleep, fn)
    sw = check_power(switch_energy, fn, "switch_energy")
    st_time = check_power(switch_time, fn, "switch_time")
    st_power = check_power(switch_power, fn, "switch_power")
    for name, v in (("sleep_timer", sleep_timer), ("wake_time", wake_time)):
        if v not in ("deterministic", "exponential"):
            raise ValueError(f"{fn}: {name} must be 'deterministic' or 'exponential', got {v!r}")
    requests = _check_count(requests, fn, "requests", 1, MAX_REQUESTS)
    batches = _check_count(batches, fn, "batches", 1, MAX_BATCHES)
    batches = min(batches, requests)
    warmup = (
        requests // 10 if warmup is None else _check_count(warmup, fn, "warmup", 0, MAX_REQUESTS)
    )
    if warmup + requests > MAX_REQUESTS:
        raise ValueError(f"{fn}: warmup + requests must be <= 2^53, got {warmup} + {requests}")
    if requests // batches >= 2**32:
        raise ValueError(
            f"{fn}: requests / batches must be < 2^32 (32-bit histogram counts per batch), got "
            f"{requests} / {batches}; raise batches"
        )
    replications = _check_count(replications, fn, "replications", 1, MAX_REPLICATIONS)
    max_in_system = _check_count(max_in_system, fn, "max_in_system", 1, 2**62)
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= int(seed) < 2**64
    ):
        raise ValueError(f"{fn}: seed must be an int in [0, 2^64), got {seed!r}")
    if threads is None:
        threads = min(replications, int(core.num_threads()))
    threads = _check_count(threads, fn, "threads", 1, MAX_THREADS)
    if on_unstable not in ("raise", "warn", "return"):
        raise ValueError(
            f"{fn}: on_unstable must be 'raise', 'warn' or 'return', got {on_unstable!r}"
        )
    for name, flag in (("cancel", cancel), ("redraw_on_arrival", redraw_on_arrival)):
        if not isinstance(flag, bool):
            raise TypeError(f"{fn}: {name} must be a bool, got {type(flag).__name__}")
    if redraw_on_arrival and (pol is not None or st_time > 0):
        raise ValueError(
            f"{fn}: redraw_on_arrival works with the random level choice only and switch_time = 0 "
            f"(got policy={policy!r}, switch_time={st_time})"
        )
    if trace is None and sets:
        reason = _hetero_unstable(k, lam, sets, cancel, redraw_on_arrival, pol is not None)
        if reason:
            raise ValueError(f"{fn}: {reason} (n={n}, k={k}, arrival_rate={lam:g})")
    elif trace is None:
        reason = certainly_unstable(n, k, lam, lv, cancel, redraw_on_arrival, pol is not None)
        if reason:
            raise ValueError(f"{fn}: {reason} (n={n}, k={k}, arrival_rate={lam:g})")

    params: dict[str, Any] = dict(
        n=n,
        k=k,
        arrival_rate=lam,
        levels=_levels_param(sets or [lv], pol is not None, bool(sets)),
        idle_power=p0,
        service=svc.describe(),
        cancel=cancel,
        redraw_on_arrival=redraw_on_arrival,
        requests=requests,
        warmup=warmup,
        seed=int(seed),
        replications=replications,
        threads=threads,
        batches=batches,
    )
    if states:
        params.update(
            sleep=[list(st) for st in states], sleep_timer=sleep_timer, wake_time=wake_time
        )
    if sw:
        params["switch_energy"] = sw
    if st_time:
        params.update(switch_time=st_time, switch_power=st_power)
    if isinstance(pol, ThresholdPolicy):
        params["policy"] = dict(kind="threshold", thresholds=list(pol.thresholds))
    elif isinstance(pol, DeadlinePolicy):
        params["policy"] = dict(kind="deadline", deadline=pol.deadline, known_size=pol.known_size)
    if trace is not None:
        params["arrivals"] = dict(
            kind="trace", requests=int(trace[0].size), sizes=trace[1] is not None
        )
    elif isinstance(mmpp, Renewal):
        params["arrivals"] = dict(kind="renewal", distribution=mmpp.distribution.describe())
    elif mmpp is not None:
        scale = lam / mmpp.mean_rate
        params["arrivals"] = dict(
            kind="mmpp",
            rates=[x * scale for x in mmpp.rates],
            switch=[list(row) for row in mmpp.switch],
        )
    cfg = core.SimConfig()
    cfg.n, cfg.k, cfg.arrival_rate = n, k, lam
    cfg.rates, cfg.powers, cfg.probs = list(lv.rates), list(lv.powers), list(lv.probs)
    if sets:
        cfg.server_levels = [st.m for st in sets]
    cfg.idle_power = p0
    cfg.service = getattr(core.ServiceKind, svc.native_kind)
    cfg.service_param = svc.param
    cfg.empirical = list(svc.samples)
    cfg.cancel, cfg.redraw_on_arrival = cancel, redraw_on_arrival
    cfg.sleep_states = [core.SleepState(*st) for st in states]
    cfg.sleep_exponential = sleep_timer == "exponential"
    cfg.wake_exponential = wake_time == "exponential"
    cfg.switch_energy = sw
    cfg.switch_time, cfg.switch_power = st_time, st_power
    if isinstance(pol, ThresholdPolicy):
        cfg.policy = core.SpeedPolicy.threshold
        cfg.thresholds = list(pol.thresholds)
    elif isinstance(pol, DeadlinePolicy):
        cfg.policy = core.SpeedPolicy.deadline
        cfg.deadline, cfg.deadline_known_size = pol.deadline, pol.known_size
    if trace is not None:
        # the setters take any float sequence (the stub says Sequence); arrays convert as before
        cfg.trace_arrivals = cast(Any, trace[0])
        if trace[1] is not None:
            cfg.trace_sizes = cast(Any, trace[1].ravel())
    if isinstance(mmpp, Renewal):
        d = mmpp.distribution
        cfg.renewal_arrivals = True
        cfg.arrival_kind = getattr(core.ServiceKind, d.native_kind)
        cfg.arrival_param = d.param
        cfg.arrival_table = list(d.samples)
    elif mmpp is not None:
        cfg.mmpp_rates = params["arrivals"]["rates"]
        cfg.mmpp_switch = [x for row in mmpp.switch for x in row]
    cfg.requests, cfg.warmup, cfg.batches = requests, warmup, batches
    cfg.seed, cfg.max_in_system = int(seed), max_in_system
    raw = _run_native(cfg, replications, threads, progress)
    res = _summarise(
        raw,
        params,
        lv,
        p0,
        n,
        max_in_system,
        states,
        sw,
        svc,
        pol is not None or bool(sets),
        trace is not None,
    )
    if not res.stable and on_unstable != "return":
        if res.stability_note.startswith("the run covers"):
            msg = (
                f"{fn}: the estimates have not converged ({res.stability_note}); the load is at "
                "or very "
                f"near the stability limit: run (much) longer or lower the load (n={n}, k={k}, "
                f"arrival_rate={lam:g}, k*arrival_rate={k * lam:g}). Pass on_unstable='return' to "
                "get the "
                f"flagged result."
            )
        else:
            msg = (
                f"{fn}: the number in system kept growing ({res.stability_note}); the load looks "
                "unstable "
                f"or the run is too short to reach steady state (n={n}, k={k}, "
                f"arrival_rate={lam:g}, "
                f"k*arrival_rate={k * lam:g}). Pass on_unstable='return' to get the flagged result."
            )
        if on_unstable == "raise":
            raise UnstableError(msg, res)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return res


def _per_server_levels(levels: Any) -> bool:
    """Whether levels is a list of per-server level sets (a list of lists of levels)."""
    seq = (list, tuple, np.ndarray)
    if isinstance(levels, (str, bytes)) or not isinstance(levels, seq) or len(levels) == 0:
        return False
    return all(
        isinstance(x, seq) and len(x) > 0 and all(isinstance(y, (*seq, SpeedLevel)) for y in x)
        for x in levels
    )


def _levels_param(sets: list[Any], policy: bool, per_server: bool) -> list[Any]:
    rows = [
        [list(t) for t in (zip(s.rates, s.powers) if policy else zip(s.rates, s.powers, s.probs))]
        for s in sets
    ]
    return rows if per_server else rows[0]


def _hetero_unstable(
    k: int, lam: float, sets: list[Any], cancel: bool, redraw: bool, policy: bool
) -> str | None:
    """certainly_unstable for per-server levels: k * lam >= the sum of the servers' fastest
    rates always overloads; without cancellation (or k = n) every server serves every task."""
    fastest = [max(r for r, p in zip(s.rates, s.probs) if p > 0 or policy) for s in sets]
    if k * lam >= math.fsum(fastest):
        return (
            f"k * arrival_rate = {k * lam:g} >= the sum of the servers' fastest rates = "
            f"{math.fsum(fastest):g}: the load is unstable at any speed choice"
        )
    if (not cancel or k == len(sets)) and not redraw:
        for j, s in enumerate(sets):
            es = 1.0 / fastest[j] if policy else math.fsum(p / r for r, p in zip(s.rates, s.probs))
            if lam * es >= 1.0:
                return (
                    f"arrival_rate * E[service time] of server {j} = {lam * es:g} >= 1 (every "
                    "server "
                    f"serves every task): the load is unstable"
                )
    return None


def _run_native(cfg: Any, replications: int, threads: int, progress: Any) -> list[Any]:
    """The native call runs on this thread (Ctrl-C reaches it); progress is reported from the
    native call's own signal poll, on this thread too."""
    if not progress:
        return core.forkjoin_simulate(cfg, replications, threads)
    report = progress if callable(progress) else _stderr_bar()
    total = (cfg.requests + cfg.warmup) * replications
    out = core.forkjoin_simulate(cfg, replications, threads, report)
    report(total, total)
    return out


def _stderr_bar() -> Callable[[int, int], None]:
    import sys

    start = time.perf_counter()
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct == state["last"]:
            return
        state["last"] = pct
        bar = "#" * (pct // 4)
        el = time.perf_counter() - start
        sys.stderr.write(
            f"\r  simulating [{bar:<25}] {pct:3d}%  {done:,}/{total:,} requests  {el:.1f}s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def _summarise(
    raw: list[Any],
    params: dict[str, Any],
    lv: Levels,
    p0: float,
    n: int,
    cap: int,
    states: tuple[Any, ...] = (),
    switch_energy: float = 0.0,
    svc: Any = None,
    policy: bool = False,
    replay: bool = False,
) -> SimResult:
    R = len(raw)
    m = lv.m
    S = len(states)
    measured = np.array([r.measured for r in raw], dtype=np.float64)
    window = np.array([r.t_end - r.t_start for r in raw])
    arrivals_w = np.array([params["requests"]] * R, dtype=np.float64)
    sum_t = np.array([r.sum_response for r in raw])
    sum_e = np.array([r.sum_energy for r in raw])
    sum_w = np.array([r.sum_wasted_time for r in raw])
    sum_we = np.array([r.sum_wasted_energy for r in raw])
    nint = np.array([r.integral_in_system for r in raw])
    busy = np.array([r.busy_time for r in raw]).reshape(R, m)
    busy_e = np.array([r.busy_energy for r in raw]).reshape(R, m)
    wasted_e = np.array([r.wasted_busy_energy for r in raw]).reshape(R, m)
    comps = np.array([r.completions for r in raw]).reshape(R, m)
    dyn = np.array([r.dynamic_energy_window for r in raw])
    sleep_t = np.array([r.sleep_time for r in raw]).reshape(R, S)
    sleep_e = np.array([r.sleep_energy for r in raw]).reshape(R, S)
    wake_t = np.array([r.wake_time for r in raw])
    wake_e = np.array([r.wake_energy for r in raw])
    stall_t = np.array([r.stall_time for r in raw])
    stall_e = np.array([r.stall_energy for r in raw])
    wakeups = float(sum(r.wakeups for r in raw))
    switches = float(sum(r.switches for r in raw))
    aborted = any(r.aborted for r in raw)
    batch = np.stack([r.batch for r in raw])  # (R, B) structured rows, named columns
    hists = [(r.hist_batch, r.hist_bucket, r.hist_count) for r in raw]

    if aborted:  # partial runs: the window may be unset, per-request sums still mean something
        window = np.where(window > 0, window, np.nan)
    W = float(np.nansum(window))
    tot_meas = float(measured.sum())
    mean_t = float(sum_t.sum() / tot_meas) if tot_meas else math.nan
    mean_e = float(sum_e.sum() / tot_meas) if tot_meas else math.nan
    mean_w = float(sum_w.sum() / tot_meas) if tot_meas else math.nan
    mean_we = float(sum_we.sum() / tot_meas) if tot_meas else math.nan
    mean_n = float(nint.sum() / W) if W > 0 else math.nan
    busy_tot = busy.sum(axis=0)
    sleep_tot = sleep_t.sum(axis=0)
    wake_tot = float(wake_t.sum())
    stall_tot = float(stall_t.sum())
    idle_time = n * W - float(busy_tot.sum()) - float(sleep_tot.sum()) - wake_tot - stall_tot
    other_e = (
        sleep_e.sum(axis=1)
        + wake_e
        + stall_e
        + switch_energy * np.array([float(r.switches) for r in raw])
    )
    power = float((dyn.sum() + other_e.sum() + p0 * idle_time) / W) if W > 0 else math.nan
    lam_hat = float(arrivals_w.sum() / W) if W > 0 else math.nan

    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = batch["requests"]
        dur = batch["duration"]
        b_t = batch["sum_response"] / cnt
        b_e = batch["sum_energy"] / cnt
        b_w = batch["sum_wasted_time"] / cnt
        b_n = batch["integral_in_system"] / dur
        b_p = (
            batch["dynamic_energy"]
            + batch["other_energy"]
            + p0 * (n * dur - batch["busy_time"] - batch["other_time"])
        ) / dur
        if R >= 2:
            r_t, r_e, r_w = sum_t / measured, sum_e / measured, sum_w / measured
            r_n = nint / window
            r_idle = n * window - busy.sum(axis=1) - sleep_t.sum(axis=1) - wake_t - stall_t
            r_p = (dyn + other_e + p0 * r_idle) / window
            ci = [_stats.half_width(v) for v in (r_t, r_n, r_e, r_p, r_w)]
        else:
            ci = [_stats.half_width(v[0]) for v in (b_t, b_n, b_e, b_p, b_w)]
    stable, note = _stability(
        np.nan_to_num(b_n, nan=0.0), aborted, max(r.max_in_system_seen for r in raw), cap
    )
    if replay and not aborted:
        stable, note = True, "trace replay: not checked"
    elif stable and W > 0:
        occupied = (float(busy_tot.sum()) + wake_tot + stall_tot) / (n * W)
        if policy:  # the policy picks the levels: the measured mean task time
            done = float(comps.sum())
            mean_service = float(busy_tot.sum()) / done if done > 0 else 1.0 / lv.max_rate
        else:
            mean_service = math.fsum(p / r for r, p in zip(lv.rates, lv.probs))
        ok, why = _converged(occupied, mean_service, W / R)
        if not ok:
            stable, note = False, why

    # ------------------------------------------------------------ energy split (window energy)
    if W > 0:
        busy_useful = busy_e.sum(axis=0) - wasted_e.sum(axis=0)
        parts = {
            "busy": busy_useful,
            "wasted": float(wasted_e.sum()),
            "idle": p0 * idle_time,
            "sleep": sleep_e.sum(axis=0),
            "wakeup": float(wake_e.sum()),
            "switching": switch_energy * switches + float(stall_e.sum()),
        }
        per_req = float(arrivals_w.sum())
        energy_split = {key: (v / per_req) for key, v in parts.items()}
        power_split = {key: (v / W) for key, v in parts.items()}
        total_e = float(sum(np.sum(v) for v in energy_split.values()))
    else:
        energy_split, power_split, total_e = {}, {}, math.nan

    wall = max(r.wall_seconds for r in raw)
    events = int(sum(r.events for r in raw))
    thread_seconds = sum(r.cpu_seconds for r in raw)
    simulated = sum(r.arrivals for r in raw)
    nb = int(core.sim_histogram_layout()["buckets"])
    total_hist = np.zeros(nb, dtype=np.int64)
    for _, bk, c in hists:
        total_hist += np.bincount(bk, weights=c, minlength=nb).astype(np.int64)
    mins = [r.min_response for r in raw if r.measured > 0]
    maxs = [r.max_response for r in raw if r.measured > 0]
    return SimResult(
        params=params,
        mean_response_time=mean_t,
        mean_response_time_ci=ci[0],
        mean_in_system=mean_n,
        mean_in_system_ci=ci[1],
        energy_per_request=mean_e,
        energy_per_request_ci=ci[2],
        average_power=power,
        average_power_ci=ci[3],
        throughput=lam_hat,
        utilisation=busy_tot / (n * W) if W > 0 else np.full(m, np.nan),
        busy_cores=busy_tot / W if W > 0 else np.full(m, np.nan),
        busy_time=busy_tot,
        busy_time_per_request=busy_tot / arrivals_w.sum(),
        completion_rate=comps.sum(axis=0) / W if W > 0 else np.full(m, np.nan),
        idle_fraction=idle_time / (n * W) if W > 0 else math.nan,
        wasted_time_per_request=mean_w,
        wasted_time_per_request_ci=ci[4],
        wasted_energy_per_request=mean_we,
        window=W,
        requests=int(tot_meas),
        stable=stable,
        stability_note=note,
        events=events,
        wall_seconds=wall,
        cpu_seconds=thread_seconds,
        events_per_second=events / thread_seconds if thread_seconds > 0 else math.nan,
        requests_per_second=simulated / thread_seconds if thread_seconds > 0 else math.nan,
        replications=R,
        histogram=total_hist,
        _rep_hists=hists,
        _minmax=(min(mins) if mins else 0.0, max(maxs) if maxs else 0.0),
        energy_split=energy_split,
        power_split=power_split,
        total_energy_per_request=total_e,
        sleep_fraction=sleep_tot / (n * W) if W > 0 else np.full(S, np.nan),
        wake_fraction=wake_tot / (n * W) if W > 0 else math.nan,
        wakeups_per_request=wakeups / float(arrivals_w.sum()),
        switches_per_request=switches / float(arrivals_w.sum()),
        switch_fraction=stall_tot / (n * W) if W > 0 else math.nan,
    )


def simulate_trace(
    n: int, k: int, arrivals: Any, services: Any, *, cancel: bool = True
) -> dict[str, Any]:
    """Run the simulator's event loop on given arrival times (non-decreasing) and service times
    (``services[r, j]``: request r's task on server j, in time units). Returns departures,
    busy time per request (its tasks' time on the servers) and wasted time (cancelled or late
    tasks). The hook for path-wise checks against a recursion."""
    fn = "simulate_trace"
    n, k = check_nk(n, k, fn)
    a = np.ascontiguousarray(arrivals, dtype=np.float64)
    s = np.ascontiguousarray(services, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{fn}: arrivals must be a non-empty 1-D array, got shape {a.shape}")
    if s.shape != (a.size, n):
        raise ValueError(f"{fn}: services must be (requests, n) = ({a.size}, {n}), got {s.shape}")
    if not np.all(np.isfinite(a)) or np.any(np.diff(a) < 0) or a[0] < 0:
        raise ValueError(f"{fn}: arrivals must be finite, >= 0 and non-decreasing")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"{fn}: services must be finite and >= 0")
    dep, busy, wasted = core.forkjoin_trace(n, k, bool(cancel), a, s)
    return {"departures": dep, "response_times": dep - a, "busy": busy, "wasted": wasted}
