"""``approximate``: closed forms and approximations for the (n, k) fork-join service with speed
levels (docs/spec_energy.md, section "Closed forms"; docs/energy-usage.md).

Effective rate of several speed levels (``method``):
  arithmetic  sum_s p_s mu_s (optimistic),
  harmonic    1 / sum_s p_s / mu_s (the exact capacity when k = n),
  race        k / sum_s tau_s, where tau_s is the expected busy time at level s of one isolated
              request on n idle cores whose levels are drawn i.i.d. (a Markov chain over the
              counts of cores still running at each level, run to the k-th completion).
Response time with cancellation: the tandem approximation (stage i of k is an M/M/1 queue with
rate (n - i) mu - (k - 1 - i) lambda, so T is hypoexponential with rates
theta_i = (n - i) mu - (k - i) lambda), replaced by an exact or better formula where one exists:
  k = 1              exact: M/G/1 with service Exp(R), R the sum of the n drawn rates
                     (Pollaczek-Khinchine; with one speed, M/M/1 with rate n mu, tails too),
  n = k = 2, 1 speed exact: Flatto-Hahn (12 - rho) / 8 / (mu - lambda),
  k = n > 2          Nelson-Tantawi (a few % for rho <= 0.8).
Without cancellation every task runs: T ~ the k-th order statistic of n independent M/M/1
sojourn times at the harmonic rate (an upper bound for k = n with one speed, by association;
with several speeds a task's service is a mixture of exponentials, and at light load this
approximation can fall below the light-traffic lower bound ``lower_bound``: compare the two).
Bounds: ``lower_bound``/``upper_bound`` are the proven ones (one speed with cancellation:
Joshi-Liu-Soljanin below, split-merge above; without cancellation the light-traffic value below)
and NaN where no proven bound exists (several speeds with cancellation; above, without it).
Energy: the race's sum_s P_s tau_s (exact with one speed, for k = 1 and for k = n; about 1% off
otherwise), or n sum_s p_s P_s / mu_s without cancellation (exact).
Heterogeneous servers (``levels`` a list of n level sets, one per server, as simulate takes;
n equal sets give exactly the single-set answer, with per-(server, level) arrays):
  (n, 1), cancel     exact: every server works on the head request and all start it together,
                     so a request's service is Exp(R), R the sum of the servers' drawn rates;
                     one rate per server: M/M/1 at the summed rate (mean and percentiles);
                     random levels: M/G/1 with hyperexponential service (mean by
                     Pollaczek-Khinchine, percentiles from its exponential-mixture sojourn,
                     mg1_hyperexponential_sojourn; beyond 256 distinct summed rates the tail is
                     an exponential at rate 1/E[S] - lambda, an approximation),
  k = n, or no cancel  every server serves every task, so server j is an M/G/1 queue whose
                     sojourn is exact (an exponential mixture); T ~ the k-th smallest of
                     independent per-server sojourns (IndependentOrderStatistic). The sojourns
                     of one request are associated, so for k = n this is an upper bound (mean
                     and every percentile) and for k = 1 a lower bound; otherwise an
                     approximation. Stability: lambda < every server's harmonic rate (exact),
  1 < k < n, cancel  the tandem above at the effective per-server rate of ``method`` over the
                     heterogeneous servers (race: k / total busy time of an isolated request,
                     race_hetero; harmonic: n / sum_j 1/h_j; arithmetic: the servers' mean),
                     an approximation (measured in docs/energy.md).
  Energy: the heterogeneous race (exact for k = 1 and k = n with cancellation), or
  sum_j sum_s p_js P_js / r_js without cancellation (exact). ``mean_method`` and
  ``percentile_method`` say which form (exact, bound or approximation) a result used.
Percentiles and deadline misses: both tails (the tandem's hypoexponential, the order statistic)
have stage rates in arithmetic progression, whose survival function is a finite sum of positive
terms (Hypoexponential), evaluated in logs in O(k) per point: no matrix exponential, any k
(k = 10000 in well under a second), relative accuracy deep in the tail. Unstable loads, and loads
within rounding of the stability limit, give stable=False and infinite latencies, never an
exception; values beyond the float range in the caller's time unit are inf.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations_with_replacement
from typing import Any

import numpy as np

from . import _stats
from ._model import Levels, LevelsLike, as_levels, check_nk, check_power, check_rate
from .simulate import _levels_param, _per_server_levels

METHODS = ("race", "harmonic", "arithmetic")


def harmonic_number(j: int) -> float:
    return math.fsum(1.0 / i for i in range(1, j + 1))


# ---------------------------------------------------------------- the race of one request
def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of `parts` non-negative ints summing to `total`."""
    for bars in combinations_with_replacement(range(total + 1), parts - 1):
        prev, out = 0, []
        for b in bars:
            out.append(b - prev)
            prev = b
        out.append(total - prev)
        yield tuple(out)


def race_chain(n: int, k: int, rates: Any, probs: Any) -> dict[str, Any]:
    """The isolated request as a Markov chain over c = (cores still running at each level).

    Returns tau (expected busy time per level, summed over cores), completion_times
    (E[time of the i-th completion], i = 1..k) and states (how many were visited)."""
    keep = [s for s, p in enumerate(probs) if p > 0]
    mu = np.array([rates[s] for s in keep])
    pr = np.array([probs[s] for s in keep])
    m = len(keep)
    # layer 0: multinomial(n, p)
    layer: dict[tuple[int, ...], float] = {}
    lf = math.lgamma(n + 1)
    for c in _compositions(n, m):
        lp = lf + sum(ci * math.log(pi) - math.lgamma(ci + 1) for ci, pi in zip(c, pr))
        layer[c] = math.exp(lp)
    tau = np.zeros(m)
    times = []
    t_acc = 0.0
    states = 0
    for _ in range(k):
        nxt: dict[tuple[int, ...], float] = {}
        dt = 0.0
        for c, pc in layer.items():
            states += 1
            ca = np.array(c, dtype=np.float64)
            R = float(ca @ mu)
            dt += pc / R
            tau += pc * ca / R
            for s in range(m):
                if c[s]:
                    dl = list(c)
                    dl[s] -= 1
                    d = tuple(dl)
                    nxt[d] = nxt.get(d, 0.0) + pc * c[s] * mu[s] / R
        t_acc += dt
        times.append(t_acc)
        layer = nxt
    full = np.zeros(len(rates))
    full[keep] = tau
    return {"tau": full, "completion_times": np.array(times), "states": states}


_GL = np.polynomial.legendre.leggauss(400)
_GL8 = np.polynomial.legendre.leggauss(8)

#: Largest ratio between the mapped grid's scale and the slowest time scale 1 / (slowest rate)
#: that the mapped grid serves: its 400 nodes reach about 6e4 scales, and a slow level's tail
#: beyond that was cut off (an (n, 1) mean 84 % low at a rate ratio of 1e6; 1e-5 at 1e3).
_MAPPED_GRID_SPAN = 1e3


