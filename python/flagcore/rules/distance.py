"""Distance-based rules in p-space: Krum, Multi-Krum, Bulyan, geometric median, centered
clipping.

All of them start from the (p, p) Gram matrix G of the gradients (one read of the data, the
same native kernel as the Flag Aggregator) and work on p x p matrices in float64
(csrc/rules/distance.hpp): squared distances are G_ii + G_jj - 2 G_ij, a Weiszfeld or clipping
step needs only G and the current coefficients. The output is one weighted sum of the rows
(a second read), or for Bulyan a coordinate-wise pass over the selected rows.

Precision: distances from a Gram matrix suffer cancellation when gradients are nearly equal;
the absolute error of a squared distance is about 1e-16 (G_ii + G_jj). Negative values are
clamped to 0. Rules only compare distances, so this can only reorder workers whose distance is
below ~1e-8 of their norms.

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
from typing import Any, cast

import numpy as np

from .._backend import core
from ..flag import torch_gram
from ._source import Source
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
        c = coef[:, p]
        if src.st.on_cpu:
            out = (out.astype(np.float64) + c[:, None] * reference).astype(out.dtype)
        else:
            import torch

            out = (
                out.to(torch.float64)
                + torch.from_numpy(c).to(out.device)[:, None] * reference.to(torch.float64)
            ).to(out.dtype)
    return out, dict(
        coefficients=coef[:, :p],
        reference_coefficient=coef[:, p],
        excluded=d["excluded"].astype(bool),
    )


def _augmented_gram(src: Source, ref: Any) -> np.ndarray:
    """Gram of the rows the rule sees plus the reference as row p (one read of the data)."""
    rows = src.rows()
    if not src.st.on_cpu:
        import torch

        return cast(
            np.ndarray,
            torch_gram(torch.cat([rows, ref.to(rows.dtype)[:, None, :]], dim=1)).cpu().numpy(),
        )
    out = []
    for q in range(src.b):
        lst = list(rows) if isinstance(rows, list) else [rows[q, i] for i in range(rows.shape[1])]
        lst.append(np.ascontiguousarray(ref[q], dtype=lst[0].dtype))
        out.append(core.gram(lst)[0])
    return np.stack(out)
