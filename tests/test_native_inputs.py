"""The native entry points refuse what they cannot compute, with an error naming the function,
the argument and the value, instead of crashing the process, returning garbage or reserving
memory by a cap (the defects an adversarial review of the private `_core` functions found;
the public API validates first, so these are the second line of defence)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flagcore
from flagcore._backend import core


def _gram(p, n=6, seed=0):
    y = np.random.default_rng(seed).standard_normal((p, n))
    return (y @ y.T)[None]


def test_flag_irls_on_an_empty_batch_returns_empty_results():
    # b = 0 divided the thread count by zero (SIGFPE, the process killed)
    for team in (1, 2):
        d = core.flag_irls(np.ones((0, 5, 5)), core.FlagParams(r=1), team)
        assert d["coefficients"].shape == (0, 5)


def test_max_iter_is_bounded_where_the_history_is_sized():
    # the objective history holds max_iter + 1 values: 2**31 - 1 reserved 16 GB up front
    with pytest.raises(
        ValueError, match=r"FlagParams: max_iter must be in \[1, 1000000\], got 1000001"
    ):
        core.FlagParams(r=1, max_iter=1_000_001)
    assert core.FlagParams(r=1, max_iter=1_000_000).max_iter == 1_000_000


def test_team_emulation_refuses_more_threads_than_a_block():
    with pytest.raises(
        ValueError, match=r"flag_irls_team_emulation: threads must be in \[1, 256\], got 257"
    ):
        core.flag_irls(_gram(8), core.FlagParams(r=2), 257)


def test_flag_aggregate_layers_checks_p_before_taking_memory():
    # p = 46341: a 17 GB Gram was allocated (MemoryError under a limit) before p was checked
    x = np.zeros((46341, 1), np.float32)
    with pytest.raises(ValueError, match=r"flag_aggregate_layers: p must be <= 46340"):
        flagcore.flag_aggregate_layers([x])
    with pytest.raises(ValueError, match=r"flag_aggregate: p must be <= 46340"):
        core.flag_aggregate(x[None], core.FlagParams(r=1))


def test_nnm_matrix_refuses_f_that_leaves_no_neighbour():
    # f >= p: nth_element before the first element (undefined behaviour), an all-zero matrix
    for f in (6, 7, 60, -1):
        with pytest.raises(
            ValueError, match=rf"nnm_matrix: f must be in \[0, p - 1 = 5\], got {f}"
        ):
            core.nnm_matrix(_gram(6), f)
    m = core.nnm_matrix(_gram(6), 5)["matrix"][0]
    np.testing.assert_array_equal(m, np.eye(6))  # f = p - 1: every worker its own neighbour


def test_coordinate_network_refuses_counts_outside_the_workers():
    # t = -1 wrote before a heap buffer ("double free or corruption", the process aborted)
    for t, k in ((-1, -1), (-5, 0), (100, 0)):
        with pytest.raises(ValueError, match=r"coordinate_network: t must be in \[0, pe = 8\]"):
            core.coordinate_network(8, core.CoordRule.trimmed_mean, t, k)
    with pytest.raises(ValueError, match=r"coordinate_network: k must be in \[0, pe = 8\], got 9"):
        core.coordinate_network(8, core.CoordRule.meamed, 0, 9)
    assert core.coordinate_network(8, core.CoordRule.trimmed_mean, 4, 0) == []  # nothing is read


@pytest.mark.parametrize("nu", [0.0, -1.0, float("nan")])
def test_geometric_median_refuses_a_smoothing_that_is_not_positive(nu):
    with pytest.raises(ValueError, match=r"geometric_median: nu must be > 0"):
        core.geometric_median(_gram(5), np.array([nu]), 1e-8, 10)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_centered_clipping_refuses_a_radius_that_is_not_positive(tau):
    g = _gram(6)[0]  # the reference is the last row
    with pytest.raises(ValueError, match=r"centered_clipping: tau must be > 0"):
        core.centered_clipping(g[None], tau, 3)


def test_service_samples_refuse_parameters_without_a_unit_mean():
    kinds = {k.name: int(k) for k in core.ServiceKind.__members__.values()}
    # Pareto alpha 0.5 returned negative "unit-mean" samples, gamma shape 0 NaN
    with pytest.raises(ValueError, match=r"sim_sample: Pareto alpha must be > 1, got 0.5"):
        core.sim_sample(kinds["pareto"], 0.5, [], 1, 0, 10)
    with pytest.raises(ValueError, match=r"sim_sample: service parameter must be positive, got 0"):
        core.sim_sample(kinds["gamma"], 0.0, [], 1, 0, 10)
    with pytest.raises(
        ValueError, match=r"sim_sample: empirical service times must be finite and >= 0"
    ):
        core.sim_sample(kinds["empirical"], 0.0, [1.0, -1.0], 1, 0, 10)
    # the draws do not depend on the chunks Ctrl-C is polled between
    a = core.sim_sample(kinds["exponential"], 0.0, [], 7, 3, 200_000)
    np.testing.assert_array_equal(
        a[:1000], core.sim_sample(kinds["exponential"], 0.0, [], 7, 3, 1000)
    )


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_simulator_refuses_empirical_service_times_that_are_not_times(bad):
    cfg = core.SimConfig()
    cfg.requests, cfg.batches = 100, 1
    cfg.service = core.ServiceKind.empirical
    cfg.empirical = [1.0, bad]
    with pytest.raises(
        ValueError, match=r"simulate: empirical service times must be finite and >= 0"
    ):
        core.forkjoin_simulate(cfg)


def test_cuda_plans_refuse_sizes_that_overflow():
    # 2**62 workers gave a negative byte count, and a 1-byte workspace was then accepted
    with pytest.raises(ValueError, match=r"flag_cuda_plan: sizes too large"):
        core.flag_cuda_plan_uniform(2**62, 10, 100, 5)  # b, p, n, max_iter
    with pytest.raises(
        ValueError, match=r"the CUDA path takes p <= \d+, got p = 4611686018427387904"
    ):
        core.flag_cuda_plan_uniform(1, 2**62, 10, 5)
    with pytest.raises(ValueError, match=r"flag_cuda_plan: sizes too large"):
        core.flag_cuda_plan([1, 1], [2**62, 2**62], 5)


def test_thread_count_from_the_environment_is_read_once():
    # set after import, FLAGCORE_NUM_THREADS was re-read (unchecked) by every call: "5000"
    # became 1024 threads, "7xyz" 7
    code = textwrap.dedent("""
        import os
        import numpy as np
        import flagcore
        before = flagcore.get_num_threads()
        for v in ("5000", "7xyz", "1"):
            os.environ["FLAGCORE_NUM_THREADS"] = v
            flagcore.flag_aggregate(np.ones((3, 64), np.float32))
            assert flagcore.get_num_threads() == before, (v, flagcore.get_num_threads(), before)
        print("ok")
    """)
    env = dict(os.environ, FLAGCORE_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
