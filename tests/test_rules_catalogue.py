"""The catalogue rules (mda, smea, monna, cge, caf, dnc, signguard, clipped_clustering, fltrust),
Krum's peer variant and the clipping pre-aggregation steps, each against its float64 textbook
reference of _reference_rules.py (n-space, independent of the p-space code): hand-computed cases
(ByzFL's documented examples), random inputs, ties, rank deficiency, NaN workers, batched / list
/ torch inputs, and the errors on bad parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from flagcore import _reference_rules as ref
from flagcore.rules import RuleInfo

X3 = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])

CATALOGUE = (
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


def _x(p=9, n=30, seed=0, byz=2):
    return ref.make_gradients(p, n, seed=seed, byzantine=byz, dtype=np.float64)


def _kw(rule, f, n):
    if rule == "fltrust":
        return {"f": f, "reference": np.linspace(-0.5, 1.0, n)}
    if rule == "signguard":  # every coordinate: few ties among the sign statistics
        return {"f": f, "sample": 1.0}
    return {"f": f}


def _want(rule, x, f, n=None):
    """The reference output of rule on finite rows x with f (the same random draws as the rule)."""
    n = x.shape[1] if n is None else n
    if rule == "mda":
        return ref.mda_ref(x, f)[0]
    if rule == "smea":
        return ref.smea_ref(x, f)[0]
    if rule == "monna":
        return ref.monna_ref(x, f, 0)[0]
    if rule == "cge":
        return ref.cge_ref(x, f)[0]
    if rule == "caf":
        return ref.caf_ref(x, f)
    if rule == "dnc":  # sub_dim 10000 >= n: every coordinate
        return ref.dnc_ref(x, f, [np.arange(n)])[0]
    if rule == "signguard":
        return ref.signguard_ref(x, np.arange(n))
    if rule == "clipped_clustering":
        return ref.clipped_clustering_ref(x)
    if rule == "fltrust":
        return ref.fltrust_ref(x, np.linspace(-0.5, 1.0, n))
    raise AssertionError(rule)


# ---------------------------------------------------------------- hand-computed (ByzFL's docs)
@pytest.mark.parametrize(
    "rule,kw,want",
    [
        ("mda", {"f": 1}, [2.5, 3.5, 4.5]),
        ("smea", {"f": 1}, [2.5, 3.5, 4.5]),
        ("monna", {"f": 1, "idx": 1}, [2.5, 3.5, 4.5]),
        ("caf", {"f": 1}, [4.0, 5.0, 6.0]),
        ("krum", {"f": 1, "neighbours": "byzfl"}, [1.0, 2.0, 3.0]),
        ("multi_krum", {"f": 1, "neighbours": "byzfl"}, [2.5, 3.5, 4.5]),
        ("cge", {"f": 1}, [2.5, 3.5, 4.5]),
        # sums first, then divides: exactly numpy's mean of the three rows (issue 14's defect)
        ("mda", {"f": 0}, [4.0, 5.0, 6.0]),
        ("cge", {"f": 0}, [4.0, 5.0, 6.0]),
        ("caf", {"f": 0}, [4.0, 5.0, 6.0]),
        ("dnc", {"f": 0}, [4.0, 5.0, 6.0]),
    ],
)
def test_byzfl_documented_examples(rule, kw, want):
    np.testing.assert_array_equal(flagcore.aggregate(X3, rule, **kw), np.array(want))
    torch = pytest.importorskip("torch")
    t = flagcore.aggregate([torch.tensor(r, dtype=torch.float32) for r in X3], rule, **kw)
    assert t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-6)


def test_clipping_and_arc_byzfl_examples():
    # ByzFL's Clipping(2) and ARC(1) documented outputs on X3
    _, info = flagcore.aggregate(X3, "mean", pre="clipping", c=2.0, return_info=True)
    np.testing.assert_allclose(
        info.mixing @ X3,
        [
            [0.53452248, 1.06904497, 1.60356745],
            [0.91168461, 1.13960576, 1.36752692],
            [1.00514142, 1.14873305, 1.29232469],
        ],
        rtol=1e-8,
    )
    _, info = flagcore.aggregate(X3, "mean", f=1, pre="arc", return_info=True)
    np.testing.assert_allclose(
        info.mixing @ X3, [[1, 2, 3], [4, 5, 6], [4.41004009, 5.04004582, 5.67005155]], rtol=1e-8
    )


def test_arc_count_is_the_exact_integer_floor():
    # ByzFL computes int((2 f / n) (n - f)) in floating point: 56 for f = 33, n = 242; the floor
    # of 2 * 33 * 209 / 242 is exactly 57
    assert int((2 * 33 / 242) * (242 - 33)) == 56
    assert flagcore.rules.arc_clip_count(242, 33) == 57
    x = np.random.default_rng(3).standard_normal((242, 4))
    _, info = flagcore.aggregate(x, "mean", f=33, pre="arc", return_info=True)
    np.testing.assert_allclose(info.mixing @ x, ref.arc_ref(x, 33), rtol=1e-12)
    assert np.sum(np.abs(np.diag(info.mixing) - 1) > 0) == 57


# ---------------------------------------------------------------- random inputs vs references
@pytest.mark.parametrize("rule", CATALOGUE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_inputs_match_reference(rule, seed):
    x = _x(9, 30, seed=seed)
    for f in (0, 1, 2, 3):
        got, info = flagcore.aggregate(x, rule, return_info=True, **_kw(rule, f, 30))
        np.testing.assert_allclose(
            got, _want(rule, x, f), rtol=1e-9, atol=1e-11, err_msg=f"{rule} f={f}"
        )
        assert type(info) is RuleInfo and info.rule == rule
        np.testing.assert_allclose(info.coefficients @ x, got, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("m", [1, 3, None])
def test_krum_byzfl_neighbours(m):
    x = _x(11, 25, seed=4)
    rule = "krum" if m == 1 else "multi_krum"
    kw = {} if m in (1, None) else {"m": m}
    got = flagcore.aggregate(x, rule, f=2, neighbours="byzfl", **kw)
    np.testing.assert_allclose(got, ref.krum_byzfl_ref(x, 2, m or 11 - 2)[0], rtol=1e-12)


def test_krum_neighbour_counts_differ_and_are_named():
    """p - f - 2 (textbook) and p - f - 1 (ByzFL) neighbours pick different workers here: the
    variant is an explicit option, never chosen silently."""
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    tb = flagcore.aggregate(x, "krum", f=1)  # 2 neighbours: worker 1 (score 1 + 1)
    bz = flagcore.aggregate(
        x, "krum", f=1, neighbours="byzfl"
    )  # 3 neighbours: worker 2 (1 + 4 + 64)
    np.testing.assert_array_equal(tb, ref.multi_krum_ref(x, 1, 1)[0])
    np.testing.assert_array_equal(bz, ref.krum_byzfl_ref(x, 1)[0])
    assert tb.tolist() == [1.0] and bz.tolist() == [2.0]
    with pytest.raises(
        ValueError,
        match=r"aggregate: neighbours must be one of 'textbook', 'byzfl', got 'garfield'",
    ):
        flagcore.aggregate(x, "krum", f=1, neighbours="garfield")
    with pytest.raises(
        ValueError, match=r"rule 'krum' needs p > 2f \(neighbours='byzfl'\), got p = 5, f = 3"
    ):
        flagcore.aggregate(x, "krum", f=3, neighbours="byzfl")


def test_cge_mean_versus_the_papers_sum():
    x = _x(8, 12, seed=5)
    got = flagcore.aggregate(x, "cge", f=2)
    keep = np.argsort(np.linalg.norm(x, axis=1))[:6]
    np.testing.assert_allclose(got * 6, x[keep].sum(axis=0), rtol=1e-12)  # the paper sums


# ---------------------------------------------------------------- ties, rank deficiency
def test_ties_resolve_to_lower_indices():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    # mda f = 1: {0,1,2,3} has diameter sqrt 2 (unique); pairs at distance 1 tie -> (0, 1) first
    _, info = flagcore.aggregate(x, "mda", f=1, return_info=True)
    assert info.selected.tolist() == [True, True, True, True, False]
    # the unit square: every 3-subset has diameter sqrt 2, the first one (0, 1, 2) wins
    _, info = flagcore.aggregate(x[:4], "mda", f=1, return_info=True)
    assert info.selected.tolist() == [True, True, True, False]
    assert ref.mda_ref(x[:4], 1)[1].tolist() == [0, 1, 2]
    # cge: norms 1 (rows 1 and 2) tie; f = 3 keeps rows 0 and 1
    _, info = flagcore.aggregate(x, "cge", f=3, return_info=True)
    assert info.selected.tolist() == [True, True, False, False, False]
    # monna around row 3: rows 1 and 2 tie at distance 1, row 1 first
    _, info = flagcore.aggregate(x, "monna", f=2, idx=3, return_info=True)
    assert info.selected.tolist() == [False, True, True, True, False]


def test_duplicates_and_rank_deficiency():
    rng = np.random.default_rng(6)
    basis = rng.standard_normal((2, 40))
    x = rng.standard_normal((10, 2)) @ basis  # rank 2
    x[3] = x[1]  # a duplicate
    for rule in CATALOGUE:
        for f in (1, 3):
            got = flagcore.aggregate(x, rule, **_kw(rule, f, 40))
            np.testing.assert_allclose(
                got, _want(rule, x, f), rtol=1e-8, atol=1e-10, err_msg=f"{rule} f={f}"
            )
    same = np.tile(rng.standard_normal(7), (6, 1))  # every worker equal: rank 1, zero covariance
    for rule in ("mda", "smea", "caf", "dnc", "cge", "monna"):
        np.testing.assert_allclose(
            flagcore.aggregate(same, rule, f=2), same[0], rtol=1e-14, err_msg=rule
        )


# ---------------------------------------------------------------- NaN workers, batch, list, torch
@pytest.mark.parametrize("rule", CATALOGUE)
def test_nonfinite_workers_are_excluded_and_counted_in_f(rule):
    x = _x(10, 24, seed=7)
    x[4, 3] = np.nan
    x[7, 0] = np.inf
    got, info = flagcore.aggregate(x, rule, return_info=True, **_kw(rule, 3, 24))
    assert np.isfinite(got).all()
    assert info.excluded.tolist() == [i in (4, 7) for i in range(10)]
    rest = np.delete(x, [4, 7], axis=0)
    np.testing.assert_allclose(got, _want(rule, rest, 1), rtol=1e-9, atol=1e-11)  # f_eff = 3 - 2
    assert info.coefficients[4] == 0 and info.coefficients[7] == 0
    allbad = np.full((4, 5), np.nan)
    out = flagcore.aggregate(allbad, rule, **_kw(rule, 1, 5))
    np.testing.assert_array_equal(out, np.zeros(5))


def test_monna_with_a_broken_trusted_worker_gives_no_step():
    x = _x(7, 9, seed=8)
    x[0, 0] = np.nan
    got, info = flagcore.aggregate(x, "monna", f=1, return_info=True)
    np.testing.assert_array_equal(got, np.zeros(9))
    assert info.excluded[0] and not info.selected.any()


@pytest.mark.parametrize("rule", CATALOGUE)
def test_batched_list_and_torch_inputs(rule):
    torch = pytest.importorskip("torch")
    x = _x(9, 24, seed=9)
    y = _x(9, 24, seed=10)
    kw = _kw(rule, 2, 24)
    a = flagcore.aggregate(x, rule, **kw)
    bt = flagcore.aggregate(np.stack([x, y]), rule, **kw)
    np.testing.assert_allclose(bt[0], a, rtol=1e-12)
    np.testing.assert_allclose(bt[1], flagcore.aggregate(y, rule, **kw), rtol=1e-12)
    lst = flagcore.aggregate([r.reshape(4, 6) for r in x], rule, **kw)
    assert lst.shape == (4, 6)
    np.testing.assert_allclose(lst.ravel(), a, rtol=1e-12)
    t = flagcore.aggregate(torch.from_numpy(x), rule, **kw)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), a, rtol=1e-12)
    t32 = flagcore.aggregate(torch.from_numpy(x).float(), rule, **kw)
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(
        t32.numpy(), _want(rule, x.astype(np.float32).astype(np.float64), 2), rtol=2e-5, atol=2e-5
    )
    f32 = flagcore.aggregate(x.astype(np.float32), rule, **kw)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, t32.numpy(), rtol=1e-6, atol=1e-6)


def test_fltrust_reference_per_problem_and_zero_trust():
    x = _x(6, 10, seed=11)
    g0 = np.stack([np.ones(10), -np.ones(10)])
    got = flagcore.aggregate(np.stack([x, x]), "fltrust", reference=g0)
    np.testing.assert_allclose(got[0], ref.fltrust_ref(x, g0[0]), rtol=1e-12)
    np.testing.assert_allclose(got[1], ref.fltrust_ref(x, g0[1]), rtol=1e-12)
    neg = -np.abs(x) - 0.1  # every cosine with +1 is negative: trust 0, no step
    _, info = flagcore.aggregate(neg, "fltrust", reference=np.ones(10), return_info=True)
    np.testing.assert_array_equal(
        flagcore.aggregate(neg, "fltrust", reference=np.ones(10)), np.zeros(10)
    )
    assert np.all(info.scores == 0)


def test_dnc_draws_coordinates_from_the_seeded_generator():
    x = _x(12, 400, seed=12, byz=3)
    rule = flagcore.rules.DnC(f=3, sub_dim=50, iterations=2, seed=5)
    rng = np.random.default_rng(5)
    for _ in range(3):  # calls differ, the sequence follows the seed
        cols = [np.sort(rng.choice(400, size=50, replace=False)) for _ in range(2)]
        np.testing.assert_allclose(rule(x), ref.dnc_ref(x, 3, cols)[0], rtol=1e-12)


@pytest.mark.parametrize(("p", "n", "sub_dim"), [(60, 20, 20), (120, 400, 50), (33, 32, 32)])
def test_dnc_with_fewer_coordinates_than_workers_matches_the_reference(p, n, sub_dim):
    """m < p coordinates: the top singular vector comes from the m x m matrix D^T D (not the
    p x p D D^T); outputs and scores against numpy's float64 SVD of the centred rows."""
    x = _x(p, n, seed=p, byz=p // 5)
    f = p // 5
    rule = flagcore.rules.DnC(f=f, sub_dim=sub_dim, seed=7)
    out, info = rule(x, return_info=True)
    rng = np.random.default_rng(7)
    cols = np.arange(n) if sub_dim >= n else np.sort(rng.choice(n, size=sub_dim, replace=False))
    np.testing.assert_allclose(out, ref.dnc_ref(x, f, [cols])[0], rtol=1e-12)
    d = x[:, cols] - x[:, cols].mean(axis=0)
    v = np.linalg.svd(d, full_matrices=False)[2][0]
    want = (d @ v) ** 2
    np.testing.assert_allclose(info.scores, want, rtol=1e-9, atol=1e-12 * want.max())
    # rank-deficient: every worker equal (all scores 0) and two distinct values (rank one)
    for y in (np.ones((p, sub_dim)), np.repeat(x[:2, :sub_dim], [p - 3, 3], axis=0)):
        out, info = flagcore.aggregate(y, "dnc", f=f, return_info=True)
        d = y - y.mean(axis=0)
        v = np.linalg.svd(d, full_matrices=False)[2][0]
        tol = 1e-12 * max(1.0, info.scores.max())
        np.testing.assert_allclose(info.scores, (d @ v) ** 2, atol=tol)


def test_signguard_draws_coordinates_from_the_seeded_generator():
    x = _x(10, 300, seed=13, byz=2)
    x[8:] *= -1.0  # sign-flipped attackers
    rule = flagcore.rules.SignGuard(sample=0.2, seed=3)
    rng = np.random.default_rng(3)
    for _ in range(2):
        cols = np.sort(rng.choice(300, size=60, replace=False))
        got = rule(x)
        np.testing.assert_allclose(got, ref.signguard_ref(x, cols), rtol=1e-12)


# ---------------------------------------------------------------- pre-aggregation
def test_clipping_and_arc_compose_with_nnm_and_bucketing():
    x = _x(11, 40, seed=14)
    c = float(np.median(np.linalg.norm(x, axis=1)))
    got = flagcore.aggregate(x, "median", f=2, pre=["clipping", "nnm"], c=c)
    np.testing.assert_allclose(
        got, ref.median_ref(ref.nnm_ref(ref.clipping_ref(x, c), 2)), rtol=1e-10
    )
    got = flagcore.aggregate(x, "trimmed_mean", f=2, pre=["nnm", "arc"])
    np.testing.assert_allclose(
        got, ref.trimmed_mean_ref(ref.arc_ref(ref.nnm_ref(x, 2), 2), 2), rtol=1e-10
    )
    got = flagcore.aggregate(x, "krum", f=1, pre=["bucketing", "arc"], bucket_size=2, seed=4)
    buckets = ref.bucketing_ref(x, 2, np.random.default_rng(4).permutation(11))
    np.testing.assert_allclose(
        got, ref.multi_krum_ref(ref.arc_ref(buckets, 1), 1, 1)[0], rtol=1e-10
    )
    # Gram rules never form the clipped rows (not cge: clipped rows tie in norm by design)
    for rule in ("mda", "caf", "monna"):
        got, info = flagcore.aggregate(x, rule, f=2, pre="arc", return_info=True)
        np.testing.assert_allclose(got, _want(rule, ref.arc_ref(x, 2), 2), rtol=1e-9, err_msg=rule)
        np.testing.assert_allclose(info.coefficients @ x, got, rtol=1e-9)


def test_clipping_parameter_errors():
    x = np.ones((7, 4))
    with pytest.raises(TypeError, match=r"aggregate: pre-aggregation 'clipping' needs c"):
        flagcore.aggregate(x, "median", pre="clipping")
    with pytest.raises(ValueError, match=r"aggregate: c must be > 0.0, got -1.0"):
        flagcore.aggregate(x, "median", pre="clipping", c=-1.0)
    with pytest.raises(
        TypeError, match=r"aggregate: c \(the clipping threshold\) is only used with pre='clipping'"
    ):
        flagcore.aggregate(x, "median", pre="nnm", c=1.0)
    with pytest.raises(
        ValueError,
        match=r"aggregate: pre must be None, one of 'nnm', 'bucketing', 'clipping', 'arc'",
    ):
        flagcore.aggregate(x, "median", pre="clip")


# ---------------------------------------------------------------- bad parameters
@pytest.mark.parametrize(
    "rule,kw,exc,msg",
    [
        ("mda", {}, TypeError, r"aggregate: rule 'mda' needs f"),
        ("mda", {"f": 4}, ValueError, r"aggregate: rule 'mda' needs p > 2f, got p = 8, f = 4"),
        (
            "mda",
            {"f": 3, "max_subsets": 10},
            ValueError,
            r"aggregate: rule 'mda' enumerates the C\(p, f\) = C\(8, 3\) = 56 subsets .* "
            r"more than max_subsets = 10",
        ),
        (
            "smea",
            {"f": 1, "max_subsets": 0},
            ValueError,
            r"aggregate: max_subsets must be in \[1, inf\], got 0",
        ),
        (
            "monna",
            {"f": 1, "idx": 8},
            ValueError,
            r"aggregate: rule 'monna' needs idx < p, got idx = 8, p = 8",
        ),
        ("monna", {"f": 1, "idx": -1}, ValueError, r"aggregate: idx must be in \[0, inf\], got -1"),
        ("cge", {"f": 8}, ValueError, r"aggregate: rule 'cge' needs f < p, got p = 8, f = 8"),
        ("caf", {"f": 4}, ValueError, r"aggregate: rule 'caf' needs p > 2f, got p = 8, f = 4"),
        (
            "dnc",
            {"f": 1, "sub_dim": 0},
            ValueError,
            r"aggregate: sub_dim must be in \[1, inf\], got 0",
        ),
        (
            "dnc",
            {"f": 1, "filter_fraction": -0.5},
            ValueError,
            r"aggregate: filter_fraction must be >= 0.0",
        ),
        (
            "dnc",
            {"f": 3, "filter_fraction": 3.0},
            ValueError,
            r"aggregate: rule 'dnc' needs p - floor\(filter_fraction \* f\) >= 1, got p = 8, f = 3",
        ),
        (
            "signguard",
            {"lower": 2.0, "upper": 1.0},
            ValueError,
            r"aggregate: upper must be >= lower",
        ),
        (
            "signguard",
            {"sample": 1.5},
            ValueError,
            r"aggregate: sample must be in \(0, 1\], got 1.5",
        ),
        ("clipped_clustering", {"tau": 0.0}, ValueError, r"aggregate: tau must be > 0"),
        ("fltrust", {}, TypeError, r"aggregate: rule 'fltrust' needs reference"),
        (
            "fltrust",
            {"reference": np.ones(3)},
            ValueError,
            r"aggregate: reference must have shape \(5,\) or \(1, 5\), got \(3,\)",
        ),
        (
            "fltrust",
            {"reference": np.full(5, np.nan)},
            ValueError,
            r"aggregate: reference must be finite",
        ),
        ("caf", {"f": 1, "tau": 1.0}, TypeError, r"aggregate: rule 'caf' takes no parameter 'tau'"),
    ],
)
def test_bad_parameters_name_function_argument_and_value(rule, kw, exc, msg):
    x = _x(8, 5, seed=15)
    with pytest.raises(exc, match=msg):
        flagcore.aggregate(x, rule, **kw)


def test_classes_validate_at_construction():
    with pytest.raises(ValueError, match=r"MDA: max_subsets must be in"):
        flagcore.rules.MDA(f=1, max_subsets=-1)
    with pytest.raises(TypeError, match=r"FLTrust: rule 'fltrust' needs reference"):
        flagcore.rules.FLTrust()
    with pytest.raises(TypeError, match=r"DnC: iterations must be an int"):
        flagcore.rules.DnC(f=1, iterations=1.5)


@pytest.mark.parametrize("scale", [1e-155, 2e153])
@pytest.mark.parametrize("rule", CATALOGUE)
def test_huge_and_tiny_gradients_scale_through(rule, scale):
    """Distances and centred Grams of gradients of norm ~1e154 overflow float64 unless the rules
    work on a rescaled Gram: they do, so the result scales with the input (no warning, finite)."""
    x = _x(9, 12, seed=16)
    x /= np.linalg.norm(x, axis=1).max()
    kw = _kw(rule, 2, 12)
    want = flagcore.aggregate(x, rule, **kw)
    got, info = flagcore.aggregate(x * scale, rule, return_info=True, **kw)
    assert np.isfinite(got).all() and not info.excluded.any()
    expect = want if rule == "fltrust" else want * scale  # fltrust rescales to ||reference||
    np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-300)
