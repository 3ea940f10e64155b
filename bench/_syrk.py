"""Tuned SYRK baselines for the Gram benchmarks: the float32 `ssyrk` of the OpenBLAS that
flagcore links (the scipy-openblas32 wheel, always there) and, when the `mkl` wheel is installed
(`pip install mkl`: 221 MB, not a flagcore dependency), Intel MKL's `ssyrk` (the library torch's
CPU `X @ X.T` runs on). Both run on `threads` threads, the benchmark's setting, and compute the
upper triangle of X X^T for a C-contiguous (p, n) float32 X in one call (float32 sums over all n
columns: a speed reference only, not flagcore's float64 reduction).

    fns = syrk_baselines(threads)   # {"openblas": f, "mkl": f}; f(x) -> (p, p) float32
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

import numpy as np

_ROW_MAJOR, _NO_TRANS, _UPPER = 101, 111, 121
_ARGS = [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
_ARGS += [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]


def _wrap(fn, before=None, after=None):
    fn.argtypes = _ARGS
    fn.restype = None

    def syrk(x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
            raise ValueError(
                f"syrk baseline: x must be a C-contiguous 2-d float32 array, got {x.dtype} "
                f"{x.shape}"
            )
        p, n = x.shape
        c = np.empty((p, p), np.float32)
        if before is not None:
            before()
        try:
            fn(_ROW_MAJOR, _UPPER, _NO_TRANS, p, n, 1.0, x.ctypes.data, n, 0.0, c.ctypes.data, p)
        finally:
            if after is not None:
                after()
        return c

    return syrk


def _openblas(threads: int):
    import scipy_openblas32

    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so"))
    set_threads = lib.scipy_openblas_set_num_threads
    set_threads.argtypes = [ctypes.c_int]
    # flagcore runs this library on one thread (its own threads do the parallel work): give
    # the baseline the benchmark's threads for the call only
    return _wrap(lib.scipy_cblas_ssyrk, lambda: set_threads(threads), lambda: set_threads(1))


def _mkl(threads: int):
    libs = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if not libs:
        return None
    # GNU OpenMP (the libgomp torch and the system ship): the intel-openmp wheel is not needed
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    try:
        ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(libs[0])
    except OSError as e:
        print(
            f"syrk_baselines: MKL found at {libs[0]} but not loadable, skipped: {e}",
            file=sys.stderr,
        )
        return None
    lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
    lib.MKL_Set_Num_Threads(threads)
    return _wrap(lib.cblas_ssyrk)


def syrk_baselines(threads: int) -> dict:
    """{"openblas": f, "mkl": f} with f(x) the upper triangle of x @ x.T (float32); "mkl" only
    when the mkl wheel is installed in this environment."""
    out = {"openblas": _openblas(threads)}
    mkl = _mkl(threads)
    if mkl is not None:
        out["mkl"] = mkl
    return out
