"""Property-based tests (hypothesis) of flag_aggregate and flag_aggregate_layers.

Every drawn input (shapes, dtypes, layouts, rows of zeros / duplicates / huge / tiny / NaN /
Inf values, p up to 128 in a few examples) must give a finite, correctly shaped result that
satisfies the Flag Aggregator's invariants, and leave the input untouched:

- excluded == the rows whose squared norm is not finite in float64 (NaN, Inf, overflow);
- reconstruction ratios in [0, 1] (0 for excluded rows), weights 0 exactly for excluded rows;
- aggregate == sum_i coefficients_i g_i (to the output dtype's rounding);
- the objective is non-increasing over the accepted steps after the first, and a rejected
  last step is one that did not decrease it;
- scale="median_norm": the norm of the aggregate is the median of the finite rows' norms;
- where the subspace is unique it matches the float64 reference: r = p with lam = 0 spans
  every row, so the aggregate is sum_i g_i / max(||g_i||, 1e-12) / r exactly.
Invalid parameters raise ValueError/TypeError naming the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flagcore
from _props import RTOL, StackCase, assert_weighted_sum, bounded, stacks
from flagcore.flag import FlagInfo


def _infos(info, case: StackCase) -> list:
    """The FlagInfo as per-problem dicts of numpy arrays."""
    if not case.batched:
        return [
            dict(
                excluded=info.excluded,
                ratios=info.reconstruction_ratios,
                weights=info.weights,
                coef=info.coefficients,
                objective=np.asarray(info.objective),
                iterations=info.iterations,
                rejected=info.last_step_rejected,
            )
        ]
    return [
        dict(
            excluded=info.excluded[q],
            ratios=info.reconstruction_ratios[q],
            weights=info.weights[q],
            coef=info.coefficients[q],
            objective=info.objective[q, : info.iterations[q] + 1],
            iterations=int(info.iterations[q]),
            rejected=bool(info.last_step_rejected[q]),
        )
        for q in range(case.b)
    ]


def check_flag_result(
    case: StackCase, out, info: FlagInfo, *, r: int, lam: float, scale: str
) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == case.dtype
    assert out.shape == case.item_shape
    assert np.all(np.isfinite(out)), "non-finite aggregate"
    bad = case.sq_overflow_rows()
    coefs = []
    for q, d in enumerate(_infos(info, case)):
        np.testing.assert_array_equal(d["excluded"], bad[q])
        # float32 input: the Gram's products and short partial sums are float32
        # (gram_kernel_impl.hpp), so a ratio can pass 1 by a few float32 ulps
        slack = 1e-9 if case.dtype == np.float64 else 1e-5
        assert np.all(d["ratios"] >= -slack) and np.all(d["ratios"] <= 1 + slack)
        assert np.all(d["ratios"][bad[q]] == 0) and np.all(d["weights"][bad[q]] == 0)
        assert np.all(d["coef"][bad[q]] == 0)
        assert np.all(np.isfinite(d["coef"])) and np.all(np.isfinite(d["weights"]))
        obj = d["objective"]
        assert len(obj) == d["iterations"] + 1 and np.all(np.isfinite(obj))
        # From the first step on (step 1 is always taken: with lam > 0 it can raise F above its
        # all-zero starting value, as pair distances reach 4), F never increases: a step that
        # would raise it is rejected and not applied.
        accepted = obj[1 : len(obj) - 1] if d["rejected"] else obj[1:]
        assert np.all(np.diff(accepted) <= 1e-9 * (1.0 + np.abs(accepted[:-1]))), obj
        if d["rejected"]:
            assert not obj[-1] < obj[-2]
        coefs.append(d["coef"])
        if scale == "median_norm":
            agg = np.asarray(out, np.float64).reshape(case.b, case.n)[q]
            nrm = np.linalg.norm(agg)
            norms = np.linalg.norm(case.x64[q][~bad[q]], axis=1)
            if nrm > 0 and norms.size:
                med = np.median(norms)
                assert abs(nrm - med) <= 4 * RTOL[np.dtype(case.dtype)] * med + 1e-300, (nrm, med)
    assert_weighted_sum(case, out, np.stack(coefs), bad)


params = st.fixed_dictionaries(
    {
        "lam": st.sampled_from([0.0, 0.5, 10.0]),
        "max_iter": st.sampled_from([1, 2, 5]),
        "scale": st.sampled_from(["paper", "median_norm"]),
        "eps": st.sampled_from([1e-7, 1e-3]),
    }
)


@bounded(120)
@given(case=stacks(big_p=True), prm=params, r_frac=st.floats(0.0, 1.0))
def test_flag_aggregate_properties(case, prm, r_frac):
    """Any stack, any valid parameters: finite, shaped, excluded = non-finite squared norms,
    ratios in [0, 1], aggregate = sum c_i g_i, objective non-increasing, median_norm norm, input
    unchanged.
    """
    r = max(1, round(r_frac * case.p))
    snap = case.snapshot()
    out, info = flagcore.flag_aggregate(case.x, r=r, return_info=True, **prm)
    assert case.unchanged(snap), "flag_aggregate changed its input"
    check_flag_result(case, out, info, r=r, lam=prm["lam"], scale=prm["scale"])
    if not (case.x64 == 0).all():  # the same call without info gives the same bits
        again = flagcore.flag_aggregate(case.x, r=r, **prm)
        assert again.tobytes() == out.tobytes()


@bounded(60)
@given(
    case=stacks(kinds=("normal", "normal", "zero", "duplicate", "nan", "inf", "one_nan")),
    scale=st.sampled_from(["paper", "median_norm"]),
)
def test_flag_aggregate_full_rank_matches_reference(case, scale):
    """r = p, lam = 0: Y spans all the data, so agg = sum_i x_i / r on the normalised rows."""
    p = case.p
    out = flagcore.flag_aggregate(case.x, r=p, lam=0.0, max_iter=1, scale=scale)
    bad = case.sq_overflow_rows()
    agg64 = np.asarray(out, np.float64).reshape(case.b, case.n)
    for q in range(case.b):
        xs = case.x64[q][~bad[q]]
        norms = np.linalg.norm(xs, axis=1)
        ref = (xs / np.maximum(norms, 1e-12)[:, None]).sum(axis=0) / p
        if scale == "median_norm" and norms.size:
            nr = np.linalg.norm(ref)
            ref = ref * (np.median(norms) / nr) if nr > 1e-9 else None
        if ref is None:  # direction cancels (x and -x): no well-defined rescaling
            continue
        tol = 1e-7 if case.dtype == np.float64 else 4 * RTOL[np.dtype(case.dtype)]
        unit = max(np.linalg.norm(ref), np.median(norms) if norms.size else 0.0, 1e-300)
        assert np.max(np.abs(agg64[q] - ref)) <= tol * unit, (
            np.max(np.abs(agg64[q] - ref)) / unit,
            case.kinds,
        )


@bounded(40)
@given(
    layers=st.lists(
        stacks(p_min=2, p_max=6, n_max=12, allow_batch=False, dtypes=(np.float32,)),
        min_size=1,
        max_size=4,
    ),
    prm=params,
)
def test_flag_aggregate_layers_equals_per_layer(layers, prm):
    """One native call over ragged layers == flag_aggregate on each layer, bit for bit."""
    p_min = min(c.p for c in layers)
    r = max(1, p_min // 2)
    snaps = [c.snapshot() for c in layers]
    outs, infos = flagcore.flag_aggregate_layers(
        [c.x for c in layers], r=r, return_info=True, **prm
    )
    assert len(outs) == len(layers) == len(infos)
    for c, s, o, inf in zip(layers, snaps, outs, infos):
        assert c.unchanged(s)
        check_flag_result(c, o, inf, r=r, lam=prm["lam"], scale=prm["scale"])
        single = flagcore.flag_aggregate(c.x, r=r, **prm)
        assert single.tobytes() == o.tobytes()


BAD_PARAMS = [
    ({"r": 0}, ValueError, "r must be in"),
    ({"r": 10_000}, ValueError, "r must be in"),
    ({"r": 2.5}, TypeError, "r must be an int"),
    ({"r": True}, TypeError, "r must be an int"),
    ({"lam": -1.0}, ValueError, "lam must be >= 0"),
    ({"lam": float("nan")}, ValueError, "lam must be finite"),
    ({"lam": "1"}, TypeError, "lam must be a real number"),
    ({"max_iter": 0}, ValueError, "max_iter must be in"),
    ({"eps": 0.0}, ValueError, "eps must be > 0"),
    ({"eps": float("inf")}, ValueError, "eps must be finite"),
    ({"tol": -1e-3}, ValueError, "tol must be >= 0"),
    ({"scale": "mean"}, ValueError, "scale must be one of"),
    ({"return_info": 1}, TypeError, "return_info must be a bool"),
]


@bounded(30)
@given(case=stacks(p_max=6, n_max=8), bad=st.sampled_from(BAD_PARAMS))
def test_flag_aggregate_bad_params_name_the_argument(case, bad):
    """Each invalid parameter raises ValueError/TypeError naming it; the input is unchanged."""
    kw, exc, msg = bad
    snap = case.snapshot()
    with pytest.raises(exc, match=f"flag_aggregate: {msg}"):
        flagcore.flag_aggregate(case.x, **kw)
    assert case.unchanged(snap)
