"""What a rule reads: the caller's stack, possibly seen through pre-aggregation steps.

A pre-aggregation step (NNM, bucketing) is linear: the rows the rule sees are Y = M X for a
(p', p) mixing matrix M over the caller's p rows X. Each step is kept as a 0/1 membership
matrix A and a count per mixed row d (Y_i = (sum_{j in row i} Y_prev_j) / d_i: a sum, then a
division, as numpy's mean). Distance rules never form Y: their Gram is M G M^T (step by step,
in p-space) and their output sum_j c_j y_j is the weighted sum (c M) X of the original rows,
so the data is still read twice (one Gram, one weighted sum). Coordinate-wise rules, Bulyan's
final step and FA need the values of Y and form them, one (p', p) x (p, n) product per step.

Every product here (core.mix_rows, natively) sums in a fixed order per output element, so the
result does not depend on the thread count (a multithreaded BLAS does not promise that, and
OpenBLAS's does not deliver it: replicas of a job must agree).

Non-finite workers (any NaN/Inf, or a squared norm that overflows float64) are excluded before
mixing: their columns of A are 0, so they are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .._arrays import Stack
from .._backend import core
from ..flag import torch_gram, torch_weighted_sum


def stack_gram(st: Stack) -> np.ndarray:
    """(b, p, p) float64 Gram matrices of the caller's rows (one read of the data)."""
    if st.on_cpu:
        return core.gram(st.data)
    return cast(np.ndarray, torch_gram(st.torch_data).cpu().numpy())


def stack_weighted_sum(st: Stack, coef: np.ndarray) -> Any:
    """sum_i coef[q, i] x[q, i, :] as (b, n) (numpy, or torch on the caller's device); rows whose
    coefficient is 0 are never read, so excluded NaN/Inf rows cannot poison the sum."""
    coef = np.ascontiguousarray(coef, dtype=np.float64)
    if st.on_cpu:
        return core.weighted_sum(st.data, coef)
    import torch

    return torch_weighted_sum(st.torch_data, torch.from_numpy(coef).to(st.torch_data.device))


@dataclass
class Source:
    st: Stack
    mix: np.ndarray | None = None  # (b, p', p) or None: the rule sees the caller's rows
    excluded: np.ndarray | None = None  # (b, p') bool: rows the rule must leave out (counted in f)
    excluded_orig: np.ndarray | None = None  # (b, p) bool: caller's workers excluded before mixing
    gram_orig: np.ndarray | None = None  # (b, p, p) Gram of the caller's rows, when already known
    f: int = 0  # Byzantine count the rule assumes among its rows
    steps: tuple[Any, ...] = ()  # ((A (b, p_out, p_in) 0/1, d (b, p_out)), ...): Y = (A Y_prev) / d

    @property
    def b(self) -> int:
        return self.st.b

    @property
    def p(self) -> int:
        return self.st.p if self.mix is None else self.mix.shape[1]

    @property
    def n(self) -> int:
        return self.st.n

    def excluded_u8(self) -> np.ndarray | None:
        return None if self.excluded is None else self.excluded.astype(np.uint8)

    def gram(self) -> np.ndarray:
        if self.mix is None:
            return stack_gram(self.st)
        # build_source sets both with the mixing
        assert self.gram_orig is not None and self.excluded_orig is not None
        return mixed_gram(_zero_excluded(self.gram_orig, self.excluded_orig), self.steps)

    def combine(self, coef: np.ndarray) -> Any:
        """The rule's sum_j coef_j y_j as (b, n), read from the caller's rows."""
        return stack_weighted_sum(self.st, self.original_coefficients(coef))

    def original_coefficients(self, coef: np.ndarray) -> np.ndarray:
        return coef if self.mix is None else np.einsum("qj,qjk->qk", coef, self.mix)

    def rows(self) -> Any:
        """The rows the rule sees: the caller's stack data (list or (b, p, n) array, or the torch
        tensor), or the mixed rows Y = M X in the compute dtype."""
        if self.mix is None:
            return self.st.data if self.st.on_cpu else self.st.torch_data
        if self.st.on_cpu:
            y = self.st.data  # a list of rows or a (b, p, n) array: core.mix_rows reads both
            for a, d in self.steps:
                y = core.mix_rows(y, a, d)
            return y
        import torch

        y = self.st.torch_data
        for a, d in self.steps:
            am = torch.from_numpy(a).to(device=y.device, dtype=y.dtype)
            dm = torch.from_numpy(d).to(device=y.device, dtype=y.dtype)
            nxt = torch.zeros((y.shape[0], a.shape[1], y.shape[2]), dtype=y.dtype, device=y.device)
            for q in range(y.shape[0]):
                keep = torch.from_numpy(np.flatnonzero(a[q].any(axis=0))).to(y.device)
                if keep.numel():  # unread columns: excluded NaN/Inf rows never meet a 0
                    nxt[q] = (am[q][:, keep] @ y[q].index_select(0, keep)) / dm[q][:, None]
            y = nxt
        return y


