"""Robust aggregation rules behind one call: ``flagcore.aggregate(gradients, rule, **params)``.

Input forms and output convention are those of ``flag_aggregate``: (p, n) or (b, p, n) numpy
arrays / torch tensors, or a list/tuple of p arrays/tensors of one shape; the result comes back
in the caller's framework, dtype, device and shape. For callers that configure once and call
many times there is one class per rule (``Median()``, ``Krum(f=2)``, ...; ``make_rule(name,
**params)`` builds one by name); ``aggregate`` is ``make_rule(rule, **params)(gradients)``.

Rules (``RULES``) and their parameters:

=================== ========================================================================
"mean"              plain mean
"median"            coordinate-wise median (midpoint for even p)
"trimmed_mean"      f: drop the f largest and f smallest per coordinate (p > 2f)
"meamed"            f: per coordinate, mean of the p - f values closest to the median (p > 2f)
"phocas"            f: the same around the f-trimmed mean (p > 2f)
"krum"              f: the worker whose squared distances to its p - f - 2 nearest are
                    smallest (p >= 2f + 3)
"multi_krum"        f, m = p - f: the mean of the m lowest Krum scores (p >= 2f + 3, 1 <= m <= p - f)
"bulyan"            f: p - 2f Krum selections on the shrinking set, then per coordinate the
                    mean of the p - 4f selected values closest to their median (p >= 4f + 3)
"geometric_median"  nu = 1e-6, tol = 1e-12, max_iter = 1000: smoothed Weiszfeld in p-space;
                    nu is the smoothing relative to the median worker norm; stops when the
                    objective sum_i ||z - g_i|| decreases by at most tol relative (p > 2f)
"centered_clipping" tau = 10.0, iterations = 3, reference = None: v <- v + mean_i
                    (g_i - v) min(1, tau / ||g_i - v||) from v = reference (None: the zero
                    vector; or an (n,)/(b, n) array/tensor; the ``CenteredClipping`` class
                    also accepts "previous": its own last output) (p > 2f)
"flag"              the Flag Aggregator: r, lam, max_iter, eps, tol, scale (see flag_aggregate)
=================== ========================================================================

Every rule also takes ``f`` (default 0 where it is not required: it then only matters for
pre-aggregation and for counting excluded workers) and the pre-aggregation options
``pre`` (None, "nnm", "bucketing", or a sequence applied in order), ``bucket_size`` (2) and
``seed`` (0, the bucketing shuffle). Preconditions are checked on the number of rows the rule
sees (after bucketing) and raise ValueError naming the rule, p and f.

Non-finite workers: a worker with any NaN/Inf value is excluded (for the distance rules also
one whose squared norm overflows float64), reported in ``RuleInfo.excluded``, and the rule
runs on the p - e remaining workers with f_eff = max(f - e, 0): an excluded worker counts as
one of the f Byzantine ones, which keeps every precondition true on the survivors. A problem
whose workers are all excluded aggregates to 0. ("flag" follows flag_aggregate's own policy,
which is the same exclusion.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import as_stack, check_choice, check_float, check_int
from .._backend import is_torch_tensor
from ..flag import flag_aggregate
from ._source import Source
from .coordinate import run_coordinate
from .distance import run_bulyan, run_centered_clipping, run_geometric_median, run_krum
from .preagg import PRE_STEPS, bucketing, build_source, nnm, parse_pre, rows_after

RULES = ("mean", "median", "trimmed_mean", "meamed", "phocas", "krum", "multi_krum", "bulyan",
         "geometric_median", "centered_clipping", "flag")

__all__ = [
    "RULES", "PRE_STEPS", "RuleInfo", "Rule", "make_rule", "aggregate", "nnm", "bucketing",
    "Mean", "Median", "TrimmedMean", "MeaMed", "Phocas", "Krum", "MultiKrum", "Bulyan",
    "GeometricMedian", "CenteredClipping", "Flag",
]


@dataclass(frozen=True)
class RuleInfo:
    """Diagnostics of one rule call. Per-worker fields are (p,) for a (p, n) or list input and
    (b, p) for a (b, p, n) input; scalars gain a (b,) axis.

    rule: the rule's name.
    excluded: the caller's workers excluded for non-finite values.
    coefficients: c with aggregate = sum_i c_i g_i over the caller's rows, for the rules whose
        output is a weighted sum (krum, multi_krum, geometric_median, centered_clipping, and any
        of them after pre-aggregation); None otherwise.
    selected: rows chosen by krum, multi_krum, bulyan (over the rows the rule saw, i.e. after
        pre-aggregation); None otherwise.
    scores: Krum scores of those rows (NaN for excluded ones); None otherwise.
    iterations, converged, objective: geometric_median's Weiszfeld steps, whether the relative
        tolerance was met, and sum_i ||z - g_i|| at the result (over the rows it saw).
    reference_coefficient: centered_clipping's weight on its reference point.
    mixing: the (p', p) pre-aggregation matrix (rows seen = mixing @ caller's rows), or None.
    """

    rule: str
    excluded: np.ndarray
    coefficients: np.ndarray | None = None
    selected: np.ndarray | None = None
    scores: np.ndarray | None = None
    iterations: Any = None
    converged: Any = None
    objective: Any = None
    reference_coefficient: Any = None
    mixing: np.ndarray | None = None


class Rule:
    """A configured aggregation rule; call it on a stack of gradients.

    ``rule(gradients, return_info=False)`` returns the aggregate in the caller's framework,
    dtype, device and shape, or (aggregate, RuleInfo) (a FlagInfo for Flag without
    pre-aggregation).
    """

    name = ""
    needs_f = False

    def __init__(self, *, f: int | None = None, pre: Any = None, bucket_size: int = 2, seed: int = 0,
                 _fn: str | None = None) -> None:
        self._fn = _fn or type(self).__name__
        if f is None:
            if self.needs_f:
                raise TypeError(f"{self._fn}: rule {self.name!r} needs f (the number of Byzantine workers)")
            f = 0
        self.f = check_int(f, self._fn, "f", low=0)
        self.pre = parse_pre(pre, self._fn)
        self.bucket_size = check_int(bucket_size, self._fn, "bucket_size", low=1)
        self.seed = check_int(seed, self._fn, "seed", low=0)
        self._gen = np.random.default_rng(self.seed)  # one stream: each call reshuffles the buckets

    # ------------------------------------------------------------------ per rule
    def _check(self, p: int) -> None:
        """Preconditions on the number of rows the rule sees."""
        if not p > 2 * self.f:
            self._fail("p > 2f", p)

    def _fail(self, need: str, p: int) -> None:
        raise ValueError(f"{self._fn}: rule {self.name!r} needs {need}, got p = {p}, f = {self.f}")

    def _run(self, src: Source) -> tuple[Any, dict]:
        raise NotImplementedError

    # ------------------------------------------------------------------ call
    def __call__(self, gradients: Any, *, return_info: bool = False) -> Any:
        fn = self._fn
        if not isinstance(return_info, bool):
            raise TypeError(f"{fn}: return_info must be a bool, got {return_info!r}")
        st = as_stack(gradients, fn)
        if "nnm" in self.pre and not st.p > 2 * self.f:
            raise ValueError(f"{fn}: pre-aggregation 'nnm' needs p > 2f, got p = {st.p}, f = {self.f}")
        self._check(rows_after(self.pre, st.p, self.bucket_size))
        src = build_source(st, self.f, self.pre, self.bucket_size, self._rng())
        out, d = self._run(src)
        agg = st.restore(out)
        if not return_info:
            return agg
        return agg, self._info(st, src, d)

    def _rng(self) -> np.random.Generator:
        return self._gen

    def _info(self, st: Any, src: Source, d: dict) -> RuleInfo:
        sq = (lambda a: a) if st.batched else (lambda a: None if a is None else np.asarray(a)[0])
        if src.mix is None:
            excluded = d["excluded"]
        else:
            excluded = src.excluded_orig
        coef = d.get("coefficients")
        if coef is not None:
            coef = src.original_coefficients(coef)
        scalar = (lambda a: a) if st.batched else (lambda a: None if a is None else np.asarray(a)[0].item())
        return RuleInfo(
            rule=self.name, excluded=sq(excluded), coefficients=sq(coef), selected=sq(d.get("selected")),
            scores=sq(d.get("scores")), iterations=scalar(d.get("iterations")),
            converged=scalar(d.get("converged")), objective=scalar(d.get("objective")),
            reference_coefficient=scalar(d.get("reference_coefficient")),
            mixing=sq(src.mix),
        )


class _Coordinate(Rule):
    def _run(self, src: Source) -> tuple[Any, dict]:
        out, excl = run_coordinate(src, self.name, self.f)
        return out, dict(excluded=excl)


class Mean(_Coordinate):
    """Plain mean (non-finite workers excluded): the rows are summed in order in float64, then
    divided by their count (numpy's and torch's convention; for float64 input the result is
    numpy's ``mean(axis=0)`` bit for bit)."""

    name = "mean"

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)


