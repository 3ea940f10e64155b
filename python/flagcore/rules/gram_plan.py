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

Only single problems (a (p, n) block, b = 1) are planned. ``centered_clipping`` with a
``reference`` is not supported (the reference is a whole-model vector).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import as_stack
from .._backend import core
from ..flag import _check_params
from ._source import Source, _zero_excluded, stack_gram, stack_weighted_sum
from .coordinate import RULE_IDS, run_coordinate
from .distance import run_centered_clipping, run_geometric_median, run_krum
from .preagg import rows_after

__all__ = ["GramPlan", "block_gram", "plan_from_gram", "plan_coordinate", "apply_plan", "needs_gram"]


@dataclass(frozen=True)
class GramPlan:
    """What is left to do per block once the whole model's Gram is known.

    Either ``coefficients`` (p,) (the block's result is sum_i c_i x_i over the caller's rows),
    or a coordinate rule ``coordinate`` (a name of RULE_IDS) with ``f`` and ``keep`` applied to
    the rows ``mixing @ x`` (or the caller's rows when ``mixing`` is None), leaving out the rows
    in ``excluded``. ``excluded_workers`` are the caller's workers left out (non-finite);
    ``selected`` the rows Krum / Multi-Krum / Bulyan chose (None otherwise).
    """

    rule: str
    p: int
    excluded_workers: np.ndarray
    coefficients: np.ndarray | None = None
    coordinate: str | None = None
    f: int = 0
    keep: int = -1
    mixing: np.ndarray | None = None
    excluded: np.ndarray | None = None
    gram: np.ndarray | None = None
    selected: np.ndarray | None = None


def needs_gram(rule: Any) -> bool:
    """False for coordinate-wise rules without pre-aggregation (their blocks need only the set
    of non-finite workers), True otherwise."""
    return not (rule.name in RULE_IDS and not rule.pre)


def block_gram(block: Any) -> np.ndarray:
    """(p, p) float64 Gram matrix of a (p, n) block (numpy array or torch tensor, any device)."""
    return stack_gram(as_stack(block, "block_gram"))[0]


class _PlanSource(Source):
    """A Source with no data: the rules' p-space code reads ``gram()`` and hands its output
    coefficients to ``combine``, which records them (over the caller's rows) instead of reading
    any data."""

    def __init__(self, gram: np.ndarray, mix: Any, excluded: Any, excluded_orig: Any, f: int) -> None:
        super().__init__(st=None, mix=mix, excluded=excluded, excluded_orig=excluded_orig, gram_orig=gram, f=f)
        self.captured: np.ndarray | None = None

    @property
    def b(self) -> int:
        return 1

    @property
    def p(self) -> int:
        return self.gram_orig.shape[1] if self.mix is None else self.mix.shape[1]

    @property
    def n(self) -> int:
        return 0

    def gram(self) -> np.ndarray:
        return self.gram_orig if self.mix is None else super().gram()

    def combine(self, coef: np.ndarray) -> Any:
        self.captured = np.ascontiguousarray(self.original_coefficients(coef), dtype=np.float64)
        return None


def _source_from_gram(rule: Any, g: np.ndarray) -> _PlanSource:
    """``preagg.build_source`` with the Gram given instead of read from the data (the same
    steps, the same use of the rule's random stream for bucketing)."""
    f, steps = rule.f, rule.pre
    if not steps:
        return _PlanSource(g, None, None, None, f)
    b, p = g.shape[0], g.shape[1]
    diag = np.diagonal(g, axis1=1, axis2=2)
    excl0 = ~np.isfinite(diag)
    g0 = _zero_excluded(g, excl0)
    mix = np.repeat(np.eye(p)[None], b, axis=0)
    mix[excl0] = 0.0
    excl = excl0.copy()
    rng = rule._rng()
    for step in steps:
        if step == "nnm":
            gc = np.einsum("qij,qjk,qlk->qil", mix, g0, mix)
            d = core.nnm_matrix(gc, f, excl.astype(np.uint8))
            mix = d["matrix"] @ mix
        else:
            pc = mix.shape[1]
            nb = math.ceil(pc / rule.bucket_size)
            new = np.zeros((b, nb, p))
            new_excl = np.zeros((b, nb), bool)
            for q in range(b):
                perm = rng.permutation(pc)
                for j in range(nb):
                    members = [i for i in perm[j * rule.bucket_size:(j + 1) * rule.bucket_size] if not excl[q, i]]
                    if members:
                        new[q, j] = mix[q, members].mean(axis=0)
                    else:
                        new_excl[q, j] = True
            mix, excl = new, new_excl
    return _PlanSource(g, mix, excl, excl0, f)


def _check_rows(rule: Any, p: int) -> None:
    fn = rule._fn
    if "nnm" in rule.pre and not p > 2 * rule.f:
        raise ValueError(f"{fn}: pre-aggregation 'nnm' needs p > 2f, got p = {p}, f = {rule.f}")
    rule._check(rows_after(rule.pre, p, rule.bucket_size))