def _halfline_grid(scale: float, slowest: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes t and weights for int_0^inf f(t) dt, f a survival-type function of the races
    (1 at t = 0, smooth, decaying at least like e^{-slowest t} times a polynomial in n).

    When every time scale is within _MAPPED_GRID_SPAN of ``scale`` (the usual case): 400-point
    Gauss-Legendre on t = scale x / (1 - x), x in (0, 1). Otherwise composite 8-point
    Gauss-Legendre panels in u = log t from 1e-10 / n scales to (ln n + 50) / slowest, panel
    width min(0.5, 8 / sqrt(n)) (the binomial steps of n cores are ~1 / sqrt(n) wide in u; at
    n = 1e5, k = n / 2 this gives 5e-8 against a 2e6-point reference, the mapped grid 3e-4),
    plus the piece [0, t_lo] as one node."""
    if not scale * slowest < 1.0 / _MAPPED_GRID_SPAN:
        x, w = _GL
        x = 0.5 * (x + 1.0)
        w = 0.5 * w
        return scale * x / (1.0 - x), w * scale / (1.0 - x) ** 2
    t_lo = 1e-10 * scale / max(n, 1)
    t_hi = (math.log(max(n, 1)) + 50.0) / slowest
    a, b = math.log(t_lo), math.log(t_hi)
    width = min(0.5, 8.0 / math.sqrt(max(n, 1)))
    panels = math.ceil((b - a) / width)
    h = (b - a) / panels
    xg, wg = _GL8
    u = (a + h * (np.arange(panels)[:, None] + 0.5 * (xg[None, :] + 1.0))).ravel()
    wu = np.tile(0.5 * h * wg, panels)
    t = np.exp(u)
    return np.concatenate([[0.5 * t_lo], t]), np.concatenate([[t_lo], wu * t])


def _slowest(rates: Any, probs: Any) -> float:
    return min(float(r) for r, p in zip(rates, probs) if p > 0)


#: Rows of binomial log-pmf evaluated at once (rows x quadrature nodes doubles per block).
_ROWS = 512


def _binom_pmf_rows(N: int, j0: int, j1: int, F: np.ndarray) -> np.ndarray:
    """P(Binomial(N, F) = j) for j = j0..j1-1 (rows) and an array F in [0, 1] (columns), in logs
    so that large N neither overflows nor underflows to NaN; F = 0 and F = 1 exactly."""
    j = np.arange(j0, j1, dtype=np.float64)[:, None]
    lc = np.fromiter(
        (math.lgamma(N + 1) - math.lgamma(i + 1) - math.lgamma(N - i + 1) for i in range(j0, j1)),
        dtype=np.float64,
        count=j1 - j0,
    )[:, None]
    tiny = np.finfo(np.float64).tiny
    lF = np.log(np.maximum(F, tiny))[None, :]
    l1F = np.log1p(-np.minimum(F, 1.0 - 2.0**-53))[None, :]
    a = np.where(F[None, :] > 0, j * lF, np.where(j == 0, 0.0, -np.inf))
    b = np.where(F[None, :] < 1, (N - j) * l1F, np.where(j == N, 0.0, -np.inf))
    return np.exp(lc + a + b)


def _binom_cdf_below(N: int, k: int, F: np.ndarray) -> np.ndarray:
    """P(Binomial(N, F) < k) for an array F (blocks of _ROWS pmf rows, O(k * F.size))."""
    F = np.clip(np.asarray(F, dtype=np.float64), 0.0, 1.0)
    out = np.zeros_like(F)
    top = min(k, N + 1)
    for j0 in range(0, top, _ROWS):
        out += _binom_pmf_rows(N, j0, min(j0 + _ROWS, top), F).sum(axis=0)
    return out


def race_integral(n: int, k: int, rates: Any, probs: Any) -> dict[str, Any]:
    """The same quantities as race_chain, by one-dimensional quadrature: with F the mixture CDF
    of one core's time, tau_s = n p_s int e^{-mu_s t} P(Bin(n-1, F(t)) < k) dt and
    E[i-th completion] = int P(Bin(n, F(t)) < i) dt. For many levels or cores."""
    mu = np.asarray(rates, dtype=np.float64)
    pr = np.asarray(probs, dtype=np.float64)
    scale = (harmonic_number(n) - harmonic_number(n - k)) / float(pr @ mu) + 1e-300
    t, wj = _halfline_grid(scale, _slowest(mu, pr), n)
    surv_one = (pr[:, None] * np.exp(-mu[:, None] * t[None, :])).sum(
        axis=0
    )  # P(one core still running)
    F = 1.0 - surv_one
    if k == n:  # every task runs to completion: n p_s / mu_s exactly
        tau = np.where(pr > 0, n * pr / mu, 0.0)
    else:
        g = _binom_cdf_below(n - 1, k, F)
        tau = n * pr * (np.exp(-mu[:, None] * t[None, :]) * (g * wj)[None, :]).sum(axis=1)
    times = _completion_times(n, k, F, wj)
    return {"tau": tau, "completion_times": times, "states": 0}


def _completion_times(N: int, k: int, F: np.ndarray, wj: np.ndarray) -> np.ndarray:
    """E[i-th completion] = int P(Bin(N, F(t)) < i) dt for i = 1..k in O(k * grid): the CDFs
    below i are running sums of the binomial pmf rows (blocks of _ROWS rows, numpy throughout)."""
    F = np.clip(np.asarray(F, dtype=np.float64), 0.0, 1.0)
    times = np.empty(k)
    carry = np.zeros_like(F)
    for j0 in range(0, k, _ROWS):
        j1 = min(j0 + _ROWS, k)
        cdf = carry[None, :] + np.cumsum(_binom_pmf_rows(N, j0, j1, F), axis=0)
        times[j0:j1] = (np.minimum(cdf, 1.0) * wj[None, :]).sum(axis=1)
        carry = cdf[-1]
    return times


def race_one_speed(n: int, k: int, rates: Any, probs: Any) -> dict[str, Any]:
    """race_chain's quantities when every core runs at one rate mu: E[i-th completion] =
    (H_n - H_{n-i}) / mu and k / mu busy time in all (each of the k stages keeps all running
    cores busy for 1 / ((n - i) mu) each)."""
    s = next(i for i, p in enumerate(probs) if p > 0)
    mu = float(rates[s])
    tail = np.cumsum(1.0 / np.arange(n, n - k, -1, dtype=np.float64))  # H_n - H_{n-i}
    tau = np.zeros(len(rates))
    tau[s] = k / mu
    return {"tau": tau, "completion_times": tail / mu, "states": k}


def race(n: int, k: int, rates: Any, probs: Any, max_states: int = 20000) -> dict[str, Any]:
    m = sum(1 for p in probs if p > 0)
    if len({r for r, p in zip(rates, probs) if p > 0}) == 1:
        return race_one_speed(n, k, rates, probs)
    if math.comb(n + m - 1, m - 1) * k <= max_states:
        return race_chain(n, k, rates, probs)
    return race_integral(n, k, rates, probs)


def effective_rates(n: int, k: int, lv: Levels) -> dict[str, Any]:
    r = race(n, k, lv.rates, lv.probs)
    return {
        "arithmetic": math.fsum(p * m for m, p in zip(lv.rates, lv.probs)),
        "harmonic": 1.0 / math.fsum(p / m for m, p in zip(lv.rates, lv.probs)),
        "race": k / float(r["tau"].sum()),
    }


# ---------------------------------------------------------------- tail distributions
#: Largest steps x stages of one uniformised survival evaluation (about a second), and the
#: most stages for the dense fallback beyond it (general rates only; arithmetic rates, which is
#: all that approximate uses, never need either).
_UNIFORMISATION_WORK = 2e7
_DENSE_MAX_K = 400


def _expm(A: np.ndarray) -> np.ndarray:
    """exp(A) by scaling and squaring with a degree-20 Taylor sum (A a small sub-generator)."""
    norm = float(np.abs(A).sum(axis=0).max())
    sq = max(0, math.ceil(math.log2(norm)) + 1) if norm > 0.5 else 0
    B = A / (2.0**sq)
    E = np.eye(A.shape[0])
    term = np.eye(A.shape[0])
    for j in range(1, 21):
        term = term @ B / j
        E = E + term
    for _ in range(sq):
        E = E @ E
    return E


class Hypoexponential:
    """Sum of independent exponentials with the given rates (any positive rates, equal ones
    included); the order of the rates does not matter.

    Rates in arithmetic progression r_0 + i * d (i = 0..k-1, d >= 0), which is what the tandem
    stages and the k-th order statistic of i.i.d. exponentials give, use a closed form: with
    g(t) = (1 - e^{-d t}) / d (g = t for d = 0),

        P(T > t) = sum_{j<k} e^{-r_0 t} g(t)^j prod_{i<j} r_i / (i + 1),

    a sum of positive terms (for d > 0, e^{-d T} ~ Beta(r_0/d, k) and this is the regularised
    incomplete beta I_x(r_0/d, k) at x = e^{-d t}, written as a negative-binomial sum; for d = 0
    the Erlang survival). It is evaluated in logs, O(k) per time, with no cancellation, so it
    scales to any k and keeps relative accuracy deep in the tail. Other rates use
    uniformisation (O(k * max_rate * t) per time), or for stiff rates (max_rate * t * k beyond
    2e7) a dense scaling-and-squaring exponential up to 400 stages (relative error ~1e-8 after
    its many squarings; ValueError beyond)."""

    def __init__(self, rates: Any) -> None:
        r = np.sort(np.asarray(rates, dtype=np.float64).ravel())
        if r.size == 0 or not np.all(np.isfinite(r)) or not np.all(r > 0):
            raise ValueError(
                f"Hypoexponential: rates must be a non-empty list of positive finite numbers, "
                f"got {rates!r}"
            )
        self.rates = r
        self._arith: tuple[float, float, np.ndarray, np.ndarray] | None = None
        if r.size == 1:
            self._set_arithmetic(float(r[0]), 0.0, 1)
        else:
            step = (float(r[-1]) - float(r[0])) / (r.size - 1)
            expect = r[0] + step * np.arange(r.size)
            if np.all(np.abs(r - expect) <= 1e-13 * r[-1]):
                self._set_arithmetic(float(r[0]), step, r.size)

    @classmethod
    def arithmetic(cls, r0: float, step: float, k: int) -> Hypoexponential:
        """The rates r0, r0 + step, ..., r0 + (k - 1) step, given exactly (r0 > 0, step >= 0)."""
        if not (r0 > 0 and math.isfinite(r0)) or not (step >= 0 and math.isfinite(step)):
            raise ValueError(
                f"Hypoexponential.arithmetic: needs r0 > 0 and step >= 0, finite, got "
                f"r0={r0!r}, step={step!r}"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"Hypoexponential.arithmetic: k must be an int >= 1, got {k!r}")
        self = cls.__new__(cls)
        self.rates = r0 + step * np.arange(int(k), dtype=np.float64)
        self._set_arithmetic(float(r0), float(step), int(k))
        return self

    def _set_arithmetic(self, r0: float, step: float, k: int) -> None:
        i = np.arange(k - 1, dtype=np.float64)
        # C_j = sum_{i<j} log(r_i / (i + 1)), j = 0..k-1
        c = np.zeros(k)
        if k > 1:
            c[1:] = np.cumsum(np.log(r0 + step * i) - np.log1p(i))
        self._arith = (r0, step, c, np.arange(k, dtype=np.float64))

    @property
    def mean(self) -> float:
        return float(math.fsum((1.0 / self.rates).tolist()))

    def survival(self, t: float) -> float:
        t = float(t)
        if not t > 0:
            return 1.0
        if math.isinf(t):
            return 0.0
        if self._arith is not None:
            r0, step, c, j = self._arith
            g = t if step * t < 1e-300 else -math.expm1(-step * t) / step
            logs = c + j * math.log(g) - r0 * t
            top = float(logs.max())
            if top < -745.0:  # every term underflows
                return 0.0
            return float(min(max(math.exp(top) * float(np.exp(logs - top).sum()), 0.0), 1.0))
        return self._survival_uniformised(t)

    def _survival_uniformised(self, t: float) -> float:
        """P(T > t) = sum_m Poisson(L t; m) P(not absorbed after m steps of the chain
        uniformised at L = max rate); the Poisson weights in logs, summed until their tail is
        below 1e-17."""
        r = self.rates
        lam = float(r[-1])
        a = lam * t
        m_max = int(min(a + 12.0 * math.sqrt(a) + 40.0, 1e15))
        if m_max * r.size > _UNIFORMISATION_WORK:
            # stiff (max rate * t huge): the steps would take minutes or forever; a dense
            # scaling-and-squaring exponential costs O(k^3 log(max rate * t)) instead
            if r.size <= _DENSE_MAX_K:
                S = np.diag(-r) + np.diag(r[:-1], 1)
                return float(min(max(_expm(S * t)[0].sum(), 0.0), 1.0))
            raise ValueError(
                f"Hypoexponential.survival: rates from {r[0]:g} to {r[-1]:g} (not in arithmetic "
                f"progression) at t={t:g} need {m_max:,} uniformisation steps over {r.size} "
                f"stages; more than {_DENSE_MAX_K} stages with rates this spread are not supported"
            )
        adv = r / lam  # probability that a step advances the stage
        v = np.zeros(r.size)
        v[0] = 1.0
        total = 0.0
        lw_base = -a
        la = math.log(a)
        for m in range(m_max + 1):
            lw = lw_base + m * la - math.lgamma(m + 1)
            if lw > -745.0:
                total += math.exp(lw) * float(v.sum())
            moved = v * adv
            v = v - moved
            v[1:] += moved[:-1]
        return float(min(max(total, 0.0), 1.0))


class OrderStatistic:
    """k-th smallest of n i.i.d. Exp(rate): the sum of Exp((n - i) rate), i = 0..k-1, so its
    tail is the arithmetic-rate Hypoexponential's closed form (P(Binomial(n, 1 -
    e^{-rate t}) < k))."""

    def __init__(self, n: int, k: int, rate: float):
        self.n, self.k, self.rate = n, k, rate
        self._h = Hypoexponential.arithmetic((n - k + 1) * rate, rate, k)

    @property
    def mean(self) -> float:
        return (harmonic_number(self.n) - harmonic_number(self.n - self.k)) / self.rate

    def survival(self, t: float) -> float:
        return self._h.survival(t)


def _quantile(dist: Any, q: float) -> float:
    return _stats.survival_quantile(dist.survival, dist.mean, q)


# ---------------------------------------------------------------- result
@dataclass
class ApproxResult(_stats.PercentileShortcuts):
    """Closed-form estimates (fields named as in SimResult where they exist)."""

    params: dict[str, Any]
    method: str
    mean_method: str
    percentile_method: str
    effective_rate: float
    effective_rates: dict[str, Any]
    stable: bool
    stability_limit: float  # largest stable arrival rate under this method's model
    mean_response_time: float
    tandem_response_time: float
    mean_in_system: float
    light_traffic_response_time: float  # E[k-th completion] of an isolated request
    # one speed with cancellation: Joshi-Liu-Soljanin; cancel=False: light traffic; else NaN
    lower_bound: float
    upper_bound: (
        float  # one speed with cancellation: split-merge (and H_n/(mu-lam) for k = n); else NaN
    )
    stage_rates: list[Any]
    energy_per_request: float
    average_power: float
    utilisation: np.ndarray
    busy_cores: np.ndarray
    busy_time_per_request: np.ndarray
    idle_fraction: float
    wasted_time_per_request: float
    _tail: Any = field(default=None, repr=False)

    def percentile(self, q: float) -> float:
        if not 0.0 < float(q) < 1.0:
            raise ValueError(f"percentile: q must be in (0, 1), got {q!r}")
        if self._tail is None:
            return math.inf
        with np.errstate(all="ignore"):  # near the stability limit the stage rates are tiny
            v = _quantile(self._tail, float(q))
        return v if math.isfinite(v) else math.inf

    def deadline_miss(self, d: float) -> float:
        """P(T > d) under this approximation (1 for d <= 0; 1 when unstable)."""
        d = _stats.check_deadline(d)
        if self._tail is None:
            return 1.0
        with np.errstate(all="ignore"):
            v = self._tail.survival(d)
        return v if math.isfinite(v) else 1.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in self.__dict__.items()
            if not k.startswith("_")
        }
        out["percentiles"] = {str(q): self.percentile(q) for q in (0.5, 0.95, 0.99, 0.999)}
        return out


def _pk_random_speeds(n: int, lam: float, lv: Levels) -> tuple[float, float, float]:
    """M/G/1 with service Exp(R), R = sum of n i.i.d. drawn rates: E[1/R] = int phi(t)^n dt and
    E[1/R^2] = int t phi(t)^n dt with phi(t) = E[e^{-mu t}] of one core. Returns (E[S],
    E[S^2], E[T])."""
    mu = np.asarray(lv.rates)
    pr = np.asarray(lv.probs)
    scale = 1.0 / (n * float(pr @ mu))
    t, wj = _halfline_grid(scale, n * _slowest(mu, pr), 1)  # phi^n: a smooth mixture
    phi_n = (pr[:, None] * np.exp(-mu[:, None] * t[None, :])).sum(axis=0) ** n
    es = float((phi_n * wj).sum())
    es2 = 2.0 * float((t * phi_n * wj).sum())
    rho = lam * es
    et = es + lam * es2 / (2.0 * (1.0 - rho)) if rho < 1 else math.inf
    return es, es2, et


def approximate(
    n: int,
    k: int,
    arrival_rate: float,
    levels: LevelsLike,
    *,
    idle_power: float = 0.0,
    method: str = "race",
    cancel: bool = True,
) -> ApproxResult:
    """Closed-form estimates for the (n, k) fork-join service (module docstring).

    ``levels``: [(rate, power, probability), ...] shared by the n servers, or a list of n such
    sets, one per server (heterogeneous servers; the per-level arrays of the result then run
    over server 0's levels, then server 1's, ...). ``mean_method`` and ``percentile_method``
    name the form used and whether it is exact, a bound or an approximation. Unstable loads
    are not an error here: the result has stable=False and infinite latencies."""
    fn = "approximate"
    n, k = check_nk(n, k, fn)
    lam = check_rate(arrival_rate, fn)
    sets: list[Levels] = []
    if _per_server_levels(levels):
        if len(levels) != n:
            raise ValueError(
                f"{fn}: per-server levels must list n = {n} level sets, got {len(levels)}"
            )
        sets = [as_levels(one, f"{fn} (levels of server {j})") for j, one in enumerate(levels)]
        lv = sets[0]
    else:
        lv = as_levels(levels, fn)
    p0 = check_power(idle_power, fn)
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    if not isinstance(cancel, bool):
        raise TypeError(f"{fn}: cancel must be a bool, got {type(cancel).__name__}")
    hetero = bool(sets) and any(st != sets[0] for st in sets)
    used = [r for st in (sets if hetero else [lv]) for r, p in zip(st.rates, st.probs) if p > 0]
    if max(used) / min(used) > MAX_RATE_RATIO:
        raise ValueError(
            f"{fn}: the rates of the levels in use span more than {MAX_RATE_RATIO:g} "
            f"(from {min(used):g} to {max(used):g}); the slow levels' times are not representable "
            f"beside the fast ones"
        )
    # The model is invariant under a change of time unit: solve it with the fastest rate = 1
    # (no overflow or underflow at extreme absolute rates) and scale the results back.
    c = max(used)

    def unit(st: Levels) -> Levels:
        return Levels(tuple(r / c for r in st.rates), st.powers, st.probs)

    with np.errstate(all="ignore"):
        if hetero:
            res = _approximate_hetero_unit(
                n, k, lam / c, [unit(st) for st in sets], p0, method, cancel
            )
        else:
            res = _approximate_unit(n, k, lam / c, unit(lv), p0, method, cancel)
    if sets and not hetero:
        # n identical sets: the per-level arrays run over (server, level) as simulate's do,
        # each server with an equal share
        res.busy_cores = np.tile(res.busy_cores / n, n)
        res.utilisation = np.tile(res.utilisation / n, n)
        res.busy_time_per_request = np.tile(res.busy_time_per_request / n, n)
    return _rescale(
        res,
        c,
        dict(
            n=n,
            k=k,
            arrival_rate=lam,
            levels=_levels_param(sets or [lv], False, bool(sets)),
            idle_power=p0,
            cancel=cancel,
            method=method,
        ),
    )


#: Largest ratio between the fastest and the slowest level in use that approximate accepts.
MAX_RATE_RATIO = 1e100


class _Scaled:
    """A tail distribution in the caller's time unit: times = unit times / c."""

    def __init__(self, dist: Any, c: float):
        self.dist, self.c = dist, c

    @property
    def mean(self) -> float:
        m: float = self.dist.mean / self.c
        return m

    def survival(self, t: float) -> float:
        sf: float = self.dist.survival(t * self.c)
        return sf


