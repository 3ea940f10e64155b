"""``exact_threshold``: the exact response-time distribution of the queue-length threshold
policy where it is a birth-death chain (docs/energy.md, "Exact references for the threshold
policy").

The model: FCFS, Poisson arrivals at rate lambda, exponential work, the speed level chosen by
ThresholdPolicy from the number q of requests in system (at task start and at every arrival,
so the service rate is a function mu(q) of the current state; simulate's semantics with
``switch_time = 0``). This holds exactly for

- n = k = 1 (M/M/1 with state-dependent speed), and
- (n, 1) with cancellation: every server works on the head request, every server's queue is q,
  the head completes at the sum of the servers' rates at level(q) (heterogeneous servers
  allowed: one level set per server, with the same number of levels).

Stationary quantities (mean number in system, mean response time by Little's law, average
power, switches per request) come from the birth-death chain, whose geometric tail above the
largest threshold is summed in closed form. The distribution of the response time T of a
tagged request comes from an absorbing chain over (i, j): i = requests at or ahead of the
tagged one (it included, the head in service), j = requests behind it (they set the speed
through q = i + j). A service moves i to i - 1 (the tagged request leaves from i = 1), an
arrival moves j to j + 1. The tagged request arrives to see the stationary q (PASTA): i = q + 1,
j = 0. Both counts are truncated at N, the smallest level whose stationary tail
P(q > N) is below ``tol``: the initial q beyond N is dropped, and an arrival beyond j = N moves
the chain to a "lost" state. The j of a tagged request at its departure is the number it leaves
behind, which has the stationary distribution (arrivals and departures see the time average
of a birth-death chain), and j never decreases, so at most P(q > N) of the mass is lost: every
CDF value is exact to within ``error_bound`` <= 2 ``tol`` (bounds on both sides are exposed).
The chain is solved by uniformisation: with Lambda = lambda + max rate, P(T > t) =
sum_m Poisson(Lambda t; m) s_m, s_m the mass not yet absorbed after m steps of the uniformised
chain, computed once for all t; the steps stop when the transient mass is below tol * 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _stats
from ._model import (
    DeadlinePolicy,
    ThresholdPolicy,
    as_policy,
    as_policy_levels,
    check_power,
    check_rate,
)
from .simulate import _levels_param, _per_server_levels

#: Largest truncation level N of exact_threshold (the tagged chain has (N + 1)^2 states and
#: needs about 2 N uniformisation steps: O(N^3), ~10 s at N = 1000).
MAX_TRUNCATION = 1000
#: Most uniformisation steps of exact_threshold.
MAX_STEPS = 2_000_000


@dataclass
class ExactThresholdResult(_stats.PercentileShortcuts):
    """Exact stationary metrics and response-time distribution of the threshold policy on a
    birth-death chain (module docstring). ``percentile(q)`` is the upper end of
    ``percentile_bounds(q)``; ``survival(t)`` is an upper bound on P(T > t) and
    ``survival_bounds(t)`` brackets it, within ``error_bound``."""

    params: dict[str, Any]
    mean_response_time: float  # E[N] / lambda (Little), from the birth-death chain
    mean_in_system: float
    average_power: float  # busy + idle + switch energy rate
    energy_per_request: float  # average_power / lambda
    switches_per_request: float  # level changes of all servers per request
    stationary: np.ndarray  # P(q = 0..N); the tail beyond N is below tol
    truncation: int  # N
    error_bound: float  # bound on |CDF error| at every t
    sojourn_mean: float  # E[T] from the tagged chain (equals mean_response_time; a check)
    uniformisation_rate: float
    steps: int
    _upper: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    _lower: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    _lfact: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def survival_bounds(self, t: float) -> tuple[float, float]:
        """(lower, upper) bounds on P(T > t)."""
        t = float(t)
        if not t > 0:
            return 1.0, 1.0
        if math.isinf(t):
            return 0.0, float(self._upper[-1])
        a = self.uniformisation_rate * t
        m = np.arange(self._upper.size, dtype=np.float64)
        w = np.exp(-a + m * math.log(a) - self._log_factorial())
        beyond = max(0.0, 1.0 - float(w.sum()))  # Poisson mass past the last step
        lo = float(w @ self._lower)
        hi = float(w @ self._upper) + beyond * float(self._upper[-1])
        return min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)

    def _log_factorial(self) -> np.ndarray:
        if self._lfact.size != self._upper.size:
            m = np.arange(1, self._upper.size, dtype=np.float64)
            self._lfact = np.concatenate([[0.0], np.cumsum(np.log(m))])
        return self._lfact

    def survival(self, t: float) -> float:
        """P(T > t) (its upper bound; the true value is within error_bound below)."""
        return self.survival_bounds(t)[1]

    def cdf(self, t: float) -> float:
        return 1.0 - self.survival(t)

    def deadline_miss(self, d: float) -> float:
        """P(T > d)."""
        return self.survival(_stats.check_deadline(d))

    def _quantile(self, q: float, side: int) -> float:
        return _stats.survival_quantile(
            lambda t: self.survival_bounds(t)[side], self.mean_response_time, q
        )

    def percentile_bounds(self, q: float) -> tuple[float, float]:
        """Bounds on the q-quantile of T from the two sides of the truncation."""
        q = _check_q(q, "percentile_bounds")
        if 1.0 - q <= self.error_bound:
            raise ValueError(
                f"percentile_bounds: q = {q!r} is within the truncation error "
                f"{self.error_bound:.3g} of 1; lower tol"
            )
        return self._quantile(q, 0), self._quantile(q, 1)

    def percentile(self, q: float) -> float:
        """The q-quantile of the response time, q in (0, 1)."""
        q = _check_q(q, "percentile")
        if 1.0 - q <= self.error_bound:
            raise ValueError(
                f"percentile: q = {q!r} is within the truncation error {self.error_bound:.3g} "
                "of 1; lower tol"
            )
        return self._quantile(q, 1)

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in self.__dict__.items()
            if not k.startswith("_") and k != "stationary"
        }
        out["percentiles"] = {str(q): self.percentile(q) for q in (0.5, 0.9, 0.95, 0.99, 0.999)}
        return out


def _check_q(q: Any, fn: str) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: q must be a number, got {type(q).__name__}")
    if not 0.0 < float(q) < 1.0:
        raise ValueError(f"{fn}: q must be in (0, 1), got {q!r}")
    return float(q)


def exact_threshold(
    arrival_rate: float,
    levels: Any,
    policy: ThresholdPolicy | int | Any,
    *,
    n: int = 1,
    idle_power: float = 0.0,
    switch_energy: float = 0.0,
    tol: float = 1e-12,
) -> ExactThresholdResult:
    """Exact metrics and response-time distribution of ``simulate(n, k, arrival_rate, levels,
    policy=ThresholdPolicy(...))`` with exponential work, Poisson arrivals and
    ``switch_time = 0``, for n = k = 1, or any n with k = 1 and cancellation.

    ``levels``: (rate, power) pairs (probabilities, if given, are ignored), one set shared by the
    n servers or a list of n sets with the same number of levels. ``policy``: a ThresholdPolicy
    (or its thresholds). ``tol``: the stationary tail mass at which the chains are truncated;
    every CDF value is exact within ``error_bound`` (<= 2 tol). Raises ValueError when the
    chain is unstable (lambda >= the rate above the last threshold) or so close to the limit
    that the truncation level would exceed MAX_TRUNCATION."""
    fn = "exact_threshold"
    lam = check_rate(arrival_rate, fn)
    p0 = check_power(idle_power, fn)
    sw = check_power(switch_energy, fn, "switch_energy")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= 4096:
        raise ValueError(f"{fn}: n must be an int in [1, 4096], got {n!r}")
    n = int(n)
    if isinstance(tol, bool) or not isinstance(tol, (float, int)) or not 1e-15 <= tol <= 1e-3:
        raise ValueError(f"{fn}: tol must be a number in [1e-15, 1e-3], got {tol!r}")
    if _per_server_levels(levels):
        if len(levels) != n:
            raise ValueError(
                f"{fn}: per-server levels must list n = {n} level sets, got {len(levels)}"
            )
        sets = [as_policy_levels(s, f"{fn} (levels of server {j})") for j, s in enumerate(levels)]
        if len({s.m for s in sets}) > 1:
            raise ValueError(
                f"{fn}: the threshold policy needs the same number of levels on every server, "
                f"got {[s.m for s in sets]}"
            )
    else:
        sets = [as_policy_levels(levels, fn)] * n
    m = sets[0].m
    if policy is None or isinstance(policy, DeadlinePolicy):
        raise TypeError(
            f"{fn}: policy must be a ThresholdPolicy or its thresholds, got {policy!r} (only "
            "the threshold policy is a birth-death chain)"
        )
    if not isinstance(policy, ThresholdPolicy):
        policy = ThresholdPolicy(policy)
    pol = as_policy(policy, m, fn)
    if not isinstance(pol, ThresholdPolicy):  # as_policy keeps the kind; for the type checker
        raise TypeError(f"{fn}: policy must be a ThresholdPolicy, got {policy!r}")
    th = tuple(int(t) for t in pol.thresholds)
    top = th[-1] if th else 0  # q > top: the last level
    if top > MAX_TRUNCATION:
        raise ValueError(
            f"{fn}: thresholds above {MAX_TRUNCATION} are not supported (got {list(th)})"
        )
    rate_l = np.array([math.fsum(s.rates[lv] for s in sets) for lv in range(m)])
    power_l = np.array([math.fsum(s.powers[lv] for s in sets) for lv in range(m)])
    if lam >= rate_l[-1]:
        raise ValueError(
            f"{fn}: arrival_rate = {lam:g} >= the service rate above the last threshold "
            f"({rate_l[-1]:g}): the chain is unstable"
        )
    rho_top = lam / float(rate_l[-1])

    def level(q: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(th, dtype=np.int64), q, side="left")

    # stationary distribution, in logs up to the last threshold, geometric beyond it
    qs = np.arange(1, top + 2)
    logpi = np.concatenate([[0.0], np.cumsum(np.log(lam / rate_l[level(qs)]))])  # q = 0..top+1
    # P(q > N) for N >= top + 1: pi_{top+1} rho^(N - top) / (1 - rho)
    shift = float(logpi.max())
    head = np.exp(logpi - shift)
    tail_w = head[-1] * rho_top / (1.0 - rho_top)  # sum over q > top + 1
    Z = float(head.sum()) + tail_w
    # truncation level: tail(N) = head[-1] / Z * rho^(N - top) / (1 - rho) < tol
    lt = math.log(tol * (1.0 - rho_top) * Z / head[-1]) / math.log(rho_top) if rho_top > 0 else 0
    N = max(top + 1, math.ceil(top + 1 + max(lt, 0.0)))
    if N > MAX_TRUNCATION:
        raise ValueError(
            f"{fn}: arrival_rate = {lam:g} is too close to the stability limit {rate_l[-1]:g} "
            f"for the exact chain (truncation level {N} > {MAX_TRUNCATION}); raise tol (now "
            f"{tol:g})"
        )
    qall = np.arange(N + 1)
    pi = np.empty(N + 1)
    pi[: top + 2] = head / Z
    pi[top + 2 :] = head[-1] / Z * rho_top ** (qall[top + 2 :] - top - 1)
    tail_N = head[-1] / Z * rho_top ** (N - top) / (1.0 - rho_top)

    # exact means: E[N] with the geometric tail beyond top + 1 in closed form
    a = top + 1
    en_head = float(qall[: a + 1] @ pi[: a + 1])
    c = head[-1] / Z  # pi_a; sum_{q > a} q pi_a rho^(q-a) = pi_a (a r/(1-r) + r/(1-r)^2)
    en = en_head + c * (a * rho_top / (1 - rho_top) + rho_top / (1 - rho_top) ** 2)
    busy_p = float(pi[1 : a + 1] @ power_l[level(qall[1 : a + 1])])
    busy_p += c * rho_top / (1 - rho_top) * float(power_l[-1])
    p0_total = n * p0 * float(pi[0])
    distinct = sorted({t for t in th if t >= 1})
    switches = n * 2.0 * math.fsum(float(pi[t]) for t in distinct)
    power = busy_p + p0_total + sw * lam * switches

    # tagged-request absorbing chain on (i, j), i = 1..N+1, j = 0..N, uniformised
    I_idx = np.arange(1, N + 2)[:, None]
    J_idx = np.arange(N + 1)[None, :]
    mu = rate_l[level(I_idx + J_idx)]
    Lam = lam + float(rate_l.max())
    p_srv = mu / Lam
    p_arr = lam / Lam
    p_stay = 1.0 - p_srv - p_arr
    v = np.zeros((N + 1, N + 1))
    v[:, 0] = pi  # the tagged request sees q = i - 1 requests
    lost = 0.0
    upper, lower = [], []
    stop = tol * 1e-3
    steps = 0
    while True:
        trans = float(v.sum())
        lower.append(trans)
        upper.append(trans + lost + tail_N)
        if trans < stop:
            break
        if steps >= MAX_STEPS:
            raise ValueError(
                f"{fn}: the tagged chain needs more than {MAX_STEPS} uniformisation steps "
                f"(arrival_rate={lam:g}, rates={rate_l.tolist()}); raise tol"
            )
        served = v * p_srv
        arrived = v * p_arr
        new = v * p_stay
        new[:-1, :] += served[1:, :]  # i -> i - 1; row 0 (i = 1) leaves the system
        new[:, 1:] += arrived[:, :-1]
        lost += float(arrived[:, -1].sum())
        v = new
        steps += 1
    low = np.asarray(lower)
    up = np.asarray(upper)
    params: dict[str, Any] = dict(
        arrival_rate=lam,
        levels=_levels_param(sets, True, _per_server_levels(levels)),
        thresholds=list(th),
        n=n,
        k=1,
        idle_power=p0,
        switch_energy=sw,
        tol=tol,
    )
    return ExactThresholdResult(
        params=params,
        mean_response_time=en / lam,
        mean_in_system=en,
        average_power=power,
        energy_per_request=power / lam,
        switches_per_request=switches,
        stationary=pi,
        truncation=N,
        error_bound=float(up[-1]),
        sojourn_mean=float(low.sum()) / Lam,
        uniformisation_rate=Lam,
        steps=steps,
        _upper=up,
        _lower=low,
    )
