"""The memory check before p-space work (flagcore._memory): a call whose estimated peak exceeds
the available memory raises MemoryError naming the function, the rule, p and the amounts, before
anything of size p^2 is allocated (Linux grants a large allocation lazily and then the OOM
killer ends the process). The estimate is checked against peaks measured in fresh processes,
and the cgroup headroom against fake v1 and v2 hierarchies."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import flagcore
from flagcore import _memory
from flagcore.rules import RULES


@pytest.fixture
def one_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "available_bytes", lambda: 2**30)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda x: flagcore.aggregate(x, "krum", f=1), "aggregate: rule 'krum' at p = 12000"),
        (
            lambda x: flagcore.aggregate(x, "mean", pre="bucketing"),
            "rule 'mean' with pre=['bucketing'] at p = 12000",
        ),
        (lambda x: flagcore.flag_aggregate(x), "flag_aggregate: the Flag Aggregator at p = 12000"),
        (
            lambda x: flagcore.flag_aggregate_layers([x, x]),
            "flag_aggregate_layers: the Flag Aggregator at p = 12000 on 2 layers needs about",
        ),
        (lambda x: flagcore.aggregate(x[None].repeat(3, 0), "flag"), "on 3 problems"),
        (lambda x: flagcore.rules.nnm(x, 1), "nnm: nnm at p = 12000"),
        (lambda x: flagcore.rules.bucketing(x, 2), "bucketing: bucketing at p = 12000"),
    ],
)
def test_a_call_beyond_the_memory_is_refused_before_allocating(one_gib, call, words) -> None:
    x = np.zeros((12000, 2), np.float32)
    tracemalloc.start()  # numpy's allocations are traced
    try:
        with pytest.raises(MemoryError) as e:
            call(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert words in str(e.value) and "than the 1.0 GiB available" in str(e.value), str(e.value)
    assert peak < 1e8  # nothing of size p^2 (1.15 GB for one float64 matrix) was allocated


def test_preconditions_come_before_the_memory_check(one_gib) -> None:
    with pytest.raises(ValueError, match=r"needs p >= 2f \+ 3, got p = 12000, f = 6000"):
        flagcore.aggregate(np.zeros((12000, 2)), "krum", f=6000)


def test_rules_without_p_space_matrices_are_not_checked(one_gib) -> None:
    x = np.random.default_rng(0).standard_normal((12000, 3)).astype(np.float32)
    np.testing.assert_allclose(flagcore.aggregate(x, "median"), np.median(x, axis=0), rtol=1e-6)
    assert _memory.rule_need("trimmed_mean", (), 4, 12000, 12000, 2) == 0.0
    # CGE needs the norms only (it built a diagonal p x p matrix before)
    x64 = x.astype(np.float64)
    keep = np.argsort(np.einsum("ij,ij->i", x64, x64), kind="stable")[: 12000 - 100]
    np.testing.assert_allclose(
        flagcore.aggregate(x, "cge", f=100), x64[np.sort(keep)].mean(axis=0), rtol=1e-5, atol=1e-6
    )
    assert _memory.rule_need("cge", (), 4, 12000, 12000, 2) == 0.0
    # FLTrust needs the norms and the products with the reference (it built a (p+1)^2 Gram)
    g0 = np.array([1.0, -0.5, 0.25])
    norms = np.linalg.norm(x64, axis=1)
    ts = np.maximum(x64 @ g0 / (norms * np.linalg.norm(g0)), 0.0)
    want = (ts * np.linalg.norm(g0) / norms) @ x64 / ts.sum()
    np.testing.assert_allclose(flagcore.aggregate(x, "fltrust", reference=g0), want, rtol=1e-5)
    assert _memory.rule_need("fltrust", (), 4, 12000, 12000, 2) == 0.0


def test_dnc_counts_its_sampled_columns_not_p_x_p_matrices(one_gib) -> None:
    """Fewer sampled coordinates than workers: DnC works on the cols x cols matrix, so p = 12000
    with 3 coordinates fits 1 GiB; many coordinates count their (p, cols) copies."""
    x = np.random.default_rng(0).standard_normal((12000, 3)).astype(np.float32)
    out = flagcore.aggregate(x, "dnc", f=100)
    assert out.shape == (3,) and np.all(np.isfinite(out))
    assert _memory.rule_need("dnc", (), 1, 12000, 12000, 2, cols=3) < 2**20
    with pytest.raises(MemoryError, match=r"aggregate: rule 'dnc' at p = 12000 needs about"):
        flagcore.aggregate(np.zeros((12000, 6000), np.float32), "dnc", f=100)


def test_every_rule_has_an_estimate() -> None:
    assert set(RULES) == set(_memory.RULE_EXTRA)


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_the_check_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, one_gib, value) -> None:
    with pytest.raises(MemoryError, match=r"^krum: rule 'krum' at p = 20000 needs about"):
        _memory.check_rule_memory("krum", "krum", (), 1, 20000, 20000, 2)
    monkeypatch.setenv("FLAGCORE_MEMORY_CHECK", value)
    _memory.check_rule_memory("krum", "krum", (), 1, 20000, 20000, 2)  # no error


def test_small_containers_are_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "available_bytes", lambda: 512 << 20)
    with pytest.raises(MemoryError, match=r"needs about 1\.1 GiB .* than the 512 MiB available"):
        _memory.check_rule_memory("aggregate", "krum", (), 1, 12000, 12000, 2)


def test_available_bytes_is_at_most_the_machine_memory() -> None:
    avail = _memory.available_bytes()
    if sys.platform != "linux":
        pytest.skip("read from /proc/meminfo on Linux only")
    with open("/proc/meminfo") as fh:
        total = int(fh.read().split("MemTotal:")[1].split()[0]) * 1024
    assert avail is not None and 0 < avail <= total


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_headroom_is_the_least_over_the_ancestors(tmp_path, monkeypatch, version) -> None:
    # a job cgroup (limit 4 GiB, 3 GiB used of which 1 GiB reclaimable cache: 2 GiB of room)
    # inside a parent with 8 GiB of room; the process's own cgroup has no limit
    gib = 2**30
    if version == "v2":
        base, proc = tmp_path / "sys" / "fs" / "cgroup", "0::/slice/job/task\n"
        names = ("memory.max", "memory.current", "inactive_file")
        unlimited = "max"
    else:
        base = tmp_path / "sys" / "fs" / "cgroup" / "memory"
        proc = "5:cpu:/x\n4:memory:/slice/job/task\n"
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        unlimited = str(9223372036854771712)
    for rel, limit, used, cache in [
        ("slice", str(16 * gib), 8 * gib, 0),
        ("slice/job", str(4 * gib), 3 * gib, gib),
        ("slice/job/task", unlimited, gib, 0),
    ]:
        d = base / rel
        d.mkdir(parents=True)
        (d / names[0]).write_text(limit + "\n")
        (d / names[1]).write_text(f"{used}\n")
        (d / "memory.stat").write_text(f"anon 5\n{names[2]} {cache}\n")
    files = {"/proc/self/cgroup": proc}
    real_read = _memory._read

    def fake_read(path: str):
        if path in files:
            return files[path]
        if path.startswith("/sys/fs/cgroup"):
            return real_read(str(tmp_path) + path)
        return real_read(path)

    monkeypatch.setattr(_memory, "_read", fake_read)
    assert _memory._cgroup_headroom() == 2 * gib
    assert _memory.available_bytes() <= 2 * gib


def _peak(code: str) -> float:
    """VmHWM growth (bytes) of a fresh process over the last statement of ``code``; VmHWM, not
    ru_maxrss: a child's ru_maxrss starts at its parent's (pytest's) peak."""
    prog = f"""
import numpy as np, flagcore
from flagcore import _memory
def hwm():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmHWM:")[1].split()[0]) * 1024
{code}
"""
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.parametrize(
    ("setup", "call", "need"),
    [
        ("x = np.ones((4000, 2), np.float32)", 'flagcore.aggregate(x, "krum", f=1)',
         '_memory.rule_need("krum", (), 1, 4000, 4000, 2)'),
        ("x = np.ones((4000, 2), np.float32)", 'flagcore.aggregate(x, "median", pre="bucketing")',
         '_memory.rule_need("median", ("bucketing",), 1, 4000, 2000, 2)'),
        ("x = np.ones((8, 1500, 2), np.float32)", 'flagcore.aggregate(x, "krum", f=1)',
         '_memory.rule_need("krum", (), 8, 1500, 1500, 2)'),
        ("x = np.random.default_rng(0).standard_normal((3000, 4)).astype(np.float32)",
         'flagcore.aggregate(x, "multi_krum", f=300, neighbours="byzfl")',
         '_memory.rule_need("multi_krum", (), 1, 3000, 3000, 2, extra=_memory.KRUM_BYZFL_EXTRA)'),
        ("x = np.random.default_rng(0).standard_normal((2500, 2)).astype(np.float32)",
         "flagcore.flag_aggregate(x)", "_memory.flag_need([2500], 2)"),
        ("xs = [np.random.default_rng(i).standard_normal((1200, 2)) for i in range(6)]",
         "flagcore.flag_aggregate_layers(xs)", "_memory.flag_need([1200] * 6, 2)"),
        ("x = np.random.default_rng(0).standard_normal((3000, 50)).astype(np.float32)",
         'flagcore.aggregate(x, "signguard", f=1)',
         '_memory.rule_need("signguard", (), 1, 3000, 3000, 2)'),
        ("x = np.random.default_rng(0).standard_normal((3000, 50)).astype(np.float32)",
         'flagcore.aggregate(x, "clipped_clustering")',
         '_memory.rule_need("clipped_clustering", (), 1, 3000, 3000, 2)'),
        ("x = np.random.default_rng(0).standard_normal((4000, 1000), dtype=np.float32)",
         'flagcore.aggregate(x, "dnc", f=1)',
         '_memory.rule_need("dnc", (), 1, 4000, 4000, 2, cols=1000)'),
        ("x = np.random.default_rng(0).standard_normal((1000, 20000), dtype=np.float32)",
         'flagcore.aggregate(x, "dnc", f=1)',
         '_memory.rule_need("dnc", (), 1, 1000, 1000, 2, cols=10000)'),
    ],
    ids=["krum", "bucketing", "krum-batch-8", "multi-krum-byzfl", "flag", "flag-6-layers",
         "signguard", "clipped-clustering", "dnc-fewer-coordinates", "dnc-sampled"],
)  # fmt: skip
def test_estimate_is_near_the_measured_peak(setup: str, call: str, need: str) -> None:
    # within -20 % / +40 % of the measured peak on 2 threads
    if sys.platform != "linux":
        pytest.skip("VmHWM is read from /proc/self/status")
    code = f"flagcore.set_num_threads(2)\n{setup}\nbase = hwm()\n{call}\n"
    code += f"print((hwm() - base) / ({need}))"
    ratio = _peak(code)  # measured / estimated
    assert 1 / 1.4 <= ratio <= 1.25, ratio