def _rescale(r: ApproxResult, c: float, params: dict[str, Any]) -> ApproxResult:
    """Times scale by 1/c, rates by c, energies by 1/c; powers, loads and fractions stay."""
    if c == 1.0:
        r.params = params
        return r
    inv = 1.0 / c
    # a value beyond the float range becomes inf (a time of 2e308 in the caller's unit is not
    # representable), without numpy's overflow warning
    with np.errstate(over="ignore"):
        return _rescaled(r, c, inv, params)


def _rescaled(r: ApproxResult, c: float, inv: float, params: dict[str, Any]) -> ApproxResult:
    return ApproxResult(
        params=params,
        method=r.method,
        mean_method=r.mean_method,
        percentile_method=r.percentile_method,
        effective_rate=r.effective_rate * c,
        effective_rates={m: v * c for m, v in r.effective_rates.items()},
        stable=r.stable,
        stability_limit=r.stability_limit * c,
        mean_response_time=r.mean_response_time * inv,
        tandem_response_time=r.tandem_response_time * inv,
        mean_in_system=r.mean_in_system,
        light_traffic_response_time=r.light_traffic_response_time * inv,
        lower_bound=r.lower_bound * inv,
        upper_bound=r.upper_bound * inv,
        stage_rates=[x * c for x in r.stage_rates],
        energy_per_request=r.energy_per_request * inv,
        average_power=r.average_power,
        utilisation=r.utilisation,
        busy_cores=r.busy_cores,
        busy_time_per_request=r.busy_time_per_request * inv,
        idle_fraction=r.idle_fraction,
        wasted_time_per_request=r.wasted_time_per_request * inv,
        _tail=None if r._tail is None else _Scaled(r._tail, c),
    )


