"""Plain float64 NumPy reference implementations, for tests and benchmarks only.

They follow the textbook / reference-code formulation, not flagcore's fast paths: FA here forms
the n x m weighted matrix (one column per worker, plus one per ordered pair when lam > 0) and
takes its SVD on every iteration, the way the authors' code does.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np


def flag_aggregate_reference(
    x: np.ndarray,
    r: int,
    lam: float = 0.0,
    max_iter: int = 1,
    eps: float = 1e-7,
    tol: float = 1e-10,
    scale: str = "paper",
) -> dict[str, Any]:
    """FA of one (p, n) stack by SVD of the n x m weighted matrix. Returns a dict with
    ``aggregate`` (n,), ``ratios`` (p,), ``weights`` (p,), ``objective`` (list), ``iterations``,
    ``rejected``, ``excluded`` (p,)."""
    x = np.asarray(x, dtype=np.float64)
    p, n = x.shape
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.einsum("ij,ij->i", x, x)
    excluded = ~np.isfinite(sq)
    valid = np.flatnonzero(~excluded)
    norms = np.sqrt(np.where(excluded, 0.0, sq))
    xh = x[valid] / np.maximum(norms[valid], 1e-12)[:, None]  # (pv, n)
    pv = len(valid)
    mu = lam / (pv * (pv - 1)) if (pv >= 2 and lam > 0) else 0.0
    mu2 = mu * mu
    pairs = [(i, j) for i in range(pv) for j in range(pv) if i != j] if mu2 > 0 else []

    def solve(w: np.ndarray, vpair: np.ndarray) -> np.ndarray:
        cols = [np.sqrt(w[i]) * xh[i] for i in range(pv)]
        cols += [np.sqrt(vpair[k]) * (xh[i] - xh[j]) for k, (i, j) in enumerate(pairs)]
        a = np.stack(cols, axis=1)  # (n, m)
        u, _s, _ = np.linalg.svd(a, full_matrices=False)
        return u[:, : min(r, u.shape[1])]

    def ratios(y: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, np.sum((xh @ y) ** 2, axis=1))

    def pair_d(y: np.ndarray) -> np.ndarray:
        proj = xh @ y
        return np.array([np.sum((proj[i] - proj[j]) ** 2) for (i, j) in pairs])

    def objective(y: np.ndarray) -> float:
        v = ratios(y)
        f = np.sum(np.sqrt(np.maximum(0.0, 1.0 - v)))
        if pairs:
            f += mu2 * np.sum(np.sqrt(np.abs(1.0 - pair_d(y))))
        return cast(float, f)

    agg = np.zeros(n)
    result = dict(objective=[], iterations=0, rejected=False, excluded=excluded)
    w = np.ones(pv)
    vpair = np.full(len(pairs), mu2)
    f_prev = pv + mu2 * pv * max(pv - 1, 0)
    result["objective"].append(f_prev)
    y: np.ndarray | None = None
    if pv > 0:
        for it in range(1, max_iter + 1):
            yn = solve(w, vpair)
            fn = objective(yn)
            result["objective"].append(fn)
            result["iterations"] = it
            if it > 1 and not fn < f_prev:
                result["rejected"] = True
                break
            y = yn
            if not (f_prev - fn > tol) or not (fn > tol):
                break
            f_prev = fn
            v = ratios(y)
            w = 1.0 / np.sqrt(np.abs(1.0 - v) + eps)
            if pairs:
                vpair = mu2 / np.sqrt(np.abs(1.0 - pair_d(y)) + eps)
        assert y is not None  # the loop ran: max_iter >= 1
        proj = xh @ y  # (pv, q)
        agg = y @ proj.sum(axis=0) / r
        if scale == "median_norm":
            nrm = np.linalg.norm(agg)
            # at most 1e-3 of ||sum_i x_i|| / r: the normalised workers cancel inside the
            # subspace, the rest is rounding noise: 0 (csrc/flag/flag_irls.hpp)
            floor = 1e-3 * np.linalg.norm(xh.sum(axis=0)) / r
            agg = agg * (np.median(norms[valid]) / nrm) if nrm > floor and nrm > 0 else agg * 0.0
    v_full = np.zeros(p)
    w_full = np.zeros(p)
    if y is not None:
        v_full[valid] = ratios(y)
        w_full[valid] = 1.0 / np.sqrt(np.abs(1.0 - v_full[valid]) + eps)
    result.update(aggregate=agg, ratios=v_full, weights=w_full)
    return result


def make_gradients(
    p: int,
    n: int,
    *,
    byzantine: int = 0,
    seed: int = 0,
    dtype: Any = np.float64,
    spread: float = 1.0,
) -> np.ndarray:
    """p gradients: honest ones share a direction plus noise; byzantine ones send U[0, 1)."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal(n)
    honest = true + spread * rng.standard_normal((p - byzantine, n))
    honest *= rng.uniform(0.5, 2.0, size=(p - byzantine, 1))  # different norms
    byz = rng.random((byzantine, n))
    return np.concatenate([honest, byz]).astype(dtype)
