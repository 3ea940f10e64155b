"""``flagcore energy ...`` on bad or ineffective input: one error line naming the command, the
option and the value, exit status 2, no traceback; and the deadline misses in --json."""

from __future__ import annotations

import json

import pytest

from flagcore.cli import main

BASE = ["--n", "4", "--k", "2", "--lam", "1"]
FAST_SIM = ["--requests", "2000", "--no-progress"]


def _err(capsys, argv, *needles):
    """Run, expect status 2 and one error line containing every needle; return that line."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"flagcore energy {argv[1]}: error: "), line
    for s in needles:
        assert s in line, (s, line)
    return line


# 1. an empty field in --levels shifted the others (3::0.5 read as rate 3, power 0.5, prob 1)
@pytest.mark.parametrize("levels", ["3::0.5", "1:1:0.5,3::0.5", ":1", "1:1:", "1:1:0.5,"])
def test_levels_empty_field_refused(capsys, levels):
    line = _err(capsys, ["energy", "approx", *BASE, "--levels", levels], "--levels")
    assert "empty field" in line or "got ''" in line


# 1b. out-of-range level values are said in the option's words (they carried the library's
# "approximate: levels[0].rate ..." prefix)
@pytest.mark.parametrize(
    "levels,needle",
    [
        ("0:1", "the rate must be positive and finite, got '0:1'"),
        ("nan:1", "the rate must be positive and finite"),
        ("1e400:1", "the rate must be positive and finite"),
        ("1:-1", "the power must be >= 0 and finite, got '1:-1'"),
        ("1:inf:1", "the power must be >= 0 and finite"),
        ("1:1:1.5,2:1:-0.5", "the probability must be in [0, 1], got '1:1:1.5'"),
        ("1:1:0.7,2:1:0.7", "the probabilities must sum to 1, got 1.4"),
    ],
)
@pytest.mark.parametrize("cmd", ["approx", "simulate"])
def test_levels_values_refused_in_the_options_words(capsys, levels, needle, cmd):
    extra = FAST_SIM if cmd == "simulate" else []
    line = _err(capsys, ["energy", cmd, *BASE, "--levels", levels, *extra], "--levels")
    assert needle in line and "levels[" not in line, line


# 2. simulation options where nothing is simulated: validated, and refused when given
def test_optimize_approx_refuses_sim_options(capsys):
    argv = ["energy", "optimize", *BASE, "--levels", "1:1,3:9", "--target", "2"]
    _err(capsys, [*argv, "--requests", "-7"], "--requests", "-7")
    _err(capsys, [*argv, "--replications", "0"], "--replications", "0")
    _err(capsys, [*argv, "--service", "pareto:1.1"], "--service", "1.1")
    line = _err(
        capsys, [*argv, "--requests", "7", "--replications", "2"], "--requests", "--replications"
    )
    assert "no effect with --evaluator approx" in line
    _err(capsys, [*argv, "--seed", "3"], "--seed has no effect with --evaluator approx")
    _err(capsys, [*argv, "--redraw-on-arrival"], "--redraw-on-arrival has no effect")
    _err(
        capsys,
        [*argv, "--evaluator", "simulate", "--method", "race", *FAST_SIM],
        "--method has no effect with --evaluator simulate",
    )
    assert main(argv) in (0, 1)  # the defaults are still accepted


def test_sweep_no_sim_refuses_sim_options(capsys):
    argv = ["energy", "sweep", *BASE, "--levels", "1:1,3:9", "--values", "0:1:3", "--no-sim"]
    _err(capsys, [*argv, "--service", "bogus"], "--service", "bogus")
    _err(capsys, [*argv, "--requests", "-1"], "--requests", "-1")
    _err(capsys, [*argv, "--service", "erlang:3"], "--service has no effect with --no-sim")
    _err(capsys, [*argv, "--warmup", "10", "--threads", "1"], "--warmup, --threads have no effect")
    assert main([*argv, "--no-progress"]) == 0


def test_sweep_simulating_uses_sim_options(capsys, tmp_path):
    js = tmp_path / "s.json"
    argv = ["energy", "sweep", *BASE, "--levels", "1:1,3:9", "--values", "0.5", *FAST_SIM]
    assert main([*argv, "--service", "deterministic", "--seed", "5", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["points"][0]["sim_stable"] in (True, False)
    _err(capsys, [*argv, "--threads", "0"], "--threads", "0")


# 3. --methods
@pytest.mark.parametrize(
    "methods, needle",
    [("", "--methods"), ("race,", "--methods"), ("race,bogus", "'bogus'"), ("race,race", "twice")],
)
def test_sweep_methods_refused(capsys, methods, needle):
    argv = ["energy", "sweep", *BASE, "--levels", "1:1,3:9", "--no-sim", "--methods", methods]
    _err(capsys, argv, "--methods", needle)


def test_sweep_bad_metric_fails_before_the_sweep(capsys):
    argv = ["energy", "sweep", *BASE, "--levels", "1:1,3:9", "--no-sim", "--metric", "p200"]
    _err(capsys, argv, "--metric", "p200")


# 4. deadlines: finite and > 0, and in --json
@pytest.mark.parametrize("cmd", ["simulate", "approx"])
@pytest.mark.parametrize("d", ["nan", "-1", "0", "inf"])
def test_deadline_refused(capsys, cmd, d):
    extra = FAST_SIM if cmd == "simulate" else []
    argv = ["energy", cmd, *BASE, "--levels", "1:1:0.5,3:9:0.5", *extra, "--deadline", d]
    _err(capsys, argv, "--deadline", d)


def test_deadline_miss_in_json(tmp_path, capsys):
    js = tmp_path / "sim.json"
    lv = ["--levels", "1:1:0.5,3:9:0.5", "--deadline", "2", "--deadline", "0.5"]
    assert main(["energy", "simulate", *BASE, *lv, *FAST_SIM, "--json", str(js)]) == 0
    d = json.loads(js.read_text())
    assert set(d["deadline_miss"]) == {"2", "0.5"} and set(d["deadline_miss_ci"]) == {"2", "0.5"}
    assert 0 <= d["deadline_miss"]["2"] <= d["deadline_miss"]["0.5"] <= 1
    ja = tmp_path / "approx.json"
    assert main(["energy", "approx", *BASE, *lv, "--json", str(ja)]) == 0
    a = json.loads(ja.read_text())
    for m in ("race", "harmonic", "arithmetic"):
        assert 0 <= a[m]["deadline_miss"]["2"] <= a[m]["deadline_miss"]["0.5"] <= 1
    out = capsys.readouterr().out
    assert "P(T > 2)" in out and "P(T > 0.5)" in out


# 5. --service empirical:FILE
@pytest.mark.parametrize(
    "content, needle",
    [
        (b"a b\n", "'a' is not a number"),
        (b"1,2\n3,4\n", "'1,2' is not a number"),
        (b"1 2\n3\n", "line 2 has 1 number(s)"),
        (b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe", "not a text file"),
        (b"", "holds no samples"),
        (b"# only a comment\n\n", "holds no samples"),
        (b"1\n-2\n", "finite and >= 0"),
        (b"1\nnan\n", "finite and >= 0"),
        (b"0 0\n", "all 0"),
    ],
)
def test_empirical_service_file_refused(tmp_path, capsys, content, needle):
    f = tmp_path / "work.txt"
    f.write_bytes(content)
    argv = ["energy", "simulate", *BASE, "--levels", "1:1:0.5,3:9:0.5", *FAST_SIM]
    line = _err(capsys, [*argv, "--service", f"empirical:{f}"], "--service", str(f), needle)
    assert "numpy" not in line and "loadtxt" not in line


def test_empirical_service_directory_and_missing(tmp_path, capsys):
    argv = ["energy", "simulate", *BASE, "--levels", "1:1:0.5,3:9:0.5", *FAST_SIM]
    _err(capsys, [*argv, "--service", f"empirical:{tmp_path}"], "--service", "is a directory")
    _err(capsys, [*argv, "--service", f"empirical:{tmp_path / 'no'}"], "does not exist")
    _err(capsys, [*argv, "--service", "empirical:"], "--service", "empirical:FILE")


def test_empirical_service_file_accepted(tmp_path):
    f = tmp_path / "work.txt"
    f.write_text("# work samples\n0.5 1.5\n1 1  # two per line\n")
    argv = ["energy", "simulate", *BASE, "--levels", "1:1:0.5,3:9:0.5", *FAST_SIM]
    assert main([*argv, "--service", f"empirical:{f}"]) == 0


# 6. --values
@pytest.mark.parametrize(
    "values, needle",
    [
        ("0:1:-3", "-3"),
        ("a:b:c", "'a:b:c'"),
        ("0:1:2.5", "'2.5'"),
        ("0:1:0", "COUNT"),
        ("0:nan:3", "finite"),
        ("0:1:30000000", "100,000"),
        ("0.1,,0.3", "empty item 2"),
        ("0.1,x", "'x'"),
        ("0.5,1.5", "[0, 1]"),
        (",".join(["0.5"] * 100_001), "100,000"),
    ],
)
def test_values_refused(capsys, values, needle):
    argv = ["energy", "sweep", *BASE, "--levels", "1:1,3:9", "--no-sim", "--values", values]
    _err(capsys, argv, "--values", needle)


def test_values_arrival_rate_positive(capsys):
    argv = ["energy", "sweep", *BASE, "--levels", "1:1:0.5,3:9:0.5", "--no-sim"]
    _err(capsys, [*argv, "--over", "arrival-rate", "--values", "0,1"], "--values", "> 0")


# 7. --n capped at the simulator's 2^20 for every command (approximate takes ~20 s there)
@pytest.mark.parametrize("cmd", ["approx", "simulate", "sweep", "optimize"])
def test_n_capped(capsys, cmd):
    lv = "1:1:0.5,3:9:0.5" if cmd in ("approx", "simulate") else "1:1,3:9"
    extra = {"sweep": ["--no-sim"], "optimize": ["--target", "2"]}.get(cmd, [])
    argv = ["energy", cmd, "--n", "1048577", "--k", "2", "--lam", "1", "--levels", lv, *extra]
    _err(capsys, argv, "--n", "1,048,577", "1,048,576")


# 8. inputs with no effect
@pytest.mark.parametrize("policy", [["--threshold", "2"], ["--deadline-policy", "2"]])
def test_probabilities_with_a_policy_refused(capsys, policy):
    argv = ["energy", "simulate", *BASE, "--levels", "1:1:0.5,2:4:0.5", *policy, *FAST_SIM]
    line = _err(capsys, argv, "--levels", "no effect", policy[0])
    assert "rate:power" in line


def test_probabilities_in_optimize_refused(capsys):
    argv = ["energy", "optimize", *BASE, "--levels", "1:1:0.5,3:9:0.5", "--target", "2"]
    _err(capsys, argv, "--levels", "no effect in optimize")


def test_known_size_needs_deadline_policy(capsys):
    argv = ["energy", "simulate", *BASE, "--levels", "1:1,2:4", *FAST_SIM, "--known-size"]
    _err(capsys, [*argv, "--threshold", "2"], "--known-size has no effect with --threshold")
    _err(capsys, [*argv[:-1], "--levels", "1:1:1", "--known-size"], "--known-size", "without")
    assert main([*argv, "--deadline-policy", "2"]) == 0


# sweep --over p replaced the last level's probability (and with two levels the other's too)
# by p without a word
@pytest.mark.parametrize("levels,which", [("1:1:0.4,3:9:0.6", "1"), ("1:1,3:9:0.6", "2"),
                                          ("1:1:0.5,2:3:0.5,3:9:0.2", "3")])  # fmt: skip
def test_sweep_over_p_refuses_probabilities_it_replaces(capsys, levels, which):
    argv = ["energy", "sweep", *BASE, "--levels", levels, "--no-sim", "--values", "0,0.5"]
    line = _err(capsys, argv, "--levels", f"probability of level {which} has no effect")
    assert "give it as rate:power" in line


def test_sweep_over_p_uses_the_other_levels_shares(capsys, tmp_path):
    # three levels: the first two share 1 - p as their given probabilities say (1:3)
    from flagcore.cli import main

    js = tmp_path / "s.json"
    argv = ["energy", "sweep", *BASE, "--levels", "1:1:0.25,2:3:0.75,3:9", "--no-sim",
            "--values", "0.2", "--json", str(js)]  # fmt: skip
    assert main(argv) == 0
    import json

    probs = json.loads(js.read_text())["points"][0]["probs"]
    assert probs == pytest.approx([0.2, 0.6, 0.2])