def _energy_fields(
    n: int, lam: float, p0: float, pw: np.ndarray, tau: np.ndarray, wasted: float
) -> dict[str, Any]:
    """ApproxResult's energy and utilisation fields from the busy time per request of each
    level (tau, summed over the servers) and the levels' powers pw."""
    energy = float(pw @ tau)
    busy_cores = lam * tau
    util = busy_cores / n
    idle_frac = 1.0 - float(util.sum())
    return dict(
        energy_per_request=energy,
        average_power=float(lam * energy + p0 * n * max(idle_frac, 0.0)),
        utilisation=util,
        busy_cores=busy_cores,
        busy_time_per_request=tau,
        idle_fraction=idle_frac,
        wasted_time_per_request=float(wasted),
    )


def _approximate_unit(
    n: int, k: int, lam: float, lv: Levels, p0: float, method: str, cancel: bool
) -> ApproxResult:
    rc = race(n, k, lv.rates, lv.probs)
    rates = {
        "arithmetic": math.fsum(p * m for m, p in zip(lv.rates, lv.probs)),
        "harmonic": 1.0 / math.fsum(p / m for m, p in zip(lv.rates, lv.probs)),
        "race": k / float(rc["tau"].sum()),
    }
    distinct = {r for r, p in zip(lv.rates, lv.probs) if p > 0}
    single = len(distinct) == 1
    mu = next(iter(distinct)) if single else rates[method]
    mu_h = rates["harmonic"]
    Hn, Hnk = harmonic_number(n), harmonic_number(n - k)
    light = float(rc["completion_times"][-1])
    pr = np.asarray(lv.probs)
    mus = np.asarray(lv.rates)
    pw = np.asarray(lv.powers)

    # ------------------------------------------------------------ energy and utilisation
    if cancel:
        tau = rc["tau"]
        wasted = (n - k) * light  # the n - k losers run from 0 to the k-th completion
    else:
        tau = n * pr / mus
        # late tasks run on after the request left; none are late when k == n
        wasted = 0.0 if k == n else float(tau.sum()) - float(rc["completion_times"].sum())
    costs = _energy_fields(n, lam, p0, pw, tau, wasted)

    # ------------------------------------------------------------ latency
    stages = [(n - i) * mu - (k - i) * lam for i in range(k)]
    lower = (
        math.fsum(1.0 / ((n - j) * mu - lam) for j in range(k))
        if (n - k + 1) * mu > lam
        else math.inf
    )
    es = math.fsum(1.0 / ((n - j) * mu) for j in range(k))
    es2 = math.fsum(1.0 / ((n - j) * mu) ** 2 for j in range(k)) + es * es
    upper = es + lam * es2 / (2 * (1 - lam * es)) if lam * es < 1 else math.inf
    tail: Any = None
    own_tail: Any = None
    if cancel:
        limit = n * mu / k if k < n else mu_h
        if k == n and single:
            limit = mu
        stable = lam < limit
        tandem = (
            math.fsum(1.0 / s for s in stages)
            if stable and all(s > 0 for s in stages)
            else math.inf
        )
        mean, mean_method = tandem, f"tandem ({'one speed' if single else method + ' rate'})"
        pct_method = "hypoexponential (tandem stages)"
        if k == 1:
            if single:
                mean = 1.0 / (n * mu - lam) if n * mu > lam else math.inf
                mean_method = "exact (M/M/1 with rate n*mu)"
                pct_method = "exact (exponential)"
                limit = n * mu
            else:
                # a request's service is Exp(R), R the sum of the n drawn rates: with few
                # distinct sums, a hyperexponential whose M/G/1 sojourn is an exact mixture
                # (the tandem's tail was used here, 15 % low at p99 for (3, 1); the same
                # servers given as per-server sets got the exact one)
                combos = _summed_rate_distribution([lv] * n)
                if combos is not None:
                    rr = np.array(list(combos))
                    pp = np.array(list(combos.values()))
                    es = float((pp / rr).sum())
                    es2 = float((2.0 * pp / rr**2).sum())
                    mean = es + lam * es2 / (2.0 * (1.0 - lam * es)) if lam * es < 1 else math.inf
                    limit = 1.0 / es
                    if lam < limit:
                        own_tail = mg1_hyperexponential_sojourn(lam, rr, pp)
                        pct_method = (
                            "exact (M/G/1 with hyperexponential service: exponential mixture)"
                        )
                else:
                    es, _, mean = _pk_random_speeds(n, lam, lv)
                    limit = 1.0 / es
                    # the one tandem stage: exponential at n mu_race - lambda = 1 / E[S] - lambda
                    pct_method = "exponential at rate 1/E[S] - lambda (approximation)"
                mean_method = "exact (M/G/1, Pollaczek-Khinchine)"
            stable = lam < limit
        elif k == n and stable and not single:
            # every server serves every task: server j is an M/G/1 queue with hyperexponential
            # service, its sojourn an exact exponential mixture; the max of n independent such
            # sojourns is an upper bound (the sojourns are associated) whose light-traffic limit
            # is exact, scaled by Nelson-Tantawi's factor for n servers at this load (with one
            # rate this is Nelson-Tantawi itself). Nelson-Tantawi at the race rate was 10-19 %
            # below the exact light-traffic limit for (2, 2) and (3, 3) at rates 0.1 and 1.
            rho = lam / mu_h
            corr = (Hn / 1.5 + (4.0 / 11.0) * (1.0 - Hn / 1.5) * rho) * (12.0 - rho) / (8.0 * Hn)
            soj = mg1_hyperexponential_sojourn(lam, lv.rates, lv.probs)
            indep = _MaxOfIid(soj, n)
            mean = corr * indep.mean
            own_tail = _Scaled(indep, 1.0 / corr)
            mean_method = (
                "Nelson-Tantawi factor x max of n independent per-server M/G/1 sojourns "
                "(approximation)"
            )
            pct_method = mean_method
            lower = max(light, _pk_one_server(lam, lv))  # E[max_j T_j] >= E[T_1]
            upper = indep.mean
        elif k == n and stable:
            rho = lam / mu
            nt = (
                (Hn / 1.5 + (4.0 / 11.0) * (1.0 - Hn / 1.5) * rho)
                * (12.0 - rho)
                / (8.0 * (mu - lam))
            )
            if n == 2 and single:
                mean, mean_method = (12.0 - rho) / 8.0 / (mu - lam), "exact (Flatto-Hahn)"
            else:
                mean = nt
                mean_method = "Nelson-Tantawi" + ("" if single else f" ({method} rate)")
            upper = min(upper, Hn / (mu - lam))
        if stable and own_tail is not None:
            tail = own_tail
        elif stable and all(s > 0 for s in stages):
            # the stages are (n - k) mu + j |mu - lam| in some order, j = 1..k: exact rates
            tail = Hypoexponential.arithmetic(min(stages), abs(mu - lam), k)
        else:
            # lam < limit but a stage rate rounded to <= 0: at the limit within rounding
            stable = False
            mean = tandem = math.inf
        if not single and not (k == n and own_tail is not None):
            lower = upper = math.nan  # the bounds are proven for one service rate only
    else:
        mu_q = mu if single else mu_h
        limit = mu_q
        stable = lam < limit
        tandem = (Hn - Hnk) / (mu_q - lam) if stable else math.inf
        mean = tandem
        mean_method = "k-th of n independent M/M/1 sojourns (harmonic rate)"
        pct_method = mean_method
        lower = float(light) + 0.0 if stable else math.inf  # no queueing at all: a true bound
        upper = math.nan  # the split-merge bound assumes cancellation
        if stable:
            tail = OrderStatistic(n, k, mu_q - lam)
    if not stable:
        mean = tandem = math.inf

    params: dict[str, Any] = {}
    return ApproxResult(
        params=params,
        method=method,
        mean_method=mean_method,
        percentile_method=pct_method,
        effective_rate=float(mu),
        effective_rates=rates,
        stable=bool(stable),
        stability_limit=float(limit),
        mean_response_time=float(mean),
        tandem_response_time=float(tandem),
        mean_in_system=float(lam * mean),
        light_traffic_response_time=light,
        lower_bound=float(lower),
        upper_bound=float(upper),
        stage_rates=[float(s) for s in stages],
        _tail=tail,
        **costs,
    )


