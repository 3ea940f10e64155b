"""Design questions: ``sweep`` (simulation and closed forms over a grid), ``pareto_front`` (the
energy-latency trade-off), ``optimize`` (the least energy, or power, that meets a latency
target on the mean or a percentile) and ``optimize_policy`` (the same over the parameters of a
speed policy: thresholds or deadlines)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from ._model import (
    DeadlinePolicy,
    Levels,
    ThresholdPolicy,
    as_levels,
    check_nk,
    check_power,
    check_rate,
)
from .approx import METHODS, ApproxResult, approximate
from .simulate import SimResult, certainly_unstable, simulate

Metric = Union[str, float]


def _metric_name(metric: Metric, fn: str = "latency_of") -> str:
    if metric in ("mean", "mean_in_system"):
        return str(metric)
    return f"p{_q(metric, fn) * 100:g}"


def _q(metric: Metric, fn: str = "latency_of") -> float:
    if isinstance(metric, bool) or not isinstance(metric, (str, int, float)):
        raise TypeError(
            f"{fn}: metric must be 'mean', 'mean_in_system', a quantile in (0, 1) or "
            f"'p99'-style, got {type(metric).__name__}"
        )
    if isinstance(metric, str):
        s = metric.lower().lstrip("p")
        try:
            v = float(s)
        except ValueError:
            raise ValueError(
                f"{fn}: metric must be 'mean', 'mean_in_system', a quantile in (0, 1) or "
                f"'p99'-style, got {metric!r}"
            ) from None
        q = v / 100.0 if metric.lower().startswith("p") else v
    else:
        q = float(metric)
    if not 0.0 < q < 1.0:
        raise ValueError(f"{fn}: metric quantile must be in (0, 1), got {metric!r}")
    return q


def latency_of(res: SimResult | ApproxResult, metric: Metric) -> float:
    """'mean' (response time), 'mean_in_system' (E[N]), or a quantile (0.99 or 'p99')."""
    if metric == "mean":
        return res.mean_response_time
    if metric == "mean_in_system":
        return res.mean_in_system
    if isinstance(res, ApproxResult) and not res.stable:
        return math.inf
    return res.percentile(_q(metric))


def latency_ci(res: SimResult, metric: Metric) -> float:
    if metric == "mean":
        return res.mean_response_time_ci
    if metric == "mean_in_system":
        return res.mean_in_system_ci
    return res.percentile_ci(_q(metric))


def _probs_with_high(base: Levels, p: float, shares: Any = None) -> tuple[float, ...]:
    """p on the last level; 1 - p over the others in proportion to ``shares`` (their given
    probabilities; None: all to the first)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"sweep: p values must be in [0, 1], got {p}")
    m = base.m
    if m == 1:
        return (1.0,)
    rest = np.array(shares if shares is not None else base.probs[:-1], dtype=np.float64)
    rest = rest / rest.sum() if rest.sum() > 0 else np.eye(m - 1)[0]
    return tuple((rest * (1.0 - p)).tolist()) + (p,)


def _given_shares(levels: Any, fn: str) -> list[float] | None:
    """The probabilities given for all but the last level (over='p' splits 1 - p in their
    proportion), or None when none is given. _levels_any_probs drops them, so they had no
    effect: 1 - p always went to the first level."""
    got = []
    for lv in list(levels)[:-1]:
        if hasattr(lv, "rate"):
            got.append(float(lv.probability))
        else:
            t = tuple(lv)
            got.append(float(t[2]) if len(t) >= 3 else math.nan)
    if all(math.isnan(x) for x in got):
        return None
    if any(math.isnan(x) for x in got) or not all(x >= 0 for x in got) or not sum(got) > 0:
        raise ValueError(
            f"{fn}: with over='p' give probabilities (>= 0, not all 0) to all the levels but "
            f"the last, or to none (1 - p then goes to the first), got {got}"
        )
    return got