class Median(_Coordinate):
    """Coordinate-wise median; midpoint of the two middle values for even p."""

    name = "median"


class TrimmedMean(_Coordinate):
    """Per coordinate, drop the f largest and f smallest values and average the rest (p > 2f)."""

    name = "trimmed_mean"
    needs_f = True


class MeaMed(_Coordinate):
    """Per coordinate, the mean of the p - f values closest to the median (p > 2f)."""

    name = "meamed"
    needs_f = True


class Phocas(_Coordinate):
    """Per coordinate, the mean of the p - f values closest to the f-trimmed mean (p > 2f)."""

    name = "phocas"
    needs_f = True


class Krum(Rule):
    """Krum (Blanchard et al. 2017), textbook: the worker with the smallest sum of squared
    distances to its p - f - 2 nearest others (p >= 2f + 3)."""

    name = "krum"
    needs_f = True

    def _check(self, p: int) -> None:
        if not p >= 2 * self.f + 3:
            self._fail("p >= 2f + 3", p)

    def _m(self, p: int) -> int:
        return 1

    def _run(self, src: Source) -> tuple[Any, dict]:
        return run_krum(src, self.f, self._m(src.p))


class MultiKrum(Krum):
    """Multi-Krum: the mean of the m workers with the lowest Krum scores (default m = p - f)."""

    name = "multi_krum"

    def __init__(self, *, f: int | None = None, m: int | None = None, **kw: Any) -> None:
        super().__init__(f=f, **kw)
        self.m = None if m is None else check_int(m, self._fn, "m", low=1)

    def _check(self, p: int) -> None:
        super()._check(p)
        if self.m is not None and self.m > p - self.f:
            raise ValueError(f"{self._fn}: rule 'multi_krum' needs 1 <= m <= p - f, got m = {self.m}, p = {p}, f = {self.f}")

    def _m(self, p: int) -> int:
        return p - self.f if self.m is None else self.m