# ---------------------------------------------------------------- heterogeneous servers
def _pb_add(pmf: np.ndarray, f: np.ndarray, times: int = 1) -> np.ndarray:
    """Add ``times`` independent Bernoulli(f) counts to the truncated pmf (rows c = 0..k-1,
    columns time points), in place; the mass reaching k is dropped. Positive terms only."""
    for _ in range(times):
        moved = pmf * f
        pmf -= moved
        pmf[1:] += moved[:-1]
    return pmf


def _pb_pmf_below(F: list[np.ndarray], k: int) -> np.ndarray:
    """P(S = c), c = 0..k-1, of S = the number of successes of independent Bernoulli(F[j])
    (one per server, each an array over time points); the mass of S >= k is dropped (only
    P(S < k) is ever needed). O(n k) per time point."""
    pmf = np.zeros((k, F[0].size))
    pmf[0] = 1.0
    for f in F:
        _pb_add(pmf, f)
    return pmf


def _pb_leave_one_out(F: list[np.ndarray], counts: list[int], k: int) -> list[np.ndarray]:
    """For each class c (F[c] with counts[c] servers): P(S_{-j} < k), the count of the other
    servers when one server j of class c is left out. Divide and conquer over the classes: each
    half is added to the pmf passed to the other, so the work is O(n log(classes) k) per time
    point instead of O(n classes k)."""
    out: list[np.ndarray] = [np.zeros(0)] * len(F)

    def solve(lo: int, hi: int, pmf: np.ndarray) -> None:
        if hi - lo == 1:
            out[lo] = _pb_add(pmf.copy(), F[lo], counts[lo] - 1).sum(axis=0)
            return
        mid = (lo + hi) // 2
        left = pmf.copy()
        for c in range(mid, hi):
            _pb_add(left, F[c], counts[c])
        solve(lo, mid, left)
        right = pmf  # the caller's pmf is not used again
        for c in range(lo, mid):
            _pb_add(right, F[c], counts[c])
        solve(mid, hi, right)

    base = np.zeros((k, F[0].size))
    base[0] = 1.0
    solve(0, len(F), base)
    return out


