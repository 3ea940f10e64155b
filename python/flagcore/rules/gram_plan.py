"""Whole-model aggregation from blocks: the "Gram -> plan" seam.

Every flagcore rule is either coordinate-wise or decided by the (p, p) Gram matrix of the
workers' rows followed by one pass over the data (a weighted sum, or a coordinate rule on rows
chosen / mixed by p x p matrices). The Gram of a whole model is the sum of its blocks' Grams.
So a caller that receives a model in blocks (DDP gradient buckets) can

1. add up ``block_gram(block)`` over the blocks (in any order),
2. call ``plan_from_gram(rule, gram)`` once, which runs the rule's p-space part (Krum scores,
   Weiszfeld, clipping, the Flag Aggregator's IRLS, Bulyan's selection, NNM / bucketing
   mixing matrices) with the same functions ``flagcore.aggregate`` uses,
3. finish every block with ``apply_plan(plan, block)``,

and the concatenated results equal ``rule(whole_stack)`` to rounding (the Gram is summed in a
different order: about 1e-16 relative in float64, so selections can only differ between
workers whose distances tie to that precision). Coordinate-wise rules without pre-aggregation
need no Gram: ``plan_coordinate(rule, p, excluded)`` finishes blocks with the whole model's set
of non-finite workers (a worker with a NaN anywhere is left out of every block, as in the
whole-model call).

Only single problems (a (p, n) block, b = 1) are planned. ``has_plan(rule)`` says whether a
configured rule is covered: the rules above with pre-aggregation None, "nnm" and "bucketing";
not ``centered_clipping`` with a ``reference`` (a whole-model vector), nor rules, options or
pre-aggregation steps added to flagcore.rules after this module: a caller then concatenates
the blocks and calls the rule once (exact too, without the per-block overlap).

Pre-aggregation is built by ``preagg.build_source`` itself: with ``gram=`` when it accepts
the Gram, otherwise on a p x p stand-in whose Gram is the given one (to float64 rounding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .._arrays import as_stack
from .._backend import core
from ..flag import _check_params
from ._source import Source, stack_gram, stack_weighted_sum
from .coordinate import RULE_IDS, run_coordinate
from .preagg import build_source, check_pre_rows

__all__ = [
    "GramPlan",
    "apply_plan",
    "block_gram",
    "has_plan",
    "needs_gram",
    "plan_coordinate",
    "plan_from_gram",
]


@dataclass(frozen=True)
class GramPlan:
    """What is left to do per block once the whole model's Gram is known.

    Either ``coefficients`` (p,) (the block's result is sum_i c_i x_i over the caller's rows),
    or a coordinate rule ``coordinate`` (a name of RULE_IDS) with ``f`` and ``keep`` applied to
    the rows ``source`` exposes of a block (the caller's rows, or the pre-aggregated rows),
    leaving out the rows in ``excluded``. ``excluded_workers`` are the caller's workers left out
    (non-finite);
    ``selected`` the rows Krum / Multi-Krum / Bulyan chose (None otherwise).
    """

    rule: str
    p: int
    excluded_workers: np.ndarray
    coefficients: np.ndarray | None = None
    coordinate: str | None = None
    f: int = 0
    keep: int = -1
    excluded: np.ndarray | None = None
    selected: np.ndarray | None = None
    source: Any = None  # the rules' Source of the whole model without data (mixing, steps)


def needs_gram(rule: Any) -> bool:
    """False for coordinate-wise rules without pre-aggregation (their blocks need only the set
    of non-finite workers), True otherwise."""
    return not (rule.name in RULE_IDS and not rule.pre)


def block_gram(block: Any) -> np.ndarray:
    """(p, p) float64 Gram matrix of a (p, n) block (numpy array or torch tensor, any device)."""
    return cast(np.ndarray, stack_gram(as_stack(block, "block_gram"))[0])


def has_plan(rule: Any) -> bool:
    """Whether ``plan_from_gram`` / ``plan_coordinate`` cover this configured rule exactly.
    Rules, options or pre-aggregation steps this module does not know (added to
    flagcore.rules later) say False: a caller then aggregates the concatenated blocks."""
    if rule.name not in _PLANNED or getattr(rule, "reference", None) is not None:
        return False
    if getattr(rule, "neighbours", "textbook") != "textbook":
        return False
    return set(rule.pre) <= {"nnm", "bucketing"}


_PLANNED = (
    "mean",
    "median",
    "trimmed_mean",
    "meamed",
    "phocas",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "flag",
)
# A plan's Source has no data until apply_plan puts in each block's stack.
_NO_STACK: Any = None


def _source_from_gram(rule: Any, g: np.ndarray) -> Source:
    """What ``preagg.build_source`` makes of the whole stack, from its (1, p, p) Gram alone.

    build_source is called itself (whatever its internal layout), on a (p, p) float64 stand-in
    X with X X^T = G (eigen-factorisation; NaN rows for the workers whose squared norm is not
    finite, which build_source excludes as it would the real rows), or with ``gram=`` when it
    accepts the Gram directly. The returned Source holds the stand-in; ``apply_plan`` swaps in
    each block's data."""
    f, steps = rule.f, rule.pre
    if not steps:
        return Source(_NO_STACK, f=f)
    st = as_stack(_gram_factor(g[0]), "plan_from_gram")
    return build_source(st, f, steps, rule.bucket_size, rule._rng())


def _gram_factor(g: np.ndarray) -> np.ndarray:
    """(p, p) float64 rows whose Gram is g to float64 rounding (relative to its largest
    eigenvalue); rows of non-finite diagonal entries are NaN."""
    p = g.shape[0]
    finite = np.isfinite(np.diagonal(g))
    x = np.full((p, p), np.nan)
    if finite.any():
        sub = g[np.ix_(finite, finite)]
        sub = 0.5 * (sub + sub.T)
        # the native solver: bitwise the same on any thread count (numpy's eigh runs on numpy's
        # multithreaded BLAS, and ranks on machines with other core counts would plan apart)
        w, v = core.eigh_top(np.ascontiguousarray(sub), sub.shape[0])
        x[finite] = 0.0
        x[np.ix_(finite, np.arange(int(finite.sum())))] = v * np.sqrt(np.clip(w, 0.0, None))
    return x


def _check_rows(rule: Any, p: int) -> None:
    # NNM's p > 2f on the rows it sees (after a bucketing step before it), as the rule's call
    rule._check(check_pre_rows(rule._fn, rule.pre, p, rule.f, rule.bucket_size))


def plan_coordinate(rule: Any, p: int, excluded: Any) -> GramPlan:
    """Plan of a coordinate-wise rule without pre-aggregation: ``excluded`` (p,) bool are the
    workers holding a non-finite value anywhere in the model."""
    if needs_gram(rule):
        raise ValueError(
            f"plan_coordinate: rule {rule.name!r} (pre={rule.pre!r}) needs the Gram: "
            "use plan_from_gram"
        )
    _check_rows(rule, p)
    ex = np.asarray(excluded, dtype=bool).reshape(p)
    return GramPlan(
        rule.name,
        p,
        ex,
        coordinate=rule.name,
        f=rule.f,
        excluded=ex,
        source=Source(_NO_STACK, f=rule.f),
    )


def plan_from_gram(rule: Any, gram: Any) -> GramPlan:
    """Run the p-space part of ``rule`` (a ``flagcore.rules.Rule``, e.g. from ``make_rule``)
    on the whole model's (p, p) float64 Gram matrix. Advances the rule's random stream exactly
    as one whole-model call does (bucketing). Raises ValueError for a rule ``has_plan`` rejects."""
    g = np.ascontiguousarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"plan_from_gram: gram must be (p, p), got shape {g.shape}")
    if getattr(rule, "reference", None) is not None and rule.name == "centered_clipping":
        raise ValueError(
            f"{rule._fn}: centered_clipping with a reference cannot be planned from blocks "
            f"(the reference is a whole-model vector); use reference=None"
        )
    if not has_plan(rule):
        raise ValueError(
            f"plan_from_gram: rule {rule.name!r} with pre={rule.pre!r} has no Gram plan here"
        )
    p = g.shape[0]
    _check_rows(rule, p)
    name = rule.name
    src = _source_from_gram(rule, g[None])
    diag = np.diagonal(g)
    if src.mix is None:
        gs = g[None]
        workers_out = ~np.isfinite(diag)
    else:
        gs = Source.gram(src)  # M G0 M^T, in the same order as the rules compute it
        assert src.excluded_orig is not None  # set with the mixing by build_source
        workers_out = src.excluded_orig[0]
    ex_u8 = None if src.excluded is None else src.excluded.astype(np.uint8)

    def coef(c: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(src.original_coefficients(c)[0], dtype=np.float64)

    def out_workers(d: dict[str, Any]) -> np.ndarray:
        return np.asarray(d["excluded"], bool)[0] if src.mix is None else workers_out

    if name in RULE_IDS:
        if src.mix is None:  # a coordinate rule: only the exclusions matter
            return plan_coordinate(rule, p, ~np.isfinite(diag))
        assert src.excluded is not None  # set with the mixing by build_source
        return GramPlan(
            name, p, workers_out, coordinate=name, f=rule.f, excluded=src.excluded[0], source=src
        )
    if name in ("krum", "multi_krum"):
        d = core.krum(gs, rule.f, rule._m(gs.shape[1]), ex_u8)
        return GramPlan(
            name,
            p,
            out_workers(d),
            coefficients=coef(d["coefficients"]),
            selected=np.asarray(d["selected"], bool)[0],
        )
    if name == "geometric_median":  # nu relative to the median norm of the rows, as the rule does
        dg = np.diagonal(gs, axis1=1, axis2=2)
        with np.errstate(invalid="ignore"):
            norms = np.sqrt(np.where(np.isfinite(dg) & (dg >= 0), dg, np.nan))
        if src.excluded is not None:
            norms = np.where(src.excluded, np.nan, norms)
        scale = np.array([np.nanmedian(r) if np.isfinite(r).any() else 0.0 for r in norms])
        nu_abs = np.maximum(rule.nu * scale, np.finfo(np.float64).tiny)
        d = core.geometric_median(gs, nu_abs, rule.tol, rule.max_iter, ex_u8)
        return GramPlan(name, p, out_workers(d), coefficients=coef(d["coefficients"]))
    if name == "centered_clipping":  # reference None: the zero vector as row p of the Gram
        pp = gs.shape[1]
        ga = np.zeros((1, pp + 1, pp + 1))
        ga[:, :pp, :pp] = gs
        d = core.centered_clipping(ga, rule.tau, rule.iterations, ex_u8)
        return GramPlan(
            name,
            p,
            out_workers(d),
            coefficients=coef(np.ascontiguousarray(d["coefficients"][:, :pp])),
        )
    if name == "bulyan":
        d = core.bulyan_select(gs, rule.f, ex_u8)
        sel = d["selected"].astype(bool)[0]
        excl = d["excluded"].astype(bool)[0]
        pe = int((~excl).sum())
        f_eff = max(rule.f - (gs.shape[1] - pe), 0)
        beta = max(int(d["theta"][0]) - 2 * f_eff, 1)
        return GramPlan(
            name,
            p,
            excl if src.mix is None else workers_out,
            coordinate="meamed",
            f=0,
            keep=beta,
            excluded=~sel,
            selected=sel,
            source=src,
        )
    # flag
    prm = rule.params
    fprm = _check_params(
        rule._fn,
        gs.shape[1],
        prm["r"],
        prm["lam"],
        prm["max_iter"],
        prm["eps"],
        prm["tol"],
        prm["scale"],
        False,
    )
    d = core.flag_irls(gs, fprm)
    ex = np.asarray(d["excluded"], bool)[0] if src.mix is None else workers_out
    return GramPlan(name, p, ex, coefficients=coef(d["coefficients"]))


def apply_plan(plan: GramPlan, block: Any) -> Any:
    """The rule's result on one (p, n_b) block (numpy array or torch tensor), as (n_b,) in the
    block's framework, dtype and device."""
    st = as_stack(block, "apply_plan")
    if st.batched or st.p != plan.p:
        raise ValueError(f"apply_plan: block must be ({plan.p}, n), got shape {tuple(block.shape)}")
    if plan.coefficients is not None:
        out = stack_weighted_sum(st, plan.coefficients[None])
        if plan.rule != "mean" or _all_finite(out):
            return st.restore(out)
        # mean over finite workers overflowed in the fast path: the coordinate kernel decides,
        # as Mean does on a whole stack
        src = Source(st, excluded=plan.excluded_workers[None])
        out, _ = run_coordinate(src, "mean", 0)
        return st.restore(out)
    assert plan.coordinate is not None and plan.excluded is not None  # a coordinate plan
    src = dataclasses.replace(plan.source, st=st, excluded=plan.excluded[None], f=plan.f)
    out, _ = run_coordinate(src, plan.coordinate, plan.f, plan.keep)
    return st.restore(out)


def _all_finite(out: Any) -> bool:
    if isinstance(out, np.ndarray):
        return bool(np.isfinite(out).all())
    return bool(out.isfinite().all())
