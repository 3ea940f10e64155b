"""Pre-aggregation steps, composable with any rule: nearest-neighbour mixing and bucketing.

Both are linear maps of the workers' rows, Y = M X, kept as a 0/1 membership matrix and a
count per mixed row: a mixed row is the sum of its members divided by their number (numpy's
mean), formed by a native product whose result does not depend on the thread count. The
p-space work (the Gram of mixed rows, the composed map) is O(p^3) matrix products, never the
O(p^4) of a contraction without order.

- NNM (Allouah et al. 2023, "Fixing by Mixing"): row i of M averages the p - f workers nearest
  to worker i (itself included; squared distances from the Gram matrix, ties to the lower
  index). Needs p > 2f. The rule then runs on the p mixed rows with the same f.
- Bucketing (Karimireddy, He and Jaggi 2022): the workers are shuffled (numpy Generator from
  ``seed``) and cut into ceil(p / s) buckets of s consecutive workers (the last one smaller);
  each bucket is replaced by the mean of its members. The rule runs on the buckets with the
  same f (at most f buckets hold a Byzantine worker), so its precondition is checked on
  ceil(p / s).

Non-finite workers are excluded before mixing (their columns of M are 0). A mixed row with no
member left (an NNM row of an excluded worker, a bucket of excluded workers only) is itself
excluded from the rule, which then runs with f_eff = max(f - e, 0) as usual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._arrays import Stack, as_stack, check_int
from .._backend import core, get_num_threads
from .._memory import check_rule_memory
from ._source import Source, _zero_excluded, mix_matrix, mixed_gram, stack_gram

PRE_STEPS = ("nnm", "bucketing")


def parse_pre(pre: Any, fn: str) -> tuple[Any, ...]:
    if pre is None:
        return ()
    steps = (
        (pre,) if isinstance(pre, str) else tuple(pre) if isinstance(pre, (list, tuple)) else None
    )
    if steps is None or not all(isinstance(s, str) and s in PRE_STEPS for s in steps):
        raise ValueError(
            f"{fn}: pre must be None, 'nnm', 'bucketing' or a sequence of them, got {pre!r}"
        )
    return steps


def check_pre_rows(fn: str, steps: Sequence[Any], p: int, f: int, bucket_size: int) -> int:
    """The number of rows after the steps; raises ValueError if an "nnm" step would see p' <= 2f
    rows (p' counted after the bucketing steps before it, as the rule's own precondition)."""
    rows = p
    for s in steps:
        if s == "nnm" and not rows > 2 * f:
            seen = (
                f"{rows}"
                if rows == p
                else f"{rows} (the {p} workers after bucketing with bucket_size = {bucket_size})"
            )
            raise ValueError(f"{fn}: pre-aggregation 'nnm' needs p > 2f, got p = {seen}, f = {f}")
        if s == "bucketing":
            rows = math.ceil(rows / bucket_size)
    return rows


def _identity_mix(b: int, p: int, excluded: np.ndarray) -> np.ndarray:
    """The (b, p, p) identity with the rows of excluded workers zeroed (mix None stands for it)."""
    m = np.repeat(np.eye(p)[None], b, axis=0)
    m[excluded] = 0.0
    return m


def build_source(
    st: Stack, f: int, steps: Sequence[str], bucket_size: int, rng: np.random.Generator
) -> Source:
    if not steps:
        return Source(st, f=f)
    g = stack_gram(st)
    b, p = st.b, st.p
    diag = np.diagonal(g, axis1=1, axis2=2)
    excl0 = ~np.isfinite(diag)
    g0 = _zero_excluded(g, excl0)
    mix = None  # the composed (b, p', p) map; None: the identity with excluded rows zeroed
    excl = excl0.copy()
    done: list[Any] = []
    for step in steps:
        if not isinstance(
            step, str
        ):  # row scaling (rules/clipping.py: clipping, arc): Y <- diag(s) Y
            cur = mix if mix is not None else _identity_mix(b, p, excl0)
            # excluded rows get factor 0, not 1: their norm from the zeroed Gram is 0, and a
            # factor of 1 kept a NaN worker's row in the mix (0 * NaN poisoned every output)
            s = np.where(excl, 0.0, step.factors(cur, excl, g0))  # (b, p')
            pc = s.shape[1]
            a = np.zeros((b, pc, pc))
            a[:, np.arange(pc), np.arange(pc)] = s
            d = np.ones((b, pc))
            new_excl = excl.copy()
        elif step == "nnm":
            gc = mixed_gram(g0, tuple(done)) if done else g0
            m = core.nnm_matrix(gc, f, excl.astype(np.uint8))["matrix"]
            a = (m != 0).astype(np.float64)
            d = np.maximum(a.sum(axis=2), 1.0)  # rows of excluded workers: empty, d = 1
            new_excl = excl.copy()
        else:
            pc = p if mix is None else mix.shape[1]
            nb = math.ceil(pc / bucket_size)
            a = np.zeros((b, nb, pc))
            new_excl = np.zeros((b, nb), bool)
            for q in range(b):
                perm = rng.permutation(pc)
                for j in range(nb):
                    members = [
                        i for i in perm[j * bucket_size : (j + 1) * bucket_size] if not excl[q, i]
                    ]
                    if members:
                        a[q, j, members] = 1.0
                    else:
                        new_excl[q, j] = True
            d = np.maximum(a.sum(axis=2), 1.0)
        mix = a / d[:, :, None] if mix is None else mix_matrix(mix, a, d)
        done.append((a, d))
        excl = new_excl
    return Source(
        st, mix=mix, excluded=excl, excluded_orig=excl0, gram_orig=g, f=f, steps=tuple(done)
    )


def nnm(gradients: Any, f: int) -> Any:
    """The NNM-mixed rows of a stack: same shape, framework, dtype and device as the input
    ((p, n), (b, p, n); a list gives a (p, *shape) stack). Rows of non-finite workers come back
    as zeros."""
    fn = "nnm"
    st = as_stack(gradients, fn)
    f = check_int(f, fn, "f", low=0)
    if not st.p > 2 * f:
        raise ValueError(f"{fn}: needs p > 2f, got p = {st.p}, f = {f}")
    check_rule_memory(fn, "mean", ("nnm",), st.b, st.p, st.p, get_num_threads(), label="nnm")
    src = build_source(st, f, ("nnm",), 1, np.random.default_rng(0))
    return _restore_rows(st, src.rows())


def bucketing(gradients: Any, bucket_size: int, *, seed: int = 0) -> Any:
    """Bucket means of a shuffled stack: (ceil(p / s), n) or (b, ceil(p / s), n), in the input's
    framework, dtype and device. Buckets holding only non-finite workers come back as zeros."""
    fn = "bucketing"
    st = as_stack(gradients, fn)
    s = check_int(bucket_size, fn, "bucket_size", low=1)
    check_rule_memory(
        fn, "mean", ("bucketing",), st.b, st.p, st.p, get_num_threads(), label="bucketing"
    )
    src = build_source(
        st, 0, ("bucketing",), s, np.random.default_rng(check_int(seed, fn, "seed", low=0))
    )
    return _restore_rows(st, src.rows())


def _restore_rows(st: Stack, y: Any) -> Any:
    if st.framework == "torch":
        import torch

        t: Any = y if isinstance(y, torch.Tensor) else torch.from_numpy(y)
        t = t.to(device=st.device, dtype=st.dtype)
    else:
        t = np.asarray(y).astype(st.dtype, copy=False)
    if st.from_list:
        return t.reshape((t.shape[1],) + tuple(st.item_shape))
    return t if st.batched else t[0]
