"""Clipping pre-aggregation steps: static clipping (``pre="clipping"``, threshold ``c``) and
adaptive robust clipping (``pre="arc"``, Allouah et al. 2024).

Both scale each row by min(1, threshold / ||row||), so they are linear maps Y = D M X with a
diagonal D on top of the current mixing matrix M, and compose with NNM and bucketing in any
order (``pre=["arc", "nnm"]`` clips first, then mixes). The norms come from the Gram matrix
that pre-aggregation already has (||y_i||^2 = (M G M^T)_ii): no extra read of the data.

- clipping(c): rows with norm > c are scaled to norm c (ByzFL's ``Clipping(c)``).
- arc: with p_e rows left (non-finite or empty ones excluded) and f_eff = max(f - e, 0), the
  k = floor(2 f_eff (p_e - f_eff) / p_e) rows of largest norm are scaled to the norm of the
  largest remaining one (Allouah, Guerraoui, Gupta, Jellouli, Rizk and Stephan, "The Vital Role
  of Gradient Clipping in Byzantine-Resilient Distributed Learning", 2024). ByzFL's ``ARC(f)``
  computes k as int((2 f / n) (n - f)) in floating point, which can round an exact integer down
  by one (e.g. f = 3, n = 9: 2 * 3 / 9 * 6 = 3.9999999999999996 -> 3); flagcore uses the exact
  integer floor (4).

A row with zero norm is left as it is. Excluded rows are never scaled (their columns of M are
already 0).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from .._arrays import check_float
from .preagg import PRE_STEPS
from .selection import pow2_scale

CLIP_STEPS = ("clipping", "arc")
ALL_PRE_STEPS = PRE_STEPS + CLIP_STEPS


def _row_norms(mix: np.ndarray, g0: np.ndarray) -> np.ndarray:
    """(b, p') norms of the mixed rows from the caller's Gram (excluded rows zeroed)."""
    diag = np.diagonal(g0, axis1=1, axis2=2)
    top = np.max(np.where(np.isfinite(diag), diag, 0.0), axis=1, initial=0.0)
    # a power of two (exact division) per problem: mixed norms of huge rows stay finite
    scale = np.array([pow2_scale(float(t)) for t in top])  # capped at 2^1023: no overflow
    sq = np.einsum("qij,qjk,qik->qi", mix, g0 / scale[:, None, None], mix)
    return cast(np.ndarray, np.sqrt(np.maximum(sq, 0.0)) * np.sqrt(scale)[:, None])


def _scale_factors(norms: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """(b, p') factors min(1, thr / norm) that scale rows whose norm exceeds thr ((b,) or
    (b, p')) down to thr."""
    thr = np.broadcast_to(thr if np.ndim(thr) == 2 else np.asarray(thr)[:, None], norms.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > thr, thr / norms, 1.0)


class StaticClipping:
    """``pre="clipping"``: y_i <- y_i min(1, c / ||y_i||)."""

    name = "clipping"

    def __init__(self, c: float) -> None:
        self.c = c

    def factors(self, mix: np.ndarray, excl: np.ndarray, g0: np.ndarray) -> np.ndarray:
        """(b, p') row factors given the current (b, p', p) map and the caller's Gram."""
        return _scale_factors(_row_norms(mix, g0), np.full(mix.shape[0], self.c))

    def __repr__(self) -> str:
        return f"clipping(c={self.c})"


def arc_clip_count(p: int, f: int) -> int:
    """k = floor(2 f (p - f) / p), the number of rows ARC clips (exact integer arithmetic)."""
    return (2 * f * (p - f)) // p if p > 0 else 0


class AdaptiveClipping:
    """``pre="arc"``: clip the k largest rows to the norm of the largest unclipped one."""

    name = "arc"

    def __init__(self, f: int) -> None:
        self.f = f

    def factors(self, mix: np.ndarray, excl: np.ndarray, g0: np.ndarray) -> np.ndarray:
        """(b, p') row factors given the current (b, p', p) map and the caller's Gram."""
        norms = _row_norms(mix, g0)
        b, pp = norms.shape
        thr = np.full((b, pp), np.inf)
        for q in range(b):
            keep = np.flatnonzero(~excl[q])
            pe = keep.size
            f_eff = max(self.f - (pp - pe), 0)
            k = arc_clip_count(pe, f_eff)
            if k == 0:
                continue
            t = np.sort(norms[q, keep], kind="stable")[pe - k - 1]
            thr[q, keep] = t
        return _scale_factors(norms, thr)

    def __repr__(self) -> str:
        return f"arc(f={self.f})"


def parse_pre_steps(pre: Any, fn: str, *, f: int, c: Any) -> tuple[Any, ...]:
    """The pre-aggregation steps of a rule: "nnm" / "bucketing" stay strings (preagg.py runs
    them), "clipping" / "arc" become step objects (preagg.build_source asks their `factors` for the
    current mixing matrix and applies them as a diagonal step)."""
    steps = (
        ()
        if pre is None
        else (pre,)
        if isinstance(pre, str)
        else tuple(pre)
        if isinstance(pre, (list, tuple))
        else None
    )
    if steps is None or not all(isinstance(s, str) and s in ALL_PRE_STEPS for s in steps):
        raise ValueError(
            f"{fn}: pre must be None, one of {', '.join(repr(s) for s in ALL_PRE_STEPS)} "
            f"or a sequence of them, got {pre!r}"
        )
    out: list[Any] = []
    for s in steps:
        if s == "clipping":
            if c is None:
                raise TypeError(
                    f"{fn}: pre-aggregation 'clipping' needs c (the clipping threshold)"
                )
            out.append(StaticClipping(check_float(c, fn, "c", low=0.0, strict_low=True)))
        elif s == "arc":
            out.append(AdaptiveClipping(f))
        else:
            out.append(s)
    if c is not None and not any(isinstance(s, StaticClipping) for s in out):
        raise TypeError(
            f"{fn}: c (the clipping threshold) is only used with pre='clipping', got c = {c!r} "
            f"with pre = {pre!r}"
        )
    return tuple(out)
