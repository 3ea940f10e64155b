"""Robust-training experiments: a synchronous parameter server with p simulated workers, f of
them Byzantine (gradient attacks from flagcore.attacks, or data-level: label flipping, warps,
noise, shuffled labels), aggregated with any rule of flagcore.aggregate.

    from flagcore.experiments import RobustnessConfig, run_robustness, write_outputs
    res = run_robustness(RobustnessConfig(rules=["flag", "median", "mean"], steps=100))
    write_outputs(res, "out")       # results.json + PNG plots
    print_summary(res)

    from flagcore.experiments import load_grid, run_grid, write_grid_outputs
    res = run_grid(load_grid("grid.json"))   # rules x attacks x f x heterogeneity x lr
    write_grid_outputs(res, "out")           # results.json + heat maps; worst case per rule

Needs torch (and scikit-learn for the digits data set; matplotlib for plots).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .grid import (
    GRID_SCHEMA,
    GridConfig,
    grid_from_dict,
    load_grid,
    print_grid_summary,
    quick_grid,
    run_grid,
    write_grid_outputs,
)
from .harness import (
    RULES_TAKING_F,
    SCHEMA,
    RobustnessConfig,
    RuleSpec,
    all_attacks,
    available_rules,
    parse_rule_spec,
    run_robustness,
    split_rule_list,
)

__all__ = [
    "GRID_SCHEMA",
    "RULES_TAKING_F",
    "SCHEMA",
    "GridConfig",
    "RobustnessConfig",
    "RuleSpec",
    "all_attacks",
    "available_rules",
    "grid_from_dict",
    "load_grid",
    "parse_rule_spec",
    "print_grid_summary",
    "print_summary",
    "quick_grid",
    "run_grid",
    "run_robustness",
    "split_rule_list",
    "summary_rows",
    "write_grid_outputs",
    "write_outputs",
]


def _clean(v: Any) -> Any:
    """NaN/Inf -> None so results.json is strict JSON; floats to 6 significant digits."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_outputs(res: dict[str, Any], out_dir: str, plots: bool = True) -> list[Any]:
    """results.json (+ accuracy.png, flag_workers.png, agg_time.png) into out_dir; returns the
    paths written. Without matplotlib only the JSON is written (and a note printed). Every file
    is written atomically (flagcore._paths.atomic_open): a failed write keeps a previous file."""
    from .._paths import atomic_open

    path = os.path.join(out_dir, "results.json")
    text = json.dumps(_clean(res), allow_nan=False)  # a serialisation error writes nothing
    with atomic_open(path) as fh:  # creates out_dir
        fh.write(text)
    written = [path]
    if plots:
        from .grid import have_matplotlib

        if not have_matplotlib():  # plots.py imports matplotlib lazily: ask before calling it
            print(
                "(matplotlib is not installed: wrote the JSON only; pip install 'flagcore[cli]' "
                "for the plots)"
            )
            return written
        from .plots import write_plots

        written += write_plots(res, out_dir)
    return written


def summary_rows(res: dict[str, Any]) -> list[Any]:
    rows = []
    for label, e in res["rules"].items():
        fl = e.get("flag")
        trust = ""
        if fl and fl["mean_ratio"][0]["byzantine"] is not None:
            h = sum(x["honest"] for x in fl["mean_ratio"]) / len(fl["mean_ratio"])
            b = sum(x["byzantine"] for x in fl["mean_ratio"]) / len(fl["mean_ratio"])
            trust = f"{h:.2f} / {b:.2f}"
        rows.append(
            [
                label,
                e["final_accuracy_mean"],
                e["final_accuracy_std"],
                " ".join(f"{a:.3f}" for a in e["final_accuracy"]),
                e["agg_time_ms_mean"],
                sum(e["wall_time_s"]) / len(e["wall_time_s"]),
                trust,
            ]
        )
    return rows


SUMMARY_COLUMNS = [
    "rule",
    "acc mean",
    "acc std",
    "acc per seed",
    "agg ms",
    "s/run",
    "FA v honest/bad",
]


def print_summary(res: dict[str, Any], title: str | None = None) -> None:
    from .._table import print_table

    c = res["config"]
    if title is None:
        title = (
            f"{res['dataset']['name']} / {res['model']['name']} ({res['model']['parameters']} "
            "params): "
            f"{c['workers']} workers, {c['byzantine']} bad ({c['attack']}), {c['steps']} steps, "
            f"{len(res['seeds'])} seed(s)"
        )
    print_table(title, SUMMARY_COLUMNS, summary_rows(res))
