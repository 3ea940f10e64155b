"""Shared fixtures and input factories (benchmarks reuse make_gradients)."""
from __future__ import annotations

import numpy as np
import pytest

try:
    import torch
except ImportError:  # torch is optional
    torch = None

def make_gradients(p: int, n: int, *, byzantine: int = 0, seed: int = 0, dtype=np.float64,
                   spread: float = 1.0) -> np.ndarray:
    """p gradients: honest ones share a direction plus noise; byzantine ones send U[0, 1)."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal(n)
    honest = true + spread * rng.standard_normal((p - byzantine, n))
    honest *= rng.uniform(0.5, 2.0, size=(p - byzantine, 1))  # different norms
    byz = rng.random((byzantine, n))
    return np.concatenate([honest, byz]).astype(dtype)


def require_torch():
    if torch is None:
        pytest.skip("torch is not installed")
    return torch

