"""A robustness grid: rules x attacks x f x heterogeneity x learning rate, from one JSON config,
summarised per rule by its worst-case accuracy over the attacks.

Methodology (ByzFL's benchmark): for every (f, heterogeneity) setting and every rule, the
defender picks the learning rate and the attacker picks the attack, so a rule's score is

    worst_case = max over lr  of  min over attacks  of  (final test accuracy, mean over seeds)

and results.json records, per rule and setting, that accuracy, the learning rate that achieves
it and the attack that is worst at it, beside every cell of the grid.

The config (strict JSON; unknown keys are an error)::

    {
        "rules": ["mean", "median", "flag"],  # rule specs (NAME or NAME[k=v,...])
        "attacks": ["sign_flip", "optimal_alie", "fa_aware"],
        "byzantine": [3],  # f values
        "heterogeneity": ["iid", "dirichlet:0.5"],  # see data.split_indices
        "lr": [0.05],
        "attack_params": {"optimal_alie": {"evals": 8}},  # optional, per attack
        "base": {"workers": 15, "steps": 100, "seeds": 2},  # any other RobustnessConfig field
    }

``run_grid`` returns the results dict; ``write_grid_outputs`` writes results.json (strict JSON:
NaN/Inf become null) and the heat maps (rule x attack per setting, rule x heterogeneity per f).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from . import data as _data
from .harness import (
    RobustnessConfig,
    check_attack_runs,
    parse_rule_spec,
    rule_params,
    run_robustness,
)

GRID_SCHEMA = "flagcore.robustness_grid/1"
# Fields of RobustnessConfig that the grid itself sweeps or sets (not allowed in "base").
_SWEPT = ("rules", "attack", "byzantine", "heterogeneity", "lr", "attack_params")


@dataclass
class GridConfig:
    """One grid: every combination of byzantine x heterogeneity x lr x attacks is one
    ``run_robustness`` over all ``rules`` with the ``base`` options."""

    rules: list[Any]
    attacks: list[Any]
    byzantine: list[Any] = field(default_factory=lambda: [3])
    heterogeneity: list[Any] = field(default_factory=lambda: ["iid"])
    lr: list[Any] = field(default_factory=lambda: [0.05])
    attack_params: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        fn = "robustness grid"
        for name in ("rules", "attacks", "byzantine", "heterogeneity", "lr"):
            v = getattr(self, name)
            if not isinstance(v, list) or not v:
                raise ValueError(f"{fn}: {name} must be a non-empty list, got {v!r}")
            if len(set(map(str, v))) != len(v):
                raise ValueError(f"{fn}: {name} must not repeat values, got {v!r}")
        for h in self.heterogeneity:
            _data.parse_heterogeneity(h, fn)
        if not isinstance(self.attack_params, dict) or not all(
            isinstance(v, dict) for v in self.attack_params.values()
        ):
            raise TypeError(
                f"{fn}: attack_params must map attack names to dicts, got {self.attack_params!r}"
            )
        extra = set(self.attack_params) - set(self.attacks)
        if extra:
            raise ValueError(f"{fn}: attack_params names attacks not in the grid: {sorted(extra)}")
        if not isinstance(self.base, dict):
            raise TypeError(
                f"{fn}: base must be a dict of RobustnessConfig options, got {self.base!r}"
            )
        known = {f.name for f in fields(RobustnessConfig)}
        for k in self.base:
            if k in _SWEPT:
                raise ValueError(
                    f"{fn}: base must not set {k!r}: the grid sets it (use the grid's own list)"
                )
            if k not in known:
                raise ValueError(
                    f"{fn}: base has unknown option {k!r}; "
                    f"known: {', '.join(sorted(known - set(_SWEPT)))}"
                )
        # Every combination must be a valid config, and every attack must run against every
        # rule with its parameters: check them all before any training.
        for f, h, lr, a in self.combinations():
            cfg = self.config_for(f, h, lr, a)
            for spec in cfg.validate():
                check_attack_runs(cfg, spec, rule_params(spec, cfg))

    def combinations(self) -> list[Any]:
        return list(itertools.product(self.byzantine, self.heterogeneity, self.lr, self.attacks))

    def config_for(self, f: int, heterogeneity: str, lr: float, attack: str) -> RobustnessConfig:
        kw = dict(self.base)
        kw.setdefault("flag_history", "none")  # per-step FA traces of a whole grid would be huge
        return RobustnessConfig(
            rules=list(self.rules),
            attack=attack,
            byzantine=f,
            heterogeneity=heterogeneity,
            lr=lr,
            attack_params=dict(self.attack_params.get(attack, {})),
            **kw,
        )


def grid_from_dict(d: Any) -> GridConfig:
    """A GridConfig from a parsed JSON object (unknown keys are an error)."""
    if not isinstance(d, dict):
        raise TypeError(
            f"robustness grid: the config must be a JSON object, got {type(d).__name__}"
        )
    known = {f.name for f in fields(GridConfig)}
    bad = set(d) - known
    if bad:
        raise ValueError(
            f"robustness grid: unknown key {sorted(bad)[0]!r}; known: {', '.join(sorted(known))}"
        )
    missing = {"rules", "attacks"} - set(d)
    if missing:
        raise ValueError(f"robustness grid: the config needs {' and '.join(sorted(missing))}")
    g = GridConfig(**d)
    g.validate()
    return g


def load_grid(path: str) -> GridConfig:
    """Read and validate a grid config file (strict JSON, UTF-8). Every error names --grid and
    the file."""
    where = f"robustness: --grid {path!r}"
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh, parse_constant=_no_constant)
    except OSError as exc:
        raise ValueError(f"robustness: cannot read --grid {path!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{where} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "a grid config is a UTF-8 JSON file"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{where} is not a grid config: its JSON is nested too deeply") from None
    except ValueError as exc:  # _no_constant: NaN, Infinity
        raise ValueError(f"{where}: {_unprefixed(str(exc))}") from None
    try:
        return grid_from_dict(d)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{where}: {_unprefixed(str(exc))}") from None


def _unprefixed(msg: str) -> str:
    for prefix in ("robustness grid: ", "robustness: "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _no_constant(name: str) -> Any:
    raise ValueError(f"robustness grid: {name} is not strict JSON")


def quick_grid() -> GridConfig:
    """A grid that runs in seconds (blobs, 7 workers, f = 1, 8 steps, one seed): for smoke tests
    and to see the outputs' form."""
    return GridConfig(
        rules=["mean", "median", "trimmed_mean", "flag"],
        attacks=["sign_flip", "optimal_alie", "min_max", "fa_aware"],
        byzantine=[1],
        heterogeneity=["iid", "dirichlet:0.5"],
        lr=[0.05],
        base={
            "dataset": "blobs",
            "model": "mlp",
            "workers": 7,
            "steps": 8,
            "batch_size": 8,
            "seeds": 1,
            "eval_every": 4,
        },
    )


