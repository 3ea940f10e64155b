"""The model's inputs: speed levels, service distributions, and their validation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Union

import numpy as np


@dataclass(frozen=True)
class SpeedLevel:
    """One speed (DVFS) level: service rate while busy, busy power, and the probability that a
    core picks this level when it starts a task."""

    rate: float
    power: float
    probability: float = 1.0


LevelsLike = Union[Sequence[SpeedLevel], Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Levels:
    rates: tuple[float, ...]
    powers: tuple[float, ...]
    probs: tuple[float, ...]

    @property
    def m(self) -> int:
        return len(self.rates)

    @property
    def max_rate(self) -> float:
        fastest: float = max(r for r, p in zip(self.rates, self.probs) if p > 0)
        return fastest

    def as_speed_levels(self) -> list[SpeedLevel]:
        return [SpeedLevel(r, w, p) for r, w, p in zip(self.rates, self.powers, self.probs)]

    def with_probs(self, probs: Sequence[float]) -> Levels:
        return Levels(self.rates, self.powers, tuple(float(p) for p in probs))


def _num(x: Any, fn: str, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {what} must be a number, got {type(x).__name__}")
    return float(x)


def as_levels(levels: Any, fn: str) -> Levels:
    """[(rate, power, probability), ...] or [SpeedLevel, ...] -> Levels, validated."""
    if isinstance(levels, SpeedLevel):
        levels = [levels]
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__len__") or len(levels) == 0:
        raise ValueError(
            f"{fn}: levels must be a non-empty list of (rate, power, probability), got {levels!r}"
        )
    rates, powers, probs = [], [], []
    for i, lv in enumerate(levels):
        if isinstance(lv, SpeedLevel):
            r, w, p = lv.rate, lv.power, lv.probability
        else:
            try:
                r, w, p = lv
            except (TypeError, ValueError):
                raise ValueError(
                    f"{fn}: levels[{i}] must be (rate, power, probability), got {lv!r}"
                ) from None
        r = _num(r, fn, f"levels[{i}].rate")
        w = _num(w, fn, f"levels[{i}].power")
        p = _num(p, fn, f"levels[{i}].probability")
        if not (r > 0 and math.isfinite(r)):
            raise ValueError(f"{fn}: levels[{i}].rate must be positive and finite, got {r}")
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"{fn}: levels[{i}].power must be >= 0 and finite, got {w}")
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"{fn}: levels[{i}].probability must be in [0, 1], got {p}")
        rates.append(r)
        powers.append(w)
        probs.append(p)
    total = math.fsum(probs)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"{fn}: level probabilities must sum to 1, got {total!r} (from {probs})")
    return Levels(tuple(rates), tuple(powers), tuple(probs))


def check_nk(n: Any, k: Any, fn: str) -> tuple[int, int]:
    for name, v in (("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__}")
    n, k = int(n), int(k)
    if n < 1:
        raise ValueError(f"{fn}: n must be >= 1, got {n}")
    if not 1 <= k <= n:
        raise ValueError(f"{fn}: k must be in [1, n] = [1, {n}], got k={k}")
    return n, k


def check_rate(x: Any, fn: str, what: str = "arrival_rate") -> float:
    v = _num(x, fn, what)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{fn}: {what} must be positive and finite, got {v}")
    return v


def check_power(x: Any, fn: str, what: str = "idle_power") -> float:
    v = _num(x, fn, what)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{fn}: {what} must be >= 0 and finite, got {v}")
    return v


# ---------------------------------------------------------------- service distributions
#: Largest squared coefficient of variation of a parametric work distribution (lognormal,
#: gamma) that the simulator accepts: beyond it the unit mean is carried by draws too rare to
#: appear in any feasible run.
MAX_SCV = 1e4
MAX_LOGNORMAL_SIGMA = math.sqrt(math.log1p(MAX_SCV))
#: Share of the mean work that lies in draws rarer than 1 in 1e9 at the lognormal limit above
#: (0.15 %), and the smallest Pareto alpha with no larger share: a Pareto(alpha) draw beyond
#: its (1 - q) quantile carries q^(1 - 1/alpha) of the mean, so alpha >= 1.456. Nearer to 1 the
#: runs miss most of the work (alpha = 1.0001: energy per request 0.0016 for an exact 1, with a
#: confidence interval that did not cover it; alpha = 1.1: 0.75).
_RARE = 1e-9
MAX_RARE_SHARE = 1.0 - NormalDist().cdf(NormalDist().inv_cdf(1.0 - _RARE) - MAX_LOGNORMAL_SIGMA)
MIN_PARETO_ALPHA = 1.0 / (1.0 - math.log(MAX_RARE_SHARE) / math.log(_RARE))
_KINDS = {
    "exponential": 0,
    "deterministic": 1,
    "gamma": 2,
    "erlang": 2,
    "lognormal": 3,
    "pareto": 4,
    "empirical": 5,
}


@dataclass(frozen=True)
class Service:
    """A unit-mean work distribution; a task at level s takes work / rate_s.

    kind: exponential | deterministic | erlang (param: integer shape) | gamma (param: shape) |
    lognormal (param: sigma of the underlying normal) | pareto (param: alpha >= 1.456) | empirical
    (samples, rescaled to mean 1: the sample gives the shape, the level rates the scale).
    """

    kind: str = "exponential"
    param: float = 0.0
    samples: tuple[float, ...] = ()

    @property
    def code(self) -> int:
        return _KINDS[self.kind]

    @property
    def native_kind(self) -> str:
        """The name of the native ServiceKind value."""
        return "gamma" if self.kind == "erlang" else self.kind

    @property
    def scv(self) -> float:
        """Squared coefficient of variation of the work (its variance, the mean being 1)."""
        if self.kind == "exponential":
            return 1.0
        if self.kind == "deterministic":
            return 0.0
        if self.kind in ("gamma", "erlang"):
            return 1.0 / self.param
        if self.kind == "lognormal":
            return math.expm1(self.param**2)
        if self.kind == "pareto":
            a = self.param
            return math.inf if a <= 2 else 1.0 / (a * (a - 2))
        s = np.asarray(self.samples)
        return float(s.var())

    def describe(self) -> str:
        if self.kind in ("exponential", "deterministic"):
            return self.kind
        if self.kind == "empirical":
            return f"empirical({len(self.samples)} samples)"
        return f"{self.kind}({self.param:g})"


def as_service(service: Any, fn: str) -> Service:
    """'exponential' | 'deterministic' | ('erlang', m) | ('gamma', shape) | ('lognormal', sigma)
    | ('pareto', alpha) | ('empirical', samples) | an array of samples | 'erlang:3' | Service."""
    if isinstance(service, Service):
        return service
    if isinstance(service, np.ndarray):
        service = ("empirical", service)
    if isinstance(service, str):
        name, _, arg = service.partition(":")
        name = name.strip().lower()
        if name in ("exponential", "exp", "deterministic", "det"):
            if arg:
                raise ValueError(f"{fn}: service '{name}' takes no parameter, got {service!r}")
            return Service("exponential" if name.startswith("exp") else "deterministic")
        if name not in _KINDS:
            raise ValueError(f"{fn}: service must be one of {sorted(_KINDS)}, got {service!r}")
        if not arg:
            raise ValueError(
                f"{fn}: service '{name}' needs a parameter (e.g. 'erlang:3', 'pareto:2.5'), got "
                f"{service!r}"
            )
        try:
            service = (name, float(arg))
        except ValueError:
            raise ValueError(f"{fn}: service parameter must be a number, got {service!r}") from None
    if (
        not isinstance(service, (tuple, list))
        or len(service) != 2
        or not isinstance(service[0], str)
    ):
        raise ValueError(f"{fn}: service must be a name or (name, parameter), got {service!r}")
    name, arg = service[0].lower(), service[1]
    if name == "empirical":
        s = np.asarray(arg, dtype=np.float64).ravel()
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0) or not np.any(s > 0):
            raise ValueError(
                f"{fn}: empirical service samples must be finite, >= 0, not all 0, got {s.size} "
                "values"
            )
        # normalise in a safe scale: dividing by the largest value first keeps every
        # intermediate in [0, 1], so samples whose sum overflows are not rescaled to zeros
        t = s / s.max()
        unit = t / t.mean()
        if not np.all(np.isfinite(unit)):
            raise ValueError(f"{fn}: empirical service samples could not be normalised to mean 1")
        return Service("empirical", 0.0, tuple(unit.tolist()))
    if name not in _KINDS:
        raise ValueError(f"{fn}: service must be one of {sorted(_KINDS)}, got {name!r}")
    if name in ("exponential", "deterministic"):
        return Service(name)
    v = _num(arg, fn, f"service parameter of {name}")
    if name == "erlang" and (v < 1 or v != int(v)):
        raise ValueError(f"{fn}: Erlang shape must be an integer >= 1, got {v}")
    if name in ("gamma", "lognormal") and not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{fn}: {name} parameter must be positive, got {v}")
    # Unit-mean work whose mass sits in draws too rare to occur: the simulated mean work would
    # be ~0 instead of 1 (every draw underflows or is tiny), a silently wrong answer.
    if name == "lognormal" and v > MAX_LOGNORMAL_SIGMA:
        raise ValueError(
            f"{fn}: lognormal sigma must be <= {MAX_LOGNORMAL_SIGMA:.4g} (squared coefficient of "
            f"variation <= {MAX_SCV:g}), got {v}: with exp(sigma^2) - 1 = "
            f"{math.expm1(min(v * v, 709.0)):.3g} "
            f"the mean work is carried by draws too rare to simulate, so every run would report ~0"
        )
    if name == "gamma" and v < 1.0 / MAX_SCV:
        raise ValueError(
            f"{fn}: gamma shape must be >= {1.0 / MAX_SCV:g} (squared coefficient of variation "
            f"<= {MAX_SCV:g}), got {v}: the mean work would be carried by draws too rare to "
            f"simulate, so every run would report ~0"
        )
    if name == "pareto" and not (v > 1 and math.isfinite(v)):
        raise ValueError(f"{fn}: Pareto alpha must be > 1 (finite mean), got {v}")
    if name == "pareto" and v < MIN_PARETO_ALPHA:
        raise ValueError(
            f"{fn}: Pareto alpha must be >= {MIN_PARETO_ALPHA:.4g}, got {v}: "
            f"{_RARE ** (1.0 - 1.0 / v):.3g} of the mean work lies in draws rarer than 1 in "
            f"{1 / _RARE:.0e} (at most {MAX_RARE_SHARE:.2g} is accepted, as for lognormal and "
            "gamma work), so a run would miss it and report too little energy and latency"
        )
    return Service(name, v)


# ---------------------------------------------------------------- sleep states
@dataclass(frozen=True)
class SleepState:
    """A low-power state: entered after ``after`` time in the previous state (plain idle for
    the first state: the delay-off timer), drawing ``power``; leaving it takes a wake-up of
    ``wake_latency`` at ``wake_power`` before the server can work."""

    after: float
    power: float
    wake_latency: float
    wake_power: float = 0.0

    def __iter__(self) -> Iterator[float]:
        return iter((self.after, self.power, self.wake_latency, self.wake_power))


def as_sleep_states(states: Any, fn: str) -> tuple[SleepState, ...]:
    """None / [] -> (); a list of SleepState or (after, power, wake_latency[, wake_power])."""
    if states is None:
        return ()
    if isinstance(states, SleepState):
        states = [states]
    if isinstance(states, (str, bytes)) or not hasattr(states, "__len__"):
        raise TypeError(
            f"{fn}: sleep must be a list of SleepState or (after, power, wake_latency, "
            "wake_power), "
            f"got {type(states).__name__}"
        )
    out = []
    for i, st in enumerate(states):
        if not isinstance(st, SleepState):
            try:
                vals = tuple(st)
            except TypeError:
                raise TypeError(
                    f"{fn}: sleep[{i}] must be a SleepState or a tuple, got {st!r}"
                ) from None
            if len(vals) not in (3, 4):
                raise ValueError(
                    f"{fn}: sleep[{i}] must be (after, power, wake_latency[, wake_power]), got "
                    f"{st!r}"
                )
            st = SleepState(*vals)
        checked: list[float] = []
        for name in ("after", "power", "wake_latency", "wake_power"):
            v = _num(getattr(st, name), fn, f"sleep[{i}].{name}")
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{fn}: sleep[{i}].{name} must be >= 0 and finite, got {v}")
            checked.append(v)
        out.append(SleepState(*checked))
    return tuple(out)


# ---------------------------------------------------------------- arrival processes
@dataclass(frozen=True)
class MMPP:
    """Markov-modulated Poisson arrivals: in phase i requests arrive at ``rates[i]``; the phase
    changes from i to j at rate ``switch[i, j]`` (a P x P nested sequence; diagonal ignored).
    ``simulate`` scales the rates so that the long-run mean rate is its arrival_rate (pass
    arrival_rate = mean_rate to use them as given)."""

    rates: tuple[float, ...]
    switch: tuple[tuple[float, ...], ...]

    @property
    def generator(self) -> np.ndarray:
        Q = np.array(self.switch, dtype=np.float64)
        np.fill_diagonal(Q, 0.0)
        np.fill_diagonal(Q, -Q.sum(axis=1))
        return Q

    @property
    def stationary(self) -> np.ndarray:
        """Long-run share of time in each phase."""
        Q = self.generator
        P = Q.shape[0]
        A = np.vstack([Q.T, np.ones(P)])
        b = np.zeros(P + 1)
        b[-1] = 1.0
        pi: np.ndarray = np.linalg.lstsq(A, b, rcond=None)[0]
        return pi

    @property
    def mean_rate(self) -> float:
        """Long-run mean arrival rate: the stationary average of the rates, written around the
        smallest one so that equal rates give that rate exactly (the stationary shares come from
        a least-squares solve whose rounding depends on the LAPACK build)."""
        r = np.asarray(self.rates, dtype=np.float64)
        pi = self.stationary
        lo = float(r.min())
        return lo + float(pi @ (r - lo)) / float(pi.sum())


@dataclass(frozen=True)
class Renewal:
    """Renewal arrivals: i.i.d. inter-arrival times with the shape of ``distribution`` (any
    service distribution: "deterministic", ("erlang", 2), ("lognormal", 1.0), samples, ...),
    scaled to the mean 1 / arrival_rate."""

    distribution: Any


def as_arrivals(arrivals: Any, fn: str) -> MMPP | Renewal | None:
    """None (Poisson), a Renewal process (its distribution validated as a Service) or an MMPP,
    validated: non-negative finite rates, an irreducible phase process, a positive mean rate."""
    if arrivals is None:
        return None
    if isinstance(arrivals, Renewal):
        return Renewal(as_service(arrivals.distribution, fn))
    if not isinstance(arrivals, MMPP):
        raise TypeError(
            f"{fn}: arrivals must be None (Poisson), a Renewal or an MMPP, got "
            f"{type(arrivals).__name__}"
        )
    r = np.asarray(arrivals.rates, dtype=np.float64)
    S = np.asarray(arrivals.switch, dtype=np.float64)
    P = r.size
    if r.ndim != 1 or P < 1 or S.shape != (P, P):
        raise ValueError(
            f"{fn}: MMPP needs rates of length P and a P x P switch matrix, got {r.shape} and "
            f"{S.shape}"
        )
    if not (
        np.all(np.isfinite(r)) and np.all(r >= 0) and np.all(np.isfinite(S)) and np.all(S >= 0)
    ):
        raise ValueError(f"{fn}: MMPP rates and switch rates must be finite and >= 0")
    m = MMPP(tuple(r.tolist()), tuple(map(tuple, S.tolist())))
    if P > 1 and np.linalg.matrix_rank(m.generator) != P - 1:
        raise ValueError(
            f"{fn}: the MMPP phase process must be irreducible (every phase reachable from every "
            "other)"
        )
    if not m.mean_rate > 0:
        raise ValueError(f"{fn}: the MMPP mean arrival rate must be positive")
    return m


@dataclass(frozen=True)
class Trace:
    """Trace replay: given arrival times (non-decreasing, >= 0) and, optionally, the work of
    the tasks: ``sizes`` of shape (requests,) (every task of a request gets that work) or
    (requests, n), in the units of the service distribution (a task at level s takes
    size / rate_s). Without sizes the work is drawn from ``service``."""

    arrivals: Any
    sizes: Any = None


def as_trace(trace: Trace, n: int, fn: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Validated (arrivals, sizes or None) as float64 arrays; sizes broadcast to (R, n)."""
    try:
        a = np.array(trace.arrivals, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{fn}: Trace.arrivals must be a 1-D array of numbers, got "
            f"{type(trace.arrivals).__name__}"
        ) from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{fn}: Trace.arrivals must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or a[0] < 0 or np.any(np.diff(a) < 0):
        bad = int(np.flatnonzero(~np.isfinite(a) | (a < 0) | np.r_[False, np.diff(a) < 0])[0])
        raise ValueError(
            f"{fn}: Trace.arrivals must be finite, >= 0 and non-decreasing, got {float(a[bad])!r} "
            f"at index {bad}"
        )
    if trace.sizes is None:
        return a, None
    try:
        s = np.array(trace.sizes, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{fn}: Trace.sizes must be an array of numbers, got {type(trace.sizes).__name__}"
        ) from None
    if s.shape == (a.size,):
        s = np.repeat(s[:, None], n, axis=1)
    if s.shape != (a.size, n):
        raise ValueError(
            f"{fn}: Trace.sizes must have shape (requests,) = ({a.size},) or (requests, n) = "
            f"({a.size}, {n}), got {s.shape}"
        )
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"{fn}: Trace.sizes must be finite and >= 0")
    return a, np.ascontiguousarray(s)


