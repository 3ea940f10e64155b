"""Robust aggregation rules behind one call: ``flagcore.aggregate(gradients, rule, **params)``.

Input forms and output convention are those of ``flag_aggregate``: (p, n) or (b, p, n) numpy
arrays / torch tensors, or a list/tuple of p arrays/tensors of one shape; the result comes back
in the caller's framework, dtype, device and shape. For callers that configure once and call
many times there is one class per rule (``Median()``, ``Krum(f=2)``, ...; ``make_rule(name,
**params)`` builds one by name); ``aggregate`` is ``make_rule(rule, **params)(gradients)``.

Rules (``RULES``) and their parameters:

=================== ========================================================================
"mean"              plain mean
"median"            coordinate-wise median (midpoint for even p)
"trimmed_mean"      f: drop the f largest and f smallest per coordinate (p > 2f)
"meamed"            f: per coordinate, mean of the p - f values closest to the median (p > 2f)
"phocas"            f: the same around the f-trimmed mean (p > 2f)
"krum"              f: the worker whose squared distances to its p - f - 2 nearest are
                    smallest (p >= 2f + 3)
"multi_krum"        f, m = p - f: the mean of the m lowest Krum scores (p >= 2f + 3,
                    1 <= m <= p - f)
"bulyan"            f: p - 2f Krum selections on the shrinking set, then per coordinate the
                    mean of the p - 4f selected values closest to their median (p >= 4f + 3)
"geometric_median"  nu = 1e-6, tol = 1e-12, max_iter = 1000: smoothed Weiszfeld in p-space;
                    nu is the smoothing relative to the median worker norm; stops when the
                    objective sum_i ||z - g_i|| decreases by at most tol relative and the
                    step is short, ||dz||^2 / 2 <= tol H^2, H = c / sum_i w_i (p > 2f)
"centered_clipping" tau = 10.0, iterations = 3, reference = None: v <- v + mean_i
                    (g_i - v) min(1, tau / ||g_i - v||) from v = reference (None: the zero
                    vector; or an (n,)/(b, n) array/tensor; the ``CenteredClipping`` class
                    also accepts "previous": its own last output) (p > 2f)
"flag"              the Flag Aggregator: r, lam, max_iter, eps, tol, scale (see flag_aggregate)
"mda"               f, max_subsets = 100000: mean of the p - f workers of smallest diameter
                    (enumerates C(p, f) subsets; refuses more than max_subsets) (p > 2f)
"smea"              f, max_subsets = 100000: mean of the p - f workers whose covariance has
                    the smallest largest eigenvalue (C(p, f) subsets, as mda) (p > 2f)
"monna"             f, idx = 0: mean of the p - f nearest neighbours of worker idx (p > 2f)
"cge"               f: mean of the p - f workers of smallest norm (f < p)
"caf"               f: covariance-bound agnostic filter (converged eigenpairs, p-space) (p > 2f)
"dnc"               f, sub_dim = 10000, iterations = 1, filter_fraction = 1.0: divide and
                    conquer on random coordinate subsets (p > 2f)
"signguard"         lower = 0.1, upper = 3.0, sample = 0.1: norm filter + sign clustering,
                    clipped to the median norm
"clipped_clustering" tau = None (median norm): clip, cosine clustering, larger cluster
"fltrust"           reference (required: the server's gradient, (n,) or (b, n)): trust
                    ReLU(cos) to the reference, gradients rescaled to its norm
=================== ========================================================================

Krum and Multi-Krum take ``neighbours="textbook"`` (p - f - 2, the paper) or ``"byzfl"``
(p - f - 1, as ByzFL and ByzPy compute it; needs only p > 2f). docs/rules.md lists every
rule's paper and its conventions against ByzFL, ByzPy and Flower.

Every rule also takes ``f`` (default 0 where it is not required: it then only matters for
pre-aggregation and for counting excluded workers) and the pre-aggregation options
``pre`` (None, "nnm", "bucketing", "clipping" (with ``c``), "arc", or a sequence applied in
order), ``bucket_size`` (2; only with bucketing), ``c`` (the static clipping threshold; only
with clipping) and ``seed`` (0: the bucketing shuffle and the random coordinates of dnc /
signguard). A rule object draws from one generator seeded once, so each call reshuffles, and
the sequence of calls is reproducible from the seed. Preconditions are checked on the number of
rows the rule sees (after bucketing), NNM's p > 2f on the rows NNM sees (after the bucketing
steps before it), and raise ValueError naming the rule, p and f.

Every rule returns, with ``return_info=True``, one ``RuleInfo`` (a subclass of ``FlagInfo``,
whose fields it keeps: the Flag Aggregator's weights and reconstruction ratios survive
pre-aggregation).

Non-finite workers: a worker with any NaN/Inf value is excluded (for the distance rules also
one whose squared norm overflows float64), reported in ``RuleInfo.excluded``, and the rule
runs on the p - e remaining workers with f_eff = max(f - e, 0): an excluded worker counts as
one of the f Byzantine ones, which keeps every precondition true on the survivors. A problem
whose workers are all excluded aggregates to 0. ("flag" follows flag_aggregate's own policy,
which is the same exclusion.)
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as _fields
from typing import Any, cast

import numpy as np

from .._arrays import as_stack, check_choice, check_float, check_int
from .._backend import get_num_threads, is_torch_tensor
from .._memory import KRUM_BYZFL_EXTRA, check_rule_memory
from ..flag import FlagInfo, flag_aggregate
from ..flag import _check_params as _check_flag_params
from . import clustering as _clu
from . import selection as _sel
from ._source import Source
from .clipping import ALL_PRE_STEPS as PRE_STEPS
from .clipping import arc_clip_count, parse_pre_steps
from .coordinate import run_coordinate
from .distance import run_bulyan, run_centered_clipping, run_geometric_median, run_krum
from .preagg import bucketing, build_source, check_pre_rows, nnm

RULES = (
    "mean",
    "median",
    "trimmed_mean",
    "meamed",
    "phocas",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "flag",
    "mda",
    "smea",
    "monna",
    "cge",
    "caf",
    "dnc",
    "signguard",
    "clipped_clustering",
    "fltrust",
)

__all__ = [
    "CAF",
    "CGE",
    "MDA",
    "PRE_STEPS",
    "RULES",
    "RULES_NEEDING_F",
    "RULES_NEEDING_REFERENCE",
    "SMEA",
    "Bulyan",
    "CenteredClipping",
    "ClippedClustering",
    "DnC",
    "FLTrust",
    "Flag",
    "GeometricMedian",
    "Krum",
    "MeaMed",
    "Mean",
    "Median",
    "MoNNA",
    "MultiKrum",
    "Phocas",
    "Rule",
    "RuleInfo",
    "SignGuard",
    "TrimmedMean",
    "aggregate",
    "arc_clip_count",
    "bucketing",
    "make_rule",
    "nnm",
]


@dataclass(frozen=True)
class RuleInfo(FlagInfo):
    """Diagnostics of one rule call: the one result type of ``aggregate(..., return_info=True)``
    and of every rule object, whatever the rule and the pre-aggregation. It subclasses
    ``FlagInfo`` and keeps its fields, so code written for the Flag Aggregator's info keeps
    working; a field a rule does not produce is None.

    Per-worker fields are (p,) for a (p, n) or list input and (b, p) for a (b, p, n) input;
    scalars gain a (b,) axis. "Rows the rule saw" are the caller's workers, or the mixed rows
    after pre-aggregation (see ``mixing``).

    rule: the rule's name.
    excluded: the caller's workers excluded for non-finite values.
    coefficients: c with aggregate = sum_i c_i g_i over the caller's rows, for the rules whose
        output is a weighted sum of the workers: all but the coordinate-wise ones and bulyan
        (for signguard and clipped_clustering the clipping factors are inside c); None otherwise.
    selected: rows chosen (over the rows the rule saw): krum, multi_krum, bulyan, mda, smea,
        monna, cge, dnc, signguard, clipped_clustering; None otherwise.
    scores: the per-row score the rule ranks by (over the rows the rule saw; NaN for excluded
        rows), in the caller's units: Krum scores (krum, multi_krum; sums of squared
        distances), the distance to worker idx (monna), the norm (cge, signguard,
        clipped_clustering), the last outlier score (dnc; a squared projection), the trust score
        (fltrust; a cosine).
    iterations, converged, objective: geometric_median's Weiszfeld steps, whether the relative
        tolerance was met, and sum_i ||z - g_i|| at the result; caf's filter steps and the
        largest covariance eigenvalue at its result; mda's diameter and smea's largest
        eigenvalue (objective only); flag's IRLS steps and objective trajectory (as FlagInfo).
    reference_coefficient: centered_clipping's weight on its reference point.
    mixing: the (p', p) pre-aggregation matrix (rows seen = mixing @ caller's rows), or None.
    weights, reconstruction_ratios, last_step_rejected, rank: the Flag Aggregator's (over the
        rows it saw), None for the other rules.
    """

    weights: np.ndarray | None = None  # type: ignore[assignment]  # None for the other rules
    reconstruction_ratios: np.ndarray | None = None  # type: ignore[assignment]  # None for the other rules
    coefficients: np.ndarray | None = None  # type: ignore[assignment]  # None for the other rules
    objective: Any = None
    iterations: Any = None
    last_step_rejected: Any = None
    excluded: np.ndarray | None = None  # type: ignore[assignment]  # None for the other rules
    rank: Any = None
    rule: str = ""
    selected: np.ndarray | None = None
    scores: np.ndarray | None = None
    converged: Any = None
    reference_coefficient: Any = None
    mixing: np.ndarray | None = None

    @classmethod
    def from_flag(cls, info: FlagInfo) -> RuleInfo:
        return cls(rule="flag", **{fl.name: getattr(info, fl.name) for fl in _fields(FlagInfo)})


def as_reference(ref: Any, st: Any, fn: str) -> Any:
    """A reference vector ((n,) / (b, n), or one gradient's shape for list input) as a (b, n)
    float64 numpy array, or a float64 torch tensor on the stack's device; must be real and
    finite, and of one of those shapes exactly (a reference of another shape with the same
    number of elements is refused, not reshaped)."""
    r: Any
    if is_torch_tensor(ref):
        complex_ref = bool(ref.is_complex())
    else:
        try:
            complex_ref = bool(np.iscomplexobj(ref))
        except (TypeError, ValueError):  # not array-like: the conversion below says so
            complex_ref = False
    if complex_ref:  # a cast would drop the imaginary part with only a warning
        raise TypeError(f"{fn}: reference must be real, got a complex {type(ref).__name__}")
    try:
        if st.on_cpu:
            if is_torch_tensor(ref):
                ref = ref.detach().cpu().numpy()
            r = np.asarray(ref, dtype=np.float64)
        else:
            import torch

            r = torch.as_tensor(ref).to(device=st.torch_data.device, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{fn}: reference must be a numeric array, got {type(ref).__name__} ({e})"
        ) from None
    shape = tuple(r.shape)
    if shape == (st.n,) or (st.from_list and shape == tuple(st.item_shape)):
        r = r.reshape(1, st.n).repeat(st.b, 0) if st.on_cpu else r.reshape(1, st.n).repeat(st.b, 1)
    elif shape != (st.b, st.n):
        forms = f"({st.n},) or ({st.b}, {st.n})"
        if st.from_list:
            forms = f"({st.n},), ({st.b}, {st.n}) or {tuple(st.item_shape)} (one gradient's shape)"
        raise ValueError(f"{fn}: reference must have shape {forms}, got {shape}")
    finite = np.isfinite(r).all() if st.on_cpu else bool(r.isfinite().all())
    if not finite:
        raise ValueError(f"{fn}: reference must be finite")
    return r


_BASE_STATE_KEYS = frozenset({"rule", "seed", "generator"})


class _LazyRng:
    """Stands in for a rule's generator and creates it only when a draw is made (bucketing)."""

    __slots__ = ("_rule",)

    def __init__(self, rule: Rule) -> None:
        self._rule = rule

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rule._rng(), name)


