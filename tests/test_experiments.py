"""Robustness harness: output schema, attack behaviour, reproducibility, option checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from conftest import tiny_robustness_argv  # noqa: E402
from flagcore import cli  # noqa: E402
from flagcore.experiments import data as xdata  # noqa: E402
from flagcore.experiments import (  # noqa: E402
    parse_rule_spec,
    run_robustness,
    split_rule_list,
    write_outputs,
)
from flagcore.experiments.harness import _Gradients  # noqa: E402

FAST = dict(
    dataset="blobs",
    model="mlp",
    workers=7,
    byzantine=2,
    steps=5,
    batch_size=16,
    seeds=2,
    eval_every=2,
    progress=False,
)


def _strict_load(path):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    with open(path) as fh:
        return json.load(fh, parse_constant=bad)


def test_output_files_and_schema(tmp_path):
    res = run_robustness(rules=["flag", "mean", "median"], attack="random", **FAST)
    written = write_outputs(res, str(tmp_path))
    names = sorted(p.split("/")[-1] for p in written)
    assert names == ["accuracy.png", "agg_time.png", "flag_workers.png", "results.json"]
    for p in written:
        with open(p, "rb") as fh:
            head = fh.read(8)
        assert head.startswith(b"\x89PNG") or p.endswith(".json")
    d = _strict_load(tmp_path / "results.json")
    assert d["schema"] == "flagcore.robustness/1"
    assert d["seeds"] == [0, 1]
    assert d["byzantine_workers"] == [5, 6]
    assert d["config"]["rules"] == ["flag", "mean", "median"]
    assert d["model"]["parameters"] > 0 and d["dataset"]["name"] == "blobs"
    assert set(d["rules"]) == {"flag", "mean", "median"}
    for label, e in d["rules"].items():
        assert e["step"] == [0, 2, 4, 5]
        assert len(e["accuracy"]) == 2 and all(len(a) == 4 for a in e["accuracy"])
        assert len(e["loss"]) == 2 and len(e["train_loss"][0]) == 5
        assert e["final_accuracy"] == [a[-1] for a in e["accuracy"]]
        assert e["final_accuracy_mean"] == pytest.approx(np.mean(e["final_accuracy"]), rel=1e-5)
        assert e["final_accuracy_std"] == pytest.approx(
            np.std(e["final_accuracy"], ddof=1), rel=1e-4, abs=1e-6
        )
        assert len(e["wall_time_s"]) == 2 and all(t > 0 for t in e["wall_time_s"])
        assert e["agg_time_ms_mean"] > 0
        assert ("flag" in e) == (label == "flag")
    fl = d["rules"]["flag"]
    assert fl["params"] == {"r": 4, "lam": 0.0, "max_iter": 1, "scale": "paper"}
    w = np.asarray(fl["flag"]["weights"])
    v = np.asarray(fl["flag"]["ratios"])
    assert w.shape == v.shape == (2, 5, 7)
    assert np.all((v >= -1e-9) & (v <= 1 + 1e-9)) and np.all(w > 0)
    for s in range(2):  # the per-seed summary is the mean of the kept history
        assert fl["flag"]["mean_ratio"][s]["byzantine"] == pytest.approx(
            v[s][:, 5:].mean(), rel=1e-4
        )
        assert fl["flag"]["mean_ratio"][s]["honest"] == pytest.approx(v[s][:, :5].mean(), rel=1e-4)
    short = run_robustness(rules=["flag"], attack="random", flag_history="first_seed", **FAST)
    assert np.asarray(short["rules"]["flag"]["flag"]["ratios"]).shape == (1, 5, 7)
    assert len(short["rules"]["flag"]["flag"]["mean_ratio"]) == 2


def test_mean_fails_fa_and_median_survive_random_attack():
    res = run_robustness(
        rules=["flag", "median", "mean"],
        attack="random",
        dataset="blobs",
        model="mlp",
        workers=15,
        byzantine=3,
        steps=40,
        batch_size=16,
        seeds=1,
        eval_every=40,
        progress=False,
    )
    acc = {k: e["final_accuracy_mean"] for k, e in res["rules"].items()}
    assert acc["mean"] < 0.5, acc  # 4 balanced classes: chance is 0.25
    assert acc["flag"] > 0.85, acc
    assert acc["median"] > 0.85, acc


def test_clean_run_mean_learns():
    res = run_robustness(
        rules=["mean"],
        attack="none",
        dataset="blobs",
        model="linear",
        workers=5,
        byzantine=0,
        steps=30,
        batch_size=16,
        seeds=1,
        eval_every=30,
        progress=False,
    )
    assert res["rules"]["mean"]["final_accuracy_mean"] > 0.85


def _curves(res):
    return {
        k: (e["accuracy"], e["loss"], e["train_loss"], e.get("flag", {}).get("ratios"))
        for k, e in res["rules"].items()
    }


def test_seeds_make_runs_reproducible():
    kw = dict(FAST, rules=["flag", "mean"], attack="random", seeds=1)
    a = run_robustness(seed=3, **kw)
    b = run_robustness(seed=3, **kw)
    c = run_robustness(seed=4, **kw)
    assert _curves(a) == _curves(b)
    assert _curves(a) != _curves(c)


def test_the_run_seed_seeds_the_rules_draws_unless_the_spec_sets_one(monkeypatch):
    # a config's seeds must vary every random choice of a run, the rule's draws included
    # (bucketing drew the same buckets for every seed when the rule kept its default seed 0)
    from flagcore.experiments import harness

    seen = []
    real = harness.make_rule

    def spy(name, **kw):
        rule = real(name, **kw)
        seen.append((name, rule.seed))
        return rule

    monkeypatch.setattr(harness, "make_rule", spy)
    kw = dict(FAST, attack="random", seeds=2)
    run_robustness(rules=["median[pre=bucketing]", "dnc[seed=11]"], seed=3, **kw)
    runs = seen[-4:]  # the 4 training runs (2 rules x 2 seeds), after the checks
    assert sorted(runs) == [("dnc", 11), ("dnc", 11), ("median", 3), ("median", 4)]


def test_data_attack_is_reproducible_and_recorded():
    kw = dict(FAST, rules=["median"], attack="distorted", byzantine=3, seeds=1)
    a = run_robustness(**kw)
    b = run_robustness(**kw)
    assert _curves(a) == _curves(b)
    assert a["distortions"] == {"4": "warp", "5": "noise", "6": "shuffle_labels"}


def test_nan_attack_keeps_json_strict(tmp_path):
    res = run_robustness(rules=["flag", "mean"], attack="nan", **FAST)
    write_outputs(res, str(tmp_path), plots=False)
    d = _strict_load(tmp_path / "results.json")
    # every rule excludes workers that send NaN/Inf (the rules' documented policy), so training
    # goes on with finite losses for the mean as well as for FA
    for rule in ("mean", "flag"):
        assert all(x is not None and math.isfinite(x) for x in d["rules"][rule]["final_loss"])


def test_vmapped_gradients_match_per_worker_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 3),
    ).double()
    x = torch.randn(5, 6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (5, 6))
    stack, losses = _Gradients(net)(x, y)
    assert stack.shape == (5, sum(p.numel() for p in net.parameters()))
    looped = _Gradients(net)
    looped._use_vmap = False  # the fallback for modules vmap cannot handle
    stack2, losses2 = looped(x, y)
    torch.testing.assert_close(stack2, stack, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses2, losses, rtol=1e-12, atol=0)
    for w in range(5):
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[w]), y[w])
        loss.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(stack[w], ref, rtol=1e-10, atol=1e-12)
        assert float(losses[w]) == pytest.approx(float(loss.detach()), rel=1e-12)


def test_distortions():
    task = xdata.make_blobs(seed=0, n_samples=200)
    x, y = task.x_train[:50], task.y_train[:50]
    xf, yf = xdata.distort(x, y, "label_flip", 4)
    assert torch.equal(xf, x) and torch.equal(yf, 3 - y)
    _xs, ys = xdata.distort(x, y, "shuffle_labels", 4, seed=1)
    assert torch.equal(torch.sort(ys).values, torch.sort(y).values) and not torch.equal(ys, y)
    xn, _ = xdata.distort(x, y, "noise", 4)
    assert float((xn - x).std()) == pytest.approx(2 * float(x.std()), rel=0.15)
    xw, _ = xdata.distort(x, y, "warp", 4)
    assert torch.allclose(xw.norm(dim=1), x.norm(dim=1), rtol=1e-4)  # a rotation of feature space
    img = torch.rand(4, 1, 8, 8)
    iw, _ = xdata.distort(img, torch.zeros(4, dtype=torch.int64), "warp", 10)
    assert iw.shape == img.shape and not torch.allclose(iw, img)
    xs_, ys_ = xdata.shard(task, 4, seed=0, distorted=[(3, "label_flip")])
    assert xs_.shape == (4, 40, 20) and ys_.shape == (4, 40)
    clean, _ = xdata.shard(task, 4, seed=0)
    assert torch.equal(xs_, clean)  # label flipping leaves inputs alone


def test_custom_dataset_and_model():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(120, 6, generator=g), torch.randn(40, 6, generator=g)
    ytr, yte = (xtr[:, 0] > 0).long(), (xte[:, 0] > 0).long()
    task = xdata.from_torch_dataset(
        torch.utils.data.TensorDataset(xtr, ytr),
        torch.utils.data.TensorDataset(xte, yte),
        n_classes=2,
    )
    res = run_robustness(
        rules=["median"],
        attack="sign_flip",
        workers=4,
        byzantine=1,
        steps=3,
        batch_size=8,
        seeds=1,
        task=task,
        model=lambda shape, c: torch.nn.Linear(shape[0], c),
        progress=False,
    )
    assert res["dataset"]["name"] == "custom" and res["model"]["parameters"] == 14
    with pytest.raises(ValueError, match="labels must be in"):
        xdata.from_torch_dataset(
            torch.utils.data.TensorDataset(xtr, ytr + 5),
            torch.utils.data.TensorDataset(xte, yte),
            2,
        )


def test_rule_specs():
    assert split_rule_list("flag[max_iter=5,scale=median_norm], mean ,median") == [
        "flag[max_iter=5,scale=median_norm]",
        "mean",
        "median",
    ]
    s = parse_rule_spec("flag[max_iter=5,scale=median_norm,lam=0.5]")
    assert s.name == "flag" and s.params == {"max_iter": 5, "scale": "median_norm", "lam": 0.5}
    assert s.label == "flag[max_iter=5,scale=median_norm,lam=0.5]"
    res = run_robustness(
        rules=["flag", "flag[max_iter=20,scale=median_norm]"], attack="random", **FAST
    )
    assert res["rules"]["flag[max_iter=20,scale=median_norm]"]["params"]["max_iter"] == 20
    assert res["rules"]["flag"]["params"]["max_iter"] == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(workers=0), "workers must be in"),
        (dict(byzantine=7), r"byzantine must be in \[0, 6\], got 7"),
        (dict(rules=["nosuchrule"]), "unknown rule 'nosuchrule'"),
        (dict(rules=["flag[max_iter]"]), "expected key=value"),
        (dict(rules=["flag", "flag"]), "rules must be distinct"),
        (dict(rules=[]), "rules must be a non-empty list"),
        (dict(rules=["flag[r=99]"]), "rule 'flag\\[r=99\\]' cannot run"),
        (dict(attack="teleport"), "attack must be one of"),
        (dict(dataset="cifar"), "dataset must be one of"),
        (dict(model="resnet"), "model must be one of"),
        (dict(r=8), r"r must be in \[1, 7\], got 8"),
        (dict(scale="huge"), "scale must be one of"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(steps=0), "steps must be in"),
        (dict(flag_history="some"), "flag_history must be one of"),
        (dict(device="tpu"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
        (dict(batch_size=1000), "batch_size must be at most the shard size"),
        # bounds checked before training (the run is never started: a crash after minutes)
        (dict(lr=1e39), r"lr must be at most 3.40282\d*e\+38 .*got 1e\+39"),
        (dict(weight_decay=1e40), r"weight_decay must be at most 3.40282\d*e\+38"),
        (dict(momentum=1e40), r"momentum must be in \[0, 1\), got 1e\+40"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1"),
        (dict(seed=18446688733643, seeds=2), r"seed must be at most 9223344366820, got "),
        (dict(seed=2**64 - 1), "seed must be at most"),
        (dict(model="cnn"), "model 'cnn' needs images"),  # FAST's dataset is blobs
        (dict(attack="label_flip", attack_params={"foo": 1}), "'label_flip' takes no param"),
        (dict(attack="none", attack_params={"scale": 2}), "'none' takes no parameters"),
    ],
)
def test_bad_options_raise_clear_errors(kw, match):
    opts = dict(FAST, rules=["flag", "mean"], attack="random")
    opts.update(kw)
    with pytest.raises(ValueError, match=match):
        run_robustness(**opts)


def test_largest_seed_and_float32_lr_still_run():
    from flagcore.experiments.harness import FLOAT32_MAX, SEED_MAX

    opts = dict(FAST, rules=["mean"], attack="none", steps=1, seeds=2)
    res = run_robustness(**dict(opts, seed=SEED_MAX - 1, lr=FLOAT32_MAX, weight_decay=FLOAT32_MAX))
    assert res["seeds"] == [SEED_MAX - 1, SEED_MAX]


def test_bad_option_types_and_unknown_override():
    with pytest.raises(TypeError, match="steps must be an int"):
        run_robustness(**dict(FAST, steps=2.5))
    with pytest.raises(TypeError, match="unknown option 'stepz'"):
        run_robustness(stepz=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        run_robustness(**dict(FAST, device="cuda"))


def test_cli_robustness(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells to the terminal width
    out = tmp_path / "o"
    rc = cli.main(
        [
            *tiny_robustness_argv("flag[max_iter=3],mean", steps=3),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "flag[max_iter=3]" in text and str(out) in text
    d = _strict_load(out / "results.json")
    assert list(d["rules"]) == ["flag[max_iter=3]", "mean"]
    assert (out / "accuracy.png").exists() and (out / "flag_workers.png").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--workers", "3", "--byzantine", "3"], "byzantine must be in"),
        (["--attack", "teleport"], "attack must be one of"),
        (["--rules", "flag,krum_typo"], "unknown rule 'krum_typo'"),
        (["--attack-param", "scale"], "--attack-param must be KEY=VALUE"),
        # messages name the option (not the config field) and the command once
        (["--weight-decay", "-1"], "error: --weight-decay must be >= 0.0, got -1.0"),
        (["--eval-every", "0"], "error: --eval-every must be in [1, inf], got 0"),
        (["--lr", "1e39"], "error: --lr must be at most 3.40282"),
        (["--momentum", "1e40"], "error: --momentum must be in [0, 1), got 1e+40"),
        (["--seeds", "2", "--seed", "18446688733643"], "error: --seed must be at most "),
        (["--model", "cnn"], "error: --model 'cnn' needs images (--dataset digits), got --dataset"),
        (
            ["--attack", "label_flip", "--attack-param", "foo=1"],
            "error: attack 'label_flip' takes no parameters, got --attack-param foo=1",
        ),
        (["--heterogeneity", "x"], "error: --heterogeneity must be 'iid'"),
        (["--threads", "-1"], "error: --threads must be >= 0, got -1"),
    ],
)
def test_cli_bad_options(argv, match, capsys, tmp_path, monkeypatch):
    from flagcore.experiments import harness

    ran = []
    monkeypatch.setattr(harness, "_run_all", lambda *a, **k: ran.append(1))
    rc = cli.main(
        ["robustness", "--dataset", "blobs", "--steps", "1", "--out", str(tmp_path), *argv]
    )
    err = capsys.readouterr().err
    assert rc == 2 and ran == [], err
    assert match.replace("\\", "") in err
    assert err.startswith("flagcore robustness: error: ") and "robustness: robustness" not in err
    assert "error: robustness:" not in err and "Traceback" not in err


def test_demo_quick(tmp_path, capsys):
    rc = cli.main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Wrote to " + str(tmp_path) in text
    # a second run into the same folder is refused (before any work) unless --force
    before = {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    rc = cli.main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds the results of an earlier run" in err and "--force" in err
    assert {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()} == before
    d = _strict_load(tmp_path / "results.json")
    assert set(d["rules"]) == {"flag", "median", "mean"} and d["dataset"]["name"] == "digits"
    assert (tmp_path / "flag_workers.png").exists()
    # part 2: the energy/latency trade-off, approximation beside simulation
    e = _strict_load(tmp_path / "energy_tradeoff.json")
    assert e["columns"][0] == "p_high" and len(e["rows"]) == 3
    for _q, _et_a, et_s, p99, en_a, en_s in e["rows"]:
        assert en_s == pytest.approx(en_a, rel=0.05)  # race energy is within ~1 % of simulation
        assert et_s <= p99
    assert (tmp_path / "energy_tradeoff.png").exists()


def test_results_json_turns_nonfinite_into_null():
    from flagcore.experiments import _clean

    assert _clean({"a": [float("nan"), 1.23456789, float("inf")], "b": (2.0,)}) == {
        "a": [None, 1.23457, None],
        "b": [2.0],
    }
