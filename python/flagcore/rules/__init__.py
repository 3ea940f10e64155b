"""Robust aggregation rules behind one call: ``flagcore.aggregate(gradients, rule, **params)``.

Input forms and output convention are those of ``flag_aggregate``: (p, n) or (b, p, n) numpy
arrays / torch tensors, or a list/tuple of p arrays/tensors of one shape; the result comes back
in the caller's framework, dtype, device and shape.

PLACEHOLDER (to be replaced by the rules issue, keeping this signature): only "mean", "median"
and "flag" exist here, in plain NumPy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import as_numpy_stack, as_stack
from ..flag import flag_aggregate

RULES = ("mean", "median", "flag")


def aggregate(gradients: Any, rule: str, **params: Any) -> Any:
    """Aggregate a stack of p gradients with the named rule (see RULES)."""
    if rule == "flag":
        return flag_aggregate(gradients, **params)
    if rule not in RULES:
        raise ValueError(f"aggregate: rule must be one of {', '.join(RULES)}, got {rule!r}")
    st = as_stack(gradients, "aggregate")
    x = as_numpy_stack(st).astype(np.float64)
    out = x.mean(axis=1) if rule == "mean" else np.median(x, axis=1)
    return st.restore(out)
