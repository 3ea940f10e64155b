"""Checkpoint and resume of what calling a rule changes in it: ``Rule.state_dict`` /
``load_state_dict`` (the generator of bucketing, dnc and signguard; centered clipping's last
output with reference="previous"), and the same for the Flower strategy, the robust DDP hook
and the parameter server. The reference is the uninterrupted run: a run checkpointed after k
calls and resumed into freshly built objects gives it bit for bit; without the state it
differs (so the state is what carries the sequence)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flagcore.rules import RULES, make_rule

HERE = Path(__file__).resolve().parent

# a configuration of every rule with the stack below (p = 15), the drawing ones drawing
CONFIGS = {
    "flag": {},
    "mean": {"pre": "bucketing"},
    "median": {},
    "trimmed_mean": {"f": 2},
    "meamed": {"f": 2},
    "phocas": {"f": 2},
    "krum": {"f": 2, "pre": "bucketing"},
    "multi_krum": {"f": 2},
    "bulyan": {"f": 2},
    "geometric_median": {},
    "centered_clipping": {"reference": "previous", "tau": 0.5, "pre": "bucketing"},
    "dnc": {"f": 2, "sub_dim": 10},
    "signguard": {"f": 2},
    "monna": {"f": 2},
    "nnm_mean": {"f": 2},
    "clipped_clustering": {},
    "smea": {"f": 2},
    "caf": {"f": 2},
    "mda": {"f": 2},
    "cge": {"f": 2},
    "fltrust": {"reference": np.ones(40)},
}


def stacks(k: int = 6, p: int = 15, n: int = 40, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_t(2, (p, n)) + 0.3 * i for i in range(k)]  # heavy tails: draws matter


def _config(name: str) -> dict:
    if name not in CONFIGS:  # a rule added to RULES gets a configuration here
        pytest.fail(f"no configuration for rule {name!r} in CONFIGS")
    return CONFIGS[name]


@pytest.mark.parametrize("name", RULES)
def test_resumed_rule_continues_the_uninterrupted_sequence(name: str) -> None:
    kw = _config(name)
    xs = stacks()
    straight = make_rule(name, seed=7, **kw)
    want = [straight(x) for x in xs]
    first = make_rule(name, seed=7, **kw)
    got = [first(x) for x in xs[:3]]
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = make_rule(name, seed=7, **kw)
    resumed.load_state_dict(state)
    got += [resumed(x) for x in xs[3:]]
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert state["rule"] == name and state["seed"] == 7
    # the rules that carry state: without it the resumed run differs
    fresh = make_rule(name, seed=7, **kw)
    without = [fresh(x) for x in xs[3:]]
    differs = any(not np.array_equal(a, b) for a, b in zip(want[3:], without))
    draws = name in ("dnc", "signguard") or "bucketing" in str(kw.get("pre"))
    assert differs == (draws or isinstance(kw.get("reference"), str))
    assert (state["generator"] is not None) == draws


def test_state_dict_is_a_copy() -> None:
    rule = make_rule("centered_clipping", reference="previous", tau=0.5, pre="bucketing")
    x = stacks(1)[0]
    rule(x)
    state = rule.state_dict()
    prev, gen = state["previous"].copy(), dict(state["generator"]["state"])
    rule(x + 1.0)  # the rule moves on; the saved state does not
    assert np.array_equal(state["previous"], prev) and state["generator"]["state"] == gen
    state["previous"][:] = 0.0  # nor does the rule follow the saved state
    assert not np.array_equal(rule.state_dict()["previous"], state["previous"])


def test_torch_previous_round_trips_through_torch_save() -> None:
    x = torch.from_numpy(stacks(1)[0]).float()
    rule = make_rule("centered_clipping", reference="previous", tau=0.5)
    want = [rule(x), rule(x + 1)]
    first = make_rule("centered_clipping", reference="previous", tau=0.5)
    first(x)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = make_rule("centered_clipping", reference="previous", tau=0.5)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    # the CPU path keeps the previous aggregate as a NumPy array of the data's dtype
    assert resumed.state_dict()["previous"].dtype == np.float32
    assert torch.equal(resumed(x + 1), want[1])


BAD_STATES = [
    (None, TypeError, "state must be the dict state_dict() returned, got NoneType"),
    ({"rule": "krum", "seed": 7}, ValueError, "missing ['generator']"),
    ({"rule": "krum", "seed": 7, "generator": None, "x": 1}, ValueError, "unknown 'x'"),
    ({"rule": "dnc", "seed": 7, "generator": None}, ValueError, "state is of rule 'dnc'"),
    ({"rule": "krum", "seed": 8, "generator": None}, ValueError, "seed = 8, this rule has seed"),
    ({"rule": "krum", "seed": True, "generator": None}, ValueError, "seed = True"),
    ({"rule": "krum", "seed": 7, "generator": 3}, TypeError, "state['generator'] must be None"),
    (
        {"rule": "krum", "seed": 7, "generator": {"bit_generator": "MT19937"}},
        ValueError,
        "PCG64 generator (numpy.random.default_rng), got bit_generator = 'MT19937'",
    ),
    (
        {"rule": "krum", "seed": 7, "generator": {"bit_generator": "PCG64", "state": 3}},
        ValueError,
        "state['generator'] is not a PCG64 state as bit_generator.state gives it",
    ),
]
_PCG = np.random.default_rng(0).bit_generator.state
BAD_STATES += [
    (  # the 128-bit words through a float (a JSON tool without big integers)
        {
            "rule": "krum",
            "seed": 7,
            "generator": {
                **_PCG,
                "state": {"state": float(_PCG["state"]["state"]), "inc": _PCG["state"]["inc"]},
            },
        },
        ValueError,
        "is not a PCG64 state",
    ),
    (  # an even increment: no PCG64 has one
        {
            "rule": "krum",
            "seed": 7,
            "generator": {
                **_PCG,
                "state": {"state": _PCG["state"]["state"], "inc": _PCG["state"]["inc"] - 1},
            },
        },
        ValueError,
        "'inc' (odd)",
    ),
    (
        {"rule": "krum", "seed": 7, "generator": {**_PCG, "has_uint32": 7}},
        ValueError,
        "'has_uint32': 0 or 1",
    ),
    ({"rule": np.array(["krum"]), "seed": 7, "generator": None}, ValueError, "is of rule"),
    ({"rule": "krum", "seed": np.array([7, 7]), "generator": None}, ValueError, "seed = array"),
    ({1: 2, "rule": "krum"}, ValueError, "unknown 1"),
]


@pytest.mark.parametrize(("state", "exc", "words"), BAD_STATES)
def test_bad_state_is_refused_and_changes_nothing(state, exc, words) -> None:
    rule = make_rule("krum", f=2, pre="bucketing", seed=7)
    x = stacks(1)[0]
    rule(x)
    before = rule.state_dict()
    with pytest.raises(exc) as e:
        rule.load_state_dict(state)
    assert str(e.value).startswith("Krum.load_state_dict: ") and words in str(e.value)
    assert rule.state_dict() == before


@pytest.mark.parametrize(
    ("reference", "previous", "exc", "words"),
    [
        (None, np.ones(40), ValueError, "this rule's reference is not 'previous' (got "
         "reference = None)"),
        ("previous", "x", TypeError, "must be None, a numpy array or a torch tensor, got str"),
        ("previous", np.arange(40), ValueError, "real floating (n,) or (b, n) aggregate, got "
         "dtype int64"),
        ("previous", np.ones((2, 2, 2)), ValueError, "shape (2, 2, 2)"),
        ("previous", np.ones(0), ValueError, "shape (0,)"),
        ("previous", np.full(40, np.nan), ValueError, "state['previous'] must be finite"),
        ("previous", torch.full((40,), np.inf), ValueError, "state['previous'] must be finite"),
    ],
)  # fmt: skip
def test_bad_previous_is_refused(reference, previous, exc, words) -> None:
    rule = make_rule("centered_clipping", reference=reference, tau=0.5)
    state = {"rule": "centered_clipping", "seed": 0, "generator": None, "previous": previous}
    with pytest.raises(exc) as e:
        rule.load_state_dict(state)
    assert str(e.value).startswith("CenteredClipping.load_state_dict: ") and words in str(e.value)
    assert rule.state_dict()["previous"] is None


# -------------------------------------------------------------------------------- Flower strategy


def test_flower_strategy_resumes_a_federation_bit_for_bit() -> None:
    pytest.importorskip("flwr")
    from flwr.app import Array, ArrayRecord

    from _flower_msgs import flat, reply, strategy_with

    rng = np.random.default_rng(3)
    g0 = {"w": rng.standard_normal((4, 5)).astype(np.float32), "b": np.zeros(4, np.float32)}
    kw = dict(f=2, reference="previous", tau=0.5, pre="bucketing", seed=4)

    def rounds(strategy, g: dict, first: int, last: int) -> dict:
        for t in range(first, last):
            strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in g.items()})
            r = np.random.default_rng(100 + t)
            replies = [
                reply(10 + i, {k: v + r.standard_normal(v.shape).astype(v.dtype) for k, v in
                               g.items()})
                for i in range(9)
            ]  # fmt: skip
            arrays, _ = strategy.aggregate_train(t, replies)
            g = {k: arrays[k].numpy() for k in g}
        return g

    want = rounds(strategy_with("centered_clipping", g0, **kw), g0, 1, 7)
    first = strategy_with("centered_clipping", g0, **kw)
    g3 = rounds(first, g0, 1, 4)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = strategy_with("centered_clipping", g3, **kw)
    resumed.load_state_dict(state)
    got = rounds(resumed, g3, 4, 7)
    keys = list(g0)
    rec = lambda g: ArrayRecord({k: Array(v) for k, v in g.items()})  # noqa: E731
    np.testing.assert_array_equal(flat(rec(got), keys), flat(rec(want), keys))
    without = rounds(strategy_with("centered_clipping", g3, **kw), g3, 4, 7)
    assert not np.array_equal(flat(rec(without), keys), flat(rec(want), keys))
    # refusals name the strategy and the argument, and change nothing
    before = resumed.state_dict()
    with pytest.raises(ValueError, match=r"^RobustStrategy.load_state_dict: state must be"):
        resumed.load_state_dict({"rule": "x"})
    with pytest.raises(TypeError, match=r"^RobustStrategy.load_state_dict: state must be"):
        resumed.load_state_dict([state])
    bad = {"rule_state": {**state["rule_state"], "seed": 5}}
    with pytest.raises(ValueError, match=r"^RobustStrategy.load_state_dict: state\['rule_state'\]"):
        resumed.load_state_dict(bad)
    after = resumed.state_dict()
    assert after["rule_state"]["generator"] == before["rule_state"]["generator"]
    assert np.array_equal(after["rule_state"]["previous"], before["rule_state"]["previous"])


# --------------------------------------------------------------- DDP hook and parameter server


@pytest.mark.parametrize("scenario", ["hook", "hook_gram", "ps"])
def test_distributed_run_resumes_bit_for_bit(scenario: str, tmp_path: Path) -> None:
    from _dist_launch import WORLD, launch

    res = launch(HERE / "_dist_worker_resume.py", scenario, tmp_path, deadline=240)
    assert sorted(res) == list(range(WORLD)), res
    for r, out in res.items():
        assert "error" not in out, out["error"]
        want = np.array(out["straight_values"])
        got, without = (
            np.array(out["resumed_values"]),
            np.array(out["resumed_without_state_values"]),
        )
        if scenario == "hook_gram":
            # the first resumed step adds the Gram in DDP's initial bucket order: rounding
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        else:
            assert out["resumed"] == out["straight"], (r, out)
        # without the rule's state (the bucketing draws) the run is another one
        assert np.abs(without - want).max() > 1e-4 * np.abs(want).max(), r
        assert "load_state_dict resumes a run in a freshly built object" in out["late_load"]
    assert len({out["straight"] for out in res.values()}) == 1  # replicas agree
    hook_only = ["bucket_calls"] if scenario.startswith("hook") else []
    assert res[0]["state_keys"] == hook_only + ["rule_state", "steps"]


def test_distributed_load_state_dict_refuses_bad_states() -> None:
    from flagcore.distributed._common import check_resume_state

    fn = "ParameterServer.load_state_dict"
    keys = ("steps", "rule_state")
    with pytest.raises(RuntimeError, match=r"^ParameterServer.load_state_dict: .*already run"):
        check_resume_state(fn, {"steps": 0, "rule_state": {}}, keys, True)
    with pytest.raises(ValueError, match=r"keys \['rule_state', 'steps'\]\), got the keys 'steps'"):
        check_resume_state(fn, {"steps": 0}, keys, False)
    with pytest.raises(ValueError, match=r"state\['steps'\]"):
        check_resume_state(fn, {"steps": -1, "rule_state": {}}, keys, False)
    with pytest.raises(TypeError, match=r"state\['steps'\]"):
        check_resume_state(fn, {"steps": 1.5, "rule_state": {}}, keys, False)


def test_flower_strategy_state_is_a_copy_and_a_wrong_size_previous_fails_before_training() -> None:
    pytest.importorskip("flwr")
    from unittest.mock import Mock

    from flwr.app import Array, ArrayRecord, ConfigRecord

    from _flower_msgs import reply, strategy_with

    g = {"w": np.zeros((4, 6), np.float32)}
    s = strategy_with("centered_clipping", g, reference="previous", tau=0.5)
    r = np.random.default_rng(0)
    replies = [reply(10 + i, {"w": r.standard_normal((4, 6), np.float32)}) for i in range(5)]
    s.aggregate_train(1, replies)
    state = s.state_dict()
    prev = state["rule_state"]["previous"].copy()
    state["rule_state"]["previous"][:] = 99.0  # the caller's copy: the strategy keeps its own
    assert np.array_equal(s.state_dict()["rule_state"]["previous"], prev)
    state["rule_state"]["previous"] = np.ones(7)  # another model's: loaded (n unknown here) ...
    s.load_state_dict(state)
    grid = Mock()
    grid.get_node_ids.return_value = list(range(10, 15))
    arrays = ArrayRecord({"w": Array(g["w"])})
    with pytest.raises(ValueError, match=r"previous aggregate .*has 7 values, the flattened "):
        s.configure_train(2, arrays, ConfigRecord(), grid)  # ... refused before any training


def _doc_block(path: Path, after: str) -> str:
    """The first ```python block of a docs page after the line containing ``after``."""
    text = path.read_text()
    rest = text[text.index(after) :]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start : rest.index("```", start)]