class Rule:
    """A configured aggregation rule; call it on a stack of gradients.

    ``rule(gradients, return_info=False)`` returns the aggregate in the caller's framework,
    dtype, device and shape, or (aggregate, RuleInfo).

    Build a rule once and call it every step: its generator (seeded by ``seed``) advances at
    each call, so bucketing reshuffles and dnc / signguard draw new coordinates every call,
    while the whole sequence is reproducible from the seed. ``state_dict()`` /
    ``load_state_dict()`` checkpoint that state (the generator's, and centered clipping's last
    output with ``reference="previous"``), so a resumed run continues the same sequence.
    """

    name = ""
    needs_f = False

    def __init__(
        self,
        *,
        f: int | None = None,
        pre: Any = None,
        bucket_size: int | None = None,
        c: float | None = None,
        seed: int = 0,
        _fn: str | None = None,
    ) -> None:
        self._fn = _fn or type(self).__name__
        if f is None:
            if self.needs_f:
                raise TypeError(
                    f"{self._fn}: rule {self.name!r} needs f (the number of Byzantine workers)"
                )
            f = 0
        self.f = check_int(f, self._fn, "f", low=0)
        self.pre = parse_pre_steps(pre, self._fn, f=self.f, c=c)
        # None: the default 2; a value given without bucketing would be ignored, so it is refused
        # (as c without clipping)
        self.bucket_size = (
            2 if bucket_size is None else check_int(bucket_size, self._fn, "bucket_size", low=1)
        )
        if bucket_size is not None and "bucketing" not in self.pre:
            raise TypeError(
                f"{self._fn}: bucket_size is only used with pre='bucketing', got bucket_size = "
                f"{bucket_size!r} with pre = {pre!r}"
            )
        self.seed = check_int(seed, self._fn, "seed", low=0)
        # One stream: each call draws anew. Created on first use (default_rng costs tens of
        # microseconds, and most rules never draw), from the same seed, so the sequence is the same.
        self._gen: np.random.Generator | None = None

    # ------------------------------------------------------------------ per rule
    def _check(self, p: int) -> None:
        """Preconditions on the number of rows the rule sees."""
        if not p > 2 * self.f:
            self._fail("p > 2f", p)

    def _fail(self, need: str, p: int) -> None:
        raise ValueError(f"{self._fn}: rule {self.name!r} needs {need}, got p = {p}, f = {self.f}")

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def _cols(self, n: int) -> int | None:
        """The coordinates a rule copies out of n for its p-space work (DnC's sample; None:
        the memory model counts p x p matrices alone)."""
        return None

    def _memory_extra(self) -> float | None:
        """The rule's temporaries in p x p matrices when its options change them (None: the
        memory model's figure for the rule)."""
        return None

    # ------------------------------------------------------------------ call
    def __call__(self, gradients: Any, *, return_info: bool = False) -> Any:
        fn = self._fn
        if not isinstance(return_info, bool):
            raise TypeError(f"{fn}: return_info must be a bool, got {return_info!r}")
        st = as_stack(gradients, fn)
        # each "nnm" step is checked on the rows it sees (after the bucketing steps before it)
        rows = check_pre_rows(fn, self.pre, st.p, self.f, self.bucket_size)
        self._check(rows)
        # then the memory the p-space work needs (Flag without pre never gets here: its
        # __call__ goes to flag_aggregate, which checks its own)
        check_rule_memory(
            fn,
            self.name,
            self.pre,
            st.b,
            st.p,
            rows,
            get_num_threads(),
            cols=self._cols(st.n),
            extra=self._memory_extra(),
        )
        src = build_source(st, self.f, self.pre, self.bucket_size, cast(Any, _LazyRng(self)))
        out, d = self._run(src)
        agg = st.restore(out)
        if not return_info:
            return agg
        return agg, self._info(st, src, d)

    def _rng(self) -> np.random.Generator:
        if self._gen is None:
            self._gen = np.random.default_rng(self.seed)
        return self._gen

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What calling the rule has changed in it, to checkpoint a run and resume it.

        ``{"rule": name, "seed": seed, "generator": state}``: the generator's state is numpy's
        ``bit_generator.state`` (a dict), or None while the rule has not drawn yet.
        ``centered_clipping`` adds ``"previous"``: its last output with
        ``reference="previous"`` (a copy: an array or tensor, None before the first call or
        with another reference). Plain Python and NumPy objects (a CUDA tensor for a
        "previous" of a rule called on CUDA tensors; a NumPy array for CPU inputs, torch ones
        too): save it with pickle, or ``torch.save`` and ``torch.load(..., weights_only=False)``
        (the default weights_only=True loads no NumPy array). A rule built with the same
        arguments that loads it (``load_state_dict``) continues the sequence bit for bit:
        the same bucketing shuffles and drawn coordinates, the same reference."""
        gen = None if self._gen is None else self._gen.bit_generator.state
        return {"rule": self.name, "seed": self.seed, "generator": gen}

    def load_state_dict(self, state: Any) -> None:
        """Take the state ``state_dict()`` returned (from a rule of the same name and seed).
        Checked first, then taken whole: a refused state changes nothing."""
        self._load_state(state, f"{type(self).__name__}.load_state_dict", "state")

    def _load_state(self, state: Any, fn: str, what: str) -> None:
        """load_state_dict, its errors naming the function fn and the argument what."""
        keys = self._checked_state_keys(state, fn, what)
        rule, seed = state["rule"], state["seed"]
        if not isinstance(rule, str) or rule != self.name:
            raise ValueError(f"{fn}: {what} is of rule {rule!r}, this rule is {self.name!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed != self.seed:
            raise ValueError(
                f"{fn}: {what} was saved from a rule with seed = {seed!r}, this rule "
                f"has seed = {self.seed} (build it with the seed of the run it resumes)"
            )
        gen = self._generator_from(state["generator"], fn, what)
        extra = self._load_extra({k: state[k] for k in keys - _BASE_STATE_KEYS}, fn, what)
        self._gen = gen
        for k, v in extra.items():
            setattr(self, k, v)

    # What a call changes in the rule, by reference (no copy): the Flower strategy shares it
    # between its rule objects (one per f) and rewinds the generator when it redoes a round.
    _LIVE: tuple[str, ...] = ("_gen",)

    def _live_state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._LIVE}

    def _set_live_state(self, live: dict[str, Any]) -> None:
        for k in self._LIVE:
            setattr(self, k, live[k])

    def _state_keys(self) -> frozenset[str]:
        return _BASE_STATE_KEYS

    def _checked_state_keys(self, state: Any, fn: str, what: str) -> frozenset[str]:
        if not isinstance(state, dict):
            raise TypeError(
                f"{fn}: {what} must be the dict state_dict() returned, got {type(state).__name__}"
            )
        want, got = self._state_keys(), frozenset(state)
        if got != want:
            missing, unknown = sorted(want - got), sorted(map(repr, got - want))
            raise ValueError(
                f"{fn}: {what} must have the keys {sorted(want)} (rule {self.name!r}); "
                + "; ".join(
                    s
                    for s in (
                        f"missing {missing}" if missing else "",
                        f"unknown {', '.join(unknown)}" if unknown else "",
                    )
                    if s
                )
            )
        return want

    @staticmethod
    def _generator_from(gen_state: Any, fn: str, what: str) -> np.random.Generator | None:
        """A generator in the saved state, which must be exactly what numpy's PCG64
        ``bit_generator.state`` holds (a state that went through a float, e.g. a JSON tool
        without big integers, is refused rather than silently drawing another sequence)."""
        if gen_state is None:
            return None
        where = f"{fn}: {what}['generator']"
        if not isinstance(gen_state, dict):
            raise TypeError(
                f"{where} must be None or numpy's bit_generator.state (a dict), got "
                f"{type(gen_state).__name__}"
            )
        kind = gen_state.get("bit_generator")
        if kind != "PCG64":
            raise ValueError(
                f"{where} must be the state of a PCG64 generator (numpy.random.default_rng), "
                f"got bit_generator = {kind!r}"
            )

        def is_int(v: Any, low: int, high: int) -> bool:
            return bool(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and low <= v < high
            )

        inner = gen_state.get("state")
        fields_ok: bool = (
            set(gen_state) == {"bit_generator", "state", "has_uint32", "uinteger"}
            and isinstance(inner, dict)
            and set(inner) == {"state", "inc"}
            and is_int(inner["state"], 0, 1 << 128)
            and is_int(inner["inc"], 0, 1 << 128)
            and int(inner["inc"]) % 2 == 1  # PCG64's increment is odd
            and is_int(gen_state["has_uint32"], 0, 2)
            and is_int(gen_state["uinteger"], 0, 1 << 32)
        )
        if not fields_ok:
            raise ValueError(
                f"{where} is not a PCG64 state as bit_generator.state gives it ({{'bit_generator',"
                f" 'state': {{'state', 'inc' (odd)}}: ints below 2**128, 'has_uint32': 0 or 1, "
                f"'uinteger': int below 2**32}}), got {gen_state!r:.300}"
            )
        assert isinstance(inner, dict)  # fields_ok
        gen = np.random.default_rng(0)
        gen.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(inner["state"]), "inc": int(inner["inc"])},
            "has_uint32": int(gen_state["has_uint32"]),
            "uinteger": int(gen_state["uinteger"]),
        }
        return gen

    def _load_extra(self, extra: dict[str, Any], fn: str, what: str) -> dict[str, Any]:
        """The attributes the rule-specific keys of a state set (checked)."""
        return {}

    def _info(self, st: Any, src: Source, d: dict[str, Any]) -> RuleInfo:
        batched = bool(st.batched)

        def sq(a: Any) -> Any:  # one problem: drop the batch axis
            return a if batched or a is None else np.asarray(a)[0]

        def scalar(a: Any) -> Any:  # one problem: a Python scalar
            return a if batched or a is None else np.asarray(a)[0].item()

        if src.mix is None:
            excluded = d["excluded"]
        else:
            excluded = src.excluded_orig
        coef = d.get("coefficients")
        if coef is not None:
            coef = src.original_coefficients(coef)
        objective = d.get("objective")
        if objective is not None and np.ndim(objective) == 2:  # FA's trajectory, (b, max_iter + 1)
            objective = (
                objective if st.batched else objective[0, : int(d["iterations"][0]) + 1].copy()
            )
        else:
            objective = scalar(objective)
        return RuleInfo(
            rule=self.name,
            excluded=sq(excluded),
            coefficients=sq(coef),
            selected=sq(d.get("selected")),
            scores=sq(d.get("scores")),
            iterations=scalar(d.get("iterations")),
            converged=scalar(d.get("converged")),
            objective=objective,
            reference_coefficient=scalar(d.get("reference_coefficient")),
            mixing=sq(src.mix),
            weights=sq(d.get("weights")),
            reconstruction_ratios=sq(d.get("reconstruction_ratios")),
            last_step_rejected=scalar(d.get("last_step_rejected")),
            rank=scalar(d.get("rank")),
        )


class _Coordinate(Rule):
    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        out, excl = run_coordinate(src, self.name, self.f)
        return out, dict(excluded=excl)


class Mean(_Coordinate):
    """Plain mean (non-finite workers excluded): the rows are summed in order in float64, then
    divided by their count (numpy's and torch's convention; for float64 input the result is
    numpy's ``mean(axis=0)`` bit for bit)."""

    name = "mean"

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)


