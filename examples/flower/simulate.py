"""Run the example federation with flwr's simulation engine and write the results as JSON.

    python examples/flower/simulate.py --rules fedavg,flower-krum,flag,median --attack alie \
        --rounds 15 --out results.json

Every strategy in --rules trains from the same initial model, one after the other, in one
federation of --nodes supernodes, of which partitions 0 .. --num-byzantine - 1 attack. The same
app runs with Flower's CLI (`flwr run examples/flower`), see docs/flower.md; this driver uses
``flwr.simulation.run_simulation`` so that results come back as data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rules",
        default="fedavg,flag,median",
        help="comma-separated: fedavg, flower-krum, flower-median, or flagcore rules",
    )
    ap.add_argument(
        "--attack", default="alie", help="none, a flagcore.attacks name, label_flip, distorted, ..."
    )
    ap.add_argument("--num-byzantine", type=int, default=3)
    ap.add_argument(
        "--f", type=int, default=None, help="f given to the robust rules (default: --num-byzantine)"
    )
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--dataset", default="digits", choices=["digits", "blobs"])
    ap.add_argument("--model", default="mlp", choices=["mlp", "linear", "cnn"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--hostile",
        action="store_true",
        help="partitions 0-3 also send broken replies (NaN, missing array, crash, float64)",
    )
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may use (one client per CPU)")
    ap.add_argument("--out", default=None, help="JSON file to write (its folder must exist)")
    a = ap.parse_args(argv)
    if a.out is not None:
        folder = Path(a.out).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            ap.error(f"--out: folder {folder} does not exist or is not writable")

    # Before Ray starts: workers import the app modules by name; no telemetry; Ray's
    # accelerator-override FutureWarning off (nothing here uses a GPU).
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    sys.path.insert(0, str(HERE))
    from flagcore_flower_example.client_app import hostile_mod, make_client_app
    from flagcore_flower_example.server_app import make_server_app
    from flwr.simulation import run_simulation

    cfg = {
        "rule": a.rules,
        "attack": a.attack,
        "num-byzantine": a.num_byzantine,
        "f": a.num_byzantine if a.f is None else a.f,
        "num-server-rounds": a.rounds,
        "lr": a.lr,
        "local-epochs": a.local_epochs,
        "dataset": a.dataset,
        "model": a.model,
        "seed": a.seed,
    }
    results: dict = {}
    t0 = time.time()
    run_simulation(
        server_app=make_server_app(cfg, on_result=results.__setitem__),
        client_app=make_client_app(cfg, extra_mods=[hostile_mod] if a.hostile else None),
        num_supernodes=a.nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": a.num_cpus},
        },
    )
    out = {
        "config": {**cfg, "nodes": a.nodes, "hostile": a.hostile},
        "seconds": time.time() - t0,
        "rules": {},
    }
    for rule, res in results.items():
        ev = res.evaluate_metrics_serverapp
        finite = all(
            math.isfinite(float(x)) for arr in res.arrays.values() for x in arr.numpy().ravel()
        )
        out["rules"][rule] = {
            "test-acc": [ev[r]["test-acc"] for r in sorted(ev)],
            "test-loss": [_num(ev[r]["test-loss"]) for r in sorted(ev)],
            "train-metrics": {
                str(r): {
                    k: (_num(v) if not isinstance(v, list) else [_num(x) for x in v])
                    for k, v in m.items()
                }
                for r, m in res.train_metrics_clientapp.items()
            },
            "final-model-finite": finite,
        }
    from flagcore.experiments import split_rule_list

    missing = [r for r in split_rule_list(a.rules) if r not in results]
    text = json.dumps(out, separators=(",", ":"), allow_nan=False)
    if a.out:
        Path(a.out).write_text(text)
    print("rule".ljust(20), "final test accuracy")
    for rule, r in out["rules"].items():
        print(rule.ljust(20), f"{r['test-acc'][-1]:.4f}")
    if missing:
        print(f"simulate.py: no result for {missing} (see the log above)", file=sys.stderr)
        return 1
    return 0


def _num(v):
    """JSON-safe numbers (node ids stay ints; non-finite floats become None)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


if __name__ == "__main__":
    sys.exit(main())
