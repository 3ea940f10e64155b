"""bench/kernel_ab.py, the A/B harness for compile-time kernel variants: its arguments are
checked before any build, and a whole run (bits, alternating timings, JSON, table) works on
prebuilt variants (--reuse; here two links to the installed package, so no build runs)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

import flagcore

BENCH = Path(__file__).resolve().parents[1] / "bench"
TOOL = BENCH / "kernel_ab.py"


def _tool(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))  # its `from _common import ...`, as when run
    spec = importlib.util.spec_from_file_location("kernel_ab", TOOL)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--variant", "base"], "expected NAME=DEFINES"),
        (["--variant", "a b=-DX"], "expected NAME=DEFINES"),
        (["--variant", "a=", "--variant", "a=-DX"], "names must differ"),
        (["--variant", "a=", "--sizes", "15"], "expected p:n pairs"),
        (["--variant", "a=", "--sizes", "0:10"], "p and n must be >= 1"),
        (["--variant", "a=", "--layouts", "numpy,odd"], "--layouts: numpy and/or line"),
        (["--variant", "a=", "--rounds", "0"], "--rounds: must be >= 1"),
        (["--variant", "a=", "--out", "/nonexistent/dir/x.json"], "does not exist or is not"),
        (["--variant", "a=", "--rev", "no-such-rev-x"], "--rev: git does not know"),
        (["--variant", "a@no-such-rev-x="], "--variant: git does not know"),
        (["--variant", "a@=-DX"], "expected NAME=DEFINES"),
        (["--variant", "a=", "--threads", "1,2"], "one count for --kernel gram"),
        (["--variant", "a=", "--kernel", "rowsum", "--threads", "1,x"], "--threads: expected"),
        (["--variant", "a=", "--kernel", "rowsum", "--threads", "0"], "--threads: counts >= 1"),
        (["--variant", "a=", "--kernel", "nope"], "invalid choice"),
    ],
)
def test_bad_arguments_stop_before_any_build(tmp_path, capsys, monkeypatch, argv, words) -> None:
    with pytest.raises(SystemExit) as e:
        _tool(monkeypatch).main([*argv, "--workdir", str(tmp_path)])
    assert e.value.code == 2
    assert words in capsys.readouterr().err
    assert not any(p.name.startswith(("v_", "b_", "src")) for p in tmp_path.iterdir())


def test_a_run_on_prebuilt_variants(tmp_path, capsys, monkeypatch) -> None:
    pkg = os.path.dirname(flagcore.__file__)
    for name in ("a", "b"):
        (tmp_path / f"v_{name}").mkdir()
        os.symlink(pkg, tmp_path / f"v_{name}" / "flagcore")
    out = tmp_path / "ab.json"
    argv = ["--variant", "a=", "--variant", "b=-DFLAGCORE_FLUSH_STEPS=64", "--reuse"]
    argv += ["--workdir", str(tmp_path), "--sizes", "5:4096,17:1000", "--rounds", "2"]
    argv += ["--repeat", "1", "--threads", "1", "--out", str(out)]
    _tool(monkeypatch).main(argv)
    rec = json.loads(out.read_text())
    # the same package twice: the same bits at every SIMD level, all rounds, both layouts
    assert rec["bits"]["same_as_first"] == {"a": True, "b": True}
    assert set(rec["bits"]["digests"]["a"]) >= {"generic"}
    assert [(r["round"], r["variant"]) for r in rec["rounds"]] == [
        (0, "a"), (0, "b"), (1, "b"), (1, "a"),
    ]  # fmt: skip
    keys = {"5:4096:numpy:auto", "5:4096:line:auto", "17:1000:numpy:auto", "17:1000:line:auto"}
    assert set(rec["best_ms"]["a"]) == keys and set(rec["best_ms"]["b"]) == keys
    for r in rec["rounds"]:
        assert all(0 < t < 1e4 for t in r["times_ms"].values())
    assert rec["best_ms"]["a"]["5:4096:numpy:auto"] == min(
        r["times_ms"]["5:4096:numpy:auto"] for r in rec["rounds"] if r["variant"] == "a"
    )
    assert rec["meta"]["variants"] == {"a": "", "b": "-DFLAGCORE_FLUSH_STEPS=64"}
    text = capsys.readouterr().out
    assert "b: same bits" in text and "b/a" in text


def test_a_rowsum_run_on_prebuilt_variants_of_two_revisions(tmp_path, capsys, monkeypatch) -> None:
    pkg = os.path.dirname(flagcore.__file__)
    for name in ("old", "new"):
        (tmp_path / f"v_{name}").mkdir()
        os.symlink(pkg, tmp_path / f"v_{name}" / "flagcore")
    tool = _tool(monkeypatch)
    # the harness's mechanics with a small bit set (the full one takes ~20 s per variant)
    tool.BITS_ROWSUM = tool.BITS_ROWSUM.replace(
        "list(range(1, 26)) + [31, 33, 64, 100]", "[3, 9]"
    ).replace("70001]", "]")
    out = tmp_path / "ab.json"
    argv = ["--kernel", "rowsum", "--variant", "old@HEAD=", "--variant", "new@WORKTREE=", "--reuse"]
    argv += ["--workdir", str(tmp_path), "--sizes", "9:4096,300:100", "--rounds", "1"]
    argv += ["--repeat", "2", "--threads", "1,2", "--layouts", "numpy", "--out", str(out)]
    tool.main(argv)
    rec = json.loads(out.read_text())
    assert rec["bits"]["same_as_first"] == {"old": True, "new": True}
    assert rec["meta"]["kernel"] == "rowsum"
    assert rec["meta"]["revs"]["old"] != rec["meta"]["revs"]["new"]
    keys = {
        f"{p}:{n}:numpy:auto:{t}t:{what}"
        for p, n in ((9, 4096), (300, 100))
        for t in (1, 2)
        for what in ("wsum", "mean")
    }
    assert set(rec["best_ms"]["old"]) == keys and set(rec["best_ms"]["new"]) == keys
    assert all(0 < t < 1e4 for r in rec["rounds"] for t in r["times_ms"].values())
    assert "new/old" in capsys.readouterr().out
