"""flagcore.rules.gram_plan: whole-model aggregation from blocks (the DDP hook's seam) equals
flagcore.aggregate on the whole stack, for every rule, with and without pre-aggregation and a
non-finite worker, over uneven block layouts."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from flagcore.rules import make_rule
from flagcore.rules.gram_plan import (
    apply_plan,
    block_gram,
    needs_gram,
    plan_coordinate,
    plan_from_gram,
)

CASES = [
    ("flag", {}),
    ("flag", {"scale": "median_norm", "max_iter": 5}),
    ("krum", {"f": 2}),
    ("multi_krum", {"f": 2}),
    ("geometric_median", {}),
    ("centered_clipping", {"tau": 1.0}),
    ("bulyan", {"f": 1}),
    ("median", {}),
    ("mean", {}),
    ("trimmed_mean", {"f": 2}),
    ("meamed", {"f": 2}),
    ("phocas", {"f": 1}),
    ("median", {"f": 2, "pre": "nnm"}),
    ("krum", {"f": 1, "pre": "nnm"}),
    ("flag", {"f": 1, "pre": "nnm"}),
    ("geometric_median", {"pre": "bucketing", "bucket_size": 2, "seed": 3}),
    ("bulyan", {"f": 1, "pre": "nnm"}),
    ("mean", {"pre": "bucketing", "seed": 1}),
]
TOL = {np.float32: 1e-6, np.float64: 1e-12}


def _blocks(x: np.ndarray, cuts: list) -> list:
    edges = [0, *cuts, x.shape[1]]
    return [x[:, a:b] for a, b in zip(edges[:-1], edges[1:])]


def _planned(rule_name: str, kw: dict, blocks: list) -> np.ndarray:
    rule = make_rule(rule_name, **kw)
    p = blocks[0].shape[0]
    if needs_gram(rule):
        plan = plan_from_gram(rule, sum(block_gram(b) for b in reversed(blocks)))
    else:
        plan = plan_coordinate(
            rule, p, np.any([~np.isfinite(b).all(axis=1) for b in blocks], axis=0)
        )
    return np.concatenate([apply_plan(plan, b) for b in blocks])


@pytest.mark.parametrize(
    "rule,kw", CASES, ids=[f"{r}-{'-'.join(map(str, k.values()))}" for r, k in CASES]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nan_worker", [None, 3])
def test_blocks_equal_whole_model(rule: str, kw: dict, dtype: type, nan_worker: int | None) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 1000)).astype(dtype)
    x[0] += 3.0  # an outlier the rules must notice
    if nan_worker is not None:
        x[nan_worker, 500] = np.nan  # in one block only: excluded from every block
    want = flagcore.aggregate(x, rule, **kw)
    for cuts in ([10, 400, 401], [999], [250, 500, 750]):
        got = _planned(rule, kw, _blocks(x, cuts))
        assert got.dtype == x.dtype and np.isfinite(got).all()
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < TOL[dtype], (cuts, err)


def test_torch_blocks_come_back_as_torch() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    rule = make_rule("krum", f=1)
    plan = plan_from_gram(rule, block_gram(x[:, :30]) + block_gram(x[:, 30:]))
    out = torch.cat([apply_plan(plan, x[:, :30]), apply_plan(plan, x[:, 30:])])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.equal(out, flagcore.aggregate(x, "krum", f=1))
    assert plan.selected.sum() == 1 and plan.coefficients.sum() == pytest.approx(1.0)


def test_plan_errors() -> None:
    with pytest.raises(
        ValueError, match=r"plan_from_gram: gram must be \(p, p\), got shape \(2, 3\)"
    ):
        plan_from_gram(make_rule("krum", f=0), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="needs p >= 2f \\+ 3, got p = 4, f = 1"):
        plan_from_gram(make_rule("krum", f=1), np.eye(4))
    with pytest.raises(ValueError, match="centered_clipping with a reference cannot be planned"):
        plan_from_gram(make_rule("centered_clipping", reference=np.zeros(3)), np.eye(3))
    with pytest.raises(ValueError, match="needs the Gram"):
        plan_coordinate(make_rule("median", pre="nnm"), 3, np.zeros(3, bool))
    plan = plan_from_gram(make_rule("flag"), np.eye(3))
    with pytest.raises(ValueError, match=r"apply_plan: block must be \(3, n\), got shape \(4, 2\)"):
        apply_plan(plan, np.ones((4, 2)))