def make_quick(grid: GridConfig, steps: int = 30, seeds: int = 1) -> GridConfig:
    """The same grid with at most ``steps`` steps and ``seeds`` seeds (``--quick`` with --grid)."""
    g = copy.deepcopy(grid)
    g.base["steps"] = min(int(g.base.get("steps", RobustnessConfig.steps)), steps)
    g.base["seeds"] = min(int(g.base.get("seeds", RobustnessConfig.seeds)), seeds)
    g.base["eval_every"] = min(
        int(g.base.get("eval_every", RobustnessConfig.eval_every)), g.base["steps"]
    )
    return g


def run_grid(grid: GridConfig, progress: bool = True, log: Any = None) -> dict[str, Any]:
    """Run every combination (rules share one run per combination) and return results.json's
    content. ``log``: a callable taking one line of text per finished combination."""
    import torch

    grid.validate()
    labels = [parse_rule_spec(r).label for r in grid.rules]
    cells: list[Any] = []
    meta: dict[str, Any] = {}
    t0 = time.perf_counter()
    combos = grid.combinations()
    for i, (f, het, lr, att) in enumerate(combos):
        t1 = time.perf_counter()
        res = run_robustness(grid.config_for(f, het, lr, att), progress=progress)
        meta = {"dataset": res["dataset"], "model": res["model"], "seeds": res["seeds"]}
        for lab in labels:
            e = res["rules"][lab]
            cells.append(
                {
                    "rule": lab,
                    "attack": att,
                    "byzantine": f,
                    "heterogeneity": het,
                    "lr": lr,
                    "accuracy_mean": e["final_accuracy_mean"],
                    "accuracy_std": e["final_accuracy_std"],
                    "accuracy": e["final_accuracy"],
                    "final_loss": e["final_loss"],
                    "agg_time_ms_mean": e["agg_time_ms_mean"],
                }
            )
        if log is not None:
            accs = ", ".join(
                f"{lab} {res['rules'][lab]['final_accuracy_mean']:.3f}" for lab in labels
            )
            log(
                f"[{i + 1}/{len(combos)}] f={f} {het} lr={lr} {att}: {accs} "
                f"({time.perf_counter() - t1:.0f} s)"
            )
    return {
        "schema": GRID_SCHEMA,
        "grid": asdict(grid),
        "rules": labels,
        **meta,
        "cells": cells,
        "worst_case": worst_case(cells, labels, grid),
        "elapsed_s": time.perf_counter() - t0,
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }


