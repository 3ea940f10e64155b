import subprocess
import sys

import numpy as np
import pytest

import flagcore
from flagcore import _core


def test_build_info_keys():
    info = flagcore.build_info()
    for key in (
        "version",
        "cuda_compiled",
        "cuda_architectures",
        "cuda_devices",
        "simd_supported",
        "num_threads",
    ):
        assert key in info
    assert info["version"] == flagcore.__version__
    assert isinstance(info["cuda_compiled"], bool)
    if info["cuda_compiled"]:
        assert info["cuda_architectures"], "a CUDA build must say which architectures it targets"


def test_module_uses_the_shared_libstdcxx():
    """A static copy of libstdc++ inside the module crashed the process at the first formatted
    C++ error message on the GPU machine (its locale state is not the process's); CMakeLists.txt
    keeps the shared one. The exception path itself is checked here too, in a subprocess."""
    kind = flagcore.build_info()["libstdcxx"]
    assert kind in ("shared", "static", "unknown")
    if sys.platform.startswith("linux") and "gcc" in flagcore.build_info()["compiler"]:
        assert kind == "shared"
    code = (
        "from flagcore import _core\n"
        "try:\n"
        "    _core.flag_cuda_plan_uniform(1, 6145, 10, 1)\n"
        "except ValueError as e:\n"
        "    print('ok', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok flag_aggregate: the CUDA path takes p <= 6144, got p = 6145")


def test_cuda_available_is_bool_and_consistent():
    ok = flagcore.cuda_available()
    assert isinstance(ok, bool)
    if not flagcore.build_info()["cuda_compiled"]:
        assert ok is False


def test_cuda_kernel_refuses_cleanly_without_gpu():
    if flagcore.cuda_available():
        pytest.skip("a GPU is present: covered by test_cuda_selftest")
    x = np.ones(4, np.float32)
    with pytest.raises(RuntimeError):
        _core.cuda_selftest_saxpy(2.0, x, x)


@pytest.mark.cuda
def test_cuda_selftest():
    if not flagcore.cuda_available():
        pytest.skip("no CUDA device (or flagcore built without CUDA)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_003).astype(np.float32)
    y = rng.standard_normal(100_003).astype(np.float32)
    out = _core.cuda_selftest_saxpy(2.5, x, y)
    np.testing.assert_allclose(out, 2.5 * x + y, rtol=1e-6, atol=1e-6)


def test_import_without_torch_in_a_subprocess():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import flagcore, numpy as np\n"
        "a = flagcore.flag_aggregate(np.eye(3))\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(a.shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(3,)"


def test_num_threads_roundtrip_and_validation():
    before = flagcore.get_num_threads()
    try:
        flagcore.set_num_threads(1)
        assert flagcore.get_num_threads() == 1
    finally:
        flagcore.set_num_threads(0)
    assert flagcore.get_num_threads() == before
    with pytest.raises(ValueError, match="set_num_threads: n"):
        flagcore.set_num_threads(-1)


def test_cli_info_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "flagcore", "info"], capture_output=True, text=True, check=True
    )
    assert '"cuda_compiled"' in out.stdout


def test_import_does_not_load_torch():
    code = "import sys, flagcore, flagcore.energy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
