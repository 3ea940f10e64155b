"""Byzantine attacks: given the honest gradients of one step, produce the f Byzantine ones.

``attack(name, honest, f, *, seed=0, **params)``: honest is an (h, n) numpy array or torch
tensor (h >= 1 honest workers); returns an (f, n) stack in the same framework, dtype and device.
Stack it with the honest gradients to get the p = h + f inputs of a rule. Random attacks draw
from ``numpy.random.default_rng(seed)``; statistics of the honest gradients are taken in
float64.

====================== =====================================================================
"random"               i.i.d. uniform [0, 1) vectors (the FA paper's attack; the attackers
                       agree with each other, cosine ~0.75)
"sign_flip"            -scale * (honest mean); scale = 1.0
"gaussian"             i.i.d. N(mu, sigma^2) vectors; mu = 0.0, sigma = 1.0
"zero", "drop"         one attack, two names: attacker j sends honest[j % h] with exactly
                       round(fraction * n) coordinates, chosen at random, set to 0;
                       fraction = 0.5 (1.0 sends zero vectors). (The FA code's "drop"
                       returned the gradient unchanged.)
"nan", "inf"           vectors of NaN / +Inf
"alie"                 "A little is enough" (Baruch et al. 2019): mean - z * std per coordinate
                       (std with ddof = 1, needs h >= 2); by default z = z_max of the paper:
                       s = floor(p / 2 + 1) - f, z = Phi^{-1}((p - s) / p), p = h + f
                       (param z overrides it)
"ipm"                  inner product manipulation (Xie et al. 2020): -eps * (honest mean);
                       eps = 0.1
"mimic"                every attacker copies one honest worker, honest[target]; target = 0
                       (Karimireddy, He and Jaggi 2022)
====================== =====================================================================

Label flipping and distorted-data workers act on the data, not on gradients: they belong to
the experiment harness.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from ._arrays import check_float, check_int
from ._backend import is_torch_tensor

ATTACKS = ("random", "sign_flip", "gaussian", "zero", "drop", "nan", "inf", "alie", "ipm", "mimic")

_PARAMS = {
    "random": {}, "sign_flip": {"scale": 1.0}, "gaussian": {"mu": 0.0, "sigma": 1.0},
    "zero": {"fraction": 0.5}, "drop": {"fraction": 0.5}, "nan": {}, "inf": {},
    "alie": {"z": None}, "ipm": {"eps": 0.1}, "mimic": {"target": 0},
}


def alie_z(p: int, f: int) -> float:
    """z_max of Baruch et al. 2019 for p workers of which f are Byzantine:
    s = floor(p / 2 + 1) - f, z = Phi^{-1}((p - s) / p)."""
    p = check_int(p, "alie_z", "p", low=1)
    f = check_int(f, "alie_z", "f", low=0, high=p)
    s = math.floor(p / 2 + 1) - f
    q = (p - s) / p
    if not 0.0 < q < 1.0:
        raise ValueError(f"alie_z: (p - s) / p must be in (0, 1), got {q} for p = {p}, f = {f} (s = {s})")
    return NormalDist().inv_cdf(q)


def attack(name: str, honest: Any, f: int, *, seed: int = 0, **params: Any) -> Any:
    """The f Byzantine gradients of the named attack (see ATTACKS and the module doc)."""
    fn = "attack"
    if not isinstance(name, str) or name not in ATTACKS:
        raise ValueError(f"{fn}: name must be one of {', '.join(ATTACKS)}, got {name!r}")
    unknown = set(params) - set(_PARAMS[name])
    if unknown:
        raise TypeError(f"{fn}: attack {name!r} takes no parameter {sorted(unknown)[0]!r}")
    prm = {**_PARAMS[name], **params}
    f = check_int(f, fn, "f", low=0)
    seed = check_int(seed, fn, "seed", low=0)
    torch_in = is_torch_tensor(honest)
    if not torch_in and not isinstance(honest, np.ndarray):
        raise TypeError(f"{fn}: honest must be a numpy array or a torch tensor, got {type(honest).__name__}")
    if len(honest.shape) != 2 or honest.shape[0] < 1:
        raise ValueError(f"{fn}: honest must be (h, n) with h >= 1, got shape {tuple(honest.shape)}")
    if torch_in:
        if not honest.dtype.is_floating_point:
            raise TypeError(f"{fn}: honest must have a floating dtype, got {honest.dtype}")
        h = honest.detach().cpu().double().numpy()
    else:
        if not np.issubdtype(honest.dtype, np.floating):
            raise TypeError(f"{fn}: honest must have a floating dtype, got {honest.dtype}")
        h = np.asarray(honest, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite honest input gives non-finite attacks
        out = _make(name, h, f, np.random.default_rng(seed), prm, fn)
    if torch_in:
        import torch

        return torch.from_numpy(out).to(dtype=honest.dtype, device=honest.device)
    return out.astype(honest.dtype)


def _scaled_mean_std(h: np.ndarray, std: bool = False) -> tuple:
    """Per-coordinate mean (and std, ddof = 1) of the honest rows, computed on the rows divided
    by their largest magnitude per coordinate: plain sums and squares overflow for finite float64
    values beyond ~1e154 (squares) or near DBL_MAX (sums) although the statistics do not."""
    s = np.max(np.abs(h), axis=0)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    u = h / s
    mean = u.mean(axis=0) * s
    return (mean, u.std(axis=0, ddof=1) * s) if std else (mean, None)


def _make(name: str, h: np.ndarray, f: int, rng: np.random.Generator, prm: dict, fn: str) -> np.ndarray:
    nh, n = h.shape
    if name == "random":
        return rng.random((f, n))
    if name == "sign_flip":
        scale = check_float(prm["scale"], fn, "scale")
        return np.repeat(-scale * _scaled_mean_std(h)[0][None], f, axis=0)
    if name == "gaussian":
        mu = check_float(prm["mu"], fn, "mu")
        sigma = check_float(prm["sigma"], fn, "sigma", low=0.0)
        return mu + sigma * rng.standard_normal((f, n))
    if name in ("zero", "drop"):
        frac = check_float(prm["fraction"], fn, "fraction", low=0.0)
        if frac > 1.0:
            raise ValueError(f"{fn}: fraction must be in [0, 1], got {frac}")
        k = int(round(frac * n))
        out = np.stack([h[j % nh] for j in range(f)]) if f else np.zeros((0, n))
        for j in range(f):
            out[j, rng.choice(n, size=k, replace=False)] = 0.0
        return out
    if name == "nan":
        return np.full((f, n), np.nan)
    if name == "inf":
        return np.full((f, n), np.inf)
    if name == "alie":
        if nh < 2:
            raise ValueError(f"{fn}: attack 'alie' needs at least 2 honest gradients for a standard deviation, got {nh}")
        z = alie_z(nh + f, f) if prm["z"] is None else check_float(prm["z"], fn, "z")
        mean, sd = _scaled_mean_std(h, std=True)
        row = mean - z * sd
        return np.repeat(row[None], f, axis=0)
    if name == "ipm":
        eps = check_float(prm["eps"], fn, "eps")
        return np.repeat(-eps * _scaled_mean_std(h)[0][None], f, axis=0)
    target = check_int(prm["target"], fn, "target", low=0, high=nh - 1)  # mimic
    return np.repeat(h[target][None], f, axis=0)