def _levels_any_probs(levels: Any, fn: str) -> Levels:
    """Levels whose probabilities the caller will choose: (rate, power) pairs accepted."""
    fixed = []
    for lv in levels:
        t = tuple(lv) if not hasattr(lv, "rate") else (lv.rate, lv.power)
        fixed.append((t[0], t[1], 0.0))
    if not fixed:
        raise ValueError(f"{fn}: levels must not be empty")
    fixed[0] = (fixed[0][0], fixed[0][1], 1.0)
    lv = as_levels(fixed, fn)
    given = [tuple(x)[2] if not hasattr(x, "rate") and len(tuple(x)) > 2 else None for x in levels]
    known = [g for g in given if g is not None]
    if len(known) == len(given) and abs(math.fsum(known) - 1.0) <= 1e-9:
        lv = lv.with_probs(known)
    return lv


@dataclass
class SweepPoint:
    x: Any
    arrival_rate: float
    probs: tuple[Any, ...]
    sim: SimResult | None
    approx: dict[str, Any]  # method -> ApproxResult
    note: str = ""


@dataclass
class SweepResult:
    over: str
    n: int
    k: int
    levels: Levels
    points: list[Any] = field(default_factory=list)

    def rows(self, metric: Metric = "mean") -> list[Any]:
        name = _metric_name(metric)
        out = []
        for pt in self.points:
            row = {"x": pt.x, "arrival_rate": pt.arrival_rate, "probs": list(pt.probs)}
            if pt.sim is not None:
                row[f"sim_{name}"] = latency_of(pt.sim, metric)
                row[f"sim_{name}_ci"] = latency_ci(pt.sim, metric)
                row["sim_energy"] = pt.sim.energy_per_request
                row["sim_energy_ci"] = pt.sim.energy_per_request_ci
                row["sim_power"] = pt.sim.average_power
                row["sim_stable"] = pt.sim.stable
            for meth, a in pt.approx.items():
                row[f"{meth}_{name}"] = latency_of(a, metric)
                row[f"{meth}_energy"] = a.energy_per_request
                row[f"{meth}_power"] = a.average_power
            if pt.note:
                row["note"] = pt.note
            out.append(row)
        return out

    def to_dict(self, metric: Metric = "mean") -> dict[str, Any]:
        return {
            "over": self.over,
            "n": self.n,
            "k": self.k,
            "levels": [list(t) for t in zip(self.levels.rates, self.levels.powers)],
            "metric": _metric_name(metric),
            "points": self.rows(metric),
        }


def sweep(
    n: int,
    k: int,
    arrival_rate: float,
    levels: Any,
    *,
    over: str = "p",
    values: Sequence[Any] = (),
    idle_power: float = 0.0,
    cancel: bool = True,
    run_simulation: bool = True,
    methods: Sequence[str] = ("race",),
    progress: Callable[[int, int], None] | None = None,
    **sim_kwargs: Any,
) -> SweepResult:
    """Simulate and approximate over a grid.

    over="p": values are probabilities of the last (high-speed) level, the rest sharing 1 - p
    in proportion to their given probabilities; over="probs": values are probability vectors;
    over="arrival_rate": values are arrival rates at the given levels. Points that are
    certainly unstable get no simulation (note says why); the others run with
    on_unstable="return" so a detected instability shows as sim.stable = False.
    """
    fn = "sweep"
    n, k = check_nk(n, k, fn)
    lam0 = check_rate(arrival_rate, fn)
    p0 = check_power(idle_power, fn)
    if over not in ("p", "probs", "arrival_rate"):
        raise ValueError(f"{fn}: over must be 'p', 'probs' or 'arrival_rate', got {over!r}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"{fn}: methods must be among {METHODS}, got {m!r}")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(
            f"{fn}: values must be a sequence of numbers (or of probability vectors), "
            f"got {type(values).__name__} {values!r}"
        )
    values = list(values)
    if not values:
        raise ValueError(f"{fn}: values must not be empty")
    base = as_levels(levels, fn) if over == "arrival_rate" else _levels_any_probs(levels, fn)
    if over == "p" and base.m < 2:
        raise ValueError(f"{fn}: over='p' needs at least two levels, got {base.m}")
    shares = _given_shares(levels, fn) if over == "p" else None
    redraw = bool(sim_kwargs.get("redraw_on_arrival", False))
    out = SweepResult(over, n, k, base)
    for i, v in enumerate(values):
        if over == "p":
            probs, lam = _probs_with_high(base, float(v), shares), lam0
        elif over == "probs":
            probs, lam = tuple(float(x) for x in v), lam0
            as_levels(list(zip(base.rates, base.powers, probs)), fn)
        else:
            probs, lam = base.probs, check_rate(v, fn, "values")
        lv = base.with_probs(probs)
        lvl = list(zip(lv.rates, lv.powers, lv.probs))
        approx = {
            m: approximate(n, k, lam, lvl, idle_power=p0, method=m, cancel=cancel) for m in methods
        }
        sim, note = None, ""
        if run_simulation:
            why = certainly_unstable(n, k, lam, lv, cancel, redraw)
            if why:
                note = "not simulated: " + why
            else:
                kw = dict(sim_kwargs)
                kw.setdefault("on_unstable", "return")
                sim = simulate(n, k, lam, lvl, idle_power=p0, cancel=cancel, **kw)
        out.points.append(
            SweepPoint(v if over != "probs" else list(probs), lam, probs, sim, approx, note)
        )
        if progress:
            progress(i + 1, len(values))
    return out