class Bulyan(Rule):
    """Bulyan (El Mhamdi et al. 2018) over Krum: theta = p - 2f workers selected one at a time
    by Krum on the remaining set, then per coordinate the mean of the beta = theta - 2f
    selected values closest to their median (p >= 4f + 3). On the shrinking set Krum's
    neighbour count |set| - f - 2 is clamped at 0."""

    name = "bulyan"
    needs_f = True

    def _check(self, p: int) -> None:
        if not p >= 4 * self.f + 3:
            self._fail("p >= 4f + 3", p)

    def _run(self, src: Source) -> tuple[Any, dict]:
        return run_bulyan(src, self.f)


class GeometricMedian(Rule):
    """Geometric median by smoothed Weiszfeld iterations, all in p-space (one Gram, one
    weighted sum). nu: smoothing, relative to the median worker norm; tol: stop when the
    objective decreases by at most tol relative; reports iterations and convergence."""

    name = "geometric_median"

    def __init__(self, *, nu: float = 1e-6, tol: float = 1e-12, max_iter: int = 1000, **kw: Any) -> None:
        super().__init__(**kw)
        self.nu = check_float(nu, self._fn, "nu", low=0.0, strict_low=True)
        self.tol = check_float(tol, self._fn, "tol", low=0.0)
        self.max_iter = check_int(max_iter, self._fn, "max_iter", low=1, high=10_000_000)

    def _run(self, src: Source) -> tuple[Any, dict]:
        return run_geometric_median(src, self.nu, self.tol, self.max_iter)


