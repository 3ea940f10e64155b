"""Flower strategies' aggregate_train: flagcore's RobustStrategy against Flower's own, same run.

p clients each reply with a full model of n float32 parameters (four arrays, an MLP's shapes)
as real flwr Messages; every strategy's ``aggregate_train`` is timed on the same replies:
flagcore ``RobustStrategy`` with "flag" and "median" (and "krum"), Flower's ``FedMedian``,
``Krum`` and ``FedAvg`` (the non-robust baseline). Times include everything aggregate_train
does (payload decoding, the stack, the rule, building the reply record), not the transport.

Correctness first: RobustStrategy("median") matches FedMedian (median is translation
equivariant, so median(x_i) = g + median(x_i - g) up to float32 rounding of the subtraction);
RobustStrategy("krum") picks the same client as Flower's Krum; RobustStrategy("flag") equals
g + flagcore.aggregate(stack) bitwise.

    python bench/bench_flower.py [--p 100] [--n 1000000] [--f 10] [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numpy as np

import flagcore

try:
    from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg, FedMedian, Krum
except ImportError:  # pragma: no cover
    sys.exit("bench_flower.py needs Flower: pip install 'flagcore[flower]'")

from flagcore.flower import RobustStrategy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import git_commit


def shapes_for(n: int) -> dict:
    """Two dense layers with biases, n values in total (the last bias takes the remainder)."""
    h = max(1, min(1000, n // 10))
    d = max(1, (n * 4 // 5) // h)
    k = max(1, (n - h * d - h) // (h + 1) - 1)
    out = {"fc1.weight": (h, d), "fc1.bias": (h,), "fc2.weight": (k, h)}
    out["fc2.bias"] = (n - sum(int(np.prod(s)) for s in out.values()),)
    return out


def make_problem(p: int, n: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    shp = shapes_for(n)
    g = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shp.items()}
    models = []
    for i in range(p):
        r = np.random.default_rng([seed, i])
        models.append(
            {
                k: v + np.float32(0.05 * (1 + i % 7)) * r.standard_normal(v.shape, dtype=np.float32)
                for k, v in g.items()
            }
        )
    return g, models


def replies_of(models: list) -> list:
    out = []
    for i, m in enumerate(models):
        md = Metadata(
            run_id=1,
            message_id="",
            src_node_id=1000 + i,
            dst_node_id=0,
            reply_to_message_id="",
            group_id="",
            created_at=0.0,
            ttl=600.0,
            message_type="train",
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in m.items()}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        out.append(Message(content, metadata=md))
    return out


def flat(arrays: ArrayRecord, keys) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in keys])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--p", type=int, default=100, help="clients (replies)")
    ap.add_argument("--n", type=int, default=1_000_000, help="model parameters")
    ap.add_argument("--f", type=int, default=10, help="f for Krum")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "flower_aggregate.json")
    )
    a = ap.parse_args()
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        ap.error(f"--out: folder {out_dir} does not exist or is not writable")
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every reply count

    g, models = make_problem(a.p, a.n, a.seed)
    keys = list(g)
    reps = replies_of(models)
    global_rec = ArrayRecord({k: Array(v) for k, v in g.items()})
    gflat = np.concatenate([v.ravel() for v in g.values()])

    def ours(rule: str, **params):
        s = RobustStrategy(rule, **params)
        s.current_arrays = global_rec
        return lambda: s.aggregate_train(1, reps)[0]

    cands = {
        "flagcore flag": ours("flag"),
        "flagcore median": ours("median"),
        "flagcore krum": ours("krum", f=a.f),
        "flower FedMedian": lambda: FedMedian().aggregate_train(1, replies_of(models))[
            0
        ],  # it pops the arrays
        "flower Krum": lambda: Krum(num_malicious_nodes=a.f).aggregate_train(1, reps)[0],
        "flower FedAvg": lambda: FedAvg().aggregate_train(1, reps)[0],
    }

    # ---------------------------------------------------------------- correctness
    res = {k: flat(fn(), keys) for k, fn in cands.items()}
    st = np.stack([np.concatenate([m[k].ravel() for k in keys]) for m in models]) - gflat
    assert np.array_equal(res["flagcore flag"], gflat + flagcore.aggregate(st, "flag")), (
        "flag != flagcore.aggregate"
    )
    med_err = float(np.max(np.abs(res["flagcore median"] - res["flower FedMedian"])))
    assert med_err <= 1e-5 * max(1.0, float(np.max(np.abs(res["flower FedMedian"])))), med_err
    flats = [np.concatenate([m[k].ravel() for k in keys]) for m in models]
    picked = int(np.argmin([np.max(np.abs(res["flagcore krum"] - x)) for x in flats]))
    assert np.array_equal(res["flower Krum"], flats[picked]), "Flower's Krum picked another client"
    del flats
    krum_err = float(np.max(np.abs(res["flagcore krum"] - res["flower Krum"])))
    assert krum_err <= 1e-5 * max(1.0, float(np.max(np.abs(res["flower Krum"])))), krum_err
    del res, st
    print(
        f"correct: flag == g + flagcore.aggregate bitwise; |median - FedMedian| <= {med_err:.2e}; "
        f"krum picks Flower's Krum client (|diff| <= {krum_err:.2e})"
    )

    # ---------------------------------------------------------------- timing (interleaved)
    # FedMedian consumes its replies: build them before each of its calls, outside the clock.
    best = {k: float("inf") for k in cands}
    for _ in range(a.repeat):
        for k, fn in cands.items():
            if k == "flower FedMedian":
                fresh = replies_of(models)
                call = lambda fresh=fresh: FedMedian().aggregate_train(1, fresh)[0]  # noqa: E731
            else:
                call = fn
            t0 = time.perf_counter()
            call()
            best[k] = min(best[k], time.perf_counter() - t0)
    rows = [
        {
            "strategy": k,
            "best_s": v,
            "vs_flower_fedmedian": best["flower FedMedian"] / v,
            "vs_flower_krum": best["flower Krum"] / v,
        }
        for k, v in best.items()
    ]
    print(
        f"\naggregate_train, p = {a.p} clients x n = {a.n} float32 parameters, best of {a.repeat} "
        f"(threads: {flagcore.get_num_threads()})"
    )
    print(f"{'strategy':20s} {'best s':>8s} {'FedMedian / this':>17s} {'Krum / this':>12s}")
    for r in rows:
        print(
            f"{r['strategy']:20s} {r['best_s']:8.3f} {r['vs_flower_fedmedian']:17.2f} "
            f"{r['vs_flower_krum']:12.2f}"
        )
    doc = {
        "bench": "flower_aggregate",
        "p": a.p,
        "n": a.n,
        "f": a.f,
        "repeat": a.repeat,
        "dtype": "float32",
        "rows": rows,
        "median_max_abs_diff": med_err,
        "krum_max_abs_diff": krum_err,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": flagcore.get_num_threads(),
            "note": "2 cores shared with other jobs: compare ratios, not absolute times",
        },
        "versions": {
            "flagcore": flagcore.__version__,
            "numpy": np.__version__,
            "flwr": __import__("flwr").__version__
            if hasattr(__import__("flwr"), "__version__")
            else "?",
        },
        "commit": git_commit(),
        "command": " ".join(["python"] + sys.argv),
    }
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
