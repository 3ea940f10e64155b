"""Non-iid splits (class histograms), the robustness grid end to end, its config checks and CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from conftest import tiny_robustness_argv  # noqa: E402
from flagcore import cli  # noqa: E402
from flagcore.experiments import data as xdata  # noqa: E402
from flagcore.experiments import grid as xgrid  # noqa: E402
from flagcore.experiments import harness, run_robustness, write_outputs  # noqa: E402


def _strict_load(path):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    with open(path) as fh:
        return json.load(fh, parse_constant=bad)


def _labels(n_per_class=60, classes=10, seed=0):
    y = np.repeat(np.arange(classes), n_per_class)
    return np.random.default_rng(seed).permutation(y)


def _hist(y, parts, classes=10):
    return np.stack([np.bincount(y[s], minlength=classes) for s in parts])


# ------------------------------------------------------------------ splits
def test_iid_split_is_the_historical_permutation():
    y = _labels()
    parts = xdata.split_indices(y, 7, seed=3)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))[: 7 * (len(y) // 7)]
    np.testing.assert_array_equal(np.stack(parts), perm.reshape(7, -1).numpy())


@pytest.mark.parametrize("het", ["dirichlet:0.1", "dirichlet:1.0", "dirichlet:100"])
def test_dirichlet_is_a_partition_reproducible_per_seed(het):
    y = _labels()
    parts = xdata.split_indices(y, 15, seed=1, heterogeneity=het)
    allidx = np.concatenate(parts)
    assert len(parts) == 15 and min(len(s) for s in parts) >= 1
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(y)))  # every sample exactly once
    again = xdata.split_indices(y, 15, seed=1, heterogeneity=het)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = xdata.split_indices(y, 15, seed=2, heterogeneity=het)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_alpha_controls_the_class_histograms():
    y = _labels(n_per_class=200)

    def dominant(alpha):
        hist = _hist(y, xdata.split_indices(y, 15, seed=0, heterogeneity=f"dirichlet:{alpha}"))
        frac = hist / hist.sum(axis=1, keepdims=True)
        return frac.max(axis=1).mean(), np.abs(frac - 0.1).max()

    dom_small, _ = dominant(0.05)
    dom_mid, _ = dominant(1.0)
    dom_big, dev_big = dominant(1000.0)
    assert dom_small > 0.7  # few classes per worker
    assert dom_small > dom_mid > dom_big
    assert dev_big < 0.08  # close to the global 10 % per class


def test_gamma_similarity_histograms():
    y = _labels(n_per_class=60)
    n, p = len(y), 10
    iid = _hist(y, xdata.split_indices(y, p, seed=0, heterogeneity="gamma:1.0"))
    sorted_ = xdata.split_indices(y, p, seed=0, heterogeneity="gamma:0.0")
    for parts in (
        xdata.split_indices(y, p, seed=0, heterogeneity=f"gamma:{g}") for g in (0.0, 0.3, 1.0)
    ):
        sizes = [len(s) for s in parts]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n // p * p
        assert len(np.unique(np.concatenate(parts))) == sum(sizes)  # disjoint
    # gamma = 0: label-sorted chunks, 60 samples per worker = exactly one class each here
    for s in sorted_:
        assert len(np.unique(y[s])) == 1
    assert sorted(int(np.unique(y[s])[0]) for s in sorted_) == list(range(10))
    # gamma = 1: iid; with 60 samples per worker every class is present
    assert (iid > 0).all()
    # gamma = 0.5: half of each shard is iid, half a sorted run of labels: in between
    half = _hist(y, xdata.split_indices(y, p, seed=0, heterogeneity="gamma:0.5"))
    dominant = [h.max(axis=1).mean() / 60 for h in (half, iid)]
    assert 0.4 < dominant[0] < 1.0 and dominant[1] < 0.3


def test_shard_pads_with_real_samples_and_reports_sizes():
    task = xdata.make_blobs(seed=0, n_samples=300)
    xs, ys, sizes = xdata.shard(task, 5, seed=0, heterogeneity="dirichlet:0.3", return_sizes=True)
    parts = xdata.split_indices(task.y_train.numpy(), 5, 0, "dirichlet:0.3")
    assert sizes.tolist() == [len(s) for s in parts] and xs.shape[1] == max(sizes.tolist())
    hist = xdata.class_histograms(ys, sizes, task.n_classes)
    np.testing.assert_array_equal(hist, _hist(task.y_train.numpy(), parts, task.n_classes))
    for w, s in enumerate(parts):  # padded rows repeat the worker's own samples
        np.testing.assert_array_equal(
            ys[w].numpy(), task.y_train.numpy()[np.resize(s, xs.shape[1])]
        )


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("dirichlet:0", "needs alpha > 0"),
        ("dirichlet:x", "needs alpha > 0"),
        ("gamma:1.5", r"needs gamma in \[0, 1\]"),
        ("noniid", "heterogeneity must be 'iid'"),
        ("iid:3", "heterogeneity must be 'iid'"),
    ],
)
def test_bad_heterogeneity(spec, msg):
    with pytest.raises(ValueError, match=msg):
        xdata.split_indices(np.zeros(10, int), 2, 0, spec)


# ------------------------------------------------------------------ the harness with non-iid data
FAST = dict(
    dataset="blobs",
    model="mlp",
    workers=5,
    byzantine=1,
    steps=3,
    batch_size=8,
    seeds=1,
    eval_every=3,
    progress=False,
)


def test_noniid_run_records_histograms_and_is_reproducible():
    kw = dict(
        FAST,
        rules=["median", "flag"],
        attack="min_max",
        heterogeneity="dirichlet:0.2",
        batch_size=64,
    )
    a = run_robustness(**kw)
    b = run_robustness(**kw)
    assert a["rules"]["median"]["final_accuracy"] == b["rules"]["median"]["final_accuracy"]
    assert a["rules"]["flag"]["train_loss"] == b["rules"]["flag"]["train_loss"]
    hist = np.array(a["dataset"]["class_histograms"])
    assert hist.shape == (5, 4) and hist.sum(axis=1).tolist() == a["dataset"]["shard_sizes"]
    assert a["config"]["heterogeneity"] == "dirichlet:0.2"


def test_rule_is_built_once_per_run(monkeypatch):
    built = []
    real = harness.make_rule

    def counting(name, **kw):
        built.append(name)
        return real(name, **kw)

    monkeypatch.setattr(harness, "make_rule", counting)
    run_robustness(**dict(FAST, rules=["median", "mean"], attack="optimal_ipm", steps=4, seeds=2))
    # per rule: two probes before training (the rule; the attack against it), then per seed one
    # server copy and one attacker copy; none per step
    assert sorted(built) == sorted(["median"] * 6 + ["mean"] * 6)


# ------------------------------------------------------------------ the grid
TINY = dict(
    rules=["mean", "median", "flag"],
    attacks=["sign_flip", "optimal_ipm"],
    byzantine=[1],
    heterogeneity=["iid", "gamma:0.0"],
    lr=[0.02, 0.1],
    base={
        "dataset": "blobs",
        "workers": 5,
        "steps": 3,
        "batch_size": 8,
        "seeds": 1,
        "eval_every": 3,
    },
)


def test_grid_end_to_end(tmp_path):
    g = xgrid.grid_from_dict(json.loads(json.dumps(TINY)))
    res = xgrid.run_grid(g, progress=False)
    assert len(res["cells"]) == 3 * 2 * 2 * 2
    # worst case, recomputed: max over lr of min over attacks
    acc = {
        (c["rule"], c["heterogeneity"], c["lr"], c["attack"]): c["accuracy_mean"]
        for c in res["cells"]
    }
    for w in res["worst_case"]:
        best = max(
            min(acc[(w["rule"], w["heterogeneity"], lr, a)] for a in TINY["attacks"])
            for lr in TINY["lr"]
        )
        assert w["accuracy"] == pytest.approx(best)
        assert min(
            acc[(w["rule"], w["heterogeneity"], w["lr"], a)] for a in TINY["attacks"]
        ) == pytest.approx(best)
        assert acc[(w["rule"], w["heterogeneity"], w["lr"], w["worst_attack"])] == pytest.approx(
            best
        )
    written = xgrid.write_grid_outputs(res, str(tmp_path))
    names = sorted(p.split("/")[-1] for p in written)
    assert names == [
        "heatmap_attack_f1_gamma_0_0.png",
        "heatmap_attack_f1_iid.png",
        "heatmap_heterogeneity_f1.png",
        "results.json",
    ]
    d = _strict_load(tmp_path / "results.json")
    assert d["schema"] == xgrid.GRID_SCHEMA and d["rules"] == TINY["rules"]
    # reproducible per seed: the same grid gives the same cells
    res2 = xgrid.run_grid(g, progress=False)
    assert [c["accuracy"] for c in res2["cells"]] == [c["accuracy"] for c in res["cells"]]


def test_worst_case_counts_a_diverged_run_as_the_worst():
    g = xgrid.GridConfig(rules=["mean"], attacks=["a", "b"], lr=[0.1])
    cells = [
        {
            "rule": "mean",
            "byzantine": 3,
            "heterogeneity": "iid",
            "lr": 0.1,
            "attack": a,
            "accuracy_mean": v,
        }
        for a, v in (("a", 0.9), ("b", float("nan")))
    ]
    w = xgrid.worst_case(cells, ["mean"], g)[0]
    assert w["accuracy"] is None and w["worst_attack"] == "b"


@pytest.mark.parametrize(
    "d, exc, msg",
    [
        ({"rules": ["mean"]}, ValueError, "needs attacks"),
        (dict(TINY, colour="red"), ValueError, "unknown key 'colour'"),
        (dict(TINY, lr=[]), ValueError, "lr must be a non-empty list"),
        (dict(TINY, lr=[0.1, 0.1]), ValueError, "lr must not repeat"),
        (dict(TINY, heterogeneity=["dirichlet:-1"]), ValueError, "needs alpha > 0"),
        (dict(TINY, base={"steps": 3, "attack": "nan"}), ValueError, "base must not set 'attack'"),
        (dict(TINY, base={"stepz": 3}), ValueError, "base has unknown option 'stepz'"),
        (dict(TINY, attacks=["teleport"]), ValueError, "attack must be one of"),
        (dict(TINY, rules=["nosuch"]), ValueError, "unknown rule 'nosuch'"),
        (dict(TINY, byzantine=[9]), ValueError, r"byzantine must be in \[0, 4\]"),
        (
            dict(TINY, attack_params={"alie": {"z": 1}}),
            ValueError,
            "attack_params names attacks not in the grid",
        ),
        ([1, 2], TypeError, "must be a JSON object"),
        (dict(TINY, lr=[1e308]), ValueError, r"lr must be at most 3.40282\d*e\+38"),
        (dict(TINY, base={"momentum": 1.5}), ValueError, r"momentum must be in \[0, 1\)"),
        (dict(TINY, base={"seed": 2**63}), ValueError, "seed must be at most"),
        (
            dict(TINY, attacks=["label_flip"], attack_params={"label_flip": {"foo": 1}}),
            ValueError,
            "attack 'label_flip' takes no parameters, got attack_params foo=1",
        ),
    ],
)
def test_grid_config_errors(d, exc, msg):
    with pytest.raises(exc, match=msg):
        xgrid.grid_from_dict(d)


def test_load_grid_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": ["mean"], "attacks": ["nan"], "lr": [NaN]}')
    with pytest.raises(ValueError, match="NaN is not strict JSON"):
        xgrid.load_grid(str(bad))
    bad.write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        xgrid.load_grid(str(bad))
    with pytest.raises(ValueError, match="cannot read --grid"):
        xgrid.load_grid(str(tmp_path / "missing.json"))
    bad.write_bytes(b'{"rules": ["m\xe9an"]}')  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"--grid '.*bad.json' is not UTF-8 text \(byte 13"):
        xgrid.load_grid(str(bad))
    bad.write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"--grid '.*bad.json' is not a grid config: .*nested"):
        xgrid.load_grid(str(bad))
    bad.write_text(json.dumps(dict(TINY, lr=[1e308])))
    with pytest.raises(ValueError, match=r"^robustness: --grid '.*bad.json': lr must be at most"):
        xgrid.load_grid(str(bad))


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[" * 100_000, "is not a grid config: its JSON is nested too deeply"),
        (json.dumps(dict(TINY, lr=[1e308])).encode(), ": lr must be at most 3.40282"),
        (
            json.dumps(dict(TINY, attacks=["noise"], attack_params={"noise": {"sd": 2}})).encode(),
            ": attack 'noise' takes no parameters, got attack_params sd=2",
        ),
    ],
)
def test_cli_grid_file_errors_name_the_option_and_file(content, match, tmp_path, capsys):
    cfg = tmp_path / "g.json"
    cfg.write_bytes(content)
    rc = cli.main(["robustness", "--grid", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"flagcore robustness: error: --grid {str(cfg)!r}"), err
    assert match in err and "Traceback" not in err and err.count("robustness") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", [["--quick"], ["--grid", "GRID"], ["--grid", "GRID", "--quick"]])
def test_training_flags_are_refused_with_grid_or_quick(mode, tmp_path, capsys, monkeypatch):
    class Started(Exception):
        pass

    def started(*a, **k):
        raise Started

    monkeypatch.setattr(xgrid, "run_grid", started)
    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps(TINY))
    mode = [str(cfg) if m == "GRID" else m for m in mode]
    out = ["--out", str(tmp_path / "o")]
    # even a value equal to the default is refused: it would be ignored all the same
    for flags, named in (
        (
            ["--rules", "krum", "--workers", "99", "--attack", "nosuch"],
            "--rules, --workers, --attack",
        ),
        (["--steps", "200"], "--steps"),
        (["--attack-param", "a=1", "--seed", "0"], "--attack-param, --seed"),
        (["--device", "cpu"], "--device"),
    ):
        rc = cli.main(["robustness", *mode, *flags, *out])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"error: {named} cannot be combined with --" in err, err
    # the output options are not training flags: this one starts the work
    with pytest.raises(Started):
        cli.main(["robustness", *mode, *out, "--no-plots", "--no-progress", "--force"])


def test_cli_grid_and_quick(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    cfg = tmp_path / "g.json"
    cfg.write_text(
        json.dumps(dict(TINY, lr=[0.05], heterogeneity=["iid"], rules=["median", "flag"]))
    )
    out = tmp_path / "o"
    rc = cli.main(["robustness", "--grid", str(cfg), "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "worst" in text.lower() and "median" in text
    d = _strict_load(out / "results.json")
    assert {w["rule"] for w in d["worst_case"]} == {"median", "flag"}
    assert (out / "heatmap_heterogeneity_f1.png").exists()


def test_cli_checks_the_output_path_before_the_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ran = []
    monkeypatch.setattr(xgrid, "run_grid", lambda *a, **k: ran.append(1))
    monkeypatch.setattr(harness, "_run_all", lambda *a, **k: ran.append(1))
    for argv in (["--quick"], ["--dataset", "blobs", "--steps", "1"]):
        rc = cli.main(["robustness", *argv, "--out", str(blocker), "--no-progress"])
        assert rc == 2 and "is an existing file, not a folder" in capsys.readouterr().err
    rc = cli.main(["robustness", "--quick", "--out", str(blocker / "sub"), "--no-progress"])
    assert rc == 2 and "cannot be created" in capsys.readouterr().err
    assert ran == []


def test_without_matplotlib_the_json_is_written_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(xgrid, "have_matplotlib", lambda: False)
    res = run_robustness(**dict(FAST, rules=["mean"], attack="none"))
    assert [p.split("/")[-1] for p in write_outputs(res, str(tmp_path))] == ["results.json"]
    assert "matplotlib is not installed" in capsys.readouterr().out
    fake = {"grid": {}, "cells": []}
    assert [p.split("/")[-1] for p in xgrid.write_grid_outputs(fake, str(tmp_path / "g"))] == [
        "results.json"
    ]


def test_quick_grid_is_valid_and_small():
    g = xgrid.quick_grid()
    g.validate()
    assert len(g.combinations()) <= 8 and g.base["steps"] <= 10
    q = xgrid.make_quick(
        xgrid.grid_from_dict(dict(TINY, base=dict(TINY["base"], steps=500, seeds=5)))
    )
    assert q.base["steps"] == 30 and q.base["seeds"] == 1
    assert list(itertools.chain(q.lr)) == TINY["lr"]


def test_cli_single_run_with_heterogeneity_and_adaptive_attack(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "o"
    rc = cli.main(
        [
            *tiny_robustness_argv("median,flag"),
            "--attack",
            "min_sum",
            "--heterogeneity",
            "gamma:0.5",
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert rc == 0
    d = _strict_load(out / "results.json")
    assert d["config"]["heterogeneity"] == "gamma:0.5" and d["config"]["attack"] == "min_sum"
    rc = cli.main(
        ["robustness", "--dataset", "blobs", "--heterogeneity", "dirichlet", "--out", str(out)]
        + ["--force"]  # out holds the run above: without --force that is refused first
    )
    assert rc == 2 and "--heterogeneity must be 'iid'" in capsys.readouterr().err


def test_bad_attack_parameters_fail_before_training(monkeypatch):
    ran = []
    monkeypatch.setattr(harness, "_run_all", lambda *a, **k: ran.append(1))
    with pytest.raises(
        ValueError,
        match=r"robustness: attack 'optimal_alie' .* cannot run against rule 'median': "
        r"attack: ratio must be in",
    ):
        run_robustness(
            **dict(FAST, rules=["median"], attack="optimal_alie", attack_params={"ratio": 2.0})
        )
    with pytest.raises(ValueError, match="attack: attack 'min_max' takes no parameter 'z'"):
        xgrid.grid_from_dict(dict(TINY, attacks=["min_max"], attack_params={"min_max": {"z": 1.0}}))
    assert ran == []


def test_attack_params_rule_makes_a_transfer_attack():
    spec = harness.parse_rule_spec("flag")
    cfg = harness.RobustnessConfig(attack="optimal_ipm", attack_params={"rule": "median"})
    assert harness._attack_kwargs(cfg, spec, {})["rule"] == "median"
    cfg = harness.RobustnessConfig(attack="optimal_ipm")
    assert isinstance(
        harness._attack_kwargs(cfg, spec, {"r": 8})["rule"], harness.make_rule("flag").__class__
    )


# ------------------------------------------------------------------ resuming an interrupted grid
RESUMABLE = dict(
    rules=["mean", "median"],
    attacks=["sign_flip", "optimal_ipm"],
    byzantine=[1],
    heterogeneity=["iid", "gamma:0.0"],  # the data (the last combination's) differs per setting
    lr=[0.05],
    attack_params={},
    base=TINY["base"],
)  # 4 combinations of a fraction of a second each
COMBOS = [(1, h, 0.05, a) for h in ("iid", "gamma:0.0") for a in ("sign_flip", "optimal_ipm")]


def _count_runs(monkeypatch, interrupt_at=None):
    """The grid's run_robustness calls, as (f, heterogeneity, lr, attack); the call number
    ``interrupt_at`` raises KeyboardInterrupt (Ctrl-C while that combination trains)."""
    calls = []

    def counting(cfg, **kw):
        calls.append((cfg.byzantine, cfg.heterogeneity, cfg.lr, cfg.attack))
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return run_robustness(cfg, **kw)

    monkeypatch.setattr(xgrid, "run_robustness", counting)
    return calls


def _grid_argv(cfg, out, *extra):
    return ["robustness", "--grid", str(cfg), "--out", str(out), "--no-plots", "--no-progress"] + [
        *extra
    ]


def test_an_interrupted_grid_resumes_to_the_uninterrupted_results(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps(RESUMABLE))
    straight, out = tmp_path / "straight", tmp_path / "o"
    progress = out / xgrid.PROGRESS_FILE
    assert cli.main(_grid_argv(cfg, straight)) == 0
    assert os.listdir(straight) == ["results.json"]  # no progress file left behind
    # Ctrl-C while the second combination trains: the first is kept, the hint says how to go on
    calls = _count_runs(monkeypatch, interrupt_at=2)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["/venv/bin/flagcore"])  # started as the console script
    assert cli.main(_grid_argv(cfg, out)) == 130
    hint = shlex.join(["flagcore", *_grid_argv(cfg, out, "--resume")])
    assert capsys.readouterr().err == (
        f"flagcore robustness: 1 of 4 grid combinations are done and kept in {progress}; "
        f"continue with: {hint}\nflagcore robustness: interrupted\n"
    )
    assert calls == COMBOS[:2] and os.listdir(out) == [xgrid.PROGRESS_FILE]
    kept = _strict_load(progress)
    assert kept["schema"] == xgrid.PROGRESS_SCHEMA and kept["grid"] == RESUMABLE
    assert [e["combination"] for e in kept["done"]] == [list(COMBOS[0])]
    # --resume runs the other three only, and ends where the uninterrupted run ended
    calls = _count_runs(monkeypatch)
    assert cli.main(_grid_argv(cfg, out, "--resume")) == 0
    assert calls == COMBOS[1:]
    assert "resuming from" in capsys.readouterr().out
    assert os.listdir(out) == ["results.json"]  # the progress file is gone
    a, b = _strict_load(straight / "results.json"), _strict_load(out / "results.json")
    assert a["resumed_combinations"] == 0 and b["resumed_combinations"] == 1
    assert list(a) == list(b)
    for key in set(a) - {"cells", "elapsed_s", "resumed_combinations", "environment"}:
        assert b[key] == a[key], key  # worst_case, grid, rules, dataset (the last one), ...
    assert [list(c) for c in b["cells"]] == [list(c) for c in a["cells"]]  # same fields, order

    def untimed(cells):
        return [{k: v for k, v in c.items() if k != "agg_time_ms_mean"} for c in cells]

    assert untimed(b["cells"]) == untimed(a["cells"])


def test_resume_and_the_progress_file_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps(RESUMABLE))
    out = tmp_path / "o"
    progress = out / xgrid.PROGRESS_FILE
    calls = _count_runs(monkeypatch)

    def refused(argv, *messages):
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        for m in messages:
            assert m in err, err
        assert calls == []

    refused(
        _grid_argv(cfg, out, "--resume"),
        f"robustness: error: --resume: there is no progress file {str(progress)!r} to continue",
    )
    refused(
        [*tiny_robustness_argv(), "--out", str(out), "--resume"],
        "error: --resume continues an interrupted grid (--grid or --quick)",
    )
    calls = _count_runs(monkeypatch, interrupt_at=2)  # a progress file with one combination
    assert cli.main(_grid_argv(cfg, out)) == 130 and progress.exists()
    calls = _count_runs(monkeypatch)
    refused(
        _grid_argv(cfg, out),
        f"error: --out {str(out)!r} holds an interrupted grid's progress (grid_progress.json: "
        "1 of 4 combinations done); add --resume to continue it, or --force to discard it",
    )
    cfg.write_text(json.dumps(dict(RESUMABLE, base=dict(RESUMABLE["base"], steps=4))))
    refused(
        _grid_argv(cfg, out, "--resume"),
        f"error: --resume: {str(progress)!r} holds the progress of another grid config "
        "(base.steps: 3 in the progress file, 4 in this grid); to start the grid over instead, "
        "drop --resume and add --force",
    )
    cfg.write_text(json.dumps(dict(RESUMABLE, lr=[0.05, 0.1])))
    refused(_grid_argv(cfg, out, "--resume"), "(lr: [0.05] in the progress file, [0.05, 0.1] in")
    assert len(_strict_load(progress)["done"]) == 1  # every refusal kept it
    # --force discards it (and says so) and runs the whole grid
    cfg.write_text(json.dumps(RESUMABLE))
    assert cli.main(_grid_argv(cfg, out, "--force")) == 0
    assert calls == COMBOS
    text = capsys.readouterr().out
    assert f"--force: discarded the interrupted grid's progress {progress}: 1 of 4" in text
    assert _strict_load(out / "results.json")["resumed_combinations"] == 0
    assert not progress.exists()


def test_an_interrupted_forced_grid_keeps_the_earlier_run_and_resumes_as_hinted(
    tmp_path, capsys, monkeypatch
):
    """Ctrl-C in a --force grid over a finished run's folder, after combination 1: the progress
    file is no result, so the earlier run's files stay (nothing of theirs was replaced); the hint
    (python -m flagcore here, absolute paths) works as printed, from another folder, and the
    resumed grid replaces the earlier files when it finishes, as --force does."""
    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps(RESUMABLE))
    out = tmp_path / "o"
    progress = out / xgrid.PROGRESS_FILE
    assert cli.main(_grid_argv(cfg, out)) == 0
    (out / "heatmap_old.png").write_text("old")  # a plot of the earlier run
    earlier = (out / "results.json").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [os.path.join("pkg", "flagcore", "__main__.py")])
    calls = _count_runs(monkeypatch, interrupt_at=2)
    capsys.readouterr()
    assert cli.main(_grid_argv("g.json", "o", "--force")) == 130  # relative paths
    cap = capsys.readouterr()
    assert calls == COMBOS[:2] and "removed" not in cap.out, cap.out
    assert sorted(os.listdir(out)) == ["grid_progress.json", "heatmap_old.png", "results.json"]
    assert (out / "results.json").read_text() == earlier
    hint = cap.err.split("continue with: ")[1].split("\n")[0]
    argv = shlex.split(hint)
    assert argv[:3] == [sys.executable, "-m", "flagcore"]
    assert argv[3:] == [*_grid_argv(cfg, out), "--resume"]  # absolute paths
    # the folder holds the earlier results.json too: --resume does not refuse it
    monkeypatch.chdir(out)
    calls = _count_runs(monkeypatch)
    assert cli.main(argv[3:]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert calls == COMBOS[1:]
    assert f"the earlier run's heatmap_old.png, results.json in {out} will be replaced" in text
    assert "--force: removed the earlier run's heatmap_old.png" in text
    assert sorted(os.listdir(out)) == ["results.json"]
    assert _strict_load(out / "results.json")["resumed_combinations"] == 1
    assert not progress.exists()


def test_a_single_run_or_demo_refuses_an_interrupted_grids_folder(tmp_path, capsys, monkeypatch):
    import flagcore.demo as demo
    import flagcore.experiments as experiments

    out = tmp_path / "o"
    out.mkdir()
    g = xgrid.grid_from_dict(RESUMABLE)
    xgrid._write_progress(str(out / xgrid.PROGRESS_FILE), g, [_progress_entry(COMBOS[0])])
    before = (out / xgrid.PROGRESS_FILE).read_text()

    def started(*a, **k):
        raise AssertionError("the run started")

    monkeypatch.setattr(demo, "robustness_part", started)
    monkeypatch.setattr(experiments, "run_robustness", started)
    for argv, where in (
        (["demo"], "flagcore demo"),
        ([*tiny_robustness_argv(), "--no-progress"], "flagcore robustness"),
    ):
        assert cli.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"{where}: error: --out {str(out)!r} holds an interrupted robustness grid's progress "
            "(grid_progress.json); continue that grid with its command plus --resume "
            f"(flagcore robustness --grid CONFIG.json --out {out} --resume), add --force to "
            "discard it, or choose another folder"
        ), err
    (out / "results.json").write_text("{}")  # and an earlier run's results: both are named
    assert cli.main(["demo", "--out", str(out)]) == 2
    assert "(grid_progress.json, and an earlier run's results.json)" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["grid_progress.json", "results.json"]
    assert (out / xgrid.PROGRESS_FILE).read_text() == before
    # a grid run gets the grid's own answer (the combinations done; --resume continues it)
    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps(RESUMABLE))
    assert cli.main(_grid_argv(cfg, out)) == 2
    assert "holds an interrupted grid's progress (grid_progress.json: 1 of 4 combinations " in (
        capsys.readouterr().err
    )
    # --force discards it: the run's outputs replace the interrupted grid
    monkeypatch.setattr(experiments, "run_robustness", run_robustness)
    single = [*tiny_robustness_argv(), "--no-progress", "--no-plots"]
    assert cli.main([*single, "--out", str(out), "--force"]) == 0
    assert "--force: removed the earlier run's grid_progress.json" in capsys.readouterr().out
    assert os.listdir(out) == ["results.json"]
    # --resume where there is no progress: that is the answer, not "add --force"
    assert cli.main(_grid_argv(cfg, out, "--resume")) == 2
    assert "error: --resume: there is no progress file" in capsys.readouterr().err
    assert os.listdir(out) == ["results.json"]


def test_a_progress_file_of_another_flagcore_version_is_refused(tmp_path, capsys, monkeypatch):
    from flagcore import __version__

    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps(RESUMABLE))
    out = tmp_path / "o"
    progress = out / xgrid.PROGRESS_FILE
    xgrid._write_progress(str(progress), xgrid.grid_from_dict(RESUMABLE), [])
    assert _strict_load(progress)["flagcore"] == __version__
    doc = _strict_load(progress)
    progress.write_text(json.dumps(dict(doc, flagcore="0.0.1")))
    calls = _count_runs(monkeypatch)
    assert cli.main(_grid_argv(cfg, out, "--resume")) == 2
    assert capsys.readouterr().err == (
        f"flagcore robustness: error: --resume: {str(progress)!r} was written by flagcore 0.0.1, "
        f"this is flagcore {__version__} (the runs of one grid come from one version): finish "
        "that grid with flagcore 0.0.1; to start the grid over instead, drop --resume and add "
        "--force\n"
    )
    del doc["flagcore"]
    progress.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="by a flagcore of unknown version, this is flagcore"):
        xgrid.load_progress(str(progress), xgrid.grid_from_dict(RESUMABLE), "where")
    assert calls == []


def _progress_entry(combo, rules=("mean", "median"), **cell):
    return {
        "combination": list(combo),
        "cells": [
            dict(
                zip(["byzantine", "heterogeneity", "lr", "attack"], combo),
                rule=r,
                **{k: cell.get(k, 0.5) for k in ("accuracy_mean", "accuracy_std")},
                **{k: cell.get(k, [0.5]) for k in ("accuracy", "final_loss")},
                agg_time_ms_mean=0.1,
            )
            for r in rules
        ],
        "meta": {"dataset": {"name": "blobs"}, "model": {"name": "mlp"}, "seeds": [0]},
        "elapsed_s": 1.5,
    }


def test_progress_file_is_strict_json_and_checked(tmp_path, monkeypatch):
    g = xgrid.grid_from_dict(RESUMABLE)
    path = str(tmp_path / "p.json")
    # NaN/Inf (a diverged run) come back as they were; the file stays strict JSON
    nan = _progress_entry(COMBOS[1], accuracy_mean=math.nan, final_loss=[math.inf])
    xgrid._write_progress(path, g, [nan])
    done = xgrid.load_progress(path, g)
    (cells,) = [e["cells"] for e in done.values()]
    assert math.isnan(cells[0]["accuracy_mean"]) and cells[1]["final_loss"] == [math.inf]
    assert _strict_load(path)["done"][0]["cells"][0]["accuracy_mean"] == "NaN"
    for entries, match in (
        ([_progress_entry((1, "iid", 0.05, "min_max"))], r"done\[0\] is \[1, 'iid', 0.05, "),
        ([_progress_entry(COMBOS[0])] * 2, r"done\[1\] repeats the combination"),
        ([_progress_entry(COMBOS[0], rules=["mean"])], r"done\[0\] must hold one cell per rule"),
        ([dict(_progress_entry(COMBOS[0]), elapsed_s=-1)], r"elapsed_s must be a number"),
    ):
        xgrid._write_progress(path, g, entries)
        with pytest.raises(ValueError, match=r"^where: '.*p.json' is not a grid progress file: "):
            xgrid.load_progress(path, g, "where")
        with pytest.raises(ValueError, match=match):
            xgrid.load_progress(path, g, "where")
    for text, match in (
        ("{", r"is not a grid progress file \(Expecting property name"),
        ('{"schema": "x"}', "schema 'x', expected 'flagcore.robustness_grid_progress/1'"),
        ("[NaN]", r"\(NaN is not strict JSON\)"),
    ):
        (tmp_path / "p.json").write_text(text)
        with pytest.raises(ValueError, match=match):
            xgrid.load_progress(path, g, "where")
    # every combination done (in any order in the file): nothing runs, cells in the grid's order,
    # data and model from the grid's last combination, as an uninterrupted run
    entries = [_progress_entry(c, accuracy_mean=i / 10) for i, c in enumerate(COMBOS)]
    for i, e in enumerate(entries):
        e["meta"]["dataset"] = {"name": f"data {i}"}
    xgrid._write_progress(path, g, entries[::-1])
    monkeypatch.setattr(xgrid, "run_robustness", None)  # calling it would fail
    res = xgrid.run_grid(g, progress=False, progress_file=path, resume=True)
    assert [c["accuracy_mean"] for c in res["cells"]] == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    assert res["dataset"] == {"name": "data 3"} and res["resumed_combinations"] == 4
    assert res["elapsed_s"] >= 4 * 1.5
    assert [w["accuracy"] for w in res["worst_case"]] == [0.0, 0.2, 0.0, 0.2]
    # run_grid: resume needs the file; without resume an existing file is refused, not replaced
    with pytest.raises(ValueError, match="run_grid: resume=True needs the progress_file"):
        xgrid.run_grid(g, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"run_grid: resume: cannot read '.*missing.json'"):
        xgrid.run_grid(g, progress=False, progress_file=str(tmp_path / "missing.json"), resume=True)
    with pytest.raises(ValueError, match=r"run_grid: progress_file '.*p.json' already exists"):
        xgrid.run_grid(g, progress=False, progress_file=path)
    with pytest.raises(TypeError, match="run_grid: resume must be True or False, got 'yes'"):
        xgrid.run_grid(g, progress=False, progress_file=path, resume="yes")