class Median(_Coordinate):
    """Coordinate-wise median; midpoint of the two middle values for even p."""

    name = "median"


class TrimmedMean(_Coordinate):
    """Per coordinate, drop the f largest and f smallest values and average the rest (p > 2f)."""

    name = "trimmed_mean"
    needs_f = True


class MeaMed(_Coordinate):
    """Per coordinate, the mean of the p - f values closest to the median (p > 2f)."""

    name = "meamed"
    needs_f = True


class Phocas(_Coordinate):
    """Per coordinate, the mean of the p - f values closest to the f-trimmed mean (p > 2f)."""

    name = "phocas"
    needs_f = True


class Krum(Rule):
    """Krum (Blanchard et al. 2017), textbook: the worker with the smallest sum of squared
    distances to its p - f - 2 nearest others (p >= 2f + 3)."""

    name = "krum"
    needs_f = True

    def __init__(self, *, neighbours: str = "textbook", **kw: Any) -> None:
        super().__init__(**kw)
        self.neighbours = check_choice(neighbours, self._fn, "neighbours", ("textbook", "byzfl"))

    def _check(self, p: int) -> None:
        if self.neighbours == "byzfl":
            if not p > 2 * self.f:
                self._fail("p > 2f (neighbours='byzfl')", p)
        elif not p >= 2 * self.f + 3:
            self._fail("p >= 2f + 3", p)

    def _m(self, p: int) -> int:
        return 1

    def _memory_extra(self) -> float | None:
        return KRUM_BYZFL_EXTRA if self.neighbours == "byzfl" else None

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        if self.neighbours == "textbook":
            return run_krum(src, self.f, self._m(src.p))
        # ByzFL's count: p - f - 1 nearest others (Multi-Krum keeps m of the p - e rows left)
        d = _sel.per_problem(
            src,
            self.f,
            lambda g, f, q, keep, scale: _sel.krum_peer_solve(
                g, f, self._m_survivors(g.shape[0], f)
            ),
        )
        return _sel.finish(src, d)

    def _m_survivors(self, pe: int, f_eff: int) -> int:
        return 1


