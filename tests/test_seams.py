"""Errors at the seams: output paths are checked before any work starts, a missing matplotlib
costs the plots but never the JSON (nor the demo's energy part), and unusual arrays and tensors
(an empty batch, big-endian floats, sparse/meta tensors, the lazy negation bit) are either
accepted with the right answer or refused with a message that names the function and the
argument, never a raw torch or pybind11 message."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings

import numpy as np
import pytest

import flagcore
from conftest import tiny_robustness_argv
from flagcore import _paths, cli

# ---------------------------------------------------------------- output paths


class _WorkStarted(Exception):
    pass


def _boom(*args, **kwargs):
    raise _WorkStarted("the command started working before its output path was checked")


@pytest.fixture
def no_work(monkeypatch):
    """Every command's expensive entry point raises _WorkStarted."""
    import flagcore.demo as demo
    import flagcore.experiments as experiments

    monkeypatch.setattr(demo, "robustness_part", _boom)
    monkeypatch.setattr(experiments, "run_robustness", _boom)
    for mod, name in (
        ("flagcore.energy.simulate", "simulate"),
        ("flagcore.energy.approx", "approximate"),
        ("flagcore.energy.design", "sweep"),
        ("flagcore.energy.design", "optimize"),
    ):
        __import__(mod)
        monkeypatch.setattr(sys.modules[mod], name, _boom)


_ENERGY = ["--n", "4", "--k", "2", "--lam", "1"]
COMMANDS = {
    "demo": (["demo"], "--out"),
    "robustness": (["robustness", "--dataset", "blobs", "--steps", "1"], "--out"),
    "energy simulate": (["energy", "simulate", *_ENERGY, "--levels", "1:1:0.5,3:9:0.5"], "--json"),
    "energy approx": (["energy", "approx", *_ENERGY, "--levels", "1:1:0.5,3:9:0.5"], "--json"),
    "energy sweep --json": (
        ["energy", "sweep", *_ENERGY, "--levels", "1:1,3:9", "--no-sim"],
        "--json",
    ),
    "energy sweep --out": (
        ["energy", "sweep", *_ENERGY, "--levels", "1:1,3:9", "--no-sim"],
        "--out",
    ),
    "energy optimize": (
        ["energy", "optimize", *_ENERGY, "--levels", "1:1,3:9", "--target", "2"],
        "--json",
    ),
}


def _bad_paths(tmp_path, option):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    cases = [(str(a_file / "below"), "is a file, not a folder")]  # a file where a folder must be
    if option == "--out":
        cases.append((str(a_file), "is an existing file, not a folder"))
    else:
        cases.append((str(a_dir), "is an existing folder, not a file"))
    return cases


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_output_path_is_refused_before_the_work(name, tmp_path, capsys, no_work):
    argv, option = COMMANDS[name]
    for path, why in _bad_paths(tmp_path, option):
        rc = cli.main([*argv, option, path])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"flagcore {name.split(' --')[0]}: error: {option} {path!r}" in err and why in err, (
            err
        )
    assert sorted(os.listdir(tmp_path)) == ["a_dir", "a_file"]  # nothing created


@pytest.mark.parametrize("name", ["demo", "energy simulate"])
def test_good_output_path_lets_the_work_start(name, tmp_path, no_work):
    argv, option = COMMANDS[name]
    target = tmp_path / "new" / ("out.json" if option == "--json" else "out")
    with pytest.raises(_WorkStarted):
        cli.main([*argv, option, str(target)])


