"""The command line's outputs: atomic writes (a failed write keeps the previous file and names
the path), no silent replacing or mixing of an earlier run's results (--force), folder-like
--json paths, Ctrl-C, abbreviated options, and a demo that leaves no empty folder behind."""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest

from conftest import tiny_robustness_argv
from flagcore import _paths, cli

_ENERGY = ["--n", "4", "--k", "2", "--lam", "1"]
_APPROX = ["energy", "approx", *_ENERGY, "--levels", "1:1:0.5,3:9:0.5"]
_SWEEP = ["energy", "sweep", *_ENERGY, "--levels", "1:1,3:9", "--no-sim", "--values", "0:1:3"]
_TINY_RUN = [*tiny_robustness_argv(), "--no-progress"]


class _Started(Exception):
    pass


def _started(*args, **kwargs):
    raise _Started("the command started working")


def _full_disk(monkeypatch, after_bytes=10):
    """Writes through _paths.atomic_open fail with ENOSPC once ``after_bytes`` were written."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def write(self, data):
            self.n += len(data)
            if self.n > after_bytes:
                self.fh.write(data[:after_bytes])
                self.fh.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(_paths.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_the_old_file_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "res.json"
    target.write_text('{"old": true}')
    _full_disk(monkeypatch)
    with pytest.raises(_paths.OutputWriteError) as info, _paths.atomic_open(str(target)) as fh:
        fh.write('{"new": "a long enough text to fill the disk"}')
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert target.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["res.json"]  # no temporary file left behind


def test_atomic_write_keeps_the_old_file_on_any_error(tmp_path):
    target = tmp_path / "res.json"
    target.write_text("old")

    def write_half(exc):
        with _paths.atomic_open(str(target)) as fh:
            fh.write("half")
            raise exc()

    for exc in (KeyboardInterrupt, ValueError):
        with pytest.raises(exc):
            write_half(exc)
        assert target.read_text() == "old" and os.listdir(tmp_path) == ["res.json"]


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "res.json"  # the folder is created
    with _paths.atomic_open(str(target)) as fh:
        fh.write("one")
    assert target.read_text() == "one"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    target.chmod(0o640)
    with _paths.atomic_open(str(target)) as fh:
        fh.write("two")
    assert target.read_text() == "two" and target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(target.parent) == ["res.json"]


def test_atomic_savefig_keeps_the_old_png(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    png = tmp_path / "a.png"
    fig = plt.figure()
    _paths.atomic_savefig(fig, str(png), dpi=20)
    good = png.read_bytes()
    assert good[:4] == b"\x89PNG"
    fig.savefig = lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    with pytest.raises(_paths.OutputWriteError, match=r"cannot write .*a\.png'"):
        _paths.atomic_savefig(fig, str(png))
    plt.close(fig)
    assert png.read_bytes() == good and os.listdir(tmp_path) == ["a.png"]


def test_energy_json_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "res.json"
    target.write_text('{"old": 1}')
    _full_disk(monkeypatch)
    rc = cli.main([*_SWEEP, "--json", str(target), "--force"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"flagcore energy sweep: error: cannot write {str(target)!r}: "), err
    assert "No space left on device" in err
    assert json.loads(target.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["res.json"]


def test_results_json_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    from flagcore.experiments import write_outputs

    (tmp_path / "results.json").write_text("{}")
    _full_disk(monkeypatch)
    with pytest.raises(_paths.OutputWriteError, match=r"results\.json"):
        write_outputs({"rules": {}}, str(tmp_path), plots=False)
    assert (tmp_path / "results.json").read_text() == "{}"


# ---------------------------------------------------------------- earlier results and --force


@pytest.mark.parametrize(
    "argv, option",
    [
        (["demo"], "--out"),
        (["robustness", "--dataset", "blobs"], "--out"),
        (["robustness", "--quick"], "--out"),
        (_SWEEP, "--out"),
        (_APPROX, "--json"),
        (_SWEEP, "--json"),
    ],
)
def test_earlier_results_are_refused_without_force(argv, option, tmp_path, capsys, monkeypatch):
    import flagcore.demo as demo
    import flagcore.experiments as experiments
    from flagcore.energy import approx, design
    from flagcore.experiments import grid

    for mod, name in (
        (demo, "robustness_part"),
        (experiments, "run_robustness"),
        (grid, "run_grid"),
        (approx, "approximate"),
        (design, "sweep"),
    ):
        monkeypatch.setattr(mod, name, _started)
    if option == "--out":
        path = tmp_path / "o"
        path.mkdir()
        (path / "results.json").write_text("{}")
    else:
        path = tmp_path / "r.json"
        path.write_text("{}")
    before = sorted(os.listdir(tmp_path))
    rc = cli.main([*argv, option, str(path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"error: {option} {str(path)!r}" in err and "--force" in err, err
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(_Started):
        cli.main([*argv, option, str(path), "--force"])


def test_other_files_in_out_are_no_earlier_results(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "results.json.bak").write_text("mine")
    assert _paths.check_output_dir(str(tmp_path), "f", refuse_existing=True) == str(tmp_path)


def test_an_interrupted_grids_progress_is_refused_and_no_recorded_output(tmp_path, capsys):
    """grid_progress.json is an interrupted grid: refused without --force, by every command
    with an --out (its message says --resume continues the grid); it is written with
    record=False, so a --force run that wrote only it leaves the earlier run's files."""
    (tmp_path / _paths.GRID_PROGRESS_FILE).write_text("{}")
    with pytest.raises(ValueError, match=r"holds an interrupted robustness grid's progress "):
        _paths.check_output_dir(str(tmp_path), "f", refuse_existing=True)
    rc = cli.main([*_SWEEP, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "(grid_progress.json); continue that grid with its command plus" in err
    assert "--resume" in err and "add --force to discard it" in err
    _paths.begin_outputs()
    with _paths.atomic_open(str(tmp_path / "p.json"), record=False) as fh:
        fh.write("x")
    with _paths.atomic_open(str(tmp_path / "r.json")) as fh:
        fh.write("x")
    assert _paths.written_outputs() == {os.path.realpath(tmp_path / "r.json")}
    assert (tmp_path / "p.json").read_text() == "x"


def test_force_leaves_one_run_in_the_folder(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "o"
    out.mkdir()
    # an earlier grid's files and a file that is not flagcore's
    for name in ("results.json", "heatmap_attack_f1_iid.png", "flag_workers_x.png"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    rc = cli.main([*_TINY_RUN, "--no-plots", "--out", str(out), "--force"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert sorted(os.listdir(out)) == ["notes.txt", "results.json"]
    assert "--force: removed the earlier run's flag_workers_x.png, heatmap_attack_f1_iid.png" in (
        cap.out
    )
    assert json.loads((out / "results.json").read_text())["schema"] == "flagcore.robustness/1"


def test_a_failed_forced_run_removes_nothing(tmp_path, monkeypatch, capsys):
    import flagcore.experiments as experiments

    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("old")
    (out / "heatmap_a.png").write_text("old")
    monkeypatch.setattr(experiments, "run_robustness", _raise_interrupt)
    rc = cli.main([*_TINY_RUN, "--out", str(out), "--force"])
    assert rc == 130 and capsys.readouterr().err == "flagcore robustness: interrupted\n"
    assert sorted(os.listdir(out)) == ["heatmap_a.png", "results.json"]
    assert (out / "results.json").read_text() == "old"


def test_a_forced_run_failing_after_its_first_file_leaves_only_its_own(
    tmp_path, monkeypatch, capsys
):
    """Ctrl-C while the plots are written, after this run's results.json: the earlier run's
    plots (which would no longer match that JSON) are removed as after a success."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    import flagcore.experiments.plots as plots

    out = tmp_path / "o"
    out.mkdir()
    for name in ("results.json", "accuracy.png", "heatmap_a.png"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(plots, "write_plots", _raise_interrupt)
    rc = cli.main([*_TINY_RUN, "--out", str(out), "--force"])
    cap = capsys.readouterr()
    assert rc == 130 and cap.err == "flagcore robustness: interrupted\n"
    assert sorted(os.listdir(out)) == ["notes.txt", "results.json"]
    assert json.loads((out / "results.json").read_text())["schema"] == "flagcore.robustness/1"
    assert "--force: removed the earlier run's" in cap.out


# ---------------------------------------------------------------- a --json that names a folder


@pytest.mark.parametrize("argv", [_APPROX, _SWEEP])
def test_json_ending_in_a_separator_is_refused_before_the_work(argv, tmp_path, capsys):
    target = str(tmp_path / "nd") + os.sep
    rc = cli.main([*argv, "--json", target])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: --json {target!r} ends with {os.sep!r}, so it names a folder" in err
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="names a folder, not a file"):
        _paths.check_output_file(target, "f")


# ---------------------------------------------------------------- Ctrl-C


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "argv, module, name",
    [
        (["demo", "--quick"], "flagcore.demo", "robustness_part"),
        (["robustness", "--dataset", "blobs"], "flagcore.experiments", "run_robustness"),
        (["robustness", "--quick"], "flagcore.experiments.grid", "run_grid"),
        (
            ["energy", "simulate", *_ENERGY, "--levels", "1:1:1"],
            "flagcore.energy.simulate",
            "simulate",
        ),
        (_APPROX, "flagcore.energy.approx", "approximate"),
        (_SWEEP, "flagcore.energy.design", "sweep"),
        (
            ["energy", "optimize", *_ENERGY, "--levels", "1:1,3:9", "--target", "2"],
            "flagcore.energy.design",
            "optimize",
        ),
    ],
)
def test_ctrl_c_is_one_line_and_status_130(argv, module, name, tmp_path, capsys, monkeypatch):
    __import__(module)
    monkeypatch.setattr(sys.modules[module], name, _raise_interrupt)
    opt = "--json" if argv[0] == "energy" else "--out"
    target = tmp_path / ("r.json" if opt == "--json" else "o")
    rc = cli.main([*argv, opt, str(target)])
    cap = capsys.readouterr()
    where = " ".join(["flagcore", *(argv[:2] if argv[0] == "energy" else argv[:1])])
    assert rc == 130
    assert cap.err == f"{where}: interrupted\n"
    assert os.listdir(tmp_path) == []  # nothing half-written, no empty folder


# ---------------------------------------------------------------- abbreviations


@pytest.mark.parametrize(
    "argv",
    [
        ["robustness", "--quick", "--no-plot"],
        ["robustness", "--rule", "mean"],
        ["robustness", "--step", "3"],
        ["demo", "--qu"],
        ["demo", "--for"],
        ["energy", "simulate", "--n", "4", "--k", "2", "--lam", "1", "--lev", "1:1:1"],
        ["energy", "simulate", *_ENERGY, "--levels", "1:1:1", "--req", "10"],
        ["energy", "sweep", *_ENERGY, "--levels", "1:1,3:9", "--val", "0:1:3"],
    ],
)
def test_abbreviated_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    # refused as unknown, or (--lev) not taken for --levels, which is then missing
    assert "unrecognized arguments" in err or "arguments are required: --levels" in err, err


def test_every_parser_refuses_abbreviations_and_outputs_have_force():
    parser = cli.build_parser()
    parsers = [parser, *cli._subparsers(parser)]
    assert len(parsers) >= 8
    for p in parsers:
        assert p.allow_abbrev is False, p.prog
        dests = {a.dest for a in p._actions}
        if dests & {"out", "json"}:
            assert "force" in dests, p.prog


# ---------------------------------------------------------------- the demo


def test_demo_checks_its_seed_and_creates_no_folder_before_writing(tmp_path, capsys, monkeypatch):
    import flagcore.demo as demo

    monkeypatch.setattr(demo, "robustness_part", _started)
    out = tmp_path / "d"
    rc = cli.main(["demo", "--seed", str(2**64 - 1), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("flagcore demo: error: --seed must be at most "), err
    assert not out.exists()
    with pytest.raises(_Started):
        cli.main(["demo", "--out", str(out)])
    assert not out.exists()  # the folder is made by the first write, not before the work