def _classes(sets: list[Levels]) -> dict[Levels, list[int]]:
    """Servers grouped by their level set (a leave-one-out computation per class, not per
    server)."""
    out: dict[Levels, list[int]] = {}
    for j, st in enumerate(sets):
        out.setdefault(st, []).append(j)
    return out


def race_hetero(n: int, k: int, sets: list[Levels]) -> dict[str, Any]:
    """race_integral for heterogeneous servers: server j draws level s with probability
    p_{j,s} and its task takes Exp(r_{j,s}); with F_j the CDF of server j's time and S_{-j}(t)
    the number of the other servers done by t (a Poisson-binomial count),
    tau_{j,s} = p_{j,s} int e^{-r_{j,s} t} P(S_{-j}(t) < k) dt and
    E[i-th completion] = int P(S(t) < i) dt. Gauss-Legendre quadrature over the same mapped
    grid as race_integral; O(n k log(classes)) per node, classes = distinct level sets.
    Returns tau (flattened: server 0's levels, then server 1's, ...) and completion_times."""
    mean_rate = float(np.mean([float(np.asarray(st.probs) @ np.asarray(st.rates)) for st in sets]))
    scale = (harmonic_number(n) - harmonic_number(n - k)) / mean_rate + 1e-300
    t, wj = _halfline_grid(scale, min(_slowest(st.rates, st.probs) for st in sets), n)
    F = [
        1.0
        - (np.asarray(st.probs)[:, None] * np.exp(-np.asarray(st.rates)[:, None] * t[None, :])).sum(
            axis=0
        )
        for st in sets
    ]
    F = [np.clip(f, 0.0, 1.0) for f in F]
    cdf = np.minimum(np.cumsum(_pb_pmf_below(F, k), axis=0), 1.0)  # P(S < i), i = 1..k
    times = (cdf * wj[None, :]).sum(axis=1)
    classes = _classes(sets)
    reps = [members[0] for members in classes.values()]
    below = _pb_leave_one_out([F[j] for j in reps], [len(m) for m in classes.values()], k)
    tau_of: dict[Levels, np.ndarray] = {}
    for st, g in zip(classes, below):  # g = P(S_{-j} < k) for a server j of class st
        if k == n:  # every task runs to completion: p / r exactly
            pr_st, r_st = np.asarray(st.probs), np.asarray(st.rates)
            tau_of[st] = np.where(pr_st > 0, pr_st / r_st, 0.0)
            continue
        e = np.exp(-np.asarray(st.rates)[:, None] * t[None, :])
        tau_of[st] = np.asarray(st.probs) * (e * (g * wj)[None, :]).sum(axis=1)
    tau = np.concatenate([tau_of[st] for st in sets])
    return {"tau": tau, "completion_times": times, "states": 0}