class MultiKrum(Krum):
    """Multi-Krum: the mean of the m workers with the lowest Krum scores (default m = p - f)."""

    name = "multi_krum"

    def __init__(self, *, f: int | None = None, m: int | None = None, **kw: Any) -> None:
        super().__init__(f=f, **kw)
        self.m = None if m is None else check_int(m, self._fn, "m", low=1)

    def _check(self, p: int) -> None:
        super()._check(p)
        if self.m is not None and self.m > p - self.f:
            raise ValueError(
                f"{self._fn}: rule 'multi_krum' needs 1 <= m <= p - f, got m = {self.m}, p = {p}, "
                f"f = {self.f}"
            )

    def _m(self, p: int) -> int:
        return p - self.f if self.m is None else self.m

    def _m_survivors(self, pe: int, f_eff: int) -> int:
        return max(pe - f_eff if self.m is None else min(self.m, pe - f_eff), 1)


class Bulyan(Rule):
    """Bulyan (El Mhamdi et al. 2018) over Krum: theta = p - 2f workers selected one at a time
    by Krum on the remaining set, then per coordinate the mean of the beta = theta - 2f
    selected values closest to their median (p >= 4f + 3). On the shrinking set Krum's
    neighbour count |set| - f - 2 is clamped at 0."""

    name = "bulyan"
    needs_f = True

    def _check(self, p: int) -> None:
        if not p >= 4 * self.f + 3:
            self._fail("p >= 4f + 3", p)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return run_bulyan(src, self.f)


