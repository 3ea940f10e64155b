"""Data, model and local training of the example (flagcore's experiment harness pieces)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from flagcore.experiments.data import DATA_ATTACKS, distortion_of, load_task, shard
from flagcore.experiments.models import make_model

# The [tool.flwr.app.config] defaults of pyproject.toml, for runs without a run config
# (flwr.simulation.run_simulation); `flwr run` passes the pyproject values and -c overrides.
DEFAULTS = {
    "num-server-rounds": 15,
    "rule": "flag[scale=median_norm]",
    "f": 3,
    "num-byzantine": 3,
    "attack": "alie",
    "dataset": "digits",
    "model": "mlp",
    "local-epochs": 2,
    "batch-size": 32,
    "lr": 0.3,
    "seed": 0,
}

__all__ = [
    "DATA_ATTACKS",
    "DEFAULTS",
    "build_model",
    "client_data",
    "evaluate",
    "test_data",
    "train",
]


@functools.lru_cache(maxsize=4)
def _task(dataset: str, seed: int):
    return load_task(dataset, seed)


@functools.lru_cache(maxsize=8)
def _shards(dataset: str, seed: int, num_partitions: int, attack: str, num_byzantine: int) -> tuple:
    """Every partition's (x, y), with the data attack applied to partitions < num_byzantine."""
    distorted = (
        [(w, distortion_of(attack, w)) for w in range(num_byzantine)]
        if attack in DATA_ATTACKS
        else []
    )
    return shard(_task(dataset, seed), num_partitions, seed, distorted)


def client_data(
    dataset: str, seed: int, partition: int, num_partitions: int, attack: str, num_byzantine: int
):
    xs, ys = _shards(dataset, seed, num_partitions, attack, num_byzantine)
    return xs[partition], ys[partition]


def test_data(dataset: str, seed: int):
    t = _task(dataset, seed)
    return t.x_test, t.y_test


def build_model(dataset: str, model: str, seed: int) -> nn.Module:
    t = _task(dataset, seed)
    torch.manual_seed(seed)
    return make_model(model, t.input_shape, t.n_classes)


def train(
    net: nn.Module,
    x,
    y,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    bootstrap: int | None = None,
) -> float:
    """Plain SGD on (x, y); with ``bootstrap = k`` on a seeded bootstrap resample instead (what
    an attacker's extra honest samples use, see flagcore.flower.SAMPLE_KEY). Returns the mean
    loss."""
    g = torch.Generator().manual_seed(seed)
    if bootstrap is not None:
        idx = torch.randint(
            0, len(y), (len(y),), generator=torch.Generator().manual_seed(seed * 1009 + bootstrap)
        )
        x, y = x[idx], y[idx]
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(net(x[b]), y[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            count += len(b)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(net: nn.Module, x, y) -> tuple[float, float]:
    """(loss, accuracy); a non-finite model gives loss inf and its (chance-level) accuracy."""
    net.eval()
    out = net(x)
    loss = float(nn.functional.cross_entropy(out, y))
    acc = float((out.argmax(1) == y).float().mean())
    return (loss if np.isfinite(loss) else float("inf")), acc
