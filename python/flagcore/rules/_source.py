"""What a rule reads: the caller's stack, possibly seen through a pre-aggregation step.

A pre-aggregation step (NNM, bucketing) is linear: the rows the rule sees are Y = M X for a
(p', p) mixing matrix M over the caller's p rows X. Distance rules never form Y: their Gram is
M G M^T and their output sum_j c_j y_j is the weighted sum (c M) X of the original rows, so the
data is still read twice (one Gram, one weighted sum). Coordinate-wise rules, Bulyan's final
step and FA need the values of Y and form it (a (p', p) x (p, n) product).

Non-finite workers (any NaN/Inf, or a squared norm that overflows float64) are excluded before
mixing: their columns of M are 0, so they never reach a mixed row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import Stack
from .._backend import core
from ..flag import torch_gram, torch_weighted_sum


def stack_gram(st: Stack) -> np.ndarray:
    """(b, p, p) float64 Gram matrices of the caller's rows (one read of the data)."""
    if st.on_cpu:
        return core.gram(st.data)
    return torch_gram(st.torch_data).cpu().numpy()


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
    mix: np.ndarray | None = None        # (b, p', p) or None: the rule sees the caller's rows
    excluded: np.ndarray | None = None   # (b, p') bool: rows the rule must leave out (counted in f)
    excluded_orig: np.ndarray | None = None  # (b, p) bool: caller's workers excluded before mixing
    gram_orig: np.ndarray | None = None  # (b, p, p) Gram of the caller's rows, when already known
    f: int = 0                           # Byzantine count the rule assumes among its rows

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
        g = _zero_excluded(self.gram_orig, self.excluded_orig)
        return np.einsum("qij,qjk,qlk->qil", self.mix, g, self.mix)

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
        b, pp, p = self.mix.shape
        if self.st.on_cpu:
            data = self.st.data
            x = np.stack(data)[None] if isinstance(data, list) else data
            y = np.empty((b, pp, self.n), dtype=x.dtype)
            for q in range(b):
                keep = np.flatnonzero(~self.excluded_orig[q])
                y[q] = (self.mix[q][:, keep].astype(x.dtype) @ x[q, keep]) if keep.size else 0
            return y
        import torch

        x = self.st.torch_data
        y = torch.zeros((b, pp, self.n), dtype=x.dtype, device=x.device)
        for q in range(b):
            keep = np.flatnonzero(~self.excluded_orig[q])
            if keep.size:
                m = torch.from_numpy(self.mix[q][:, keep]).to(device=x.device, dtype=x.dtype)
                y[q] = m @ x[q, torch.from_numpy(keep).to(x.device)]
        return y


def _zero_excluded(g: np.ndarray, excl: np.ndarray) -> np.ndarray:
    g = g.copy()
    for q in range(g.shape[0]):
        bad = excl[q]
        g[q][bad, :] = 0.0
        g[q][:, bad] = 0.0
    return g