def test_path_checks_directly(tmp_path):
    assert _paths.check_output_dir(tmp_path / "x" / "y", "f") == str(tmp_path / "x" / "y")
    assert _paths.check_output_file(tmp_path / "x" / "r.json", "f") == str(
        tmp_path / "x" / "r.json"
    )
    with pytest.raises(ValueError, match="f: --out must be a folder path, got ''"):
        _paths.check_output_dir("", "f")
    with pytest.raises(ValueError, match="g: --json must be a file path, got None"):
        _paths.check_output_file(None, "g")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_unwritable_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="no permission to create files"):
            _paths.check_output_dir(ro / "out", "flagcore demo")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------- without matplotlib


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + [
        "matplotlib"
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    assert not _paths.have_matplotlib()


def _pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png"))


def test_demo_without_matplotlib_writes_json_and_goes_on_to_energy(
    tmp_path, capsys, monkeypatch, no_matplotlib
):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import flagcore.experiments as experiments

    real = experiments.run_robustness

    def short(cfg, **kw):  # the demo's own configuration, cut to 2 steps to keep the test fast
        return real(dataclasses.replace(cfg, steps=2, seeds=1, eval_every=1), **kw)

    monkeypatch.setattr(experiments, "run_robustness", short)
    rc = cli.main(["demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Part 2: energy/latency trade-off" in cap.out
    assert sorted(os.listdir(tmp_path / "d")) == ["energy_tradeoff.json", "results.json"]
    assert cap.err.count("pip install matplotlib") == 2  # part 1 and part 2 each say so
    rows = json.loads((tmp_path / "d" / "energy_tradeoff.json").read_text())["rows"]
    assert len(rows) == 3


def test_robustness_without_matplotlib_writes_json(tmp_path, capsys, no_matplotlib):
    pytest.importorskip("torch")
    rc = cli.main(
        [
            *tiny_robustness_argv(batch_size=None),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (tmp_path / "results.json").exists() and _pngs(tmp_path) == []
    assert "matplotlib is not installed" in err and "pip install matplotlib" in err


def test_energy_sweep_without_matplotlib_writes_json(tmp_path, capsys, no_matplotlib):
    out = tmp_path / "s"
    rc = cli.main(
        [
            "energy",
            "sweep",
            *_ENERGY,
            "--levels",
            "1:1,3:9",
            "--no-sim",
            "--values",
            "0:1:3",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (out / "sweep.json").exists() and _pngs(out) == []
    assert (
        "flagcore energy sweep: matplotlib is not installed" in err
        and "pip install matplotlib" in err
    )


def test_pyplot_or_none_says_how_to_get_plots(capsys, no_matplotlib):
    assert _paths.pyplot_or_none("somewhere") is None
    assert "somewhere: matplotlib is not installed" in capsys.readouterr().err


# ---------------------------------------------------------------- unusual arrays and tensors

CALLS = {
    "flag_aggregate": lambda x: flagcore.flag_aggregate(x),
    "aggregate": lambda x: flagcore.aggregate(x, "median"),
    "aggregate krum": lambda x: flagcore.aggregate(x, "krum", f=1),
}


def _fn_name(call):
    return call.split()[0]


def _stack(p=6, n=10, seed=0):
    return np.random.default_rng(seed).standard_normal((p, n))


@pytest.mark.parametrize("call", sorted(CALLS))
def test_empty_batch_is_refused_naming_the_argument(call):
    for x in (np.zeros((0, 6, 10), np.float32), np.zeros((0, 6, 10))):
        with pytest.raises(
            ValueError,
            match=rf"^{_fn_name(call)}: gradients must hold at least one problem "
            r"\(b >= 1\), got shape \(0, 6, 10\)$",
        ):
            CALLS[call](x)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("dtype", [">f8", ">f4", ">f2"])
def test_big_endian_is_accepted_with_the_same_result(call, dtype):
    native = _stack().astype(np.dtype(dtype).newbyteorder("="))
    swapped = native.astype(dtype)
    assert not swapped.dtype.isnative and np.array_equal(native, swapped)
    got, want = CALLS[call](swapped), CALLS[call](native)
    assert got.dtype == np.dtype(dtype)  # the caller's dtype back, byte order included
    np.testing.assert_array_equal(got.astype(want.dtype), want)
    got_list = CALLS[call](list(swapped))
    np.testing.assert_array_equal(got_list.astype(want.dtype), want)


def test_flag_aggregate_layers_accepts_big_endian():
    a, b = _stack(5, 7, 1), _stack(5, 3, 2)
    got = flagcore.flag_aggregate_layers([a.astype(">f8"), b.astype(">f8")])
    want = flagcore.flag_aggregate_layers([a, b])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.astype(np.float64), w)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_tensors_are_refused_naming_the_argument(call, layout):
    torch = pytest.importorskip("torch")
    dense = torch.from_numpy(_stack()).float()
    with warnings.catch_warnings():  # torch: "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    fn = _fn_name(call)
    with pytest.raises(
        TypeError,
        match=rf"^{fn}: gradients must be a dense \(strided\) torch tensor, "
        rf"got layout torch.sparse_{layout}; call .to_dense\(\) first$",
    ):
        CALLS[call](sparse)
    if layout == "coo":
        with pytest.raises(TypeError, match=rf"^{fn}: gradients\[0\] must be a dense"):
            CALLS[call]([r.to_sparse() for r in dense])


@pytest.mark.parametrize("call", sorted(CALLS))
def test_meta_tensors_are_refused_naming_the_argument(call):
    torch = pytest.importorskip("torch")
    fn = _fn_name(call)
    with pytest.raises(
        ValueError, match=rf"^{fn}: gradients is on the meta device \(it holds no data\)"
    ):
        CALLS[call](torch.empty(6, 10, device="meta"))
    with pytest.raises(ValueError, match=rf"^{fn}: gradients\[0\] is on the meta device"):
        CALLS[call]([torch.empty(10, device="meta")] * 6)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_negative_bit_tensors_are_accepted_as_their_values(call):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_stack()).float()
    neg = torch._neg_view(x)  # lazy negation: the memory holds x, the values are -x
    assert neg.is_neg()
    want = CALLS[call](-x)
    got = CALLS[call](neg)
    assert torch.equal(got, want) and not got.is_neg()
    assert torch.equal(CALLS[call]([torch._neg_view(r) for r in x]), want)
    assert torch.equal(neg.resolve_neg(), -x)  # the input is unchanged
