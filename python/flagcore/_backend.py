"""Access to the native module and to the optional torch dependency."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from typing import Any

import scipy_openblas32  # type: ignore[import-untyped]  # noqa: F401  (loads the OpenBLAS _core links)

from . import _core

core = _core

#: Most threads the native CPU kernels take (kMaxThreads in csrc/common/parallel.hpp; the native
#: set_num_threads refuses more).
MAX_THREADS = 1024

#: Environment variables the native core reads at run time: (name, smallest, largest value).
RUNTIME_ENV = (("FLAGCORE_NUM_THREADS", 0, MAX_THREADS), ("FLAGCORE_SPIN_US", 0, 1_000_000))


#: FLAGCORE_AMX: the float32 Gram's AMX tiles, "auto" (default: where they measured faster) or off.
AMX_ENV_VALUES = ("auto", "off", "0")


def check_runtime_env(environ: Any = None) -> None:
    """Refuse a malformed FLAGCORE_NUM_THREADS, FLAGCORE_SPIN_US or FLAGCORE_AMX (ValueError
    naming the variable and its value) instead of letting the native core fall back to its
    default."""
    env = os.environ if environ is None else environ
    amx = env.get("FLAGCORE_AMX")
    if amx is not None and amx not in AMX_ENV_VALUES:
        raise ValueError(
            f"flagcore: environment variable FLAGCORE_AMX must be one of {AMX_ENV_VALUES}, "
            f"got {amx!r}"
        )
    for name, lo, hi in RUNTIME_ENV:
        value = env.get(name)
        if value is None:
            continue
        if not (value.isascii() and value.isdigit() and lo <= int(value) <= hi):
            raise ValueError(
                f"flagcore: environment variable {name} must be an integer in [{lo}, {hi}], "
                f"got {value!r}"
            )


check_runtime_env()
# At exit, native calls running on other threads stop calling back into Python (a progress
# callback) before the interpreter finalizes (csrc/bindings.cpp, at_exit).
atexit.register(core._at_exit)


def torch_module() -> Any | None:
    """The torch module if it is importable, else None (torch is optional)."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def is_torch_tensor(x: Any) -> bool:
    """True for a torch.Tensor; never imports torch (a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def build_info() -> dict[str, Any]:
    """What this build of flagcore contains.

    Keys: ``version``, ``cuda_compiled`` (bool), ``cuda_architectures`` (list of str),
    ``cuda_devices`` (int, 0 without a GPU or driver), ``simd_supported`` (the best CPU
    instruction set the kernels use here), ``simd_level`` (the one in use), ``amx_supported``
    (the CPU has AMX-BF16 tiles; the OS grant is asked at the first Gram that uses them, and the
    FMA kernels run if it is refused), ``amx`` (the float32 Gram is to use them: on by default
    where the CPU has them; ``FLAGCORE_AMX=0`` or ``_core.set_gram_amx("off")`` turns them off,
    e.g. to match replicas on CPUs without them), ``num_threads``, ``compiler``, ``torch`` (version
    string or None).
    """
    info = dict(core.build_info())
    info["cuda_devices"] = core.cuda_device_count()
    info["simd_level"] = core.simd_level()
    info["amx"] = core.gram_amx()
    info["num_threads"] = core.num_threads()
    torch = torch_module()
    info["torch"] = getattr(torch, "__version__", None) if torch is not None else None
    return info


def cuda_available() -> bool:
    """True when flagcore was built with CUDA and a CUDA device is visible. Never raises."""
    try:
        return bool(core.build_info()["cuda_compiled"]) and core.cuda_device_count() > 0
    except Exception:
        return False


def set_num_threads(n: int) -> None:
    """Threads used by the native CPU kernels, an int in [0, MAX_THREADS = 1024] (numpy integers
    too); 0 restores the default: all cores (at most 1024), or FLAGCORE_NUM_THREADS from the
    environment. A bool or a non-integer is a TypeError, a value out of range a ValueError."""
    from ._arrays import check_int  # _arrays imports this module

    n = check_int(n, "set_num_threads", "n")
    if n < 0:
        raise ValueError(f"set_num_threads: n must be an int >= 0, got {n}")
    if n > MAX_THREADS:
        got = str(n) if n.bit_length() <= 256 else f"an int of {n.bit_length()} bits"
        raise ValueError(
            f"set_num_threads: n must be at most {MAX_THREADS} (the native thread pool's bound), "
            f"got {got}"
        )
    core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the native CPU kernels use."""
    return int(core.num_threads())


def cuda_dtype(dtype: Any) -> _core.CudaDtype | None:
    """The CudaDtype of a torch dtype (``torch.float32`` -> ``CudaDtype.float32``), None for a
    dtype the CUDA entry points do not take."""
    name = str(dtype)
    return core.CudaDtype.__members__.get(name[6:]) if name.startswith("torch.") else None


def cuda_array(t: Any) -> _core.CudaArray:
    """A torch CUDA tensor as the native CUDA entry points take it: address, dtype, shape,
    element strides, device. The caller keeps ``t`` alive until the work on the stream is done."""
    dtype = cuda_dtype(t.dtype)
    if dtype is None or t.device.type != "cuda":
        raise TypeError(
            f"cuda_array: t must be a CUDA tensor of one of {list(core.CudaDtype.__members__)}, "
            f"got {t.dtype} on {t.device}"
        )
    return core.CudaArray(
        data=t.data_ptr(),
        dtype=dtype,
        shape=list(t.shape),
        strides=list(t.stride()),
        device=t.device.index,
    )
