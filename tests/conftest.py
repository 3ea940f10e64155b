"""Shared fixtures and input factories (benchmarks reuse make_gradients)."""
from __future__ import annotations

import pytest

from flagcore._reference import make_gradients  # noqa: F401  (shared with bench/)

try:
    import torch
except ImportError:  # torch is optional
    torch = None

def require_torch():
    if torch is None:
        pytest.skip("torch is not installed")
    return torch