def mix_matrix(matrix: np.ndarray, a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(A matrix) / d per problem for float64 p-space matrices (b, p_in, m) -> (b, p_out, m),
    summed in a fixed order (core.mix_rows)."""
    return core.mix_rows(np.ascontiguousarray(matrix, dtype=np.float64), a, d)


def mixed_gram(g: np.ndarray, steps: tuple[Any, ...]) -> np.ndarray:
    """Gram of the mixed rows, M G M^T, one step at a time: G <- (A G A^T) / (d d^T)."""
    for a, d in steps:
        h = mix_matrix(g, a, d)  # (A G) / d, (b, p_out, p_in)
        g = mix_matrix(np.swapaxes(h, 1, 2), a, d)  # (A (A G / d)^T) / d = M G M^T (G symmetric)
        g = 0.5 * (g + np.swapaxes(g, 1, 2))  # exactly symmetric, as a Gram from data is
    return g


def _zero_excluded(g: np.ndarray, excl: np.ndarray) -> np.ndarray:
    g = g.copy()
    for q in range(g.shape[0]):
        bad = excl[q]
        g[q][bad, :] = 0.0
        g[q][:, bad] = 0.0
    return g


def reference_products(
    st: Stack, ref: Any, diag: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """((b, p) x_i . v0, (b,) v0 . v0, and with ``diag`` (b, p) x_i . x_i) in float64 for the
    caller's rows and a (b, n) float64 reference v0: float64 products and sums (natively,
    core.reference_products: one pass on flagcore's threads, no float64 copy of the rows, the
    sums in an order fixed by n; or torch on column chunks for a device tensor), the same
    whatever flagcore's thread count. Used by centered_clipping (a reference outside the data's
    dtype) and FLTrust."""
    b, p, n = st.b, st.p, st.n
    if st.on_cpu:
        ref64 = np.ascontiguousarray(np.asarray(ref, dtype=np.float64).reshape(b, n))
        cross, r2, sq = core.reference_products(st.data, ref64, diag)
        return cross, r2, sq
    import torch

    x = st.torch_data
    ref64 = ref.to(torch.float64)
    acc = torch.zeros((b, p), dtype=torch.float64, device=x.device)
    acc2 = torch.zeros((b, p), dtype=torch.float64, device=x.device)
    step = max(1, (1 << 22) // max(1, b * p))  # column chunks: no (p, n) float64 copy
    for k0 in range(0, n, step):
        xc = x[:, :, k0 : k0 + step].to(torch.float64)
        acc += (xc @ ref64[:, k0 : k0 + step, None])[:, :, 0]
        if diag:
            acc2 += (xc * xc).sum(dim=2)
    cross = acc.cpu().numpy()
    r2 = (ref64 * ref64).sum(dim=1).cpu().numpy()
    sq = acc2.cpu().numpy() if diag else None
    return cross, r2, sq