class ExponentialMixture:
    """P(T > t) = sum_i w_i e^{-eta_i t} (weights summing to 1, rates > 0)."""

    def __init__(self, weights: Any, rates: Any) -> None:
        self.weights = np.asarray(weights, dtype=np.float64).ravel()
        self.rates = np.asarray(rates, dtype=np.float64).ravel()

    @property
    def mean(self) -> float:
        return float((self.weights / self.rates).sum())

    def survival(self, t: float) -> float:
        t = float(t)
        if not t > 0:
            return 1.0
        return float(min(max((self.weights * np.exp(-self.rates * t)).sum(), 0.0), 1.0))


def mg1_hyperexponential_sojourn(lam: float, rates: Any, probs: Any) -> ExponentialMixture:
    """The exact FCFS sojourn time of an M/G/1 queue whose service is Exp(rates[i]) with
    probability probs[i]: with B*(s) = sum_i p_i r_i / (r_i + s), the sojourn's transform
    (1 - rho) s B*(s) / (s - lambda + lambda B*(s)) has m poles -eta, one in (0, r_1) and one
    in each (r_i, r_{i+1}) (distinct rates sorted; found by bisection, no polynomial roots),
    so T is a mixture of m exponentials: P(T > t) = sum_i R_i / eta_i e^{-eta_i t} with
    R_i = -(1 - rho) eta_i (eta_i + lambda) / lambda / (1 - lambda sum_j p_j r_j /
    (r_j - eta_i)^2). One rate r: Exp(r - lambda). Requires rho < 1."""
    merged: dict[float, float] = {}
    for r, p in zip(rates, probs):
        if p > 0:
            merged[float(r)] = merged.get(float(r), 0.0) + float(p)
    r = np.array(sorted(merged))
    p = np.array([merged[x] for x in r])
    rho = lam * float((p / r).sum())
    if not rho < 1.0:
        raise ValueError(f"mg1_hyperexponential_sojourn: unstable (rho = {rho:g} >= 1)")

    def h(eta: float) -> float:
        # the pole equation -eta - lambda + lambda B*(-eta) = 0 divided by eta > 0 (no
        # cancellation near eta = 0): lambda sum_i p_i / (r_i - eta) = 1; h(0) = rho - 1 < 0
        return lam * float((p / (r - eta)).sum()) - 1.0

    etas = []
    # h -> -inf just above a pole and +inf just below the next, and h(0) < 0: one root in
    # (0, r_1) and one in each (r_i, r_{i+1})
    bounds = [(0.0, float(r[0]))] + [(float(a), float(b)) for a, b in zip(r[:-1], r[1:])]
    for i, (a, b) in enumerate(bounds):
        lo = a + (b - a) * 1e-15 if i else 0.0
        hi = b - (b - a) * 1e-15
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if h(mid) < 0.0:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 4e-16 * hi:
                break
        etas.append(0.5 * (lo + hi))
    eta = np.array(etas)
    dh = 1.0 - lam * np.array([float((p * r / (r - e) ** 2).sum()) for e in eta])
    R = -(1.0 - rho) * eta * (eta + lam) / lam / dh
    return ExponentialMixture(R / eta, eta)