# ---------------------------------------------------------------- speed policies
@dataclass(frozen=True)
class ThresholdPolicy:
    """Speed by queue length: a server whose queue (tasks waiting + in service at that server)
    is q runs at level s = #{i : q > thresholds[i]}: with two levels and threshold T, the first
    (low) level while q <= T and the second above. ``thresholds``: an int (two levels) or m - 1
    non-decreasing ints >= 0. Evaluated when a server starts a task and at every arrival; a
    task whose level changes continues its remaining work at the new rate."""

    thresholds: Any


@dataclass(frozen=True)
class DeadlinePolicy:
    """Speed by deadline slack: every request must finish ``deadline`` after its arrival; a
    server starting a task picks the slowest level whose expected finish (start + any switch
    stall + work / rate, with the task's actual work if ``known_size`` else the mean work 1)
    meets the deadline, else the fastest; the level holds for the whole task."""

    deadline: float
    known_size: bool = False


PolicyLike = Union[None, ThresholdPolicy, DeadlinePolicy]


def as_policy(policy: Any, m: int, fn: str) -> ThresholdPolicy | DeadlinePolicy | None:
    """None (the random choice), a ThresholdPolicy or a DeadlinePolicy, validated for m levels."""
    if policy is None:
        return None
    if isinstance(policy, ThresholdPolicy):
        th = policy.thresholds
        vals = [th] if isinstance(th, (int, np.integer)) and not isinstance(th, bool) else th
        if isinstance(vals, (str, bytes)) or not hasattr(vals, "__len__"):
            raise TypeError(
                f"{fn}: ThresholdPolicy.thresholds must be an int or a list of ints, got {th!r}"
            )
        out: list[int] = []
        for i, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{fn}: ThresholdPolicy.thresholds[{i}] must be an int, got {v!r}")
            if not 0 <= int(v) < 2**62:
                raise ValueError(
                    f"{fn}: ThresholdPolicy.thresholds[{i}] must be in [0, 2^62), got {v!r}"
                )
            if out and int(v) < out[-1]:
                raise ValueError(
                    f"{fn}: ThresholdPolicy.thresholds must be non-decreasing, got {list(vals)!r}"
                )
            out.append(int(v))
        if len(out) != m - 1:
            raise ValueError(
                f"{fn}: ThresholdPolicy needs m - 1 = {m - 1} thresholds for {m} levels, got {th!r}"
            )
        return ThresholdPolicy(tuple(out))
    if isinstance(policy, DeadlinePolicy):
        d = _num(policy.deadline, fn, "DeadlinePolicy.deadline")
        if not (d >= 0 and math.isfinite(d)):
            raise ValueError(f"{fn}: DeadlinePolicy.deadline must be >= 0 and finite, got {d}")
        if not isinstance(policy.known_size, bool):
            raise TypeError(
                f"{fn}: DeadlinePolicy.known_size must be a bool, got "
                f"{type(policy.known_size).__name__}"
            )
        return DeadlinePolicy(d, policy.known_size)
    raise TypeError(
        f"{fn}: policy must be None (random choice), a ThresholdPolicy or a DeadlinePolicy, got "
        f"{type(policy).__name__}"
    )


def as_policy_levels(levels: Any, fn: str) -> Levels:
    """Levels for a state-dependent policy: (rate, power) or (rate, power, probability) per
    level; the probabilities are not used (the policy picks the level), so they are set equal."""
    if isinstance(levels, SpeedLevel):
        levels = [levels]
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__len__") or len(levels) == 0:
        raise ValueError(f"{fn}: levels must be a non-empty list of (rate, power), got {levels!r}")
    pairs = []
    for i, lv in enumerate(levels):
        if isinstance(lv, SpeedLevel):
            pairs.append((lv.rate, lv.power))
            continue
        try:
            t = tuple(lv)
        except TypeError:
            raise ValueError(f"{fn}: levels[{i}] must be (rate, power), got {lv!r}") from None
        if len(t) not in (2, 3):
            raise ValueError(f"{fn}: levels[{i}] must be (rate, power), got {lv!r}")
        pairs.append(t[:2])
    m = len(pairs)
    return as_levels([(r, w, 1.0 / m) for r, w in pairs], fn)