class GeometricMedian(Rule):
    """Geometric median by smoothed Weiszfeld iterations, all in p-space (one Gram, one
    weighted sum). nu: smoothing, relative to the median worker norm; tol: stop when the
    objective decreases by at most tol relative and the step dz is short, ||dz||^2 / 2 <= tol
    H^2 with H = c / sum_i w_i the weighted (harmonic) mean distance of the c workers (the first
    test alone cannot see the honest workers when a few are huge); reports iterations and
    convergence."""

    name = "geometric_median"

    def __init__(
        self, *, nu: float = 1e-6, tol: float = 1e-12, max_iter: int = 1000, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.nu = check_float(nu, self._fn, "nu", low=0.0, strict_low=True)
        self.tol = check_float(tol, self._fn, "tol", low=0.0)
        self.max_iter = check_int(max_iter, self._fn, "max_iter", low=1, high=10_000_000)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return run_geometric_median(src, self.nu, self.tol, self.max_iter)


class CenteredClipping(Rule):
    """Centered clipping (Karimireddy, He and Jaggi 2021): ``iterations`` times
    v <- v + (1/p) sum_i (g_i - v) min(1, tau / ||g_i - v||), from v = the reference point.

    reference: None (the zero vector), an (n,) / (b, n) array or tensor (the previous
    aggregate or momentum, as in the paper), or "previous" (this object remembers its last
    output and starts from zero)."""

    name = "centered_clipping"

    def __init__(
        self, *, tau: float = 10.0, iterations: int = 3, reference: Any = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.tau = check_float(tau, self._fn, "tau", low=0.0, strict_low=True)
        self.iterations = check_int(iterations, self._fn, "iterations", low=1, high=1_000_000)
        if isinstance(reference, str) and reference != "previous":
            raise ValueError(
                f"{self._fn}: reference must be None, an array/tensor or 'previous', got "
                f"{reference!r}"
            )
        self.reference = reference
        self._previous: Any = None

    def _reference_for(self, src: Source) -> Any:
        if not isinstance(self.reference, str):
            ref = self.reference
            return None if ref is None else as_reference(ref, src.st, self._fn)
        if self._previous is None:
            return None
        try:
            return as_reference(self._previous, src.st, self._fn)
        except ValueError as e:  # name where it came from: the last output or a loaded state
            raise ValueError(
                str(e).replace(
                    "reference must",
                    "reference='previous' (the last call's output, or the 'previous' of a "
                    "state given to load_state_dict) must",
                    1,
                )
            ) from None

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        out, d = run_centered_clipping(src, self.tau, self.iterations, self._reference_for(src))
        if isinstance(self.reference, str):
            self._previous = _copy_array(out)
            if src.b == 1:
                self._previous = self._previous[0]
        return out, d

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["previous"] = _copy_array(self._previous)
        return state

    _LIVE = ("_gen", "_previous")

    def _state_keys(self) -> frozenset[str]:
        return _BASE_STATE_KEYS | {"previous"}

    def _load_extra(self, extra: dict[str, Any], fn: str, what: str) -> dict[str, Any]:
        prev = extra["previous"]
        if prev is None:
            return {"_previous": None}
        if not isinstance(self.reference, str):
            raise ValueError(
                f"{fn}: {what}['previous'] is an aggregate, but this rule's reference is not "
                f"'previous' (got reference = {_short_ref(self.reference)})"
            )
        if not (isinstance(prev, np.ndarray) or is_torch_tensor(prev)):
            raise TypeError(
                f"{fn}: {what}['previous'] must be None, a numpy array or a torch tensor, got "
                f"{type(prev).__name__}"
            )
        kind = (
            prev.dtype.kind
            if isinstance(prev, np.ndarray)
            else ("f" if prev.is_floating_point() else "other")
        )
        if kind != "f" or prev.ndim not in (1, 2) or prev.shape[-1] == 0:
            raise ValueError(
                f"{fn}: {what}['previous'] must be a real floating (n,) or (b, n) aggregate, got "
                f"dtype {prev.dtype} and shape {tuple(prev.shape)}"
            )
        try:
            if isinstance(prev, np.ndarray):
                finite = bool(np.isfinite(prev).all())
            else:
                finite = bool(prev.isfinite().all())
        except (RuntimeError, NotImplementedError) as e:  # e.g. a tensor on the meta device
            raise ValueError(
                f"{fn}: {what}['previous'] must hold values (a CPU or GPU tensor), got a "
                f"tensor on {prev.device} ({e})"
            ) from None
        if not finite:
            raise ValueError(f"{fn}: {what}['previous'] must be finite")
        return {"_previous": _copy_array(prev)}


def _copy_array(a: Any) -> Any:
    if a is None:
        return None
    return a.copy() if isinstance(a, np.ndarray) else a.detach().clone()


def _short_ref(ref: Any) -> str:
    if ref is None:
        return "None"
    return f"{type(ref).__name__} of shape {tuple(getattr(ref, 'shape', np.shape(ref)))}"


class Flag(Rule):
    """The Flag Aggregator (``flag_aggregate``); parameters r, lam, max_iter, eps, tol, scale."""

    name = "flag"

    def __init__(
        self,
        *,
        r: int | None = None,
        lam: float = 0.0,
        max_iter: int = 1,
        eps: float = 1e-7,
        tol: float = 1e-10,
        scale: str = "paper",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        # validated here, with this API's name (r <= p waits for the call, see _check)
        r = None if r is None else check_int(r, self._fn, "r", low=1)
        prm = _check_flag_params(self._fn, 1, 1, lam, max_iter, eps, tol, scale, False)
        self.params: dict[str, Any] = dict(
            r=r, lam=prm.lam, max_iter=prm.max_iter, eps=prm.eps, tol=prm.tol, scale=prm.scale
        )

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)
        r = self.params["r"]
        if r is not None and r > p:
            raise ValueError(
                f"{self._fn}: rule 'flag' needs r <= p (the rows it sees), got r = {r}, p = {p}"
            )

    def __call__(self, gradients: Any, *, return_info: bool = False) -> Any:
        if not self.pre:
            if not isinstance(return_info, bool):
                raise TypeError(f"{self._fn}: return_info must be a bool, got {return_info!r}")
            self._check(as_stack(gradients, self._fn).p)  # f < p, as with pre-aggregation
            if not return_info:
                return flag_aggregate(gradients, **self.params)
            out, info = flag_aggregate(gradients, return_info=True, **self.params)
            return out, RuleInfo.from_flag(info)
        return super().__call__(gradients, return_info=return_info)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        y = src.rows()  # (b, p', n): the info comes back batched
        out, info = flag_aggregate(y, return_info=True, **self.params)
        return out, dict(
            excluded=src.excluded_orig,
            coefficients=info.coefficients,
            weights=info.weights,
            reconstruction_ratios=info.reconstruction_ratios,
            objective=info.objective,
            iterations=info.iterations,
            last_step_rejected=info.last_step_rejected,
            rank=info.rank,
        )


class MDA(Rule):
    """Minimum-diameter averaging (El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability
    of Distributed Learning in Byzantium", ICML 2018): the mean of the p - f workers whose
    largest pairwise distance is smallest. Enumerates the C(p, f) subsets on the Gram matrix
    (time ~ C(p, f) (p - f)^2, after one read of the data); refuses more than ``max_subsets``.
    Ties: the first subset in lexicographic order (as ByzFL's ``MDA``). Needs p > 2f."""

    name = "mda"
    needs_f = True

    def __init__(self, *, max_subsets: int = 100_000, **kw: Any) -> None:
        super().__init__(**kw)
        self.max_subsets = check_int(max_subsets, self._fn, "max_subsets", low=1)

    def _check(self, p: int) -> None:
        super()._check(p)
        _sel.check_subsets(self._fn, self.name, p, self.f, self.max_subsets)

    def _solve(self, g: np.ndarray, f: int) -> dict[str, Any]:
        return _sel.mda_solve(g, f)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return _sel.finish(
            src, _sel.per_problem(src, self.f, lambda g, f, q, keep, scale: self._solve(g, f))
        )


class SMEA(MDA):
    """Smallest maximum eigenvalue averaging (Allouah, Guerraoui, Gupta, Pinot and Stephan, "On
    the Privacy-Robustness-Utility Trilemma in Distributed Learning", ICML 2023): the mean of the
    p - f workers whose empirical covariance has the smallest largest eigenvalue, computed
    exactly from each subset's centred Gram (ByzFL uses one power iteration from a random
    vector). Enumerates C(p, f) subsets (time ~ C(p, f) (p - f)^3); refuses more than
    ``max_subsets``. Needs p > 2f."""

    name = "smea"

    def _solve(self, g: np.ndarray, f: int) -> dict[str, Any]:
        return _sel.smea_solve(g, f)


class MoNNA(Rule):
    """MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot and Stephan, "Robust Collaborative
    Learning with Linear Gradient Overhead", ICML 2023): the mean of the p - f nearest
    neighbours of worker ``idx`` (a worker known to be correct, e.g. the node itself in
    peer-to-peer learning), itself included. idx indexes the rows the rule sees (after
    pre-aggregation). Needs p > 2f. If worker idx itself is excluded (non-finite) the aggregate
    is 0 (no step) and ``RuleInfo.excluded`` says so. Scores: each row's distance to worker idx
    (not squared)."""

    name = "monna"
    needs_f = True

    def __init__(self, *, idx: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.idx = check_int(idx, self._fn, "idx", low=0)

    def _check(self, p: int) -> None:
        super()._check(p)
        if self.idx >= p:
            raise ValueError(
                f"{self._fn}: rule 'monna' needs idx < p, got idx = {self.idx}, p = {p}"
            )

    def _solve(
        self, g: np.ndarray, f: int, q: int, keep: np.ndarray, scale: float
    ) -> dict[str, Any]:
        pos = np.flatnonzero(keep == self.idx)
        if pos.size == 0:  # the trusted worker itself is broken: no step (reported in excluded)
            return dict(unit=np.zeros(keep.size), count=0, selected=np.zeros(keep.size, bool))
        return _sel.monna_solve(g, f, int(pos[0]))

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return _sel.finish(src, _sel.per_problem(src, self.f, self._solve))


class CGE(Rule):
    """Comparative gradient elimination (Gupta and Vaidya, "Fault-Tolerance in Distributed
    Optimization: The Case of Redundancy", PODC 2020; Gupta, Liu and Vaidya 2021): drop the f
    gradients of largest norm and average the p - f others. The paper sums them; flagcore,
    ByzPy and Flower-style rules average (scale by 1 / (p - f)). Needs f < p."""

    name = "cge"
    needs_f = True

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return _sel.finish(
            src,
            _sel.per_problem(
                src,
                self.f,
                lambda g, f, q, keep, scale: _sel.cge_solve(g, f),
                g=_sel.squared_norms(src),
            ),
        )  # norms only: O(p n)


class CAF(Rule):
    """Covariance-bound agnostic filter (Allouah, Guerraoui and Stephan, "Towards Trustworthy
    Federated Learning with Untrusted Participants", ICML 2025): iterative filtering of the
    workers along the top eigenvector of their weighted covariance, returning the weighted mean
    with the smallest top eigenvalue seen. Computed in p-space with converged top eigenpairs
    (the native eigensolver below p = 1000, Lanczos to a 1e-13 Ritz residual from there: the
    same values to ~1e-12; for a repeated top eigenvalue the two may pick different vectors of
    its eigenspace; ByzFL and ByzPy use 1 or 3 power iterations from a random vector) and the
    maximum projection taken over the workers still weighted (ByzFL: over all); stops after at
    most 2f + 1 steps.
    Needs p > 2f."""

    name = "caf"
    needs_f = True

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return _sel.finish(
            src, _sel.per_problem(src, self.f, lambda g, f, q, keep, scale: _sel.caf_solve(g, f))
        )


class FLTrust(Rule):
    """FLTrust (Cao, Fang, Liu and Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021). reference: the server's gradient on its root data set, a real
    (n,) / (b, n) array or tensor, or one gradient's shape for list input (any other shape is
    refused) (required; pass the new one each round, e.g. ``FLTrust(reference=g0)``
    per round or ``aggregate(x, "fltrust", reference=g0)``). Trust TS_i = ReLU(cos(g_i, g_0));
    aggregate = sum_i TS_i (||g_0|| / ||g_i||) g_i / sum_i TS_i, 0 when every trust is 0. f only
    counts excluded workers (f < p)."""

    name = "fltrust"

    def __init__(self, *, reference: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        if reference is None or isinstance(reference, str):
            raise TypeError(
                f"{self._fn}: rule 'fltrust' needs reference (the server's gradient, an (n,) or "
                f"(b, n) array or tensor), got {reference!r}"
            )
        self.reference = reference

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        sq, cross, r2 = _sel.reference_stats(src, as_reference(self.reference, src.st, self._fn))
        d = _sel.per_problem(
            src,
            self.f,
            lambda g, f, q, keep, scale: _sel.fltrust_solve(sq[q][keep], cross[q][keep], r2[q]),
            g=sq,  # the norms alone: O(p)
        )
        return _sel.finish(src, d)


class DnC(Rule):
    """Divide and conquer (Shejwalkar and Houmansadr, "Manipulating the Byzantine: Optimizing
    Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Algorithm 2).
    ``iterations`` times: draw ``sub_dim`` coordinates at random (without replacement, sorted;
    all of them when sub_dim >= n), centre the workers' values there, score each worker by its
    squared projection on the top singular vector, keep the p - floor(filter_fraction * f)
    lowest scores (the paper's c is filter_fraction); the aggregate is the mean of the workers
    kept in every iteration (0 if none). The coordinates come from the rule's generator
    (``seed``): one ``choice(n, sub_dim, replace=False)`` per iteration, shared by a batch (no
    draw when sub_dim >= n).
    Needs p > 2f and at least one worker kept."""

    name = "dnc"
    needs_f = True

    def __init__(
        self, *, sub_dim: int = 10_000, iterations: int = 1, filter_fraction: float = 1.0, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.sub_dim = check_int(sub_dim, self._fn, "sub_dim", low=1)
        self.iterations = check_int(iterations, self._fn, "iterations", low=1, high=10_000)
        self.filter_fraction = check_float(filter_fraction, self._fn, "filter_fraction", low=0.0)

    def _cols(self, n: int) -> int | None:
        return min(self.sub_dim, n)

    def _check(self, p: int) -> None:
        super()._check(p)
        if _sel.dnc_keep(p, self.f, self.filter_fraction) < 1:
            self._fail("p - floor(filter_fraction * f) >= 1", p)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        b, p, n = src.b, src.p, src.n
        excl = _sel.nonfinite_rows(src)
        good = ~excl
        scores = np.full((b, p), np.nan)
        for _ in range(self.iterations):
            cols = (
                np.arange(n)
                if self.sub_dim >= n
                else _sel.sorted_sample(self._rng(), n, self.sub_dim)
            )
            xs = _sel.columns(src, cols)
            for q in range(b):
                keep = np.flatnonzero(~excl[q])
                if keep.size == 0:
                    continue
                f_eff = max(self.f - (p - keep.size), 0)
                s = _sel.dnc_scores(_sel.kept_rows(xs[q], keep))
                scores[q] = np.nan
                scores[q, keep] = s
                low = keep[
                    np.argsort(s, kind="stable")[
                        : _sel.dnc_keep(keep.size, f_eff, self.filter_fraction)
                    ]
                ]
                mask = np.zeros(p, bool)
                mask[low] = True
                good[q] &= mask
        unit = good.astype(np.float64)
        count = good.sum(axis=1)
        d = dict(
            excluded=excl,
            selected=good,
            scores=scores,
            coefficients=np.where(count[:, None] > 0, unit / np.maximum(count, 1)[:, None], 0.0),
        )
        return _sel.weighted_mean(src, unit, count), d


class SignGuard(Rule):
    """SignGuard (Xu, Huang, Wang, Liu and Shen, ICDCS 2022): workers whose norm ratio to the
    median norm lies in [lower, upper], intersected with the larger of two clusters of sign
    statistics (fractions of positive / zero / negative values on a random ``sample`` fraction
    of the coordinates, drawn from the rule's generator), clipped to the median norm and
    averaged. The paper clusters with mean-shift; flagcore splits in two by average-linkage
    agglomerative clustering (no scikit-learn dependency) and keeps the larger group."""

    name = "signguard"

    def __init__(
        self, *, lower: float = 0.1, upper: float = 3.0, sample: float = 0.1, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.lower = check_float(lower, self._fn, "lower", low=0.0)
        self.upper = check_float(upper, self._fn, "upper", low=0.0)
        if not self.upper >= self.lower:
            raise ValueError(
                f"{self._fn}: upper must be >= lower, got lower = {lower}, upper = {upper}"
            )
        self.sample = check_float(sample, self._fn, "sample", low=0.0, strict_low=True)
        if self.sample > 1.0:
            raise ValueError(f"{self._fn}: sample must be in (0, 1], got {sample}")

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        n = src.n
        k = min(n, max(1, int(np.ceil(self.sample * n))))  # n = 0: no column, as every rule
        cols = _sel.sorted_sample(self._rng(), n, k)
        xs = _sel.columns(src, cols)
        # only the norms are needed: one O(p n) read instead of the Gram
        d = _sel.per_problem(
            src,
            self.f,
            lambda g, f, q, keep, scale: _clu.signguard_solve(
                g, _sel.kept_rows(xs[q], keep), self.lower, self.upper
            ),
            g=_sel.squared_norms(src),
        )
        return _sel.finish(src, d)


class ClippedClustering(Rule):
    """Clipped clustering (Li, Ngai and Voigt, IEEE Trans. Big Data 2023): clip every gradient to
    tau (a norm in the caller's units; None: the median norm of this call's workers; Blades
    keeps the median of all norms seen so far), split the workers in two by average-linkage
    clustering of the cosine distances, and average the clipped members of the larger cluster.
    Entirely in p-space."""

    name = "clipped_clustering"

    def __init__(self, *, tau: float | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.tau = (
            None if tau is None else check_float(tau, self._fn, "tau", low=0.0, strict_low=True)
        )

    def _check(self, p: int) -> None:
        if not self.f < p:
            self._fail("f < p", p)

    def _run(self, src: Source) -> tuple[Any, dict[str, Any]]:
        return _sel.finish(
            src,
            _sel.per_problem(
                src,
                self.f,
                lambda g, f, q, keep, scale: _clu.clipped_clustering_solve(g, self.tau, scale),
            ),
        )


_CLASSES = {
    c.name: c
    for c in (
        Mean,
        Median,
        TrimmedMean,
        MeaMed,
        Phocas,
        Krum,
        MultiKrum,
        Bulyan,
        GeometricMedian,
        CenteredClipping,
        Flag,
        MDA,
        SMEA,
        MoNNA,
        CGE,
        CAF,
        DnC,
        SignGuard,
        ClippedClustering,
        FLTrust,
    )
}

RULES_NEEDING_F = tuple(name for name, cls in _CLASSES.items() if cls.needs_f)
"""Rules whose constructor requires f (the others default to f = 0)."""
RULES_NEEDING_REFERENCE = ("fltrust",)
"""Rules that require ``reference`` (the server's gradient)."""


def make_rule(rule: str, _fn: str | None = None, **params: Any) -> Rule:
    """The configured rule object for a name in RULES (parameters as in ``aggregate``)."""
    if not isinstance(rule, str) or rule not in _CLASSES:
        raise ValueError(
            f"{_fn or 'make_rule'}: rule must be one of {', '.join(RULES)}, got {rule!r}"
        )
    try:
        return _CLASSES[rule](_fn=_fn, **params)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("argument")[-1].strip()
            raise TypeError(
                f"{_fn or _CLASSES[rule].__name__}: rule {rule!r} takes no parameter {bad}"
            ) from None
        raise


def aggregate(gradients: Any, rule: str, *, return_info: bool = False, **params: Any) -> Any:
    """Aggregate a stack of p gradients with the named rule (see RULES and the module doc).

    Returns the aggregate in the caller's framework, dtype, device and shape ((n,), (b, n), or
    one gradient's shape for list input); with return_info, (aggregate, RuleInfo) for every
    rule and pre-aggregation (RuleInfo subclasses FlagInfo and keeps FA's fields).
    """
    ref = params.get("reference")
    if rule == "centered_clipping" and isinstance(ref, str):
        # (fltrust refuses a string itself; a rule without a reference says it takes none)
        if ref == "previous":
            raise ValueError(
                "aggregate: reference='previous' needs state: use the CenteredClipping class"
            )
        raise ValueError(
            "aggregate: reference must be None or an (n,) / (b, n) array or tensor "
            f"('previous' needs the CenteredClipping class), got {ref!r}"
        )
    return make_rule(rule, _fn="aggregate", **params)(gradients, return_info=return_info)
