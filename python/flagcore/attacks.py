"""Byzantine attacks: given the honest gradients of one step, produce the f Byzantine ones.

``attack(name, honest, f, *, seed=0, rule=None, rule_params=None, return_info=False, **params)``

honest: an (h, n) numpy array or torch tensor, or a list/tuple of h arrays/tensors of one shape
(like every peer library); h >= 1 honest workers. Returns an (f, n) stack in the same framework,
dtype and device, or, for list input, a list of f arrays/tensors of the items' shape. Stack (or
concatenate) it with the honest gradients to get the p = h + f inputs of a rule. Random attacks
draw from ``numpy.random.default_rng(seed)``; statistics of the honest gradients are taken in
float64, over blocks of columns (no float64 copy of the whole stack for the non-adaptive
attacks). An attack whose estimated peak memory exceeds what the process may still use raises
MemoryError before it allocates (``_attack_need``; ``FLAGCORE_MEMORY_CHECK=0`` skips the check).

Non-adaptive attacks (``ATTACKS``):

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
                       (param z overrides it). z_max needs f < floor(p / 2 + 1): a larger f
                       without z is a ValueError; f = 0 returns no rows, as for every attack
"ipm"                  inner product manipulation (Xie et al. 2020): -eps * (honest mean);
                       eps = 0.1
"mimic"                every attacker copies one honest worker, honest[target]; target = 0
                       (Karimireddy, He and Jaggi 2022)
====================== =====================================================================

Adaptive (omniscient) attacks (``ADAPTIVE_ATTACKS``) choose their parameter against the rule
under attack, given as ``rule``: a name of ``flagcore.aggregate`` (configured with
``rule_params``; f is filled in when absent) or a callable taking a float64 (p, n) numpy stack and
returning the (n,) aggregate. The rule is built once per call (``flagcore.rules.make_rule``).
All f attackers send the same vector. The *deviation* they maximise is

    D(B) = || rule(H + B) - rule(H + M) ||,   M = f copies of the honest mean mu,

the distance between the aggregate under attack and the aggregate had the attackers sent the
honest mean. For ``mean`` this is ByzFL's criterion ||rule(H + B) - mu||; the reference
rule(H + M) keeps p and f unchanged, so every rule's preconditions hold, and it puts rules whose
output is not on the gradients' scale (FA's "paper" scale) on their own footing.

====================== =====================================================================
"optimal_alie"         ALIE's vector mu - z * std with z chosen by ByzFL's line maximisation
                       (LineMaximize: start 0, step delta, expansion while D improves, then
                       contraction by ``ratio``; ``evals`` evaluations of the rule); ALIE's
                       z_max is evaluated too where it is defined, so the result is never
                       below plain "alie".
                       evals = 16, start = 0.0, delta = 1.0, ratio = 0.8. Needs rule.
"optimal_ipm"          IPM's vector -eps * mu with eps chosen the same way (plain "ipm"'s
                       eps = 0.1 evaluated too). Needs rule.
"min_max", "min_sum"   Shejwalkar and Houmansadr (NDSS 2021): mu - gamma * d with d the
                       perturbation ("unit_vec": mu / ||mu||, "std": per-coordinate std,
                       "sign": sign(mu)). Without rule (AGR-agnostic, the paper's): the largest
                       gamma with max_i ||b - g_i|| <= max_{i,j} ||g_i - g_j|| (min-max) or
                       sum_i ||b - g_i||^2 <= max_j sum_i ||g_j - g_i||^2 (min-sum), solved in
                       closed form (no bisection). With rule (AGR-tailored): gamma maximises D
                       by line maximisation started at the agnostic gamma, which is kept when
                       nothing beats it. perturbation = "unit_vec", evals = 16, ratio = 0.8.
"fa_aware"             an attack on the Flag Aggregator designed from its objective (see
                       docs/evaluation.md): b(theta) = ||g||_med * (cos theta (-u) +
                       sin theta w), u = mu / ||mu||, w the honest gradients' main direction of
                       spread orthogonal to u, theta on a grid of ``angles`` points in
                       [0, 2 pi) (theta = 0 is a sign flip of the mean at the median honest
                       norm), plus ALIE's and IPM's default vectors as candidates. FA's
                       reconstruction ratios v_i (from flag_aggregate on the attacked stack)
                       must stay at the honest level: min over attackers of v_b >= the
                       ``quantile`` of the honest ratios minus ``slack``. Among the candidates
                       that meet it, the one with the largest D on ``rule`` (default "flag");
                       if none meets it, the most FA-trusted one (largest min v_b).
                       angles = 24, quantile = 0.5, slack = 0.0; FA's own options (r, lam,
                       max_iter, eps, tol, scale) come from rule_params when rule is "flag",
                       else from ``flag_params``.
====================== =====================================================================

Non-adaptive attacks accept ``rule``/``rule_params`` and ignore them (so a harness can pass the
rule under test to any attack). Adaptive attacks ignore honest rows holding NaN/Inf (the rules
exclude them too); with fewer finite rows than the statistics need they send the non-adaptive
attack's vector of the full input (non-finite, as that attack's would be).

Norms, distances and statistics are taken on the gradients divided by a power of two (exact), so
the adaptive attacks are scale-equivariant over the whole finite float64 range (gamma, the
deviations and the vectors scale with the gradients; z, eps and fa_aware's choice do not); the
targeted rule always gets the gradients at the caller's scale.

``return_info=True`` also returns an ``AttackInfo`` (the parameter chosen, its deviation, the
rule evaluations spent, and for fa_aware the ratios).

Label flipping and distorted-data workers act on the data, not on gradients: they belong to
the experiment harness.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable, cast

import numpy as np

from ._arrays import as_stack, check_choice, check_float, check_int
from ._backend import is_torch_tensor
from ._memory import check_memory

ATTACKS = ("random", "sign_flip", "gaussian", "zero", "drop", "nan", "inf", "alie", "ipm", "mimic")
ADAPTIVE_ATTACKS = ("optimal_alie", "optimal_ipm", "min_max", "min_sum", "fa_aware")
ALL_ATTACKS = ATTACKS + ADAPTIVE_ATTACKS
# Adaptive attacks that cannot run without a rule to target.
NEEDS_RULE = ("optimal_alie", "optimal_ipm")
PERTURBATIONS = ("unit_vec", "std", "sign")
_FLAG_OPTIONS = ("r", "lam", "max_iter", "eps", "tol", "scale")

_SEARCH: dict[str, Any] = {"evals": 16, "start": 0.0, "delta": 1.0, "ratio": 0.8}
_PARAMS: dict[str, dict[str, Any]] = {
    "random": {},
    "sign_flip": {"scale": 1.0},
    "gaussian": {"mu": 0.0, "sigma": 1.0},
    "zero": {"fraction": 0.5},
    "drop": {"fraction": 0.5},
    "nan": {},
    "inf": {},
    "alie": {"z": None},
    "ipm": {"eps": 0.1},
    "mimic": {"target": 0},
    "optimal_alie": dict(_SEARCH),
    "optimal_ipm": dict(_SEARCH),
    "min_max": {"perturbation": "unit_vec", "evals": 16, "ratio": 0.8},
    "min_sum": {"perturbation": "unit_vec", "evals": 16, "ratio": 0.8},
    "fa_aware": {"angles": 24, "quantile": 0.5, "slack": 0.0, "flag_params": None},
}


@dataclass(frozen=True)
class AttackInfo:
    """What an attack chose.

    name: the attack. parameter: z (optimal_alie), eps (optimal_ipm), gamma (min_max, min_sum),
        theta in radians or the name of the candidate kept (fa_aware); None for non-adaptive
        attacks. deviation: D at that parameter (None without a rule). agnostic_parameter:
        min_max/min_sum's AGR-agnostic gamma. evaluations: calls of the targeted rule.
    byzantine_ratio, honest_ratio: fa_aware's min FA ratio over the attackers and the honest
        threshold it had to meet. feasible: whether fa_aware met it.
    """

    name: str
    parameter: Any = None
    deviation: float | None = None
    agnostic_parameter: float | None = None
    evaluations: int = 0
    byzantine_ratio: float | None = None
    honest_ratio: float | None = None
    feasible: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def alie_z(p: int, f: int) -> float:
    """z_max of Baruch et al. 2019 for p workers of which f are Byzantine:
    s = floor(p / 2 + 1) - f, z = Phi^{-1}((p - s) / p)."""
    p = check_int(p, "alie_z", "p", low=1)
    f = check_int(f, "alie_z", "f", low=0, high=p)
    s = math.floor(p / 2 + 1) - f
    q = (p - s) / p
    if not 0.0 < q < 1.0:
        raise ValueError(
            f"alie_z: (p - s) / p must be in (0, 1), got {q} for p = {p}, f = {f} (s = {s})"
        )
    return NormalDist().inv_cdf(q)


def attack(
    name: str,
    honest: Any,
    f: int,
    *,
    seed: int = 0,
    rule: Any = None,
    rule_params: dict[str, Any] | None = None,
    return_info: bool = False,
    **params: Any,
) -> Any:
    """The f Byzantine gradients of the named attack (see ALL_ATTACKS and the module doc).

    honest: (h, n) array/tensor or a list/tuple of h arrays/tensors of one shape.
    rule, rule_params: the rule an adaptive attack targets (a name of flagcore.aggregate and its
        parameters, or a callable (p, n) float64 stack -> (n,)); ignored by the others.
    return_info: also return an AttackInfo.
    """
    fn = "attack"
    if not isinstance(name, str) or name not in ALL_ATTACKS:
        raise ValueError(f"{fn}: name must be one of {', '.join(ALL_ATTACKS)}, got {name!r}")
    unknown = set(params) - set(_PARAMS[name])
    if unknown:
        raise TypeError(f"{fn}: attack {name!r} takes no parameter {sorted(unknown)[0]!r}")
    if not isinstance(return_info, bool):
        raise TypeError(f"{fn}: return_info must be a bool, got {return_info!r}")
    prm = {**_PARAMS[name], **params}
    f = check_int(f, fn, "f", low=0)
    seed = check_int(seed, fn, "seed", low=0)
    h, restore = _honest_rows(honest, fn)
    target = None
    if name in ADAPTIVE_ATTACKS:
        target = _target(name, rule, rule_params, f, h.nh + f, fn)
    elif rule_params is not None and not isinstance(rule_params, dict):
        raise TypeError(f"{fn}: rule_params must be a dict, got {rule_params!r}")
    check_memory(
        fn,
        f"attack {name!r} on {h.nh} honest rows of n = {h.n} with f = {f}",
        _attack_need(name, h, f, target is not None),
        "attack fewer coordinates per call (a layer or a slice of the gradient at a time), "
        "fewer workers, a non-adaptive attack, or a machine with more memory",
    )
    rng = np.random.default_rng(seed)
    with np.errstate(
        over="ignore", invalid="ignore"
    ):  # non-finite honest input gives non-finite attacks
        if name in ADAPTIVE_ATTACKS:
            out, info = _adaptive(name, h, f, rng, prm, target, rule, rule_params, fn)
        else:
            out, info = _make(name, h, f, rng, prm, fn), AttackInfo(name)
    res = restore(out)
    return (res, info) if return_info else res


# ---------------------------------------------------------------------- input / output
# Column blocks of the honest rows are converted to float64 one at a time (about this many bytes
# each), so that statistics of a float32 stack do not hold a float64 copy of all of it.
_BLOCK_BYTES = 1 << 25


class _Honest:
    """The honest gradients as given, read in float64 on demand: one row, a block of columns,
    or (the adaptive attacks) all of them at once. Nothing here writes to them."""

    def __init__(
        self,
        nh: int,
        n: int,
        block: Callable[[int, int], np.ndarray],
        row: Callable[[int], np.ndarray],
        copies: bool = True,
        itemsize: int = 8,
    ) -> None:
        self.nh, self.n, self._block, self._row = nh, n, block, row
        # copies: full() makes a float64 copy (it is a view of a float64 CPU input otherwise);
        # itemsize: bytes per value of the caller's dtype (what the result is returned in)
        self.copies, self.itemsize = copies, itemsize

    @classmethod
    def of_array(cls, h: np.ndarray) -> _Honest:
        return cls(
            h.shape[0],
            h.shape[1],
            lambda c0, c1: np.asarray(h[:, c0:c1], dtype=np.float64),
            lambda j: np.asarray(h[j], dtype=np.float64),
            copies=h.dtype != np.float64,
            itemsize=h.dtype.itemsize,
        )

    def block(self, c0: int, c1: int) -> np.ndarray:
        return self._block(c0, c1)

    def row(self, j: int) -> np.ndarray:
        return self._row(j)

    def full(self) -> np.ndarray:
        return self._block(0, self.n)

    def blocks(self) -> list[tuple[int, int]]:
        """Column ranges of about _BLOCK_BYTES of float64 each; none one column wide unless
        n = 1 (NumPy sums a single column pairwise, wider blocks row after row, as it does the
        whole stack: the statistics are the same bits for any block width)."""
        w = max(2, _BLOCK_BYTES // (8 * max(self.nh, 1)))
        edges = list(range(0, self.n, w)) + [self.n]
        if len(edges) > 2 and edges[-1] - edges[-2] == 1:
            del edges[-2]
        return list(zip(edges[:-1], edges[1:]))


# Peak memory of an attack beyond its input, in float64 rows of n (8 n bytes each), fitted to
# VmHWM in fresh processes (h = 12 and 32 honest rows, f = 3-12, n = 2e6-4e6, float32 and
# float64 inputs): (per honest row when the input is copied to float64, per honest row, per
# worker p = h + f, per attacker, fixed). The result in the caller's dtype adds
# f * itemsize / 8, the column blocks of the statistics 3 * _BLOCK_BYTES. An adaptive attack
# with a rule holds the (p, n) float64 stack the rule is evaluated on, the honest rows in its
# top rows (no other float64 copy of them); the rule's own temporaries are counted as p / 4
# rows (the largest measured, signguard's), its p x p work it checks itself when called.
# min_max / min_sum without a rule: a float64 copy of the honest rows and their centred copy.
_ATTACK_ROWS: dict[str, tuple[float, float, float, float, float]] = {
    "random": (0, 0, 0, 1, 1),
    "gaussian": (0, 0, 0, 1, 1),
    "nan": (0, 0, 0, 1, 1),
    "inf": (0, 0, 0, 1, 1),
    "zero": (0, 0, 0, 1, 2),
    "drop": (0, 0, 0, 1, 2),
    "sign_flip": (0, 0, 0, 0, 2),
    "ipm": (0, 0, 0, 0, 2),
    "alie": (0, 0, 0, 0, 3),
    "mimic": (0, 0, 0, 0, 1),
    "optimal_alie": (0, 0, 1.25, 0, 4),
    "optimal_ipm": (0, 0, 1.25, 0, 4),
    # min_max / min_sum without a rule; with one: the stack and the centred rows or the rule's
    # work. The fixed rows (mean, perturbation, their scaled copies) are counted generously here
    # and in fa_aware: with 4, the measured peaks came to 0.97-0.98 of the estimate at large n
    "min_max": (0, 2, 0, 0, 8),
    "min_sum": (0, 2, 0, 0, 8),
    "fa_aware": (0, 0, 2.25, 0, 8),
}


def _attack_need(name: str, h: _Honest, f: int, targeted: bool) -> float:
    """Estimated peak bytes of attack ``name`` (the model above)."""
    per_copy, per_h, per_p, per_f, fixed = _ATTACK_ROWS[name]
    p = h.nh + f
    rows = per_copy * h.nh * h.copies + per_h * h.nh + per_p * p + per_f * f + fixed
    if name in ("min_max", "min_sum") and targeted:
        rows = max(p + h.nh, 1.25 * p) + fixed
    rows += f * h.itemsize / 8
    return rows * 8.0 * h.n + 3 * _BLOCK_BYTES


def _torch_rows(t: Any) -> _Honest:
    """An (h, n) tensor (any device and floating dtype): blocks copied to the CPU in float64."""
    import torch

    return _Honest(
        int(t.shape[0]),
        int(t.shape[1]),
        lambda c0, c1: t[:, c0:c1].detach().cpu().double().numpy(),
        lambda j: t[j].detach().cpu().double().numpy(),
        copies=t.dtype != torch.float64 or t.device.type != "cpu",
        itemsize=t.element_size(),
    )


def _list_rows(rows: list[np.ndarray], n: int, itemsize: int) -> _Honest:
    def block(c0: int, c1: int) -> np.ndarray:
        out = np.empty((len(rows), c1 - c0))
        for i, r in enumerate(rows):
            out[i] = r[c0:c1]
        return out

    return _Honest(
        len(rows), n, block, lambda j: np.asarray(rows[j], dtype=np.float64), itemsize=itemsize
    )


def _repeated(out: np.ndarray) -> bool:
    """An (f, n) result that is one row broadcast f times (no copy made yet)."""
    return out.ndim == 2 and out.shape[0] > 1 and out.strides[0] == 0


def _fresh(out: np.ndarray) -> np.ndarray:
    """out as a contiguous array of its own: a read-only broadcast view (one row, perhaps an
    honest row of the caller's float64 input) is copied, so that no result shares the input's
    memory."""
    return np.ascontiguousarray(out) if out.flags.writeable else np.array(out)


def _honest_rows(honest: Any, fn: str) -> tuple[Any, ...]:
    """The honest rows (an _Honest) and a function that puts an (f, n) float64 result (or one
    row broadcast f times) back into the caller's framework, dtype, device and form."""
    if isinstance(honest, (list, tuple)):
        st = as_stack(honest, fn, arg="honest")
        first = honest[0]
        if st.on_cpu:
            isz = first.element_size() if st.framework == "torch" else first.dtype.itemsize
            h = _list_rows(st.data, st.n, isz)
        else:
            h = _torch_rows(st.torch_data[0])

        def restore_list(out: np.ndarray) -> list[Any]:
            if st.framework == "torch":
                import torch

                if _repeated(out):
                    row = torch.from_numpy(np.array(out[0])).to(
                        dtype=first.dtype, device=first.device
                    )
                    return [row.clone().reshape(st.item_shape) for _ in range(out.shape[0])]
                t = torch.from_numpy(_fresh(out)).to(dtype=first.dtype, device=first.device)
                return [t[j].reshape(st.item_shape) for j in range(out.shape[0])]
            return [out[j].astype(first.dtype).reshape(st.item_shape) for j in range(out.shape[0])]

        return h, restore_list
    torch_in = is_torch_tensor(honest)
    if not torch_in and not isinstance(honest, np.ndarray):
        raise TypeError(
            f"{fn}: honest must be a numpy array, a torch tensor, or a list/tuple of them, "
            f"got {type(honest).__name__}"
        )
    if len(honest.shape) != 2 or honest.shape[0] < 1:
        raise ValueError(
            f"{fn}: honest must be (h, n) with h >= 1, got shape {tuple(honest.shape)}"
        )
    if torch_in:
        if not honest.dtype.is_floating_point:
            raise TypeError(f"{fn}: honest must have a floating dtype, got {honest.dtype}")
        h = _torch_rows(honest)
    else:
        if not np.issubdtype(honest.dtype, np.floating):
            raise TypeError(f"{fn}: honest must have a floating dtype, got {honest.dtype}")
        h = _Honest.of_array(honest)

    def restore(out: np.ndarray) -> Any:
        if torch_in:
            import torch

            if _repeated(out):
                row = torch.from_numpy(np.array(out[0])).to(
                    dtype=honest.dtype, device=honest.device
                )
                return row.expand(out.shape[0], -1).contiguous()
            return torch.from_numpy(_fresh(out)).to(dtype=honest.dtype, device=honest.device)
        return out.astype(honest.dtype, order="C")

    return h, restore


def _target(
    name: str, rule: Any, rule_params: Any, f: int, p: int, fn: str
) -> Callable[..., Any] | None:
    """The targeted rule as a function (p, n) float64 -> (n,) float64, built once; None when an
    agnostic attack got no rule."""
    if rule_params is not None and not isinstance(rule_params, dict):
        raise TypeError(f"{fn}: rule_params must be a dict, got {rule_params!r}")
    if rule is None:
        if name == "fa_aware":
            rule = "flag"
        elif name in NEEDS_RULE:
            raise TypeError(
                f"{fn}: attack {name!r} needs rule= (a rule name of flagcore.aggregate or a "
                "callable)"
            )
        else:
            if rule_params:
                raise ValueError(f"{fn}: rule_params given without a rule: {rule_params!r}")
            return None
    if isinstance(rule, str):
        from .rules import make_rule

        kw = dict(rule_params or {})
        kw.setdefault("f", f)
        try:
            obj = make_rule(rule, _fn=fn, **kw)
        except ValueError as exc:
            raise ValueError(f"{fn}: attack {name!r} cannot target rule {rule!r}: {exc}") from exc

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(obj(x), dtype=np.float64).reshape(-1)

        return run
    if callable(rule):
        if rule_params:
            raise ValueError(
                f"{fn}: rule_params applies to a rule name; a callable rule got {rule_params!r}"
            )

        def run_callable(x: np.ndarray) -> np.ndarray:
            out = rule(x)
            if is_torch_tensor(out):
                out = out.detach().cpu().double().numpy()
            out = np.asarray(out, dtype=np.float64).reshape(-1)
            if out.shape[0] != x.shape[1]:
                raise ValueError(
                    f"{fn}: rule callable returned {out.shape[0]} values for n = {x.shape[1]}"
                )
            return out

        return run_callable
    raise TypeError(
        f"{fn}: rule must be None, a rule name (str) or a callable, got {type(rule).__name__}"
    )


# ---------------------------------------------------------------------- non-adaptive
def _scaled_mean_std(h: _Honest | np.ndarray, std: bool = False) -> tuple[Any, ...]:
    """Per-coordinate mean (and std, ddof = 1) of the honest rows, computed on the rows divided
    by their largest magnitude per coordinate: plain sums and squares overflow for finite float64
    values beyond ~1e154 (squares) or near DBL_MAX (sums) although the statistics do not. Block
    of columns by block (the statistics are per coordinate)."""
    rows = _Honest.of_array(h) if isinstance(h, np.ndarray) else h
    mean = np.empty(rows.n)
    sd = np.empty(rows.n) if std else None
    for c0, c1 in rows.blocks():
        b = rows.block(c0, c1)
        s = np.max(np.abs(b), axis=0)
        s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
        u = b / s
        mean[c0:c1] = u.mean(axis=0) * s
        if sd is not None:
            sd[c0:c1] = u.std(axis=0, ddof=1) * s
    return mean, sd


def _pow2_exponent(a: np.ndarray) -> int:
    """e with max|a| = m 2^e, 0.5 <= m < 1, over the finite entries of a (0 when there are none
    or all are 0): dividing by 2^e (np.ldexp(a, -e)) is exact and brings a to magnitude ~1."""
    flat = np.ravel(a)  # a view of a contiguous array; taken in blocks (no (h, n) temporaries)
    step = max(1, _BLOCK_BYTES // 8)
    m = 0.0
    for i in range(0, flat.size, step):
        blk = flat[i : i + step]
        fin = np.abs(blk[np.isfinite(blk)])
        if fin.size:
            m = max(m, float(np.max(fin)))
    return int(np.frexp(m)[1])


def _row_norms(a: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows of a 2-D array, each row divided by a power of two near its
    largest magnitude first (exact): sqrt(sum(x * x)) overflows beyond ~1e154 and underflows to
    0 below ~1e-162 although the norm does not. Equal to it in between (the scaling is exact);
    rows holding Inf or NaN give Inf or NaN."""
    m = np.array([np.max(np.abs(r)) for r in a]) if a.shape[1] else np.zeros(a.shape[0])
    e = np.frexp(m)[1]  # 0 for 0, Inf and NaN: those rows go through unscaled
    # a row at a time: the same pairwise sums as np.sum(u * u, axis=1), no (h, n) temporaries
    sq = np.array([_sq_sum(np.ldexp(r, -ei)) for r, ei in zip(a, e)], dtype=np.float64)
    return np.ldexp(np.sqrt(sq.reshape(a.shape[0])), e)


def _sq_sum(r: np.ndarray) -> float:
    return float(np.sum(r * r))


def _unit(v: np.ndarray) -> np.ndarray:
    """v / ||v|| (zeros for a zero vector), computed on v divided by a power of two (exact) so
    that a norm beyond DBL_MAX (n coordinates near it) does not make it 0."""
    vs = np.ldexp(v, -_pow2_exponent(v))
    nrm = _norm(vs)
    return cast(np.ndarray, vs / nrm) if nrm > 0 else np.zeros_like(v)


def _norm(v: np.ndarray) -> float:
    """||v|| without overflow or underflow of the squares (see _row_norms). Not np.linalg.norm:
    BLAS threads stall on busy cores."""
    return float(_row_norms(np.reshape(v, (1, -1)))[0])


def _alie_z_max(p: int, f: int, fn: str, name: str) -> float:
    """ALIE's z_max for the attack ``name`` called by ``fn``, with an error that says why it is
    undefined: for f >= 1 only when f >= floor(p / 2 + 1) (s <= 0); f = 0 never asks for it."""
    bound = math.floor(p / 2 + 1)
    if f >= bound:
        how = (
            "pass z explicitly"
            if name == "alie"
            else f"attack {name!r} falls back to plain ALIE at z_max when fewer than 2 honest "
            "gradients are finite; attack 'alie' takes z explicitly"
        )
        raise ValueError(
            f"{fn}: attack {name!r}: f is too large for ALIE's z_max, which needs "
            f"f < floor(p / 2 + 1) = {bound}; got p = {p} (honest + f), f = {f}; {how}"
        )
    return alie_z(p, f)


def _make(
    name: str,
    h: _Honest,
    f: int,
    rng: np.random.Generator,
    prm: dict[str, Any],
    fn: str,
    caller: str | None = None,
) -> np.ndarray:
    """The f rows of non-adaptive attack ``name`` (float64; one row broadcast f times where
    they are equal); ``caller``: the attack named in errors (an adaptive attack falling back to
    this one), default ``name``."""
    nh, n = h.nh, h.n
    if name == "random":
        return rng.random((f, n))
    if name == "sign_flip":
        scale = check_float(prm["scale"], fn, "scale")
        return np.broadcast_to(-scale * _scaled_mean_std(h)[0], (f, n))
    if name == "gaussian":
        mu = check_float(prm["mu"], fn, "mu")
        sigma = check_float(prm["sigma"], fn, "sigma", low=0.0)
        return mu + sigma * rng.standard_normal((f, n))
    if name in ("zero", "drop"):
        frac = check_float(prm["fraction"], fn, "fraction", low=0.0)
        if frac > 1.0:
            raise ValueError(f"{fn}: fraction must be in [0, 1], got {frac}")
        k = round(float(frac * n))
        out = np.empty((f, n))
        for j in range(f):
            out[j] = h.row(j % nh)
        for j in range(f):
            out[j, rng.choice(n, size=k, replace=False)] = 0.0
        return out
    if name == "nan":
        return np.full((f, n), np.nan)
    if name == "inf":
        return np.full((f, n), np.inf)
    if name == "alie":
        z = None if prm["z"] is None else check_float(prm["z"], fn, "z")
        if f == 0:  # nothing to send: no statistics needed (z_max is undefined for p <= 2)
            return np.zeros((0, n))
        if nh < 2:
            raise ValueError(
                f"{fn}: attack 'alie' needs at least 2 honest gradients for a standard deviation, "
                f"got {nh}"
            )
        if z is None:
            z = _alie_z_max(nh + f, f, fn, caller or name)
        mean, sd = _scaled_mean_std(h, std=True)
        return np.broadcast_to(mean - z * sd, (f, n))
    if name == "ipm":
        eps = check_float(prm["eps"], fn, "eps")
        return np.broadcast_to(-eps * _scaled_mean_std(h)[0], (f, n))
    target = check_int(prm["target"], fn, "target", low=0, high=nh - 1)  # mimic
    return np.broadcast_to(h.row(target), (f, n))


# ---------------------------------------------------------------------- adaptive
class _Deviation:
    """D(b) = ||rule(H + f copies of b) - rule(H + f copies of mu)||, counting evaluations."""

    def __init__(self, target: Callable[..., Any], buf: np.ndarray, k: int, mu: np.ndarray) -> None:
        # buf: the (k + f, n) float64 stack the rule sees, its first k rows the honest ones
        # (written once), the f attacker rows rewritten per evaluation
        self.target, self.buf, self.k = target, buf, k
        self.evaluations = 0
        self.ref = self._agg(mu)

    def _agg(self, b: np.ndarray) -> np.ndarray:
        self.evaluations += 1
        self.buf[self.k :] = b
        return cast(np.ndarray, self.target(self.buf))

    def __call__(self, b: np.ndarray) -> float:
        if not np.isfinite(b).all():
            return -math.inf
        d = _norm(self._agg(b) - self.ref)  # no overflow/underflow of the squares
        return d if math.isfinite(d) else -math.inf


def line_maximize(
    objective: Callable[[float], float],
    *,
    evals: int = 16,
    start: float = 0.0,
    delta: float = 1.0,
    ratio: float = 0.8,
) -> tuple[Any, ...]:
    """ByzFL's LineMaximize: best-effort argmax of objective over x >= 0 with ``evals``
    evaluations. Expansion: from ``start``, step by delta (doubling after each improvement) until
    the objective stops improving; contraction: step back and forth around the best point with
    the step shrinking by ``ratio``. Returns (best_x, best_y)."""
    best_x = start
    best_y = objective(best_x)
    evals -= 1
    prop_x = best_x
    while evals > 0:
        prop_x = best_x + delta
        prop_y = objective(prop_x)
        evals -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
            delta *= 2
        else:
            delta *= ratio
            break
    while evals > 0:
        if prop_x < best_x:
            prop_x += delta
        else:
            x = prop_x - delta
            while x < 0:
                x = (x + prop_x) / 2
            prop_x = x
        prop_y = objective(prop_x)
        evals -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
        delta *= ratio
    return best_x, best_y


def _search_params(prm: dict[str, Any], fn: str, with_start: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"evals": check_int(prm["evals"], fn, "evals", low=1, high=10_000)}
    r = check_float(prm["ratio"], fn, "ratio")
    if not 0.5 < r < 1.0:
        raise ValueError(f"{fn}: ratio must be in (0.5, 1), got {r}")
    out["ratio"] = r
    if with_start:
        out["start"] = check_float(prm["start"], fn, "start", low=0.0)
        out["delta"] = check_float(prm["delta"], fn, "delta", low=0.0, strict_low=True)
    return out


def _perturbation(kind: str, mu: np.ndarray, sd: np.ndarray | None) -> np.ndarray:
    if kind == "unit_vec":
        return _unit(mu)
    if kind == "std":
        assert sd is not None  # callers compute std whenever this perturbation is asked for
        return sd
    return cast(np.ndarray, np.sign(mu))


def _scaled_centred(h: np.ndarray, d: np.ndarray) -> tuple[Any, ...]:
    """The honest rows centred on their mean and d, each divided by a power of two (exact) that
    brings it to magnitude ~1, and the exponent e with gamma = 2^e gamma' where gamma' is the
    gamma of the scaled pair: both conditions depend on h only through the centred rows, and
    their squared distances overflow beyond ~1e154 (underflow below ~1e-162) unscaled."""
    e0 = _pow2_exponent(h)
    c0 = np.ldexp(h, -e0)  # one (h, n) array, transformed in place
    c0 -= c0.mean(axis=0)
    e1 = _pow2_exponent(c0)
    e2 = _pow2_exponent(d)
    return np.ldexp(c0, -e1, out=c0), np.ldexp(d, -e2), e0 + e1 - e2


def _row_sq(c: np.ndarray) -> np.ndarray:
    """np.sum(c * c, axis=1), one row at a time (the same pairwise sums, no (h, n) temporary)."""
    return np.array([_sq_sum(r) for r in c], dtype=np.float64).reshape(c.shape[0])


def _ldexp(x: float, e: int) -> float:
    """x 2^e, +-Inf beyond the float64 range (math.ldexp raises there)."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)


def min_max_gamma(h: np.ndarray, d: np.ndarray) -> float:
    """The largest gamma with max_i ||mu - gamma d - g_i|| <= max_{i,j} ||g_i - g_j||
    (Shejwalkar and Houmansadr's min-max condition) in closed form: each ||mu - g_i - gamma d||^2
    is a convex quadratic in gamma, at most D^2 at gamma = 0, so the feasible set is [0, min_i
    of the positive roots]. 0 when d = 0 or all honest rows coincide. Computed on h and d divided
    by powers of two (exact), so any finite scale gives the same gamma up to that power of two."""
    # centred rows: pairwise distances from their Gram lose no precision to a common offset
    c0, d, ex = _scaled_centred(h, d)
    sq = _row_sq(c0)
    dmax2 = float(max(np.max(sq[:, None] + sq[None, :] - 2 * (c0 @ c0.T)), 0.0))
    a = float(d @ d)
    if a == 0.0 or dmax2 == 0.0:
        return 0.0
    # with e_i = mu - g_i = -c0_i: b = -2 (e @ d) = 2 (c0 @ d) and sum(e * e) = sq, exactly
    b = 2.0 * (c0 @ d)
    c = sq - dmax2
    disc = np.maximum(b * b - 4 * a * c, 0.0)
    roots = (-b + np.sqrt(disc)) / (2 * a)
    return _ldexp(float(max(np.min(roots), 0.0)), ex)


def min_sum_gamma(h: np.ndarray, d: np.ndarray) -> float:
    """The largest gamma with sum_i ||mu - gamma d - g_i||^2 <= max_j sum_i ||g_j - g_i||^2 (the
    min-sum condition): the left side is k gamma^2 ||d||^2 + sum_i ||mu - g_i||^2 (mu is the
    mean, cross terms vanish), so gamma = sqrt((S_max - S_mu) / (k ||d||^2)). Scaled as in
    min_max_gamma."""
    k = h.shape[0]
    c0, d, ex = _scaled_centred(h, d)
    sq = _row_sq(c0)
    s_mu = float(np.sum(sq))
    # sum_i ||g_j - g_i||^2 = k ||c_j||^2 + sum_i ||c_i||^2 (the centred rows sum to zero)
    s_max = float(np.max(k * sq + s_mu))
    a = float(d @ d)
    if a == 0.0:
        return 0.0
    return _ldexp(math.sqrt(max(s_max - s_mu, 0.0) / (k * a)), ex)


def _adaptive(
    name: str,
    rows: _Honest,
    f: int,
    rng: np.random.Generator,
    prm: dict[str, Any],
    target: Any,
    rule: Any,
    rule_params: Any,
    fn: str,
) -> tuple[Any, ...]:
    n, k_all = rows.n, rows.nh
    buf = None
    if target is not None and f > 0:
        # the honest rows go straight into the top of the (k + f, n) float64 stack the rule is
        # evaluated on: no second float64 copy of them
        buf = np.empty((k_all + f, n))
        for c0, c1 in rows.blocks():
            buf[:k_all, c0:c1] = rows.block(c0, c1)
        h_all = buf[:k_all]
    else:
        h_all = rows.full()  # float64 (a copy for other dtypes)
    finite = np.ones(k_all, dtype=bool)
    for c0, c1 in rows.blocks():
        finite &= np.isfinite(h_all[:, c0:c1]).all(axis=1)
    k_fin = int(np.count_nonzero(finite))
    need = (
        1
        if name == "optimal_ipm"
        or (name in ("min_max", "min_sum") and prm["perturbation"] != "std")
        else 2
    )
    if name in ("min_max", "min_sum"):
        check_choice(prm["perturbation"], fn, "perturbation", PERTURBATIONS)
    if k_fin < need or f == 0:
        fallback = {
            "optimal_alie": "alie",
            "optimal_ipm": "ipm",
            "min_max": "ipm",
            "min_sum": "ipm",
            "fa_aware": "sign_flip",
        }[name]
        if fallback == "alie" and h_all.shape[0] < 2 and f > 0:
            raise ValueError(
                f"{fn}: attack {name!r} needs at least 2 honest gradients for a standard "
                "deviation, "
                f"got {h_all.shape[0]}"
            )
        _validate_only(name, prm, fn)
        out = _make(fallback, _Honest.of_array(h_all), f, rng, _PARAMS[fallback], fn, caller=name)
        return out, AttackInfo(name)
    if k_fin == k_all:
        h = h_all
    elif buf is not None or rows.copies:
        # the finite rows moved up in place (each to a lower or equal index), no copy
        for dst, src in enumerate(np.flatnonzero(finite)):
            if dst != src:
                h_all[dst] = h_all[src]
        h = h_all[:k_fin]
        if buf is not None:
            buf = buf[: k_fin + f]
    else:  # h_all is the caller's float64 array: left as it is
        h = h_all[finite]
    mu, sd = _scaled_mean_std(h, std=h.shape[0] >= 2)

    def rep(b: np.ndarray) -> np.ndarray:
        return np.broadcast_to(b, (f, n))

    g0 = 0.0
    d = mu
    if name in ("min_max", "min_sum"):
        d = _perturbation(prm["perturbation"], mu, sd)
        g0 = min_max_gamma(h, d) if name == "min_max" else min_sum_gamma(h, d)
        if (
            target is None
        ):  # AGR-agnostic: the paper's attack; the only adaptive case without a rule
            _search_params(prm, fn, with_start=False)
            return rep(mu - g0 * d), AttackInfo(name, parameter=g0, agnostic_parameter=g0)
    assert buf is not None  # a rule and f > 0: _adaptive built the stack above
    dev = _Deviation(target, buf, h.shape[0], mu)

    if name in ("optimal_alie", "optimal_ipm"):
        sp = _search_params(prm, fn)
        default: float | None
        vec: Callable[[float], np.ndarray]
        if name == "optimal_alie":
            assert sd is not None  # h >= 2 here (need = 2)
            sdv = sd

            def vec(z: float) -> np.ndarray:
                return cast(np.ndarray, mu - z * sdv)

            try:
                default = alie_z(h_all.shape[0] + f, f)
            except ValueError:  # z_max undefined for this (p, f): the line search alone decides
                default = None
        else:

            def vec(e: float) -> np.ndarray:
                return cast(np.ndarray, -e * mu)

            default = _PARAMS["ipm"]["eps"]
        x, y = line_maximize(lambda t: dev(vec(t)), **sp)
        if default is not None:
            y0 = dev(vec(default))
            if y0 >= y:
                x, y = default, y0
        return rep(vec(x)), AttackInfo(name, parameter=x, deviation=y, evaluations=dev.evaluations)

    if name in ("min_max", "min_sum"):
        sp = _search_params(prm, fn, with_start=False)
        y0 = dev(mu - g0 * d)
        if g0 > 0:
            scale = g0
        else:  # ||mu|| / ||d||, from norms that neither overflow nor underflow
            nd = _norm(d)
            scale = _norm(mu) / nd if nd > 0 else _norm(mu) * 1e150
        x, y = line_maximize(
            lambda g: dev(mu - g * d), start=g0, delta=(scale if scale > 0 else 1e-300) * 0.5, **sp
        )
        if y0 >= y:
            x, y = g0, y0
        return rep(mu - x * d), AttackInfo(
            name, parameter=x, deviation=y, agnostic_parameter=g0, evaluations=dev.evaluations
        )

    return _fa_aware(h, f, mu, sd, dev, prm, rule, rule_params, rng, fn, n)


def _validate_only(name: str, prm: dict[str, Any], fn: str) -> None:
    if name in ("optimal_alie", "optimal_ipm"):
        _search_params(prm, fn)
    elif name in ("min_max", "min_sum"):
        _search_params(prm, fn, with_start=False)
    elif name == "fa_aware":
        _fa_params(prm, fn)


def _fa_params(prm: dict[str, Any], fn: str) -> tuple[Any, ...]:
    angles = check_int(prm["angles"], fn, "angles", low=1, high=10_000)
    q = check_float(prm["quantile"], fn, "quantile", low=0.0)
    if q > 1.0:
        raise ValueError(f"{fn}: quantile must be in [0, 1], got {q}")
    slack = check_float(prm["slack"], fn, "slack", low=0.0)
    fp = prm["flag_params"]
    if fp is not None and not isinstance(fp, dict):
        raise TypeError(f"{fn}: flag_params must be a dict or None, got {fp!r}")
    return angles, q, slack, dict(fp or {})


def _fa_aware(
    h: np.ndarray,
    f: int,
    mu: np.ndarray,
    sd: np.ndarray | None,
    dev: _Deviation,
    prm: dict[str, Any],
    rule: Any,
    rule_params: Any,
    rng: np.random.Generator,
    fn: str,
    n: int,
) -> tuple[Any, ...]:
    from .flag import flag_aggregate

    angles, q, slack, fparams = _fa_params(prm, fn)
    if rule in (None, "flag") and rule_params:
        fparams = {**{k: v for k, v in rule_params.items() if k in _FLAG_OPTIONS}, **fparams}
    bad = set(fparams) - set(_FLAG_OPTIONS)
    if bad:
        raise TypeError(f"{fn}: flag_params takes no parameter {sorted(bad)[0]!r}")
    k = h.shape[0]
    norms = _row_norms(h)  # scaled: squares overflow beyond ~1e154 and underflow below ~1e-162
    g_med = float(np.median(norms))
    u = _unit(mu)
    # w: the honest normalised gradients' main direction of spread, orthogonal to u (the
    # direction FA's subspace captures after u); a seeded random direction when there is none.
    xc = h / np.where(norms > 0, norms, 1.0)[:, None]  # one (k, n) array, changed in place
    xc -= xc.mean(axis=0)
    t = xc @ u
    for i in range(k):  # xc -= np.outer(t, u), a row at a time
        xc[i] -= t[i] * u
    w = np.zeros(n)
    if k >= 2 and np.any(xc):
        # top right singular vector of xc from its k x k Gram (no n x k SVD)
        _, evec = np.linalg.eigh(xc @ xc.T)
        w = evec[:, -1] @ xc
        w = w - (w @ u) * u
    del xc  # before the (k + f, n) stack below
    if not np.any(w):
        w = rng.standard_normal(n)
        w -= (w @ u) * u
    w /= max(_norm(w), 1e-300)
    # the candidates as (label, recipe): each vector is made when it is needed (again, the same
    # bits) rather than all held at once (angles + 2 vectors of n float64)
    cands: list[Any] = []
    for i in range(angles):
        th = 2 * math.pi * i / angles
        cands.append((th, (g_med, -math.cos(th), math.sin(th))))
    if sd is not None:
        with contextlib.suppress(ValueError):  # z_max is undefined for some (p, f)
            cands.append(("alie", alie_z(k + f, f)))
    cands.append(("ipm", _PARAMS["ipm"]["eps"]))

    def vector(label: Any, recipe: Any) -> np.ndarray:
        if label == "alie":
            assert sd is not None
            return cast(np.ndarray, mu - recipe * sd)
        if label == "ipm":
            return cast(np.ndarray, -recipe * mu)
        g, c, s_ = recipe
        return cast(np.ndarray, g * (c * u + s_ * w))

    # per candidate: (margin over the honest threshold, label, recipe, attackers' min ratio,
    # threshold)
    records: list[Any] = []
    # FA's ratios are ratios of norms of normalised gradients: invariant to a common scale of
    # the stack. They are taken on the stack divided by a power of two (exact, so bitwise the
    # same result at ordinary scales) that brings the honest rows to magnitude ~1, where the
    # native FA's squares neither overflow nor underflow. The targeted rule (dev) gets the
    # caller's scale.
    ex = _pow2_exponent(h)
    stack = np.empty((k + f, n))
    np.ldexp(h, -ex, out=stack[:k])
    for label, recipe in cands:
        np.ldexp(vector(label, recipe), -ex, out=stack[k:])
        _, info = flag_aggregate(stack, return_info=True, **fparams)
        v = np.asarray(info.reconstruction_ratios, dtype=np.float64)
        thr = float(np.quantile(v[:k], q)) - slack
        vb = float(np.min(v[k:]))
        records.append((vb - thr, label, recipe, vb, thr))
    del stack
    ok = [(dev(vector(r[1], r[2])), r) for r in records if r[0] >= 0]
    feasible = bool(ok)
    if feasible:
        d, (_, label, recipe, vb, thr) = max(ok, key=lambda t: t[0])  # first of equal deviations
        b = vector(label, recipe)
    else:  # nothing FA trusts enough: the most trusted candidate
        _, label, recipe, vb, thr = max(records, key=lambda r: r[0])
        b = vector(label, recipe)
        d = dev(b)
    return (
        np.broadcast_to(b, (f, n)),
        AttackInfo(
            "fa_aware",
            parameter=label,
            deviation=d,
            evaluations=dev.evaluations,
            byzantine_ratio=vb,
            honest_ratio=thr,
            feasible=feasible,
        ),
    )
