"""Distance-based rules in p-space: Krum, Multi-Krum, Bulyan, geometric median, centered
clipping.

All of them start from the (p, p) Gram matrix G of the gradients (one read of the data, the
same native kernel as the Flag Aggregator) and work on p x p matrices in float64
(csrc/rules/distance.hpp): squared distances are G_ii + G_jj - 2 G_ij, a Weiszfeld or clipping
step needs only G and the current coefficients. The output is one weighted sum of the rows
(a second read), or for Bulyan a coordinate-wise pass over the selected rows.

Precision: distances from a Gram matrix suffer cancellation when gradients are nearly equal;
the absolute error of a squared distance is the Gram's error on G_ii + G_jj. Negative values
are clamped to 0. Rules only compare distances, so only workers whose distance is small next to
their norms can be reordered:
- float64 data (and any tensor on a non-CPU device: torch_gram multiplies in float64): about
  1e-16 (G_ii + G_jj); distances below ~1e-8 of the norms;
- float32 (and float16/bfloat16) data on the CPU: the native Gram accumulates in float32, one
  rounding per step, over up to 512 columns per partial sum (csrc/flag/gram.hpp; AMX: three
  bfloat16 parts per value, same class) before the float64 sum: up to ~512 x 6e-8 = 3e-5
  (G_ii + G_jj) in the worst case, typically 1e-9 to 1e-7 of it; distances below ~1e-3 of the
  norms. A common component of norm 100 with a spread of 0.01 (a ratio of 1e-4) can change
  Krum's pick from the exact one; pass float64 gradients when the workers differ that little.

Cost after the Gram (c active workers): Krum, Multi-Krum and NNM O(c^2 log c); Bulyan
O(c^2 log c) (each worker's neighbours sorted once, Krum scores updated as workers are removed,
kept exact with compensated sums so that tied scores stay tied); geometric median O(c^2) per
Weiszfeld step; centered clipping O(c^2) per step. Multi-Krum's and Bulyan's averages add the
rows and then divide. Every long native loop stops at Ctrl-C (KeyboardInterrupt).

Non-finite workers (a NaN/Inf value makes G_ii non-finite) are excluded, reported in
``RuleInfo.excluded``, and the rule runs on the p - e others with f_eff = max(f - e, 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._backend import core
from ._source import Source, mix_matrix, reference_products
from .coordinate import run_coordinate


def run_krum(src: Source, f: int, m: int) -> tuple[Any, dict[str, Any]]:
    d = core.krum(src.gram(), f, m, src.excluded_u8())
    sel = d["selected"].astype(bool)
    if src.mix is None:
        # the mean of the selected rows (summed in order, then divided: numpy's mean), one pass
        # that reads only those rows
        out, _ = run_coordinate(dataclasses.replace(src, excluded=~sel), "mean", 0)
    else:  # through pre-aggregation: the weighted sum (c M) X of the caller's rows
        out = src.combine(d["coefficients"])
    return out, dict(
        coefficients=d["coefficients"],
        scores=d["scores"],
        selected=sel,
        excluded=d["excluded"].astype(bool),
    )


def run_bulyan(src: Source, f: int) -> tuple[Any, dict[str, Any]]:
    d = core.bulyan_select(src.gram(), f, src.excluded_u8())
    sel = d["selected"].astype(bool)
    excl = d["excluded"].astype(bool)
    theta = d["theta"]
    out = None
    b = src.b
    # Final step: per coordinate, the mean of the beta = theta - 2 f_eff selected values closest
    # to their median (meamed with an explicit count on the selected rows).
    pe = (~excl).sum(axis=1)
    f_eff = np.maximum(f - (src.p - pe), 0)
    beta = np.maximum(theta - 2 * f_eff, 1)
    sub = dataclasses.replace(src, excluded=~sel, f=f)
    if np.all(beta == beta[0]):
        out, _ = run_coordinate(sub, "meamed", 0, int(beta[0]))
    else:  # differing exclusions across a batch: one problem at a time
        parts = []
        for q in range(b):
            ex = np.ones_like(sel)
            ex[q] = ~sel[q]
            part, _ = run_coordinate(
                dataclasses.replace(src, excluded=ex, f=f), "meamed", 0, int(beta[q])
            )
            parts.append(part[q : q + 1])
        out = np.concatenate(parts) if src.st.on_cpu else _torch_cat(parts)
    return out, dict(selected=sel, excluded=excl, beta=beta)


def _torch_cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts)


def run_geometric_median(
    src: Source, nu: float, tol: float, max_iter: int
) -> tuple[Any, dict[str, Any]]:
    g = src.gram()
    diag = np.diagonal(g, axis1=1, axis2=2)
    with np.errstate(invalid="ignore"):
        norms = np.sqrt(np.where(np.isfinite(diag) & (diag >= 0), diag, np.nan))
    if src.excluded is not None:
        norms = np.where(src.excluded, np.nan, norms)
    scale = np.array([np.nanmedian(r) if np.isfinite(r).any() else 0.0 for r in norms])
    nu_abs = np.maximum(nu * scale, np.finfo(np.float64).tiny)
    d = core.geometric_median(g, nu_abs, tol, max_iter, src.excluded_u8())
    out = src.combine(d["coefficients"])
    return out, dict(
        coefficients=d["coefficients"],
        excluded=d["excluded"].astype(bool),
        iterations=d["iterations"],
        converged=d["converged"].astype(bool),
        objective=d["objective"],
    )


def run_centered_clipping(
    src: Source, tau: float, iterations: int, reference: Any
) -> tuple[Any, dict[str, Any]]:
    """reference: None (the zero vector) or a (b, n) array/tensor (validated by the caller)."""
    if reference is None:
        g = src.gram()
        b, p, _ = g.shape
        ga = np.zeros((b, p + 1, p + 1))
        ga[:, :p, :p] = g
    else:
        ga = _augmented_gram(src, reference)
        p = ga.shape[1] - 1
    d = core.centered_clipping(ga, tau, iterations, src.excluded_u8())
    coef = d["coefficients"]
    out = src.combine(np.ascontiguousarray(coef[:, :p]))
    if reference is not None:
        # v = sum_i c_i x_i + c_p v0, added in float64 and rounded once to the caller's dtype by
        # Stack.restore (which refuses a value beyond that dtype's range instead of an Inf)
        c = coef[:, p]
        if src.st.on_cpu:
            out = out.astype(np.float64) + c[:, None] * reference
        else:
            import torch

            cw = torch.from_numpy(c).to(out.device)[:, None]
            out = out.to(torch.float64) + cw * reference.to(torch.float64)
    return out, dict(
        coefficients=coef[:, :p],
        reference_coefficient=coef[:, p],
        excluded=d["excluded"].astype(bool),
    )


def _augmented_gram(src: Source, ref: Any) -> np.ndarray:
    """(b, p' + 1, p' + 1) Gram of the rows the rule sees plus the reference as row p'.

    The reference is a float64 array/tensor and stays one: it is never rounded to the data's
    dtype (a float32 stack with a reference beyond float32's range would otherwise meet an Inf
    row and lose its reference). On the CPU without pre-aggregation, with float64 data or a
    reference exactly representable in the data's dtype: one native Gram of the rows and the
    reference (one read). Otherwise the rows' block is ``src.gram()``
    (the float32 Gram, or M G M^T from the Gram pre-aggregation holds) and the products x_i . v0
    of the caller's rows are formed in float64 (one more read, no float64 copy of the data),
    then mixed like the rows. A reference whose squared norm overflows float64 is refused."""
    st = src.st
    dt = st.data_dtype if st.on_cpu else None
    if st.on_cpu and src.mix is None and (dt == np.float64 or _exact_in(ref, dt)):
        # one native Gram of the rows and the reference (one read): the reference is exactly
        # representable in the data's dtype (always for "previous", the last aggregate)
        rows = st.data
        out = []
        for q in range(src.b):
            lst = list(rows) if isinstance(rows, list) else [rows[q, i] for i in range(st.p)]
            lst.append(np.ascontiguousarray(ref[q], dtype=dt))
            out.append(core.gram(lst)[0])
        ga = np.stack(out)
    else:
        g = src.gram()
        cross, r2, _ = reference_products(st, ref)
        if src.mix is not None:
            # as the Gram: excluded workers' products zeroed (their columns of M are 0; a NaN
            # must not meet that 0), then each linear step applied
            if src.excluded_orig is not None:
                cross = np.where(src.excluded_orig, 0.0, cross)
            for a, d in src.steps:
                cross = mix_matrix(cross[:, :, None], a, d)[:, :, 0]
        b, p = g.shape[0], g.shape[1]
        ga = np.empty((b, p + 1, p + 1))
        ga[:, :p, :p] = g
        ga[:, :p, p] = cross
        ga[:, p, :p] = cross
        ga[:, p, p] = r2
    p = ga.shape[1] - 1
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(ga[:, p, p])
    if bad.any():
        q = int(np.argmax(bad))
        big = float(np.max(np.abs(ref[q].cpu().numpy() if hasattr(ref, "cpu") else ref[q])))
        raise ValueError(
            f"{st.fn or 'centered_clipping'}: reference is too large for the float64 Gram "
            f"(its squared norm overflows float64; largest |value| {big:.6g}): the distance "
            "rules take norms up to ~1e154"
        )
    return ga


def _exact_in(ref: Any, dt: Any) -> bool:
    """Every value of the float64 reference is finite and exactly a value of dtype ``dt``."""
    r = np.asarray(ref, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(r.astype(dt).astype(np.float64), r) and np.isfinite(r).all())
