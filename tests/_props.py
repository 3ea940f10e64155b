"""Hypothesis strategies and checks shared by the property tests (tests/test_properties_*.py).

A drawn ``StackCase`` is one input the way a caller hands it over: a (p, n) or (b, p, n) numpy
array of float16/32/64 in some memory layout (C order, Fortran order, a strided view, a view
with a non-contiguous last axis) or a list of p arrays, whose rows are of one *kind* each:
ordinary values at a drawn magnitude (1e-30 .. 1e30 in float64), zeros, exact duplicates of
another row, huge (squared norm overflows float64), tiny (subnormal-range), NaN, +/-Inf, or a
single NaN among finite values. ``x64`` is the float64 (b, p, n) array the computation sees.

Runs are bounded and reproducible: every test uses ``SETTINGS`` (derandomize, no database, a
fixed example budget), so CI sees the same examples on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ROW_KINDS = (
    "normal",
    "normal",
    "normal",
    "normal",
    "zero",
    "duplicate",
    "huge",
    "tiny",
    "nan",
    "inf",
    "neg_inf",
    "one_nan",
)
LAYOUTS = ("c", "fortran", "strided", "last_axis_strided", "list")
DTYPES = (np.float64, np.float32, np.float16)
# Relative tolerance of a result rounded to the output dtype (plus float32 intermediates).
RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 4e-3}


def bounded(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


@dataclass
class StackCase:
    x: Any  # what the caller passes
    x64: np.ndarray  # (b, p, n) float64 values the computation sees
    dtype: np.dtype
    batched: bool
    layout: str
    kinds: list  # per row kind (same for every problem of a batch)
    item_shape: tuple  # shape of one aggregate as returned

    @property
    def b(self) -> int:
        return self.x64.shape[0]

    @property
    def p(self) -> int:
        return self.x64.shape[1]

    @property
    def n(self) -> int:
        return self.x64.shape[2]

    def snapshot(self) -> Any:
        if isinstance(self.x, list):
            return [a.copy() for a in self.x]
        return self.x.copy()

    def unchanged(self, snap: Any) -> bool:
        if isinstance(self.x, list):
            return all(a.tobytes() == s.tobytes() for a, s in zip(self.x, snap)) and len(
                self.x
            ) == len(snap)
        return np.array_equal(np.asarray(self.x), snap, equal_nan=True)

    def nonfinite_rows(self) -> np.ndarray:
        """(b, p) rows holding a NaN or Inf."""
        return ~np.isfinite(self.x64).all(axis=2)

    def sq_overflow_rows(self) -> np.ndarray:
        """(b, p) rows whose squared norm is not finite in float64 (NaN/Inf, or overflow)."""
        with np.errstate(over="ignore", invalid="ignore"):
            sq = np.einsum("qij,qij->qi", self.x64, self.x64)
        return ~np.isfinite(sq)


def _fill_row(
    kind: str, rng: np.random.Generator, n: int, scale: float, dtype: np.dtype
) -> np.ndarray:
    info = np.finfo(dtype)
    if kind == "normal":
        return rng.standard_normal(n) * scale
    if kind == "zero":
        return np.zeros(n)
    if kind == "huge":  # finite, but the squared norm overflows float64 (float64 only)
        return (
            np.sign(rng.standard_normal(n)) * 1e200
            if dtype == np.float64
            else rng.standard_normal(n) * float(info.max) / 8
        )
    if kind == "tiny":
        return rng.standard_normal(n) * float(info.tiny) * 4
    if kind == "nan":
        return np.full(n, np.nan)
    if kind == "inf":
        return np.full(n, np.inf)
    if kind == "neg_inf":
        return np.full(n, -np.inf)
    if kind == "one_nan":
        row = rng.standard_normal(n) * scale
        row[rng.integers(n)] = np.nan
        return row
    raise AssertionError(kind)


@st.composite
def stacks(
    draw: Any,
    *,
    p_min: int = 1,
    p_max: int = 10,
    n_max: int = 24,
    big_p: bool = False,
    dtypes: tuple = DTYPES,
    kinds: tuple = ROW_KINDS,
    allow_batch: bool = True,
    layouts: tuple = LAYOUTS,
) -> StackCase:
    """A gradient stack. big_p: p up to 128 in a few examples (kept rare: FA's IRLS at p = 128
    costs ~0.1 s)."""
    if big_p and draw(st.integers(0, 9)) == 0:
        p = draw(st.sampled_from([64, 128]))
    else:
        p = draw(st.integers(p_min, p_max))
    n = draw(st.integers(1, n_max))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    layout = draw(st.sampled_from(layouts))
    b = draw(st.sampled_from([None, 1, 2])) if allow_batch and layout != "list" else None
    e_max = {np.dtype(np.float64): 30, np.dtype(np.float32): 15, np.dtype(np.float16): 2}[dtype]
    scale = 10.0 ** draw(st.integers(-e_max, e_max))
    row_kinds = draw(st.lists(st.sampled_from(kinds), min_size=p, max_size=p))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bb = 1 if b is None else b
    x = np.empty((bb, p, n), dtype=np.float64)
    for q in range(bb):
        for i, kind in enumerate(row_kinds):
            if kind == "duplicate":
                src = next((j for j in range(i) if row_kinds[j] != "duplicate"), None)
                x[q, i] = x[q, src] if src is not None else rng.standard_normal(n) * scale
            else:
                x[q, i] = _fill_row(kind, rng, n, scale, dtype)
    with np.errstate(over="ignore"):
        xd = x.astype(dtype)
    x64 = xd.astype(np.float64)
    arr = xd if b is not None else xd[0]
    if layout == "fortran":
        arr = np.asfortranarray(arr)
    elif layout == "strided":  # a view that skips every other row of a larger buffer
        big = np.zeros(arr.shape[:-2] + (2 * arr.shape[-2], arr.shape[-1]), dtype=dtype)
        big[..., ::2, :] = arr
        arr = big[..., ::2, :]
    elif layout == "last_axis_strided":
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=dtype)
        big[..., ::2] = arr
        arr = big[..., ::2]
    item_shape = (n,)
    if layout == "list":
        arr = [np.array(r) for r in arr]
    if b is not None:
        item_shape = (b, n)
    return StackCase(arr, x64, dtype, b is not None, layout, row_kinds, item_shape)


def assert_weighted_sum(
    case: StackCase, out: np.ndarray, coef: np.ndarray, excluded: np.ndarray
) -> None:
    """out == sum_i coef_i g_i over the non-excluded rows, to the output dtype's rounding."""
    out64 = np.asarray(out, np.float64).reshape(case.b, case.n)
    coef = np.asarray(coef, np.float64).reshape(case.b, case.p)
    keep = ~np.asarray(excluded).reshape(case.b, case.p)
    xs = np.where(keep[:, :, None], case.x64, 0.0)
    c = np.where(keep, coef, 0.0)
    ref = np.einsum("qi,qij->qj", c, xs)
    bound = np.einsum("qi,qij->qj", np.abs(c), np.abs(xs))
    tol = RTOL[np.dtype(case.dtype)] * bound + np.finfo(case.dtype).tiny * 4
    assert np.all(np.abs(out64 - ref) <= tol), (np.max(np.abs(out64 - ref) - tol), case.layout)