class CenteredClipping(Rule):
    """Centered clipping (Karimireddy, He and Jaggi 2021): ``iterations`` times
    v <- v + (1/p) sum_i (g_i - v) min(1, tau / ||g_i - v||), from v = the reference point.

    reference: None (the zero vector), an (n,) / (b, n) array or tensor (the previous
    aggregate or momentum, as in the paper), or "previous" (this object remembers its last
    output and starts from zero)."""

    name = "centered_clipping"

    def __init__(self, *, tau: float = 10.0, iterations: int = 3, reference: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.tau = check_float(tau, self._fn, "tau", low=0.0, strict_low=True)
        self.iterations = check_int(iterations, self._fn, "iterations", low=1, high=1_000_000)
        if isinstance(reference, str) and reference != "previous":
            raise ValueError(f"{self._fn}: reference must be None, an array/tensor or 'previous', got {reference!r}")
        self.reference = reference
        self._previous = None

    def _reference_for(self, src: Source) -> Any:
        ref = self._previous if isinstance(self.reference, str) else self.reference
        if ref is None:
            return None
        st = src.st
        fn = self._fn
        if st.on_cpu:
            if is_torch_tensor(ref):
                ref = ref.detach().cpu().numpy()
            r = np.asarray(ref, dtype=np.float64)
        else:
            import torch

            r = torch.as_tensor(ref).to(device=st.torch_data.device, dtype=torch.float64)
        if tuple(r.shape) == (st.n,) or (st.from_list and int(np.prod(r.shape)) == st.n and r.ndim == len(st.item_shape)):
            r = r.reshape(1, st.n).repeat(st.b, 0) if st.on_cpu else r.reshape(1, st.n).repeat(st.b, 1)
        elif tuple(r.shape) != (st.b, st.n):
            raise ValueError(f"{fn}: reference must have shape ({st.n},) or ({st.b}, {st.n}), got {tuple(r.shape)}")
        finite = np.isfinite(r).all() if st.on_cpu else bool(r.isfinite().all())
        if not finite:
            raise ValueError(f"{fn}: reference must be finite")
        return r

    def _run(self, src: Source) -> tuple[Any, dict]:
        out, d = run_centered_clipping(src, self.tau, self.iterations, self._reference_for(src))
        if isinstance(self.reference, str):
            self._previous = out.copy() if isinstance(out, np.ndarray) else out.clone()
            if src.b == 1:
                self._previous = self._previous[0]
        return out, d


class Flag(Rule):
    """The Flag Aggregator (``flag_aggregate``); parameters r, lam, max_iter, eps, tol, scale."""

    name = "flag"

    def __init__(self, *, r: int | None = None, lam: float = 0.0, max_iter: int = 1, eps: float = 1e-7,
                 tol: float = 1e-10, scale: str = "paper", **kw: Any) -> None:
        super().__init__(**kw)
        self.params = dict(r=r, lam=lam, max_iter=max_iter, eps=eps, tol=tol, scale=scale)
        check_choice(scale, self._fn, "scale", ("paper", "median_norm"))

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)

    def __call__(self, gradients: Any, *, return_info: bool = False) -> Any:
        if not self.pre:
            if not isinstance(return_info, bool):
                raise TypeError(f"{self._fn}: return_info must be a bool, got {return_info!r}")
            self._check(as_stack(gradients, self._fn).p)  # f < p, as with pre-aggregation
            return flag_aggregate(gradients, return_info=return_info, **self.params)
        return super().__call__(gradients, return_info=return_info)

    def _run(self, src: Source) -> tuple[Any, dict]:
        y = src.rows()
        out, info = flag_aggregate(y, return_info=True, **self.params)
        return (out if y.ndim == 3 else out[None]), dict(excluded=src.excluded_orig, flag_info=info)


_CLASSES = {c.name: c for c in (Mean, Median, TrimmedMean, MeaMed, Phocas, Krum, MultiKrum, Bulyan,
                                GeometricMedian, CenteredClipping, Flag)}


def make_rule(rule: str, _fn: str | None = None, **params: Any) -> Rule:
    """The configured rule object for a name in RULES (parameters as in ``aggregate``)."""
    if not isinstance(rule, str) or rule not in _CLASSES:
        raise ValueError(f"{_fn or 'make_rule'}: rule must be one of {', '.join(RULES)}, got {rule!r}")
    try:
        return _CLASSES[rule](_fn=_fn, **params)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("argument")[-1].strip()
            raise TypeError(f"{_fn or _CLASSES[rule].__name__}: rule {rule!r} takes no parameter {bad}") from None
        raise


def aggregate(gradients: Any, rule: str, *, return_info: bool = False, **params: Any) -> Any:
    """Aggregate a stack of p gradients with the named rule (see RULES and the module doc).

    Returns the aggregate in the caller's framework, dtype, device and shape ((n,), (b, n), or
    one gradient's shape for list input); with return_info, (aggregate, RuleInfo) (FlagInfo
    for "flag" without pre-aggregation).
    """
    if isinstance(params.get("reference"), str):
        raise ValueError("aggregate: reference='previous' needs state: use the CenteredClipping class")
    return make_rule(rule, _fn="aggregate", **params)(gradients, return_info=return_info)
