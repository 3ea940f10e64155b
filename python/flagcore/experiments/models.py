"""Small models for the robustness harness (no batch norm, so per-worker gradients can be
computed with torch.func.vmap in one pass)."""

from __future__ import annotations

import math
from typing import Any

MODELS = ("mlp", "cnn", "linear")


def make_model(name: str, input_shape: tuple[Any, ...], n_classes: int) -> Any:
    """mlp: flatten -> 128 -> 64 -> classes (ReLU), 17k parameters on digits. cnn: two 3x3
    convolutions (16, 32 channels), 2x2 max-pool, 32 hidden units, 21k parameters on digits
    (images only). linear: multinomial logistic regression."""
    import torch.nn as nn

    d = int(math.prod(input_shape))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, n_classes),
        )
    if name == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(d, n_classes))
    if name == "cnn":
        if len(input_shape) != 3:
            raise ValueError(
                f"make_model: model 'cnn' needs (channels, height, width) inputs, got {input_shape}"
            )
        c, h, w = input_shape
        return nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (h // 2) * (w // 2), 32),
            nn.ReLU(),
            nn.Linear(32, n_classes),
        )
    raise ValueError(f"make_model: model must be one of {', '.join(MODELS)}, got {name!r}")


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
