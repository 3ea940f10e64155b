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

A long grid survives an interruption: given ``progress_file`` (the command line's
``--out/grid_progress.json``), ``run_grid`` rewrites that file atomically after every finished
combination with the grid config and the cells of the combinations done so far, and with
``resume=True`` it reads the file back, checks that it was written by the same config, and runs
only the other combinations. The result is the uninterrupted run's, cell for cell and in the same
order (floats are stored at full precision, NaN/Inf as the strings "NaN"/"Infinity"/"-Infinity"
so the file is strict JSON), plus ``resumed_combinations``. ``write_grid_outputs`` removes the
progress file once results.json is written. The file records the flagcore version that wrote it,
and a resume by another version is refused (its runs need not match this version's). It is
bookkeeping, not a result: it is written without being recorded among the run's outputs
(``_paths.atomic_open(record=False)``), so a ``--force`` run interrupted before results.json
keeps the earlier run's files.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .._paths import GRID_PROGRESS_FILE
from . import data as _data
from .harness import (
    RobustnessConfig,
    check_attack_runs,
    parse_rule_spec,
    rule_params,
    run_robustness,
)

GRID_SCHEMA = "flagcore.robustness_grid/1"
PROGRESS_SCHEMA = "flagcore.robustness_grid_progress/1"
# The progress file's name in the command line's --out folder (_paths refuses a folder holding it).
PROGRESS_FILE = GRID_PROGRESS_FILE
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


def run_grid(
    grid: GridConfig,
    progress: bool = True,
    log: Any = None,
    *,
    progress_file: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run every combination (rules share one run per combination) and return results.json's
    content. ``log``: a callable taking one line of text per finished combination.

    ``progress_file``: after each finished combination, (re)write this file atomically with the
    grid config and the combinations done so far (before ``log`` is called), so an interruption
    loses at most the combination that was running. It must not exist unless ``resume``.
    ``resume``: read ``progress_file`` (``load_progress``: same config or an error) and run only
    the combinations it does not hold. ``resumed_combinations`` in the result counts the
    combinations taken from the file; ``elapsed_s`` adds the time they took when they ran."""
    import torch

    fn = "run_grid"
    if progress_file is not None and not isinstance(progress_file, (str, os.PathLike)):
        raise TypeError(
            f"{fn}: progress_file must be a path or None, got {type(progress_file).__name__}"
        )
    if not isinstance(resume, bool):
        raise TypeError(f"{fn}: resume must be True or False, got {resume!r}")
    grid.validate()
    labels = [parse_rule_spec(r).label for r in grid.rules]
    combos = grid.combinations()
    done: dict[str, Any] = {}  # combination key -> {"combination", "cells", "meta", "elapsed_s"}
    if resume:
        if progress_file is None:
            raise ValueError(f"{fn}: resume=True needs the progress_file to resume from")
        done = load_progress(os.fspath(progress_file), grid, f"{fn}: resume")
    elif progress_file is not None and os.path.lexists(progress_file):
        raise ValueError(
            f"{fn}: progress_file {os.fspath(progress_file)!r} already exists (an interrupted "
            "grid's progress): pass resume=True to continue it, or remove it to start over"
        )
    resumed = set(done)
    t0 = time.perf_counter()
    for i, (f, het, lr, att) in enumerate(combos):
        key = _combo_key((f, het, lr, att))
        if key in done:
            continue
        t1 = time.perf_counter()
        res = run_robustness(grid.config_for(f, het, lr, att), progress=progress)
        cells = []
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
        done[key] = {
            "combination": [f, het, lr, att],
            "cells": cells,
            "meta": {"dataset": res["dataset"], "model": res["model"], "seeds": res["seeds"]},
            "elapsed_s": time.perf_counter() - t1,
        }
        if progress_file is not None:
            in_order = [done[k] for k in map(_combo_key, combos) if k in done]
            _write_progress(os.fspath(progress_file), grid, in_order)
        if log is not None:
            accs = ", ".join(
                f"{lab} {res['rules'][lab]['final_accuracy_mean']:.3f}" for lab in labels
            )
            log(
                f"[{i + 1}/{len(combos)}] f={f} {het} lr={lr} {att}: {accs} "
                f"({time.perf_counter() - t1:.0f} s)"
            )
    entries = [done[_combo_key(c)] for c in combos]
    cells = [c for e in entries for c in e["cells"]]
    earlier_s = sum(done[k]["elapsed_s"] for k in resumed)
    return {
        "schema": GRID_SCHEMA,
        "grid": asdict(grid),
        "rules": labels,
        **entries[-1]["meta"],  # as an uninterrupted run: the last combination's data and model
        "cells": cells,
        "worst_case": worst_case(cells, labels, grid),
        "elapsed_s": time.perf_counter() - t0 + earlier_s,
        "resumed_combinations": len(resumed),
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }


# ---------------------------------------------------------------- the progress file
# Cell fields that hold floats (or lists of floats): NaN/Inf are stored as strings there.
_CELL_FLOATS = ("accuracy_mean", "accuracy_std", "accuracy", "final_loss", "agg_time_ms_mean")
_CELL_KEYS = ("rule", "attack", "byzantine", "heterogeneity", "lr", *_CELL_FLOATS)
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _combo_key(combo: Any) -> str:
    """A combination (f, heterogeneity, lr, attack) as the progress file identifies it."""
    return json.dumps(list(combo))


def _encode(v: Any) -> Any:
    """JSON-ready, exactly: floats at full precision (json writes repr), NaN/Inf as strings,
    tuples as lists (what the file reads back)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    return v


def _decode_float(v: Any) -> Any:
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if isinstance(v, list):
        return [_decode_float(x) for x in v]
    return v


def _write_progress(path: str, grid: GridConfig, entries: list[Any]) -> None:
    from .._paths import atomic_open

    doc = {
        "schema": PROGRESS_SCHEMA,
        "flagcore": _flagcore_version(),
        "grid": _encode(asdict(grid)),
        "combinations_total": len(grid.combinations()),
        "done": _encode(entries),
    }
    text = json.dumps(doc, allow_nan=False, indent=1)  # a serialisation error writes nothing
    # creates the folder; a failed write keeps the previous file; not recorded as an output of
    # the run (a --force run that wrote only this must not clear the earlier run's results)
    with atomic_open(path, record=False) as fh:
        fh.write(text)


def _flagcore_version() -> str:
    from .. import __version__

    return str(__version__)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included (1 is not 1.0, True is not 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """Where two grid configs (as JSON) first differ, as 'base.steps: 30 in the progress
    file, 3 in this grid'; None when they are the same."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            where = f"{path}.{k}" if path else str(k)
            if k not in old:
                return f"{where}: not set in the progress file, {new[k]!r} in this grid"
            if k not in new:
                return f"{where}: {old[k]!r} in the progress file, not set in this grid"
            diff = _first_difference(old[k], new[k], where)
            if diff is not None:
                return diff
        return None
    if _same(old, new):
        return None
    return f"{path or 'the config'}: {old!r} in the progress file, {new!r} in this grid"


def load_progress(path: str, grid: GridConfig, where: str = "load_progress") -> dict[str, Any]:
    """The finished combinations of a progress file that ``run_grid`` wrote for ``grid``:
    {combination key: {"combination", "cells", "meta", "elapsed_s"}}. Raises ValueError naming
    ``where`` and the file when it cannot be read, is not a progress file, was written by another
    flagcore version (both named), or by another grid config (the message names the first
    setting that differs)."""
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh, parse_constant=_no_constant)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read {path!r}: {exc.strerror or exc}") from None
    except RecursionError:
        raise ValueError(
            f"{where}: {path!r} is not a grid progress file (its JSON is nested too deeply)"
        ) from None
    except ValueError as exc:  # not UTF-8, not JSON, NaN/Infinity
        raise ValueError(
            f"{where}: {path!r} is not a grid progress file ({_unprefixed(str(exc))})"
        ) from None

    def bad(why: str) -> ValueError:
        return ValueError(f"{where}: {path!r} is not a grid progress file: {why}")

    if not isinstance(d, dict) or d.get("schema") != PROGRESS_SCHEMA:
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise bad(f"schema {got!r}, expected {PROGRESS_SCHEMA!r}")
    version, theirs = _flagcore_version(), d.get("flagcore")
    if not _same(theirs, version):
        by = f"flagcore {theirs}" if isinstance(theirs, str) else "a flagcore of unknown version"
        raise ValueError(
            f"{where}: {path!r} was written by {by}, this is flagcore {version} (the runs of one "
            f"grid come from one version): finish that grid with {by}"
        )
    current = json.loads(json.dumps(_encode(asdict(grid))))
    diff = _first_difference(d.get("grid"), current)
    if diff is not None:
        raise ValueError(f"{where}: {path!r} holds the progress of another grid config ({diff})")
    labels = [parse_rule_spec(r).label for r in grid.rules]
    combos = {_combo_key(c) for c in grid.combinations()}
    entries = d.get("done")
    if not isinstance(entries, list):
        raise bad(f"'done' must be a list, got {type(entries).__name__}")
    done: dict[str, Any] = {}
    for j, e in enumerate(entries):
        why = _bad_entry(e, labels)
        if why is not None:
            raise bad(f"done[{j}] {why}")
        key = _combo_key(e["combination"])
        if key not in combos:
            raise bad(f"done[{j}] is {e['combination']!r}, not a combination of this grid")
        if key in done:
            raise bad(f"done[{j}] repeats the combination {e['combination']!r}")
        cells = [
            {k: _decode_float(c[k]) if k in _CELL_FLOATS else c[k] for k in _CELL_KEYS}
            for c in e["cells"]
        ]
        done[key] = {
            "combination": e["combination"],
            "cells": cells,
            "meta": e["meta"],
            "elapsed_s": e["elapsed_s"],
        }
    return done


def _bad_entry(e: Any, labels: list[str]) -> str | None:
    """What is wrong with one entry of a progress file's "done" list (None: nothing)."""
    need = ("combination", "cells", "meta", "elapsed_s")
    if not isinstance(e, dict) or set(e) != set(need):
        return f"must be an object with {', '.join(need)}"
    combo, cells, meta, elapsed = (e[k] for k in need)
    if not isinstance(combo, list) or len(combo) != 4:
        return f"combination must be [f, heterogeneity, lr, attack], got {combo!r}"
    if not isinstance(meta, dict) or any(k not in meta for k in ("dataset", "model", "seeds")):
        return "meta must be an object with dataset, model, seeds"
    if (
        isinstance(elapsed, bool)
        or not isinstance(elapsed, (int, float))
        or not 0 <= elapsed < math.inf
    ):
        return f"elapsed_s must be a number of seconds, got {elapsed!r}"
    if not (
        isinstance(cells, list)
        and [c.get("rule") if isinstance(c, dict) else None for c in cells] == labels
        and all(set(c) == set(_CELL_KEYS) for c in cells)
        and all(
            _same([c["byzantine"], c["heterogeneity"], c["lr"], c["attack"]], combo) for c in cells
        )
    ):
        return f"must hold one cell per rule ({', '.join(labels)}) of {combo!r}"
    return None


def progress_counts(path: str) -> tuple[int, int] | None:
    """(combinations done, combinations in the grid) of a progress file, or None when it cannot
    be read as one (for messages only: ``load_progress`` checks it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        return len(d["done"]), int(d["combinations_total"])
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


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
    res: dict[str, Any],
    out_dir: str,
    plots: bool = True,
    prefix: str = "",
    *,
    progress_file: str | None = None,
) -> list[Any]:
    """``{prefix}results.json`` and the heat maps into out_dir; returns the paths written.
    Without matplotlib only the JSON is written, and a note says how to get the plots.
    ``progress_file``: run_grid's progress file, removed once results.json is written (it
    holds everything the file held); a failure to remove it is reported on stderr."""
    from .._paths import atomic_open
    from . import _clean

    path = os.path.join(out_dir, f"{prefix}results.json")
    text = json.dumps(_clean(res), allow_nan=False, indent=1)
    with atomic_open(path) as fh:  # creates out_dir; a failed write keeps a previous file
        fh.write(text)
    written = [path]
    if progress_file is not None and os.path.lexists(progress_file):
        try:
            os.remove(progress_file)
        except OSError as exc:
            print(
                f"robustness grid: could not remove the progress file {progress_file!r} "
                f"({exc.strerror or exc}); {path} holds all it held, so it can be deleted",
                file=sys.stderr,
            )
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
