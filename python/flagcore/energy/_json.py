"""Strict JSON for the energy tools: NaN and infinities become null (json's default writes
the non-standard tokens NaN and Infinity, which strict parsers reject)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def to_strict(x: Any) -> Any:
    """x with numpy values as Python ones, tuples as lists and non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): to_strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_strict(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_strict(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def dump(obj: Any, fh: Any, **kw: Any) -> None:
    """json.dump of to_strict(obj), refusing anything non-standard that slipped through."""
    json.dump(to_strict(obj), fh, allow_nan=False, **kw)
