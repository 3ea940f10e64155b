"""Byzantine attacks: given the honest gradients of one step, produce the f Byzantine ones.

``attack(name, honest, f, *, seed=0, **params)``: honest is an (h, n) numpy array or torch
tensor; returns an (f, n) stack in the same framework, dtype and device. Stack it with the
honest gradients to get the p = h + f inputs of a rule.

PLACEHOLDER (to be replaced by the rules/attacks issue, keeping this signature): only
"random" (uniform [0, 1), the FA paper's), "sign_flip" and "nan".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import is_torch_tensor

ATTACKS = ("random", "sign_flip", "nan")


def attack(name: str, honest: Any, f: int, *, seed: int = 0, **params: Any) -> Any:
    if name not in ATTACKS:
        raise ValueError(f"attack: name must be one of {', '.join(ATTACKS)}, got {name!r}")
    torch_in = is_torch_tensor(honest)
    h = honest.detach().cpu().double().numpy() if torch_in else np.asarray(honest, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = h.shape[1]
    if name == "random":
        out = rng.random((f, n))
    elif name == "sign_flip":
        out = np.repeat(-params.get("scale", 1.0) * h.mean(axis=0, keepdims=True), f, axis=0)
    else:
        out = np.full((f, n), np.nan)
    if torch_in:
        import torch

        return torch.from_numpy(out).to(dtype=honest.dtype, device=honest.device)
    return out.astype(honest.dtype)