def plan_coordinate(rule: Any, p: int, excluded: Any) -> GramPlan:
    """Plan of a coordinate-wise rule without pre-aggregation: ``excluded`` (p,) bool are the
    workers holding a non-finite value anywhere in the model."""
    if needs_gram(rule):
        raise ValueError(f"plan_coordinate: rule {rule.name!r} (pre={rule.pre!r}) needs the Gram: use plan_from_gram")
    _check_rows(rule, p)
    ex = np.asarray(excluded, dtype=bool).reshape(p)
    if rule.name == "mean" and not ex.any():  # Mean's fast path: one weighted-sum pass
        return GramPlan("mean", p, ex, coefficients=np.full(p, 1.0 / p))
    return GramPlan(rule.name, p, ex, coordinate=rule.name, f=rule.f, excluded=ex)


def plan_from_gram(rule: Any, gram: Any) -> GramPlan:
    """Run the p-space part of ``rule`` (a ``flagcore.rules.Rule``, e.g. from ``make_rule``)
    on the whole model's (p, p) float64 Gram matrix. Advances the rule's random stream exactly
    as one whole-model call does (bucketing)."""
    g = np.ascontiguousarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"plan_from_gram: gram must be (p, p), got shape {g.shape}")
    p = g.shape[0]
    _check_rows(rule, p)
    g3 = g[None]
    name = rule.name
    src = _source_from_gram(rule, g3)
    diag = np.diagonal(g)
    workers_out = ~np.isfinite(diag) if src.excluded_orig is None else src.excluded_orig[0]
    if name in RULE_IDS:
        if src.mix is None:  # a coordinate rule: only the exclusions matter
            return plan_coordinate(rule, p, ~np.isfinite(diag))
        return GramPlan(name, p, workers_out, coordinate=name, f=rule.f, mixing=src.mix[0],
                        excluded=src.excluded[0], gram=g)
    if name in ("krum", "multi_krum"):
        _, d = run_krum(src, rule.f, rule._m(src.p))
        return GramPlan(name, p, _excl(d, src, workers_out), coefficients=src.captured[0], gram=g,
                        selected=d["selected"][0])
    if name == "geometric_median":
        _, d = run_geometric_median(src, rule.nu, rule.tol, rule.max_iter)
        return GramPlan(name, p, _excl(d, src, workers_out), coefficients=src.captured[0], gram=g)
    if name == "centered_clipping":
        if rule.reference is not None:
            raise ValueError(f"{rule._fn}: centered_clipping with a reference cannot be planned from blocks "
                             f"(the reference is a whole-model vector); use reference=None")
        _, d = run_centered_clipping(src, rule.tau, rule.iterations, None)
        return GramPlan(name, p, _excl(d, src, workers_out), coefficients=src.captured[0], gram=g)
    if name == "bulyan":
        d = core.bulyan_select(src.gram(), rule.f, src.excluded_u8())
        sel = d["selected"].astype(bool)[0]
        excl = d["excluded"].astype(bool)[0]
        pe = int((~excl).sum())
        f_eff = max(rule.f - (src.p - pe), 0)
        beta = max(int(d["theta"][0]) - 2 * f_eff, 1)
        mix = None if src.mix is None else src.mix[0]
        return GramPlan(name, p, excl if src.mix is None else workers_out, coordinate="meamed", f=0,
                        keep=beta, mixing=mix, excluded=~sel, gram=g, selected=sel)
    if name == "flag":
        prm = rule.params
        gs = src.gram()
        r, lam, max_iter, eps, tol, scale = _check_params(rule._fn, src.p, prm["r"], prm["lam"], prm["max_iter"],
                                                          prm["eps"], prm["tol"], prm["scale"], False)
        d = core.flag_irls(gs, r, lam, max_iter, eps, tol, scale)
        coef = np.ascontiguousarray(src.original_coefficients(d["coefficients"])[0], dtype=np.float64)
        ex = np.asarray(d["excluded"], bool)[0] if src.mix is None else workers_out
        return GramPlan(name, p, ex, coefficients=coef, gram=g)
    raise ValueError(f"plan_from_gram: rule {name!r} has no Gram plan")  # pragma: no cover - every rule has one


def _excl(d: dict, src: _PlanSource, workers_out: np.ndarray) -> np.ndarray:
    return np.asarray(d["excluded"], bool)[0] if src.mix is None else workers_out


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
    mix = None if plan.mixing is None else plan.mixing[None]
    ex_orig = None if plan.mixing is None else plan.excluded_workers[None]
    gram = None if plan.gram is None else plan.gram[None]
    src = Source(st, mix, plan.excluded[None], ex_orig, gram, plan.f)
    out, _ = run_coordinate(src, plan.coordinate, plan.f, plan.keep)
    return st.restore(out)


def _all_finite(out: Any) -> bool:
    if isinstance(out, np.ndarray):
        return bool(np.isfinite(out).all())
    return bool(out.isfinite().all())
