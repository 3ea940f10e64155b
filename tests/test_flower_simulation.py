"""RobustStrategy inside a real Flower federation: flwr's simulation engine (Ray backend) with
10 supernodes running the example ClientApp (examples/flower) on digits.

Each test runs examples/flower/simulate.py in a subprocess (Ray's own start-up warnings and
threads stay out of this pytest process; a hung engine is killed by the timeout) and reads
its JSON. About 30-60 s each on 2 shared cores. Skipped, visibly, without flwr[simulation].
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr not installed (pip install 'flagcore[flower]')")
pytest.importorskip(
    "ray", reason="Flower's simulation engine needs ray (pip install 'flwr[simulation]==1.42.0')"
)
pytest.importorskip("sklearn", reason="the example's digits data set needs scikit-learn")

SIMULATE = Path(__file__).resolve().parents[1] / "examples" / "flower" / "simulate.py"
NUM_NODES = 10
BYZANTINE = 3


def simulate(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        str(SIMULATE),
        "--nodes",
        str(NUM_NODES),
        "--num-byzantine",
        str(BYZANTINE),
        "--lr",
        "0.3",
        "--local-epochs",
        "2",
        "--seed",
        "0",
        "--out",
        str(out),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout + proc.stderr


def test_under_attack_fedavg_breaks_while_flag_and_median_train(tmp_path):
    res, _ = simulate(
        tmp_path, "--rules", "fedavg,flag,median", "--attack", "random", "--rounds", "6"
    )
    acc = {rule: r["test-acc"] for rule, r in res["rules"].items()}
    assert set(acc) == {"fedavg", "flag", "median"}
    assert acc["fedavg"][0] == acc["flag"][0] == acc["median"][0]  # the same initial model
    assert acc["fedavg"][-1] < 0.3, acc  # chance is 0.1 on 10 digit classes
    assert acc["flag"][-1] > 0.6, acc
    assert acc["median"][-1] > 0.6, acc
    for m in res["rules"]["flag"]["train-metrics"].values():
        assert m["agg-replies"] == NUM_NODES and m["agg-excluded"] == 0
        assert len(m["agg-nodes"]) == len(m["flag-weights"]) == len(m["flag-ratios"]) == NUM_NODES
        assert all(w > 0 and np.isfinite(w) for w in m["flag-weights"])
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in m["flag-ratios"])


def test_hostile_supernodes_are_excluded_and_named(tmp_path):
    res, log = simulate(
        tmp_path, "--rules", "flag,krum", "--attack", "none", "--hostile", "--rounds", "2"
    )
    assert set(res["rules"]) == {"flag", "krum"}
    for rule, r in res["rules"].items():
        assert r["test-acc"][-1] > r["test-acc"][0] + 0.05, (rule, r["test-acc"])
        assert r["final-model-finite"], rule
        assert len(r["train-metrics"]) == 2
        for m in r["train-metrics"].values():
            assert m["agg-replies"] == NUM_NODES
            # NaN, missing array, crash (error reply), float64: 4 nodes named, every round,
            # none of them in the stack
            assert m["agg-excluded"] == 4 and len(set(m["agg-excluded-nodes"])) == 4
            assert len(m["agg-nodes"]) == NUM_NODES - 4
            assert not set(m["agg-excluded-nodes"]) & set(m["agg-nodes"])
            # 3 faulty nodes (NaN, missing array, float64) count against f = 3; the crash not
            assert m["agg-f-eff"] == 0
    for why in (
        "non-finite values",
        "missing array",
        "error reply",
        "dtype float64, expected float32",
    ):
        assert why in log, why
