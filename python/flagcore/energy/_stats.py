"""Reading the simulator's streaming statistics: histogram percentiles, confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from .._backend import core

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30; the normal value beyond
# (the error is < 2% at df = 31 and shrinks after).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    if df < 1:
        return math.inf
    return _T975[df - 1] if df <= 30 else 1.959964 + 2.4 / df  # Cornish-Fisher-style tail


def half_width(samples: np.ndarray) -> float:
    """95% confidence half-width of the mean of i.i.d. (batch or replication) estimates."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.inf
    return float(t975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


@lru_cache(maxsize=1)
def histogram_edges() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges of every bucket of the simulator's log histogram
    (csrc/sim/histogram.hpp): bucket 0 is [0, 2^emin), the last [2^emax, inf)."""
    lay = core.sim_histogram_layout()
    sub, emin, emax, nb = 1 << lay["sub_bits"], lay["emin"], lay["emax"], lay["buckets"]
    idx = np.arange(nb - 2)
    e = emin + idx // sub
    m = idx % sub
    lo = np.ldexp(1.0 + m / sub, e)
    hi = np.ldexp(1.0 + (m + 1) / sub, e)
    lower = np.concatenate([[0.0], lo, [math.ldexp(1.0, emax)]])
    upper = np.concatenate([[math.ldexp(1.0, emin)], hi, [math.inf]])
    return lower, upper


#: Relative error of a percentile read off the histogram against the sample's own percentile:
#: both lie in one bucket, whose width is at most 2^-8 of its lower edge.
PERCENTILE_RELATIVE_ERROR = 2.0**-8


def hist_percentile(counts: np.ndarray, q: float, vmin: float, vmax: float) -> float:
    """The q-quantile of the histogram, linear within the bucket that holds it, clamped to the
    observed [vmin, vmax]."""
    counts = np.asarray(counts)
    total = int(counts.sum())
    if total == 0:
        return math.nan
    lower, upper = histogram_edges()
    cum = np.cumsum(counts, dtype=np.float64)
    target = q * total
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, counts.size - 1)
    before = cum[i - 1] if i > 0 else 0.0
    c = float(counts[i])
    frac = (target - before) / c if c > 0 else 0.0
    lo = max(lower[i], vmin)
    hi = min(upper[i], vmax)
    if hi < lo:
        hi = lo
    return float(lo + frac * (hi - lo))


def sparse_hist(buckets: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge sparse (bucket, count) entries: sorted unique buckets and their summed counts."""
    b = np.asarray(buckets, dtype=np.int64)
    if b.size == 0:
        return b, np.zeros(0, dtype=np.int64)
    u, inv = np.unique(b, return_inverse=True)
    c = np.bincount(inv, weights=np.asarray(counts, dtype=np.float64), minlength=u.size)
    return u, c.astype(np.int64)


def sparse_percentile(
    buckets: np.ndarray, counts: np.ndarray, q: float, vmin: float, vmax: float
) -> float:
    """hist_percentile of a sparse histogram (sorted unique buckets and their counts); the same
    value the dense histogram gives."""
    counts = np.asarray(counts)
    total = int(counts.sum())
    if total == 0:
        return math.nan
    lower, upper = histogram_edges()
    cum = np.cumsum(counts, dtype=np.float64)
    target = q * total
    i = min(int(np.searchsorted(cum, target, side="left")), counts.size - 1)
    before = cum[i - 1] if i > 0 else 0.0
    c = float(counts[i])
    frac = (target - before) / c if c > 0 else 0.0
    b = int(buckets[i])
    lo = max(lower[b], vmin)
    hi = min(upper[b], vmax)
    if hi < lo:
        hi = lo
    return float(lo + frac * (hi - lo))


def sparse_exceed(buckets: np.ndarray, counts: np.ndarray, d: float) -> float:
    """hist_exceed of a sparse histogram."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return math.nan
    if d < 0:
        return 1.0
    lower, upper = histogram_edges()
    i = int(core.sim_histogram_index(np.array([d]))[0])
    buckets = np.asarray(buckets)
    above = counts[buckets > i].sum()
    at = counts[buckets == i].sum()
    lo, hi = lower[i], upper[i]
    if at and math.isfinite(hi) and hi > lo:
        above += at * (hi - max(d, lo)) / (hi - lo)
    return float(above / total)


def hist_exceed(counts: np.ndarray, d: float) -> float:
    """Fraction of the histogram above d (linear within d's bucket)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return math.nan
    if d < 0:
        return 1.0
    lower, upper = histogram_edges()
    i = int(core.sim_histogram_index(np.array([d]))[0])
    above = counts[i + 1 :].sum()
    lo, hi = lower[i], upper[i]
    if math.isfinite(hi) and hi > lo:
        above += counts[i] * (hi - max(d, lo)) / (hi - lo)
    return float(above / total)


def survival_quantile(survival: Callable[[float], float], mean: float, q: float) -> float:
    """The q-quantile of a distribution on [0, inf) given its survival function: the t where
    survival(t) falls to 1 - q, by doubling from the mean and bisection to a relative 1e-12."""
    target = 1.0 - q
    hi = max(mean, 1e-300)
    while survival(hi) > target:
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if survival(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return float(0.5 * (lo + hi))


def check_deadline(d: Any) -> float:
    """The deadline argument of deadline_miss as a float: a real number, not NaN."""
    if isinstance(d, bool) or not isinstance(d, (int, float, np.integer, np.floating)):
        raise TypeError(f"deadline_miss: d must be a number, got {type(d).__name__}")
    if math.isnan(d):
        raise ValueError(f"deadline_miss: d must be a number, got {d!r}")
    return float(d)


class PercentileShortcuts:
    """p50 / p95 / p99 / p999 for any result class that defines percentile(q)."""

    def percentile(self, q: float) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def p50(self) -> float:
        return self.percentile(0.5)

    @property
    def p95(self) -> float:
        return self.percentile(0.95)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def p999(self) -> float:
        return self.percentile(0.999)
