"""Shared fixtures and input factories (benchmarks reuse make_gradients)."""

from __future__ import annotations

import os
import sys

import pytest

# The sanitizer job (.ci/sanitize) runs the native core under ASan/UBSan, where torch cannot be
# loaded: FLAGCORE_TEST_NO_TORCH=1 makes `import torch` fail, so every torch test skips visibly.
if os.environ.get("FLAGCORE_TEST_NO_TORCH") == "1":
    sys.modules["torch"] = None  # type: ignore[assignment]

from flagcore._reference import make_gradients  # noqa: F401  (shared with bench/)

try:
    import torch
except ImportError:  # torch is optional
    torch = None


SIMD_ORDER = ("generic", "avx2", "avx512")


def simd_levels() -> list[str]:
    """The SIMD levels this CPU runs, generic first (build_info's simd_supported is the best)."""
    import flagcore

    best = flagcore.build_info()["simd_supported"]
    return list(SIMD_ORDER[: SIMD_ORDER.index(best) + 1])


@pytest.fixture(params=simd_levels())
def simd_level(request):
    """The test once at each SIMD level this CPU runs; automatic detection restored after."""
    from flagcore import _core

    _core.set_simd_level(request.param)
    try:
        yield request.param
    finally:
        _core.set_simd_level("auto")


def require_torch():
    if torch is None:
        pytest.skip("torch is not installed")
    return torch


@pytest.fixture
def world_of_one() -> object:
    """A gloo process group of one rank (this process) for single-process distributed tests."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


@pytest.fixture
def task_identity():
    """(Flower tests) What a running ServerApp has: Message() reads the run and node id of
    its process."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def tiny_robustness_argv(rules: str = "mean", steps: int = 2, batch_size: int | None = 8) -> list:
    """``flagcore robustness`` on the built-in blobs task, 5 workers (1 Byzantine), one seed:
    a run of a second or two for the command-line tests, which append the options they test
    (``batch_size=None`` leaves the command's default)."""
    argv = ["robustness", "--dataset", "blobs", "--workers", "5", "--byzantine", "1"]
    argv += ["--steps", str(steps)]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    return argv + ["--seeds", "1", "--rules", rules]