def pareto_front(
    points: Any, *, metric: Metric = "mean", objective: str = "energy", source: str = "sim"
) -> list[Any]:
    """Non-dominated (objective, latency) points, sorted by objective: no other point is at
    least as good on both and better on one. ``points``: a SweepResult, or a list of
    SimResult/ApproxResult, or of (objective, latency) pairs. ``source``: 'sim' or an
    approximation method, for a SweepResult. Returns [(index, objective, latency)]."""
    fn = "pareto_front"
    if objective not in ("energy", "power"):
        raise ValueError(f"{fn}: objective must be 'energy' or 'power', got {objective!r}")
    _metric_name(metric, fn)
    if isinstance(points, SweepResult):
        # an unknown source returned [] (a typo read as "no point is stable")
        have = {m for pt in points.points for m in pt.approx}
        have |= {"sim"} if any(pt.sim is not None for pt in points.points) else set()
        if points.points and (not isinstance(source, str) or source not in have):
            raise ValueError(
                f"{fn}: source must be one of {sorted(have)} for this sweep, got {source!r}"
            )
        items = [pt.sim if source == "sim" else pt.approx.get(source) for pt in points.points]
    else:
        items = list(points)
    pairs = []
    for i, r in enumerate(items):
        if r is None:
            continue
        if isinstance(r, (tuple, list)):
            # numbers only: ("1", "2") was read as (1.0, 2.0)
            if len(r) != 2 or not all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                for v in r
            ):
                raise TypeError(
                    f"{fn}: points[{i}] must be an (objective, latency) pair of numbers, got {r!r}"
                )
            e, lat = float(r[0]), float(r[1])
        else:
            if hasattr(r, "stable") and not r.stable:
                continue
            e = r.energy_per_request if objective == "energy" else r.average_power
            lat = latency_of(r, metric)
        if math.isfinite(e) and math.isfinite(lat):
            pairs.append((i, e, lat))
    pairs.sort(key=lambda t: (t[1], t[2]))
    front, best = [], math.inf
    for i, e, lat in pairs:
        if lat < best:
            front.append((i, e, lat))
            best = lat
    return front


@dataclass
class OptimizeResult:
    """The cheapest probability vector found that meets the target, and every evaluation."""

    feasible: bool
    probs: tuple[Any, ...] | None
    objective: str
    value: float  # energy per request or average power at the optimum
    latency: float
    latency_ci: float
    metric: str
    target: float
    evaluator: str
    evaluations: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: Most candidates optimize evaluates on its grid (the grid has comb(grid - 2 + m, m - 1) points).
MAX_CANDIDATES = 100_000


def grid_size(m: int, grid: int) -> int:
    """Points of the probability simplex grid with `grid` points per axis over m levels."""
    return math.comb(grid - 1 + m - 1, m - 1)


def _simplex_grid(m: int, steps: int) -> list[Any]:
    """Probability vectors with entries in multiples of 1/steps, in the lexicographic order of
    their first m - 1 entries; generated directly (never by filtering the (steps+1)^(m-1) cube)."""
    if m == 1:
        return [(1.0,)]
    pts = []

    def rec(prefix: list[Any], left: int) -> None:
        if len(prefix) == m - 1:
            pts.append(tuple(x / steps for x in prefix) + (left / steps,))
            return
        for x in range(left + 1):
            prefix.append(x)
            rec(prefix, left - x)
            prefix.pop()

    rec([], steps)
    return pts


