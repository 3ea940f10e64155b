"""Speed levels from a CPU's frequency table: a power model and memory-bound service scaling.

A core at frequency f (GHz) draws

    P(f) = static + coeff * f ** alpha                     (PowerModel)

and a task that takes one time unit at the reference frequency f_ref (the table's highest, by
default) takes

    time(f) = (1 - m) * f_ref / f + m                      (service_time)

where m in [0, 1] is the memory-bound fraction of the work: the compute-bound part stretches
as 1 / f, the memory-bound part (waiting on DRAM) does not. The service rate is
rate(f) = rate_at_ref / time(f) (service_rate). ``levels_from_frequencies`` turns a table of
frequencies, with measured powers or a PowerModel, into the SpeedLevel list that
``simulate``, ``approximate`` and ``optimize`` accept; ``fit_power_model`` fits (static, coeff,
alpha) to measured (f, P) pairs by least squares (numpy only). See docs/energy-power.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._model import SpeedLevel

__all__ = [
    "PowerModel",
    "fit_power_model",
    "levels_from_frequencies",
    "service_rate",
    "service_time",
]


def _scalar(x: Any, fn: str, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {what} must be a number, got {type(x).__name__}")
    return float(x)


def _vector(x: Any, fn: str, what: str, *, positive: bool) -> np.ndarray:
    """A non-empty 1-D sequence of finite numbers (> 0 when positive, else >= 0) as float64."""
    if isinstance(x, (str, bytes, dict)) or not hasattr(x, "__len__"):
        raise TypeError(f"{fn}: {what} must be a sequence of numbers, got {type(x).__name__}")
    items = list(x) if not isinstance(x, np.ndarray) else x.tolist()
    if isinstance(x, np.ndarray) and x.ndim != 1:
        raise ValueError(f"{fn}: {what} must be one-dimensional, got shape {x.shape}")
    if len(items) == 0:
        raise ValueError(f"{fn}: {what} must not be empty")
    vals = np.array([_scalar(v, fn, f"{what}[{i}]") for i, v in enumerate(items)])
    for i, v in enumerate(vals):
        if not math.isfinite(v) or (v <= 0 if positive else v < 0):
            need = "positive and finite" if positive else ">= 0 and finite"
            raise ValueError(f"{fn}: {what}[{i}] must be {need}, got {v}")
    return vals


def _memory_fraction(m: Any, fn: str) -> float:
    v = _scalar(m, fn, "memory_fraction")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{fn}: memory_fraction must be in [0, 1], got {v}")
    return v


def _positive(x: Any, fn: str, what: str) -> float:
    v = _scalar(x, fn, what)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{fn}: {what} must be positive and finite, got {v}")
    return v


@dataclass(frozen=True)
class PowerModel:
    """Busy power of one core at frequency f: ``static + coeff * f ** alpha``.

    static: the frequency-independent part (leakage, uncore share), W, >= 0.
    coeff:  the dynamic part's scale, W / GHz**alpha, >= 0.
    alpha:  the dynamic part's exponent, > 0 (C V^2 f with V roughly linear in f gives ~3;
            measured cores usually land between 1.5 and 3).
    """

    static: float
    coeff: float
    alpha: float

    def __post_init__(self) -> None:
        fn = "PowerModel"
        for name in ("static", "coeff"):
            v = _scalar(getattr(self, name), fn, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{fn}: {name} must be >= 0 and finite, got {v}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "alpha", _positive(self.alpha, fn, "alpha"))

    def power(self, frequency: Any) -> Any:
        """P(f) for one frequency (a float back) or a sequence (a float64 array back); inf
        where the value exceeds the float range."""
        fn = "PowerModel.power"
        if np.ndim(frequency) == 0:
            f = np.float64(_positive(frequency, fn, "frequency"))
            if self.coeff == 0.0:  # no dynamic part: not 0 * inf at huge f
                return self.static
            with np.errstate(over="ignore"):
                return float(self.static + self.coeff * f**self.alpha)
        fs = _vector(frequency, fn, "frequency", positive=True)
        if self.coeff == 0.0:
            return np.full(fs.shape, self.static)
        with np.errstate(over="ignore"):
            return self.static + self.coeff * fs**self.alpha


def _service_time(frequency: Any, f_ref: Any, memory_fraction: Any, fn: str) -> Any:
    fr = _positive(f_ref, fn, "f_ref")
    m = _memory_fraction(memory_fraction, fn)
    # written as 1 + (1 - m)(f_ref / f - 1): exactly 1 at f = f_ref for every m
    if np.ndim(frequency) == 0:
        return 1.0 + (1.0 - m) * (fr / _positive(frequency, fn, "frequency") - 1.0)
    return 1.0 + (1.0 - m) * (fr / _vector(frequency, fn, "frequency", positive=True) - 1.0)


def service_time(frequency: Any, f_ref: float, memory_fraction: float = 0.0) -> Any:
    """time(f) = (1 - m) * f_ref / f + m: the time of one unit of work (one time unit at f_ref)
    at frequency f, when a fraction m of it is memory-bound and does not scale with f.
    A float for one frequency, a float64 array for a sequence."""
    return _service_time(frequency, f_ref, memory_fraction, "service_time")


def service_rate(
    frequency: Any, f_ref: float, memory_fraction: float = 0.0, rate_at_ref: float = 1.0
) -> Any:
    """rate(f) = rate_at_ref / time(f): tasks per time unit at frequency f, given the rate at
    f_ref (service_time). With m = 0 the rate is proportional to f; with m = 1 it is constant."""
    fn = "service_rate"
    r = _positive(rate_at_ref, fn, "rate_at_ref")
    return r / _service_time(frequency, f_ref, memory_fraction, fn)


def levels_from_frequencies(
    frequencies: Sequence[float],
    powers: Sequence[float] | None = None,
    *,
    model: PowerModel | None = None,
    memory_fraction: float = 0.0,
    rate_at_max: float = 1.0,
    probabilities: Sequence[float] | None = None,
) -> list[SpeedLevel]:
    """One SpeedLevel per frequency, in the order given: rate = service_rate(f, max(f),
    memory_fraction, rate_at_max), power = the measured ``powers`` or ``model.power(f)``
    (exactly one of the two), probability = ``probabilities`` (default: 1 / len(frequencies)
    each; ``optimize`` ignores them and chooses its own).

    frequencies: GHz (any positive unit, used only as ratios and in ``model``), distinct.
    rate_at_max: the service rate at the highest frequency, in the time unit of arrival_rate
    (e.g. 1 / mean task time at full speed)."""
    fn = "levels_from_frequencies"
    f = _vector(frequencies, fn, "frequencies", positive=True)
    if len(set(f.tolist())) != f.size:
        raise ValueError(f"{fn}: frequencies must be distinct, got {f.tolist()}")
    if (powers is None) == (model is None):
        raise ValueError(
            f"{fn}: give exactly one of powers (measured, one per frequency) and model "
            f"(a PowerModel), got powers={powers!r}, model={model!r}"
        )
    if model is not None:
        if not isinstance(model, PowerModel):
            raise TypeError(f"{fn}: model must be a PowerModel, got {type(model).__name__}")
        pw = np.asarray(model.power(f), dtype=np.float64)
        if not np.all(np.isfinite(pw)):
            raise ValueError(f"{fn}: model.power overflows at these frequencies: {pw.tolist()}")
    else:
        pw = _vector(powers, fn, "powers", positive=False)
        if pw.size != f.size:
            raise ValueError(
                f"{fn}: powers must have one value per frequency ({f.size}), got {pw.size}"
            )
    m = _memory_fraction(memory_fraction, fn)
    rates = service_rate(f, float(f.max()), m, _positive(rate_at_max, fn, "rate_at_max"))
    if probabilities is None:
        pr = np.full(f.size, 1.0 / f.size)
    else:
        pr = _vector(probabilities, fn, "probabilities", positive=False)
        if pr.size != f.size:
            raise ValueError(
                f"{fn}: probabilities must have one value per frequency ({f.size}), got {pr.size}"
            )
        if np.any(pr > 1.0) or abs(math.fsum(pr.tolist()) - 1.0) > 1e-9:
            raise ValueError(
                f"{fn}: probabilities must be in [0, 1] and sum to 1, got {pr.tolist()}"
            )
    return [SpeedLevel(float(r), float(p), float(q)) for r, p, q in zip(rates, pw, pr)]


# ---------------------------------------------------------------- fit
def _fit_linear(x: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """min_{s, c >= 0} |s + c x - p|^2 (x = (f / f_max) ** alpha): the unconstrained solution,
    else the best one with s = 0 or c = 0. Returns (s, c, sse)."""
    cands = []
    A = np.column_stack([np.ones_like(x), x])
    sol, *_ = np.linalg.lstsq(A, p, rcond=None)
    if sol[0] >= 0 and sol[1] >= 0:
        cands.append((float(sol[0]), float(sol[1])))
    else:
        xx = float(x @ x)
        cands.append((0.0, max(0.0, float(x @ p) / xx) if xx > 0 else 0.0))
        cands.append((max(0.0, float(p.mean())), 0.0))
    best = min(cands, key=lambda sc: float(((sc[0] + sc[1] * x - p) ** 2).sum()))
    return best[0], best[1], float(((best[0] + best[1] * x - p) ** 2).sum())


def fit_power_model(
    frequencies: Sequence[float],
    powers: Sequence[float],
    *,
    alpha: float | None = None,
    alpha_bounds: tuple[float, float] = (0.5, 8.0),
) -> PowerModel:
    """Least-squares fit of P(f) = static + coeff * f ** alpha to measured (f, P) pairs, with
    static >= 0 and coeff >= 0.

    For a fixed alpha the problem is linear in (static, coeff); alpha (unless given) is the
    minimiser of that profile over ``alpha_bounds``: a 400-point grid, then golden-section
    search around the best grid point. Needs at least 3 distinct frequencies (2 with alpha
    given). Pure numpy: scipy is not a dependency of flagcore."""
    fn = "fit_power_model"
    f = _vector(frequencies, fn, "frequencies", positive=True)
    p = _vector(powers, fn, "powers", positive=False)
    if p.size != f.size:
        raise ValueError(f"{fn}: powers must have one value per frequency ({f.size}), got {p.size}")
    distinct = len(set(f.tolist()))
    fmax = float(f.max())
    u = f / fmax  # conditioning: fit coeff' = coeff * fmax**alpha on u in (0, 1]
    pmax = float(p.max())
    scale = pmax if pmax > 0 else 1.0
    p = p / scale  # and powers in [0, 1]: no overflow in the squared errors at any magnitude

    def model_of(s: float, c: float, a: float) -> PowerModel:
        coeff = c * scale * math.exp(-a * math.log(fmax)) if c > 0 else 0.0
        if c > 0 and not (0.0 < coeff < math.inf):
            raise ValueError(
                f"{fn}: coeff = {c * scale:g} / {fmax:g}**{a:g} is not representable; give the "
                f"frequencies in GHz"
            )
        return PowerModel(s * scale, coeff, a)

    if alpha is not None:
        a = _positive(alpha, fn, "alpha")
        if distinct < 2:
            raise ValueError(f"{fn}: needs at least 2 distinct frequencies, got {distinct}")
        s, c, _ = _fit_linear(u**a, p)
        return model_of(s, c, a)
    if (
        not isinstance(alpha_bounds, (tuple, list))
        or len(alpha_bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in alpha_bounds)
        or not (0 < alpha_bounds[0] < alpha_bounds[1] < math.inf)
    ):
        raise ValueError(
            f"{fn}: alpha_bounds must be (low, high) with 0 < low < high < inf, "
            f"got {alpha_bounds!r}"
        )
    if distinct < 3:
        raise ValueError(
            f"{fn}: fitting alpha needs at least 3 distinct frequencies, got {distinct} "
            f"(or pass alpha=...)"
        )
    lo, hi = float(alpha_bounds[0]), float(alpha_bounds[1])

    def sse(a: float) -> float:
        return _fit_linear(u**a, p)[2]

    grid = np.linspace(lo, hi, 400)
    vals = [sse(float(a)) for a in grid]
    i = int(np.argmin(vals))
    a_lo, a_hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = a_hi - g * (a_hi - a_lo), a_lo + g * (a_hi - a_lo)
    f1, f2 = sse(x1), sse(x2)
    for _ in range(200):
        if a_hi - a_lo <= 1e-13 * a_hi:
            break
        if f1 <= f2:
            a_hi, x2, f2 = x2, x1, f1
            x1 = a_hi - g * (a_hi - a_lo)
            f1 = sse(x1)
        else:
            a_lo, x1, f1 = x1, x2, f2
            x2 = a_lo + g * (a_hi - a_lo)
            f2 = sse(x2)
    a = 0.5 * (a_lo + a_hi)
    if vals[i] < sse(a):  # a flat profile: keep the grid point
        a = float(grid[i])
    s, c, _ = _fit_linear(u**a, p)
    return model_of(s, c, a)