class _VectorSurvival:
    """A time distribution given by ``_survival_many(t)`` on arrays (set by the subclass, with
    ``_mean``): P(T > t) for one t, and the mean."""

    _mean: float

    def _survival_many(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def mean(self) -> float:
        return self._mean

    def survival(self, t: float) -> float:
        t = float(t)
        if not t > 0:
            return 1.0
        if math.isinf(t):
            return 0.0
        return float(min(max(self._survival_many(np.array([t]))[0], 0.0), 1.0))


class _MaxOfIid(_VectorSurvival):
    """The largest of n independent copies of an ExponentialMixture: P(T > t) = 1 - F(t)^n."""

    def __init__(self, part: ExponentialMixture, n: int) -> None:
        self.part, self.n = part, int(n)
        t, wj = _halfline_grid(harmonic_number(self.n) * part.mean, float(part.rates.min()), self.n)
        self._mean = float((self._survival_many(t) * wj).sum())

    def _survival_many(self, t: np.ndarray) -> np.ndarray:
        sf = np.clip(
            (self.part.weights[:, None] * np.exp(-np.outer(self.part.rates, t))).sum(0), 0, 1
        )
        with np.errstate(divide="ignore"):
            out: np.ndarray = -np.expm1(self.n * np.log1p(-sf))
        return np.where(sf >= 1.0, 1.0, out)


class IndependentOrderStatistic(_VectorSurvival):
    """k-th smallest of independent times, each a mixture of exponentials (ExponentialMixture,
    or a rate for an exponential): P(T > t) = P(fewer than k are done by t), a
    Poisson-binomial sum of positive terms, O(n k) per t; the mean by quadrature over
    race_integral's grid (tested against the exact subset chain)."""

    def __init__(self, parts: Any, k: int) -> None:
        self.parts = [
            p if isinstance(p, ExponentialMixture) else ExponentialMixture([1.0], [float(p)])
            for p in parts
        ]
        n = len(self.parts)
        if not 1 <= k <= n:
            raise ValueError(f"IndependentOrderStatistic: k must be in [1, {n}], got {k!r}")
        self.k = int(k)
        scale = (harmonic_number(n) - harmonic_number(n - k)) * float(
            np.mean([p.mean for p in self.parts])
        )
        slowest = min(float(p.rates.min()) for p in self.parts)
        t, wj = _halfline_grid(scale, slowest, n)
        self._mean = float((self._survival_many(t) * wj).sum())

    def _survival_many(self, t: np.ndarray) -> np.ndarray:
        F = [
            np.clip(1.0 - (p.weights[:, None] * np.exp(-np.outer(p.rates, t))).sum(0), 0.0, 1.0)
            for p in self.parts
        ]
        out: np.ndarray = _pb_pmf_below(F, self.k).sum(axis=0)
        return out


#: Most distinct values of the summed rate R of the servers' drawn levels for which the
#: (n, 1) service Exp(R) is treated as an exact hyperexponential (beyond: an exponential tail).
MAX_RATE_COMBINATIONS = 256


def _summed_rate_distribution(sets: list[Levels]) -> dict[float, float] | None:
    """The distribution of R = the sum of the rates the servers draw (server j from sets[j]),
    or None when it has more than MAX_RATE_COMBINATIONS values. The draws are counted per
    distinct rate and each sum formed once at the end (math.fsum: correctly rounded), so equal
    sums reached in another order are one value: adding rate by rate gave 1e-4 + 1 + 1 and
    1 + 1 + 1e-4 different last bits, and the values of 40 identical servers at two rates
    passed the limit instead of being 41."""
    rates = sorted({float(r) for st in sets for r, p in zip(st.rates, st.probs) if p > 0})
    index = {r: i for i, r in enumerate(rates)}
    dist: dict[tuple[int, ...], float] = {(0,) * len(rates): 1.0}
    for st in sets:
        nxt: dict[tuple[int, ...], float] = {}
        for counts, q in dist.items():
            for r, p in zip(st.rates, st.probs):
                if p > 0:
                    c = list(counts)
                    c[index[float(r)]] += 1
                    key = tuple(c)
                    nxt[key] = nxt.get(key, 0.0) + q * p
        if len(nxt) > MAX_RATE_COMBINATIONS:
            return None
        dist = nxt
    out: dict[float, float] = {}
    for counts, q in dist.items():
        total = math.fsum(c * r for c, r in zip(counts, rates))
        out[total] = out.get(total, 0.0) + q
    return out


def _approximate_hetero_unit(
    n: int, k: int, lam: float, sets: list[Levels], p0: float, method: str, cancel: bool
) -> ApproxResult:
    rc = race_hetero(n, k, sets)
    tau_race = rc["tau"]
    light = float(rc["completion_times"][-1])
    harm = np.array([1.0 / math.fsum(p / r for r, p in zip(st.rates, st.probs)) for st in sets])
    arith = np.array([math.fsum(p * r for r, p in zip(st.rates, st.probs)) for st in sets])
    fastest = [max(r for r, p in zip(st.rates, st.probs) if p > 0) for st in sets]
    rates = {
        "arithmetic": float(arith.mean()),
        "harmonic": n / float((1.0 / harm).sum()),
        "race": k / float(tau_race.sum()),
    }
    mu = rates[method]
    one_rate = [len({r for r, p in zip(st.rates, st.probs) if p > 0}) == 1 for st in sets]
    single = all(one_rate)  # every server has one rate in use (the rates differ by server)
    pr = np.concatenate([np.asarray(st.probs) for st in sets])
    mus = np.concatenate([np.asarray(st.rates) for st in sets])
    pw = np.concatenate([np.asarray(st.powers) for st in sets])

    # ------------------------------------------------------------ energy and utilisation
    if cancel:
        tau = tau_race  # exact for k = 1 and k = n; the isolated race otherwise
        wasted = (n - k) * light
    else:
        tau = pr / mus  # every task runs to completion: exact
        wasted = 0.0 if k == n else float(tau.sum()) - float(rc["completion_times"].sum())
    costs = _energy_fields(n, lam, p0, pw, tau, wasted)

    # ------------------------------------------------------------ latency
    stages = [(n - i) * mu - (k - i) * lam for i in range(k)]
    lower, upper = light, math.nan  # T >= the request's own k-th task completion
    tail: Any = None
    if cancel and k == 1:
        # every server works on the head request; all start it together (when it reaches the
        # head), so a request's service is Exp(R), R the sum of the servers' drawn rates
        if single:
            total = math.fsum(fastest)
            limit = total
            stable = lam < total
            mean = 1.0 / (total - lam) if stable else math.inf
            mean_method = "exact (M/M/1 at the summed rate of the servers)"
            pct_method = "exact (exponential)"
            if stable:
                tail = Hypoexponential.arithmetic(total - lam, 0.0, 1)
            lower = upper = mean
        else:
            combos = _summed_rate_distribution(sets)
            mean_method = "exact (M/G/1, Pollaczek-Khinchine)"
            if combos is not None:
                # S ~ Exp(R), R over the combinations of drawn levels: hyperexponential
                rr = np.array(list(combos))
                pp = np.array(list(combos.values()))
                es = float((pp / rr).sum())
                es2 = float((2.0 * pp / rr**2).sum())
                pct_method = "exact (M/G/1 with hyperexponential service: exponential mixture)"
            else:
                scale = 1.0 / float(arith.sum())
                slow = math.fsum(_slowest(st.rates, st.probs) for st in sets)
                t, wj = _halfline_grid(scale, slow, 1)  # a product of mixtures: smooth
                surv = np.ones_like(t)  # P(the race is not over by t) = prod_j E[e^{-r_j t}]
                for st in sets:
                    surv *= (np.asarray(st.probs)[:, None] * np.exp(-np.outer(st.rates, t))).sum(0)
                es = float((surv * wj).sum())
                es2 = 2.0 * float((t * surv * wj).sum())
                pct_method = "exponential at rate 1/E[S] - lambda (approximation)"
            limit = 1.0 / es
            stable = lam < limit
            mean = es + lam * es2 / (2.0 * (1.0 - lam * es)) if stable else math.inf
            if stable:
                if combos is not None:
                    tail = mg1_hyperexponential_sojourn(lam, rr, pp)
                else:
                    tail = Hypoexponential.arithmetic(limit - lam, 0.0, 1)
            lower, upper = light, math.nan
        tandem = math.fsum(1.0 / s for s in stages) if all(s > 0 for s in stages) else math.inf
    elif k == n or not cancel:
        # every server serves every task: server j is an M/G/1 queue whose mean sojourn is
        # exact (Pollaczek-Khinchine; 1 / (r_j - lambda) with one rate, whose sojourn is then
        # exactly exponential); T ~ the k-th smallest of independent exponential sojourns
        # with those means
        limit = float(harm.min())
        stable = lam < limit
        tandem = math.fsum(1.0 / s for s in stages) if all(s > 0 for s in stages) else math.inf
        pk = [_pk_one_server(lam, st) for st in sets]
        if stable:
            tail = IndependentOrderStatistic(
                [mg1_hyperexponential_sojourn(lam, st.rates, st.probs) for st in sets], k
            )
            mean = tail.mean
        else:
            mean = math.inf
        if k == n:
            kind = "an upper bound: the servers' sojourns are associated"
            upper = mean
        elif k == 1:
            kind = "a lower bound: the servers' sojourns are associated"
            lower = max(light, mean)
        else:
            kind = "approximation"
        mean_method = f"k-th of n independent exact per-server M/G/1 sojourns ({kind})"
        pct_method = mean_method
        if k == n and stable:
            lower = max(light, max(pk))  # E[max_j T_j] >= max_j E[T_j]
    else:
        # 1 < k < n with cancellation: the homogeneous tandem at the effective per-server rate
        # of `method` (race: k / total busy time of an isolated request on these servers)
        limit = min(n * mu / k, math.fsum(fastest) / k)
        stable = lam < limit and all(s > 0 for s in stages)
        tandem = math.fsum(1.0 / s for s in stages) if stable else math.inf
        mean = tandem
        mean_method = f"tandem ({method} rate of the heterogeneous servers; approximation)"
        pct_method = "hypoexponential (tandem stages)"
        if stable:
            tail = Hypoexponential.arithmetic(min(stages), abs(mu - lam), k)
    if not stable:
        mean = tandem = math.inf
        tail = None
    return ApproxResult(
        params={},
        method=method,
        mean_method=mean_method,
        percentile_method=pct_method,
        effective_rate=float(mu),
        effective_rates=rates,
        stable=bool(stable),
        stability_limit=float(limit),
        mean_response_time=float(mean),
        tandem_response_time=float(tandem),
        mean_in_system=float(lam * mean),
        light_traffic_response_time=light,
        lower_bound=float(lower) if stable else math.inf,
        upper_bound=float(upper) if stable or math.isnan(upper) else math.inf,
        stage_rates=[float(s) for s in stages],
        _tail=tail,
        **costs,
    )


def _pk_one_server(lam: float, st: Levels) -> float:
    """Mean sojourn of an M/G/1 queue whose service is Exp(r_s) with probability p_s."""
    es = math.fsum(p / r for r, p in zip(st.rates, st.probs))
    es2 = math.fsum(2.0 * p / r**2 for r, p in zip(st.rates, st.probs))
    return es + lam * es2 / (2.0 * (1.0 - lam * es)) if lam * es < 1 else math.inf