def _nan_min(values: list[Any]) -> tuple[Any, ...]:
    """(min, index) treating NaN as the worst value (a diverged run is an attack success)."""
    vals = [-math.inf if (v is None or not math.isfinite(v)) else v for v in values]
    i = int(np.argmin(vals))
    return vals[i], i


def worst_case(cells: list[Any], labels: list[Any], grid: GridConfig) -> list[Any]:
    """Per rule and (f, heterogeneity): max over lr of min over attacks of the mean accuracy."""
    by = {
        (c["rule"], c["byzantine"], c["heterogeneity"], c["lr"], c["attack"]): c["accuracy_mean"]
        for c in cells
    }
    out = []
    for lab, f, het in itertools.product(labels, grid.byzantine, grid.heterogeneity):
        per_lr = {}
        for lr in grid.lr:
            acc, j = _nan_min([by[(lab, f, het, lr, a)] for a in grid.attacks])
            per_lr[lr] = (acc, grid.attacks[j])
        best_lr = max(grid.lr, key=lambda lr: per_lr[lr][0])
        acc, att = per_lr[best_lr]
        out.append(
            {
                "rule": lab,
                "byzantine": f,
                "heterogeneity": het,
                "accuracy": acc if math.isfinite(acc) else None,
                "lr": best_lr,
                "worst_attack": att,
                "per_lr": [
                    {"lr": lr, "accuracy": a if math.isfinite(a) else None, "worst_attack": w}
                    for lr, (a, w) in per_lr.items()
                ],
            }
        )
    return out


def check_out_dir(out_dir: str, fn: str = "robustness", *, refuse_existing: bool = False) -> str:
    """Check, before any work, that ``out_dir`` is or can become a writable folder (a bad path
    must not lose a finished run); flagcore._paths.check_output_dir, which creates nothing.
    ``refuse_existing``: also refuse a folder that holds an earlier run's results (the command
    line without --force)."""
    from .._paths import check_output_dir

    return check_output_dir(out_dir, fn, "--out", refuse_existing=refuse_existing)


def have_matplotlib() -> bool:
    from .._paths import have_matplotlib as have

    return have()


def write_grid_outputs(
    res: dict[str, Any], out_dir: str, plots: bool = True, prefix: str = ""
) -> list[Any]:
    """``{prefix}results.json`` and the heat maps into out_dir; returns the paths written.
    Without matplotlib only the JSON is written, and a note says how to get the plots."""
    from .._paths import atomic_open
    from . import _clean

    path = os.path.join(out_dir, f"{prefix}results.json")
    text = json.dumps(_clean(res), allow_nan=False, indent=1)
    with atomic_open(path) as fh:  # creates out_dir; a failed write keeps a previous file
        fh.write(text)
    written = [path]
    if plots:
        if not have_matplotlib():
            print(
                "(matplotlib is not installed: wrote the JSON only; "
                "pip install 'flagcore[cli]' for the heat maps)"
            )
            return written
        from .plots import write_grid_heatmaps

        written += write_grid_heatmaps(res, out_dir, prefix=prefix)
    return written


def summary_rows(res: dict[str, Any]) -> list[Any]:
    rows = []
    for w in res["worst_case"]:
        rows.append(
            [
                w["rule"],
                w["byzantine"],
                w["heterogeneity"],
                w["accuracy"],
                w["lr"],
                w["worst_attack"],
            ]
        )
    return rows


def print_grid_summary(res: dict[str, Any], title: str | None = None) -> None:
    from .._table import print_table

    if title is None:
        b = res["grid"]["base"]
        title = (
            f"Worst-case accuracy over {len(res['grid']['attacks'])} attacks (best lr): "
            f"{res['dataset']['name']} / {res['model']['name']}, {b.get('workers', 15)} workers, "
            f"{b.get('steps', 200)} steps, {len(res['seeds'])} seed(s)"
        )
    print_table(
        title,
        ["rule", "f", "heterogeneity", "worst-case acc", "lr", "worst attack"],
        summary_rows(res),
    )
