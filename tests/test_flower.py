"""flagcore.flower: RobustStrategy and attack_mod against Flower's own message API (flwr 1.42).

Unit tests build real flwr Messages (real Array payloads, real Metadata); the federation tests
in test_flower_simulation.py run Flower's simulation engine.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from unittest.mock import Mock

import numpy as np
import pytest

import flagcore

flwr = pytest.importorskip("flwr", reason="flwr not installed (pip install 'flagcore[flower]')")

from flwr.app import (  # noqa: E402
    Array,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.exception import AggregationError  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from _flower_msgs import (  # noqa: E402
    _md,
    _record,
    error_reply,
    flat,
    reply,
    stack_of,
    strategy_with,
)
from flagcore.flower import SAMPLE_KEY, RobustStrategy, attack_mod  # noqa: E402

# ----------------------------------------------------------------------------------------- helpers


def model(seed: int = 0, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((5, 7)).astype(dtype),
        "fc.bias": rng.standard_normal(5).astype(dtype),
        "out.weight": rng.standard_normal((3, 5)).astype(dtype),
    }


def honest_replies(g: dict, p: int, seed: int = 1, first_node: int = 100) -> list:
    rng = np.random.default_rng(seed)
    return [
        reply(
            first_node + i,
            {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in g.items()},
            num_examples=int(rng.integers(5, 50)),
            loss=float(i),
        )
        for i in range(p)
    ]


# ------------------------------------------------------------------------------------------ import
def test_import_flagcore_does_not_import_flwr():
    code = (
        "import sys, flagcore, flagcore.rules, flagcore.attacks; "
        "sys.exit(1 if 'flwr' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------------------- bitwise
@pytest.mark.parametrize(
    "rule,params",
    [
        ("flag", {}),
        ("flag", {"f": 2, "r": 3}),
        ("median", {}),
        ("multi_krum", {"f": 2}),
        ("centered_clipping", {"tau": 0.5}),
        ("mean", {}),
        ("krum", {"f": 1}),
        ("trimmed_mean", {"f": 2}),
    ],
)
def test_aggregate_equals_flagcore_aggregate_bitwise(rule, params):
    g = model()
    reps = honest_replies(g, 9)
    random.Random(0).shuffle(reps)  # arrival order must not matter: rows follow node ids
    arrays, metrics = strategy_with(rule, g, **params).aggregate_train(1, reps)
    st, gflat = stack_of(g, reps)
    expected = gflat + flagcore.aggregate(st, rule, **params)
    assert expected.dtype == np.float32
    got = flat(arrays, g)
    assert np.array_equal(got, expected)
    assert list(arrays.keys()) == list(g)
    for k, v in g.items():
        assert arrays[k].numpy().shape == v.shape and arrays[k].numpy().dtype == v.dtype
    assert metrics["agg-nodes"] == sorted(m.metadata.src_node_id for m in reps)
    assert metrics["agg-excluded-nodes"] == [] and metrics["agg-replies"] == 9


@pytest.mark.parametrize("rule,params", [("flag", {}), ("median", {}), ("multi_krum", {"f": 1})])
def test_per_array_aggregates_each_array_on_its_own(rule, params):
    g = model(3)
    reps = honest_replies(g, 7, seed=4)
    arrays, _ = strategy_with(rule, g, per_array=True, **params).aggregate_train(1, reps)
    for k, v in g.items():
        rows = sorted(reps, key=lambda m: m.metadata.src_node_id)
        st = np.stack([m.content["arrays"][k].numpy().ravel() for m in rows]) - v.ravel()
        expected = (v.ravel() + flagcore.aggregate(st, rule, **params)).reshape(v.shape)
        assert np.array_equal(arrays[k].numpy(), expected), k


def test_float64_and_integer_arrays_keep_their_dtype():
    rng = np.random.default_rng(5)
    g = {"w": rng.standard_normal((4, 3)), "count": np.array(7, dtype=np.int64)}
    reps = [
        reply(
            i,
            {
                "w": g["w"] + rng.standard_normal((4, 3)),
                "count": np.array(8 + i % 2, dtype=np.int64),
            },
        )
        for i in range(5)
    ]
    arrays, _ = strategy_with("median", g).aggregate_train(1, reps)
    assert arrays["w"].numpy().dtype == np.float64 and arrays["count"].numpy().dtype == np.int64
    st = np.stack(
        [
            np.concatenate(
                [m.content["arrays"]["w"].numpy().ravel(), [m.content["arrays"]["count"].numpy()]]
            )
            for m in reps
        ]
    ) - np.concatenate([g["w"].ravel(), [7.0]])
    exp = np.concatenate([g["w"].ravel(), [7.0]]) + flagcore.aggregate(st, "median")
    assert np.array_equal(arrays["w"].numpy().ravel(), exp[:-1])
    assert int(arrays["count"].numpy()) == 8  # median of 8, 9, 8, 9, 8


def test_flag_diagnostics_are_flag_aggregate_info():
    g = model(6)
    reps = honest_replies(g, 8, seed=7)
    _, metrics = strategy_with("flag", g, f=2).aggregate_train(3, reps)
    st, _ = stack_of(g, reps)
    _, info = flagcore.flag_aggregate(st, return_info=True)
    assert metrics["flag-weights"] == [float(v) for v in info.weights]
    assert metrics["flag-ratios"] == [float(v) for v in info.reconstruction_ratios]
    assert len(metrics["flag-weights"]) == len(metrics["agg-nodes"]) == 8


def test_coefficients_reported_for_weighted_sum_rules():
    g = model(8)
    reps = honest_replies(g, 7, seed=9)
    _, metrics = strategy_with("multi_krum", g, f=1).aggregate_train(1, reps)
    st, _ = stack_of(g, reps)
    _, info = flagcore.aggregate(st, "multi_krum", f=1, return_info=True)
    assert metrics["agg-coefficients"] == [float(v) for v in info.coefficients]


# ----------------------------------------------------------------------------------------- hostile
def _hostile(g: dict) -> list:
    """(node id, reply, reason fragment) for every way a reply can be broken."""
    bad = []

    def mutate(node, **changes):
        arrays = {k: v.copy() for k, v in g.items()}
        for k, v in changes.items():
            if v is None:
                del arrays[k]
            else:
                arrays[k] = v
        return reply(node, arrays)

    nan = g["fc.weight"].copy()
    nan[1, 2] = np.nan
    inf = g["fc.bias"].copy()
    inf[0] = -np.inf
    bad.append((900, mutate(900, **{"fc.bias": None}), "missing array 'fc.bias'"))
    bad.append(
        (
            901,
            mutate(901, **{"fc.weight": g["fc.weight"].T.copy()}),
            "shape (7, 5), expected (5, 7)",
        )
    )
    bad.append(
        (
            902,
            mutate(902, **{"fc.weight": g["fc.weight"].astype(np.float64)}),
            "dtype float64, expected float32",
        )
    )
    bad.append((903, mutate(903, extra=np.zeros(2, np.float32)), "unexpected array 'extra'"))
    bad.append((904, error_reply(904, "out of memory"), "error reply (out of memory)"))
    forged = Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=b"\x93NUMPY garbage")
    bad.append((905, mutate(905, **{"fc.bias": forged}), "malformed .npy payload"))
    short = Array(np.zeros(4, np.float32))
    lying = Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=short.data)
    bad.append(
        (
            906,
            mutate(906, **{"fc.bias": lying}),
            "payload header says float32(4,), expected float32(5,)",
        )
    )
    other = Array(dtype="float32", shape=(5,), stype="torch.Tensor", data=b"")
    bad.append((907, mutate(907, **{"fc.bias": other}), "serialization type 'torch.Tensor'"))
    two = Message(
        RecordDict(
            {"a": _record(g), "b": _record(g), "metrics": MetricRecord({"num-examples": 1})}
        ),
        metadata=_md(908),
    )
    bad.append((908, two, "2 ArrayRecords and none named 'arrays'"))
    bad.append((909, mutate(909, **{"fc.weight": nan}), "non-finite values"))
    bad.append((910, mutate(910, **{"fc.bias": inf}), "non-finite values"))
    return bad


@pytest.mark.parametrize("rule", ["flag", "median", "multi_krum", "centered_clipping", "mean"])
def test_hostile_replies_are_excluded_named_and_logged(rule, caplog):
    g = model(11)
    good = honest_replies(g, 9, seed=12)
    bad = _hostile(g)
    reps = good + [m for _, m, _ in bad]
    random.Random(1).shuffle(reps)
    params = {"f": len(bad)} if rule == "multi_krum" else {}
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, metrics = strategy_with(rule, g, **params).aggregate_train(2, reps)
    assert arrays is not None
    assert sorted(metrics["agg-excluded-nodes"]) == sorted(node for node, _, _ in bad)
    assert metrics["agg-excluded"] == len(bad) and metrics["agg-replies"] == len(reps)
    # flagcore.aggregate on the stack of the honest replies: the 10 faulty ones (all but the
    # error reply 904, which an honest node can send) count against f: f_eff = 11 - 10.
    st, gflat = stack_of(g, good)
    ref_params = {"f": 1} if rule == "multi_krum" else {}
    assert np.array_equal(flat(arrays, g), gflat + flagcore.aggregate(st, rule, **ref_params))
    assert metrics["agg-f-eff"] == (1 if rule == "multi_krum" else 0)
    line = [r.getMessage() for r in caplog.records if "aggregate_train: round 2" in r.getMessage()]
    assert len(line) == 1
    for node, _, why in bad:
        segment = line[0].split(f"node {node} (", 1)[1].split("), node ", 1)[0]
        assert why in segment, (node, why, segment)
    # Client metrics come from the included replies only (loss = 0..8 of the honest ones).
    assert np.isfinite(metrics["loss"])


def test_hostile_count_against_f_keeps_krum_running():
    g = model(13)
    good = honest_replies(g, 7, seed=14)
    bad = [m for _, m, _ in _hostile(g)[:3]]
    s = strategy_with("krum", g, f=3)  # p = 10 >= 2f + 3 = 9; 7 valid with f_eff = 0 runs
    arrays, metrics = s.aggregate_train(1, good + bad)
    st, gflat = stack_of(g, good)
    assert np.array_equal(flat(arrays, g), gflat + flagcore.aggregate(st, "krum", f=0))
    assert metrics["agg-excluded"] == 3


def test_a_node_replying_several_times_is_excluded_with_all_its_replies(caplog):
    # six copies of one node's +10 update took over the median and Krum (a row per reply)
    g = model(31)
    honest = honest_replies(g, 5, seed=32)
    evil = {k: (v + 10.0).astype(v.dtype) for k, v in g.items()}
    reps = honest + [reply(500, evil) for _ in range(6)]
    for rule, kw in (("median", {}), ("krum", {"f": 1})):
        s = strategy_with(rule, g, **kw)
        with caplog.at_level(logging.INFO, logger="flwr"):
            arrays, metrics = s.aggregate_train(1, reps)
        assert metrics["agg-nodes"] == [100, 101, 102, 103, 104]
        assert metrics["agg-excluded-nodes"] == [500]
        # the result is the rule on the honest replies alone
        want, _ = strategy_with(rule, g, **kw).aggregate_train(1, honest)
        assert np.array_equal(flat(arrays, g), flat(want, g))
        assert any("node 500 (replied 6 times" in r.getMessage() for r in caplog.records)


def test_integer_arrays_stay_exact_and_never_wrap():
    # through float64 an untouched 2^62 + 1 came back as 2^62, and int64 max wrapped around
    big = np.array(2**62 + 1, dtype=np.int64)
    g = {"w": np.zeros(3, np.float32), "count": big}
    reps = [reply(i, {"w": np.full(3, 0.1 * i, np.float32), "count": big}) for i in range(5)]
    arrays, _ = strategy_with("median", g).aggregate_train(1, reps)
    assert int(arrays["count"].numpy()) == 2**62 + 1
    top = np.array(np.iinfo(np.int64).max, dtype=np.int64)
    g0 = {"w": np.zeros(3, np.float32), "count": np.array(0, dtype=np.int64)}
    reps = [reply(i, {"w": np.zeros(3, np.float32), "count": top}) for i in range(5)]
    arrays, _ = strategy_with("median", g0).aggregate_train(1, reps)
    assert arrays is None  # the round is skipped (logged), the model unchanged


def test_round_with_too_few_valid_replies_is_skipped(caplog):
    g = model(15)
    s = strategy_with("krum", g, f=2)
    # 5 valid + an error reply: f stays 2 (an honest node can crash) and krum needs p >= 7, so
    # f is lowered to 1 (5 >= 5), with a warning
    reps = honest_replies(g, 5, seed=16) + [error_reply(77)]
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, metrics = s.aggregate_train(1, reps)
    st, gflat = stack_of(g, reps[:5])
    assert np.array_equal(flat(arrays, g), gflat + flagcore.aggregate(st, "krum", f=1))
    assert metrics["agg-f-eff"] == 1
    assert any("f lowered from 2 to 1" in r.getMessage() for r in caplog.records)
    # 2 valid: not even f = 0 runs (p >= 3): skipped
    reps = honest_replies(g, 2, seed=16) + [error_reply(77)]
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, metrics = s.aggregate_train(2, reps)
    assert arrays is None
    assert metrics["agg-excluded-nodes"] == [77]
    msg = [r.getMessage() for r in caplog.records if "round 2 skipped" in r.getMessage()]
    assert len(msg) == 1 and "p >= 2f + 3" in msg[0] and "node 77 (error reply" in msg[0]
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, metrics = s.aggregate_train(3, [error_reply(1), error_reply(2)])
    assert arrays is None and metrics["agg-excluded"] == 2
    assert any(
        "round 3 skipped" in r.getMessage() and "no valid reply" in r.getMessage()
        for r in caplog.records
    )
    assert s.aggregate_train(4, [])[0] is None


def test_all_rows_non_finite_leaves_the_model_unchanged():
    g = model(17)
    reps = [reply(i, {k: np.full_like(v, np.nan) for k, v in g.items()}) for i in range(3)]
    arrays, metrics = strategy_with("median", g).aggregate_train(1, reps)
    assert arrays is None  # no valid reply: the round is skipped, the global model kept
    assert metrics["agg-excluded"] == 3 and metrics["agg-nodes"] == []


def test_aggregate_train_needs_the_round_global_model():
    with pytest.raises(AggregationError, match="configure_train must run first"):
        RobustStrategy("median").aggregate_train(1, honest_replies(model(), 3))


# --------------------------------------------------------------------------------------- weighting
def test_weighted_mean_is_fedavg():
    g = model(18)
    reps = honest_replies(g, 6, seed=19)
    ours, om = strategy_with("mean", g, weighted=True).aggregate_train(1, reps)
    theirs, tm = FedAvg().aggregate_train(1, honest_replies(g, 6, seed=19))
    for k in g:
        np.testing.assert_allclose(ours[k].numpy(), theirs[k].numpy(), rtol=1e-5, atol=1e-6)
    assert om["loss"] == pytest.approx(tm["loss"])


def test_weighted_mean_with_weights_whose_sum_overflows():
    # two clients claiming 1e308 examples overflowed sum w: every coefficient 0, a zero update
    g = model(40)
    reps = honest_replies(g, 4, seed=41)
    for i in (0, 1):
        reps[i].content["metrics"]["num-examples"] = 1e308
    arrays, _ = strategy_with("mean", g, weighted=True).aggregate_train(1, reps)
    st, gflat = stack_of(g, reps)
    want = gflat + (st[0] + st[1]) / 2  # the other weights are negligible next to 1e308
    np.testing.assert_allclose(flat(arrays, g), want, rtol=1e-5, atol=1e-6)


def test_weighted_mean_excludes_replies_without_a_usable_weight():
    g = model(20)
    reps = honest_replies(g, 4, seed=21)
    reps.append(reply(555, {k: v + 1 for k, v in g.items()}, num_examples=-3))
    _, metrics = strategy_with("mean", g, weighted=True).aggregate_train(1, reps)
    assert metrics["agg-excluded-nodes"] == [555]


@pytest.mark.parametrize("rule", ["flag", "median", "multi_krum", "mean"])
def test_robust_rules_ignore_num_examples(rule):
    g = model(22)
    params = {"f": 1} if rule == "multi_krum" else {}
    a, _ = strategy_with(rule, g, **params).aggregate_train(1, honest_replies(g, 7, seed=23))
    reps = honest_replies(g, 7, seed=23)
    for m in reps:  # a Byzantine client could claim any count
        m.content["metrics"]["num-examples"] = 10**9 if m.metadata.src_node_id == 100 else 1
    b, _ = strategy_with(rule, g, **params).aggregate_train(1, reps)
    assert np.array_equal(flat(a, g), flat(b, g))


def test_weighted_only_for_mean():
    with pytest.raises(ValueError, match=r"weighted=True .* only for rule 'mean', got rule 'flag'"):
        RobustStrategy("flag", weighted=True)


# ------------------------------------------------------------------------------------ construction
def test_parameters_are_routed_and_checked():
    s = RobustStrategy("flag", f=2, r=3, fraction_train=0.5, min_available_nodes=4)
    assert s.fraction_train == 0.5 and s.min_available_nodes == 4
    assert s.rule_params == {"f": 2, "r": 3}
    with pytest.raises(ValueError, match="rule must be one of"):
        RobustStrategy("fedprox")
    with pytest.raises(TypeError, match="rule 'krum' needs f"):
        RobustStrategy("krum")
    with pytest.raises(TypeError, match="unknown argument 'tau' \\(neither a FedAvg argument"):
        RobustStrategy("median", tau=3.0)
    with pytest.raises(TypeError, match="per_array must be a bool"):
        RobustStrategy("median", per_array=1)


# ------------------------------------------------------------------------- Flower's side untouched


def _grid(n: int = 10) -> Mock:
    grid = Mock()
    grid.get_node_ids.return_value = list(range(1, n + 1))
    return grid


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_configure_and_evaluate_are_fedavgs(fraction, task_identity):
    g = _record(model(24))
    ours = RobustStrategy("flag", fraction_train=fraction, fraction_evaluate=fraction)
    ref = FedAvg(fraction_train=fraction, fraction_evaluate=fraction)
    for method in ("configure_train", "configure_evaluate"):
        random.seed(5)
        a = list(getattr(ours, method)(3, g, ConfigRecord({"lr": 0.1}), _grid()))
        random.seed(5)
        b = list(getattr(ref, method)(3, g, ConfigRecord({"lr": 0.1}), _grid()))
        assert [m.metadata.dst_node_id for m in a] == [m.metadata.dst_node_id for m in b]
        assert len(a) == max(int(10 * fraction), 2)
        for x, y in zip(a, b):
            assert x.metadata.message_type == y.metadata.message_type
            assert x.content["arrays"].object_id == y.content["arrays"].object_id
            assert (
                dict(x.content["config"])
                == dict(y.content["config"])
                == {"lr": 0.1, "server-round": 3}
            )
    ev = [
        Message(
            RecordDict({"metrics": MetricRecord({"num-examples": n, "acc": a})}),
            metadata=_md(i, MessageType.EVALUATE),
        )
        for i, (n, a) in enumerate([(10, 0.5), (30, 0.9)])
    ]
    assert (
        dict(ours.aggregate_evaluate(1, ev))
        == dict(ref.aggregate_evaluate(1, ev))
        == {"acc": pytest.approx(0.8)}
    )


def test_fraction_train_zero_configures_nothing(task_identity):
    s = RobustStrategy("median", fraction_train=0.0)
    assert list(s.configure_train(1, _record(model()), ConfigRecord(), _grid())) == []


# -------------------------------------------------------------------------------------- attack_mod
def _context(partition: int) -> Context:
    return Context(
        run_id=1,
        node_id=1000 + partition,
        node_config={"partition-id": partition, "num-partitions": 10},
        state=RecordDict(),
        run_config={},
    )


def _train_msg(g: dict, node: int = 1000, rnd: int = 4) -> Message:
    content = RecordDict({"arrays": _record(g), "config": ConfigRecord({"server-round": rnd})})
    return Message(content, metadata=_md(0, src=0, dst=node))


def _honest_app(delta: float):
    """A ClientApp stand-in: model + delta (+ 0.01 * sample index when the mod asks for samples)."""
    calls = []

    def app(msg: Message, context: Context) -> Message:
        k = msg.content["config"].get(SAMPLE_KEY)
        calls.append(k)
        shift = delta + (0.0 if k is None else 0.01 * k)
        arrays = {
            key: a.numpy() + np.asarray(shift, a.numpy().dtype)
            for key, a in msg.content["arrays"].items()
        }
        return Message(
            RecordDict({"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": 12})}),
            metadata=_md(msg.metadata.dst_node_id),
        )

    return app, calls


def test_attack_mod_sign_flip_and_passthrough():
    g = model(25)
    mod = attack_mod("sign_flip", byzantine={0, 1})
    app, calls = _honest_app(0.5)
    out = mod(_train_msg(g), _context(0), app)
    for k, v in g.items():
        np.testing.assert_allclose(out.content["arrays"][k].numpy(), v - 0.5, rtol=0, atol=1e-6)
        assert out.content["arrays"][k].numpy().dtype == v.dtype
    assert out.content["metrics"]["num-examples"] == 12 and calls == [None]
    honest = mod(_train_msg(g), _context(5), app)  # not Byzantine
    np.testing.assert_allclose(
        flat(honest.content["arrays"], g),
        np.concatenate([v.ravel() for v in g.values()]) + 0.5,
        atol=1e-6,
    )
    ev = Message(
        RecordDict({"arrays": _record(g)}), metadata=_md(0, MessageType.EVALUATE, src=0, dst=1000)
    )
    assert mod(ev, _context(0), lambda m, c: "passed through") == "passed through"


def test_attack_mod_alie_uses_its_own_samples():
    g = model(26)
    mod = attack_mod("alie", z=1.5)
    app, calls = _honest_app(0.5)
    msg = _train_msg(g)
    out = mod(msg, _context(3), app)
    assert calls == [0, 1, 2] and SAMPLE_KEY not in msg.content["config"]
    upd = np.array([0.5, 0.51, 0.52])
    expected = upd.mean() - 1.5 * upd.std(ddof=1)
    got = flat(out.content["arrays"], g) - np.concatenate([v.ravel() for v in g.values()])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_attack_mod_random_is_seeded_per_node_and_round():
    g = model(27)
    app, _ = _honest_app(0.0)
    a = attack_mod("random", seed=3)(_train_msg(g, node=5, rnd=1), _context(0), app)
    b = attack_mod("random", seed=3)(_train_msg(g, node=5, rnd=1), _context(0), app)
    c = attack_mod("random", seed=3)(_train_msg(g, node=5, rnd=2), _context(0), app)
    assert np.array_equal(flat(a.content["arrays"], g), flat(b.content["arrays"], g))
    assert not np.array_equal(flat(a.content["arrays"], g), flat(c.content["arrays"], g))
    upd = flat(a.content["arrays"], g) - np.concatenate([v.ravel() for v in g.values()])
    assert upd.min() >= -1e-6 and upd.max() < 1 + 1e-6


def test_attack_mod_arguments_are_checked():
    with pytest.raises(ValueError, match="attack_mod: name must be one of"):
        attack_mod("flip")
    with pytest.raises(TypeError, match="'alie' needs z, or num_nodes and num_byzantine"):
        attack_mod("alie")
    with pytest.raises(ValueError, match="samples >= 2"):
        attack_mod("alie", z=1.0, samples=1)
    with pytest.raises(TypeError, match="takes no parameter 'z'"):
        attack_mod("random", z=1.0)
    with pytest.raises(TypeError, match="byzantine must be None, a collection"):
        attack_mod("random", byzantine=3)
    mod = attack_mod("alie", num_nodes=10, num_byzantine=3)  # z = alie_z(10, 3)
    assert callable(mod)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="no 'partition-id'"):
        attack_mod("random", byzantine=[0])(_train_msg(model()), ctx, _honest_app(0.0)[0])


# ---------------------------------------------------------------------- against Flower's own rules
def test_median_matches_flowers_fedmedian():
    from flwr.serverapp.strategy import FedMedian

    g = model(28)
    ours, _ = strategy_with("median", g).aggregate_train(1, honest_replies(g, 8, seed=29))
    theirs, _ = FedMedian().aggregate_train(1, honest_replies(g, 8, seed=29))
    for k in g:  # median(x_i) = g + median(x_i - g) up to the float32 rounding of the subtraction
        np.testing.assert_allclose(ours[k].numpy(), theirs[k].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("f", [1, 2])
def test_krum_picks_the_client_flowers_krum_picks(f):
    from flwr.serverapp.strategy import Krum

    g = model(30)
    reps = honest_replies(g, 9, seed=31 + f)
    ours, metrics = strategy_with("krum", g, f=f).aggregate_train(1, reps)
    theirs, _ = Krum(num_malicious_nodes=f).aggregate_train(1, honest_replies(g, 9, seed=31 + f))
    picked = metrics["agg-nodes"][int(np.argmax(metrics["agg-coefficients"]))]
    chosen = next(m for m in reps if m.metadata.src_node_id == picked)
    for k in g:
        np.testing.assert_allclose(
            ours[k].numpy(), chosen.content["arrays"][k].numpy(), rtol=0, atol=1e-6
        )
        assert np.array_equal(theirs[k].numpy(), chosen.content["arrays"][k].numpy())
