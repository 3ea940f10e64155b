"""The Flag Aggregator (Almasi et al., ICLR 2024), computed in p-space.

See ``flag_aggregate`` and ../shared/SPEC_FA.md for the math. The native CPU path reads the
gradients twice (one Gram pass, one weighted-sum pass) and does the IRLS on p x p matrices in
float64. Tensors on other torch devices use the same p-space algorithm with torch matmuls for
the two passes (the IRLS always runs in the native code, in float64).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arrays import Stack, as_stack, check_choice, check_float, check_int
from ._backend import core

SCALES = ("paper", "median_norm")


@dataclass(frozen=True)
class FlagInfo:
    """Diagnostics of one flag_aggregate call.

    For a (p, n) or list input each field is per worker (p,) or a scalar; for a (b, p, n) input
    each gains a leading batch axis b, and ``objective`` is (b, max_iter + 1) padded with NaN
    after each problem's last step.

    weights: IRLS weights (|1 - v_i| + eps)^(-1/2) at the final subspace (what a further
        iteration would use); 0 for excluded workers. Large means trusted.
    reconstruction_ratios: v_i = ||Y^T x_i||^2 in [0, 1]: 1 when worker i lies in the subspace.
    coefficients: c_i with aggregate = sum_i c_i g_i on the raw gradients.
    objective: F at the start (all v_i = 0), then after every step taken.
    iterations: steps taken (eigen-solves), rejected ones included.
    last_step_rejected: the last step increased F and was discarded.
    excluded: workers whose gradient holds NaN or Inf (or whose squared norm overflows
        float64); they get weight 0 and do not enter the aggregate.
    rank: dimension of the subspace actually used (min(r, rank of the weighted Gram)).
    """

    weights: np.ndarray
    reconstruction_ratios: np.ndarray
    coefficients: np.ndarray
    objective: np.ndarray
    iterations: Any
    last_step_rejected: Any
    excluded: np.ndarray
    rank: Any

    @classmethod
    def _from_native(cls, d: dict, batched: bool) -> "FlagInfo":
        if batched:
            return cls(
                weights=d["weights"], reconstruction_ratios=d["reconstruction_ratios"],
                coefficients=d["coefficients"], objective=d["objective"],
                iterations=d["iterations"].astype(np.int64), last_step_rejected=d["last_step_rejected"],
                excluded=d["excluded"], rank=d["rank"].astype(np.int64),
            )
        it = int(d["iterations"][0])
        return cls(
            weights=d["weights"][0], reconstruction_ratios=d["reconstruction_ratios"][0],
            coefficients=d["coefficients"][0], objective=d["objective"][0, : it + 1].copy(),
            iterations=it, last_step_rejected=bool(d["last_step_rejected"][0]),
            excluded=d["excluded"][0], rank=int(d["rank"][0]),
        )


def _check_params(fn: str, p: int, r: Any, lam: Any, max_iter: Any, eps: Any, tol: Any, scale: Any,
                  return_info: Any) -> tuple:
    r = (p + 1) // 2 if r is None else check_int(r, fn, "r", low=1, high=p)
    lam = check_float(lam, fn, "lam", low=0.0)
    max_iter = check_int(max_iter, fn, "max_iter", low=1, high=1_000_000)
    eps = check_float(eps, fn, "eps", low=0.0, strict_low=True)
    tol = check_float(tol, fn, "tol", low=0.0)
    scale = check_choice(scale, fn, "scale", SCALES)
    if not isinstance(return_info, bool):
        raise TypeError(f"{fn}: return_info must be a bool, got {return_info!r}")
    return r, lam, max_iter, eps, tol, scale


def flag_aggregate(gradients: Any, *, r: int | None = None, lam: float = 0.0, max_iter: int = 1,
                   eps: float = 1e-7, tol: float = 1e-10, scale: str = "paper",
                   return_info: bool = False) -> Any:
    """Aggregate p gradients with the Flag Aggregator.

    Parameters
    ----------
    gradients : numpy array or torch tensor of shape (p, n), one row per worker, or (b, p, n)
        for b independent problems (one per layer, say); or a list/tuple of p arrays/tensors of
        one shape (flattened inside; the result has that shape). float32 and float64 are
        computed natively; float16/bfloat16 are computed in float32.
    r : subspace dimension, 1 <= r <= p; default (p + 1) // 2 (the paper used about p/2).
    lam : weight of the pairwise term; mu = lam / (p (p - 1)) enters squared (SPEC_FA.md).
    max_iter : IRLS steps; 1 reproduces the paper's runs (uncentred PCA of the normalised
        gradients). Iteration stops early when the objective decreases by at most ``tol``; a
        step that increases it is discarded.
    eps : IRLS weight regulariser, weights (|1 - v_i| + eps)^(-1/2).
    scale : "paper": (1/r) sum_i Y Y^T x_i over the normalised gradients x_i (norm at most p/r,
        carries no gradient magnitude). "median_norm": the same direction rescaled to the median
        norm of the finite workers' gradients, comparable to a plain mean of honest gradients so
        learning rates transfer between rules.
    return_info : also return a FlagInfo.

    Returns
    -------
    The aggregate, in the caller's framework, dtype and device: (n,), (b, n), or the shape of
    one gradient for list input; with return_info, (aggregate, FlagInfo).

    Workers with NaN or Inf get weight 0 and are reported in ``info.excluded``; when every
    worker of a problem is excluded its aggregate is zero. Zero gradients are valid (they add
    nothing); p = 1 returns g / (r ||g||) (paper) or g (median_norm).
    """
    fn = "flag_aggregate"
    st = as_stack(gradients, fn)
    r, lam, max_iter, eps, tol, scale = _check_params(fn, st.p, r, lam, max_iter, eps, tol, scale, return_info)
    if st.on_cpu:
        out, d = core.flag_aggregate(st.data, r, lam, max_iter, eps, tol, scale)
    else:
        out, d = _flag_aggregate_torch(st, r, lam, max_iter, eps, tol, scale)
    agg = st.restore(out)
    if return_info:
        return agg, FlagInfo._from_native(d, st.batched)
    return agg


def _flag_aggregate_torch(st: Stack, r: int, lam: float, max_iter: int, eps: float, tol: float,
                          scale: str) -> tuple:
    """p-space FA for tensors on a non-CPU torch device: Gram and weighted sum with torch
    matmuls on the device, IRLS in the native float64 code on the host."""
    import torch

    x = st.torch_data  # (b, p, n)
    gram = torch_gram(x)
    d = core.flag_irls(gram.cpu().numpy(), r, lam, max_iter, eps, tol, scale)
    coef = torch.from_numpy(d["coefficients"]).to(x.device)
    return torch_weighted_sum(x, coef), d


def torch_gram(x: Any, chunk: int = 1 << 22) -> Any:
    """(b, p, n) tensor -> (b, p, p) float64 Gram matrices, in column chunks converted to
    float64 so memory stays bounded and sums are exact to float64 rounding."""
    import torch

    b, p, n = x.shape
    g = torch.zeros((b, p, p), dtype=torch.float64, device=x.device)
    step = max(1, chunk // max(1, b * p))
    for k0 in range(0, n, step):
        xc = x[:, :, k0:k0 + step].to(torch.float64)
        g += xc @ xc.transpose(1, 2)
    return g


def torch_weighted_sum(x: Any, coef: Any) -> Any:
    """sum_i coef[q, i] x[q, i, :] in float64 (chunked), skipping rows whose coefficient is 0 so
    that NaN/Inf rows of excluded workers never enter the sum. Returns float64 (b, n)."""
    import torch

    b, p, n = x.shape
    out = torch.zeros((b, n), dtype=torch.float64, device=x.device)
    for q in range(b):
        keep = torch.nonzero(coef[q] != 0).flatten()
        if keep.numel() == 0:
            continue
        rows = x[q].index_select(0, keep)
        c = coef[q].index_select(0, keep)
        out[q] = (c[None, :] @ rows.to(torch.float64))[0]
    return out