# flwr's first import inside a test (here, by the task_identity fixture) warns about click
@pytest.mark.filterwarnings("ignore:'click.utils.get_:DeprecationWarning")
def test_flower_docs_checkpoint_loop_resumes_a_federation(tmp_path, monkeypatch, task_identity):
    # docs/flower.md's ServerApp checkpoint loop, run as written on a fake grid: 4 rounds
    # straight against 2 rounds, a restart, and the loop again for 4
    pytest.importorskip("flwr")
    from flwr.app import MetricRecord, RecordDict

    from _flower_msgs import FakeGrid, _record
    from flagcore.flower import RobustStrategy

    ns: dict = {}
    exec(_doc_block(HERE.parent / "docs" / "flower.md", "In a ServerApp, save both"), ns)
    g = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}

    def client(node: int):
        def fn(m):  # deterministic given the global model it receives: noise seeded by it
            arrs = {k: a.numpy() for k, a in m.content["arrays"].items()}
            key = abs(hash((node, *(a.tobytes() for a in arrs.values())))) % 2**32
            r = np.random.default_rng(key)
            new = {k: (a + 1.0 + r.standard_normal(a.shape)).astype(a.dtype) for k, a in
                   arrs.items()}  # fmt: skip
            metrics = MetricRecord({"num-examples": 10})
            return RecordDict({"arrays": _record(new), "metrics": metrics})

        return fn

    def strategy():
        return RobustStrategy("centered_clipping", reference="previous", tau=0.5,
                              pre="bucketing", fraction_evaluate=0.0)  # fmt: skip

    grid = FakeGrid({100 + i: client(100 + i) for i in range(7)})
    monkeypatch.chdir(tmp_path)
    straight = ns["run"](grid, _record(g), strategy(), 4).arrays
    (tmp_path / ns["CKPT"]).unlink()
    ns["run"](grid, _record(g), strategy(), 2)  # ... and the server restarts
    resumed = ns["run"](grid, _record(g), strategy(), 4).arrays
    for k in g:
        np.testing.assert_array_equal(resumed[k].numpy(), straight[k].numpy())
    (tmp_path / ns["CKPT"]).unlink()
    ns["run"](grid, _record(g), strategy(), 2)
    ck = pickle.loads((tmp_path / ns["CKPT"]).read_bytes())
    ck["strategy"] = strategy().state_dict()  # without the rule's state: another federation
    (tmp_path / ns["CKPT"]).write_bytes(pickle.dumps(ck))
    other = ns["run"](grid, _record(g), strategy(), 4).arrays
    assert not np.array_equal(other["w"].numpy(), straight["w"].numpy())