def optimize(
    n: int,
    k: int,
    arrival_rate: float,
    levels: Any,
    *,
    target: float,
    metric: Metric = "mean",
    objective: str = "energy",
    idle_power: float = 0.0,
    cancel: bool = True,
    evaluator: str = "approx",
    method: str = "race",
    grid: int = 11,
    refine: int = 2,
    max_candidates: int = MAX_CANDIDATES,
    progress: Callable[[int, int], None] | None = None,
    **sim_kwargs: Any,
) -> OptimizeResult:
    """The level probabilities with the least energy per request (objective='energy') or
    average power ('power') whose latency metric ('mean', 'mean_in_system' or a quantile such
    as 0.99 / 'p99') is at most ``target``.

    Searches the probability simplex on a grid of ``grid`` points per axis, then (two levels)
    ``refine`` times on a finer grid around the best point. evaluator='approx' uses the closed
    forms (method); 'simulate' runs the simulator and requires the upper 95% confidence limit
    of the latency to meet the target. ``levels``: (rate, power) or (rate, power, probability)
    per level; the probabilities are what is chosen. A grid with more than ``max_candidates``
    points (12 levels at grid=11 would be 352,716) is refused with a message naming the largest
    grid that fits.
    """
    fn = "optimize"
    n, k = check_nk(n, k, fn)
    lam = check_rate(arrival_rate, fn)
    p0 = check_power(idle_power, fn)
    tgt = check_rate(target, fn, "target")
    name = _metric_name(metric, fn)
    if objective not in ("energy", "power"):
        raise ValueError(f"{fn}: objective must be 'energy' or 'power', got {objective!r}")
    if evaluator not in ("approx", "simulate"):
        raise ValueError(f"{fn}: evaluator must be 'approx' or 'simulate', got {evaluator!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"{fn}: grid must be an int >= 2, got {grid!r}")
    if (
        isinstance(max_candidates, bool)
        or not isinstance(max_candidates, int)
        or max_candidates < 1
    ):
        raise ValueError(f"{fn}: max_candidates must be an int >= 1, got {max_candidates!r}")
    base = _levels_any_probs(levels, fn)
    size = grid_size(base.m, grid)
    if size > max_candidates:
        fit = max(
            (g for g in range(2, grid) if grid_size(base.m, g) <= max_candidates), default=None
        )
        hint = f"grid={fit} gives {grid_size(base.m, fit):,}" if fit else "no grid fits"
        raise ValueError(
            f"{fn}: grid={grid} over {base.m} levels has {size:,} candidate probability vectors "
            f"(more than max_candidates={max_candidates:,}); pass a smaller grid ({hint}), "
            f"fewer levels, or a larger max_candidates"
        )
    redraw = bool(sim_kwargs.get("redraw_on_arrival", False))
    evals: list[Any] = []
    seen: dict[tuple[float, ...], dict[str, Any]] = {}

    def evaluate(probs: tuple[float, ...]) -> dict[str, Any]:
        key = tuple(round(p, 12) for p in probs)
        if key in seen:
            return seen[key]
        lv = base.with_probs(probs)
        lvl = list(zip(lv.rates, lv.powers, lv.probs))
        row: dict[str, Any] = {"probs": list(probs)}
        if evaluator == "approx":
            a = approximate(n, k, lam, lvl, idle_power=p0, method=method, cancel=cancel)
            row.update(
                latency=latency_of(a, metric),
                latency_ci=0.0,
                stable=a.stable,
                value=a.energy_per_request if objective == "energy" else a.average_power,
            )
        else:
            why = certainly_unstable(n, k, lam, lv, cancel, redraw)
            if why:
                row.update(latency=math.inf, latency_ci=0.0, stable=False, value=math.nan, note=why)
            else:
                kw = dict(sim_kwargs)
                kw.setdefault("on_unstable", "return")
                s = simulate(n, k, lam, lvl, idle_power=p0, cancel=cancel, **kw)
                row.update(
                    latency=latency_of(s, metric),
                    latency_ci=latency_ci(s, metric),
                    stable=s.stable,
                    value=s.energy_per_request if objective == "energy" else s.average_power,
                )
        row["feasible"] = bool(row["stable"] and row["latency"] + row["latency_ci"] <= tgt)
        seen[key] = row
        evals.append(row)
        return row

    cands = _simplex_grid(base.m, grid - 1)
    for i, c in enumerate(cands):
        evaluate(c)
        if progress:
            progress(i + 1, len(cands))

    def best_row() -> dict[str, Any] | None:
        feas = [r for r in evals if r["feasible"] and math.isfinite(r["value"])]
        return min(feas, key=lambda r: (r["value"], r["latency"])) if feas else None

    if base.m == 2:
        step = 1.0 / (grid - 1)
        for _ in range(max(refine, 0)):
            b = best_row()
            if b is None:
                break
            p = b["probs"][1]
            step /= (grid - 1) / 2.0
            for j in range(-(grid // 2), grid // 2 + 1):
                q = min(max(p + j * step, 0.0), 1.0)
                evaluate((1.0 - q, q))
    b = best_row()
    if b is None:
        return OptimizeResult(
            False, None, objective, math.nan, math.nan, math.nan, name, tgt, evaluator, evals
        )
    return OptimizeResult(
        True,
        tuple(b["probs"]),
        objective,
        b["value"],
        b["latency"],
        b["latency_ci"],
        name,
        tgt,
        evaluator,
        evals,
    )


@dataclass
class PolicyOptimizeResult:
    """The cheapest speed-policy parameters found that meet the target, and every evaluation
    (one row per candidate: its parameters, latency, half-width, stability, value)."""

    feasible: bool
    policy: Any  # ThresholdPolicy / DeadlinePolicy at the optimum, or None
    objective: str
    value: float
    latency: float
    latency_ci: float
    metric: str
    target: float
    evaluations: list[Any]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        p = self.policy
        if isinstance(p, ThresholdPolicy):
            out["policy"] = {"kind": "threshold", "thresholds": list(p.thresholds)}
        elif isinstance(p, DeadlinePolicy):
            out["policy"] = {"kind": "deadline", "deadline": p.deadline, "known_size": p.known_size}
        return out


def _threshold_candidates(m: int, values: Sequence[int], cap: int, fn: str) -> list[Any]:
    vals = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 0:
            raise ValueError(f"{fn}: thresholds must be ints >= 0, got {v!r}")
        vals.append(int(v))
    vals = sorted(set(vals))
    if not vals:
        raise ValueError(f"{fn}: thresholds must not be empty")
    count = math.comb(len(vals) + m - 2, m - 1)
    if count > cap:
        raise ValueError(
            f"{fn}: {len(vals)} threshold values over {m} levels give {count:,} candidates (more "
            f"than max_candidates={cap:,}); pass fewer values or fewer levels"
        )
    return [tuple(c) for c in itertools.combinations_with_replacement(vals, m - 1)]


def optimize_policy(
    n: int,
    k: int,
    arrival_rate: float,
    levels: Any,
    *,
    target: float,
    metric: Metric = "mean",
    objective: str = "energy",
    policy: str = "threshold",
    thresholds: Sequence[int] | None = None,
    deadlines: Sequence[float] | None = None,
    known_size: bool = False,
    max_candidates: int = 10_000,
    progress: Callable[[int, int], None] | None = None,
    **sim_kwargs: Any,
) -> PolicyOptimizeResult:
    """The speed-policy parameters with the least energy per request (objective='energy') or
    average power ('power') whose simulated latency metric ('mean', 'mean_in_system' or a
    quantile such as 0.99 / 'p99') has its upper 95% confidence limit at most ``target``.

    policy='threshold': every non-decreasing vector of m - 1 thresholds drawn from
    ``thresholds`` (default 0..20) is simulated with ThresholdPolicy; policy='deadline': every
    value of ``deadlines`` with DeadlinePolicy(d, known_size). ``levels`` are (rate, power)
    pairs (fixed; the policy picks among them), or per-server sets as in ``simulate``.
    ``sim_kwargs`` go to ``simulate`` (requests, seed, idle_power, sleep, switch_time, ...; an
    unstable candidate is infeasible). Each candidate is one simulation, so the search is
    exhaustive over the given values (at most ``max_candidates``)."""
    fn = "optimize_policy"
    n, k = check_nk(n, k, fn)
    lam = check_rate(arrival_rate, fn)
    tgt = check_rate(target, fn, "target")
    name = _metric_name(metric, fn)
    if objective not in ("energy", "power"):
        raise ValueError(f"{fn}: objective must be 'energy' or 'power', got {objective!r}")
    if (
        isinstance(max_candidates, bool)
        or not isinstance(max_candidates, int)
        or max_candidates < 1
    ):
        raise ValueError(f"{fn}: max_candidates must be an int >= 1, got {max_candidates!r}")
    if "policy" in sim_kwargs:
        raise ValueError(f"{fn}: pass policy='threshold' or 'deadline', not a policy object")
    if policy == "threshold":
        if deadlines is not None:
            raise ValueError(f"{fn}: deadlines are for policy='deadline'")
        if thresholds is None:
            thresholds = range(21)
        if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__iter__"):
            raise ValueError(f"{fn}: thresholds must be a sequence of ints, got {thresholds!r}")
        m = _policy_levels_count(levels, n, fn)
        cands: list[Any] = [
            ThresholdPolicy(c)
            for c in _threshold_candidates(m, list(thresholds), max_candidates, fn)
        ]
    elif policy == "deadline":
        if thresholds is not None:
            raise ValueError(f"{fn}: thresholds are for policy='threshold'")
        if (
            deadlines is None
            or isinstance(deadlines, (str, bytes))
            or not hasattr(deadlines, "__len__")
        ):
            raise ValueError(
                f"{fn}: policy='deadline' needs a sequence of deadlines, got {deadlines!r}"
            )
        if len(deadlines) == 0 or len(deadlines) > max_candidates:
            raise ValueError(
                f"{fn}: deadlines must hold 1 to max_candidates={max_candidates} values, got "
                f"{len(deadlines)}"
            )
        cands = [DeadlinePolicy(d, known_size) for d in deadlines]
    else:
        raise ValueError(f"{fn}: policy must be 'threshold' or 'deadline', got {policy!r}")
    kw = dict(sim_kwargs)
    kw.setdefault("on_unstable", "return")
    evals: list[Any] = []
    for i, pol in enumerate(cands):
        row: dict[str, Any] = (
            {"thresholds": list(pol.thresholds)}
            if isinstance(pol, ThresholdPolicy)
            else {"deadline": pol.deadline}
        )
        try:
            s = simulate(n, k, lam, levels, policy=pol, **kw)
        except ValueError as e:  # certainly unstable, or a bad parameter for this candidate
            if "unstable" not in str(e):
                raise
            row.update(latency=math.inf, latency_ci=0.0, stable=False, value=math.nan, note=str(e))
        else:
            row.update(
                latency=latency_of(s, metric),
                latency_ci=latency_ci(s, metric),
                stable=s.stable,
                value=s.energy_per_request if objective == "energy" else s.average_power,
            )
        row["feasible"] = bool(
            row["stable"]
            and math.isfinite(row["value"])
            and row["latency"] + row["latency_ci"] <= tgt
        )
        row["_policy"] = pol
        evals.append(row)
        if progress:
            progress(i + 1, len(cands))
    feas = [r for r in evals if r["feasible"]]
    best = min(feas, key=lambda r: (r["value"], r["latency"])) if feas else None
    chosen = best["_policy"] if best is not None else None
    for r in evals:
        del r["_policy"]
    if best is None:
        return PolicyOptimizeResult(
            False, None, objective, math.nan, math.nan, math.nan, name, tgt, evals
        )
    return PolicyOptimizeResult(
        True,
        chosen,
        objective,
        best["value"],
        best["latency"],
        best["latency_ci"],
        name,
        tgt,
        evals,
    )


def _policy_levels_count(levels: Any, n: int, fn: str) -> int:
    """Levels per server (the same on every server for the threshold policy)."""
    from .simulate import _per_server_levels

    if _per_server_levels(levels):
        counts = {len(s) for s in levels}
        if len(counts) != 1:
            raise ValueError(
                f"{fn}: the threshold policy needs the same number of levels on every server"
            )
        return counts.pop()
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__len__") or len(levels) == 0:
        raise ValueError(f"{fn}: levels must be a non-empty list of (rate, power), got {levels!r}")
    if len(levels) < 2:
        raise ValueError(f"{fn}: a speed policy needs at least 2 levels, got {len(levels)}")
    return len(levels)
