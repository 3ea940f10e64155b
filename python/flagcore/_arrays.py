"""Input handling shared by every aggregation entry point.

A stack of p gradients arrives as a numpy array or torch tensor of shape (p, n) or (b, p, n), or
as a list/tuple of p arrays or tensors of one shape. ``as_stack`` validates it (with messages
that name the calling function, the argument and what was received) and turns it into a view
the native code can read without copying where possible; ``Stack.restore`` puts a (b, n)
float result back into the caller's framework, dtype, device and shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import is_torch_tensor

_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"numpy array of shape {x.shape} and dtype {x.dtype}"
    if is_torch_tensor(x):
        return f"torch tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def _torch_dtype_ok(t: Any) -> bool:
    return t.dtype.is_floating_point and not t.dtype.is_complex


@dataclass
class Stack:
    """A validated stack of gradients.

    ``data`` is what the native CPU code reads: a float32/float64 numpy array of shape (b, p, n)
    with a contiguous last axis, or a list of p contiguous one-dimensional arrays (b = 1).
    ``torch_data`` holds the (b, p, n) tensor instead when the input lives on a non-CPU torch
    device (the native CPU code never sees it).
    """

    b: int
    p: int
    n: int
    batched: bool
    framework: str  # "numpy" or "torch"
    dtype: Any  # the caller's dtype (numpy dtype or torch dtype)
    device: Any = None  # torch device, or None for numpy
    from_list: bool = False
    item_shape: tuple[int, ...] = ()  # shape of one gradient for list input
    data: Any = None
    torch_data: Any = None
    fn: str = ""  # the public function that received the stack, for error messages

    @property
    def on_cpu(self) -> bool:
        return self.torch_data is None

    @property
    def data_dtype(self) -> Any:
        """The numpy dtype of ``data``, what the native code reads (float32 for float16 input);
        CPU stacks only."""
        d = self.data
        return (d[0] if isinstance(d, list) else d).dtype

    def restore(self, out: Any) -> Any:
        """(b, n) float result (numpy or torch) -> the caller's type, dtype, device and shape."""
        t: Any
        if self.framework == "torch":
            import torch

            t = (
                out
                if isinstance(out, torch.Tensor)
                else torch.from_numpy(np.ascontiguousarray(out))
            )
            if t.dtype != self.dtype:
                wide = t
                t = t.to(dtype=self.dtype)
                if not bool(torch.isfinite(t).all()):
                    self._check_cast(wide.cpu().numpy(), t.to(torch.float64).cpu().numpy())
            t = t.to(device=self.device)
        else:
            t = np.asarray(out)
            if t.dtype != self.dtype:
                wide = t
                with np.errstate(over="ignore"):  # an overflow is reported below
                    t = t.astype(self.dtype)
                if not np.isfinite(t).all():
                    self._check_cast(wide, t)
        if self.from_list:
            return t.reshape(self.item_shape)
        return t if self.batched else t.reshape(self.n)

    def _check_cast(self, wide: np.ndarray, narrow: np.ndarray) -> None:
        """The aggregate was computed in a wider dtype than the caller's (float16/bfloat16 input,
        or a float64 step): a finite value beyond the caller's dtype's range would come back as
        Inf, so it is refused with the function named."""
        over = (np.isfinite(wide) & ~np.isfinite(narrow)).reshape(-1)
        if over.any():
            flat = int(np.argmax(over))
            big = float(np.asarray(wide).reshape(-1)[flat])
            wider = "float64" if "float32" in str(self.dtype) else "float32 or float64"
            raise ValueError(
                f"{self.fn or 'flagcore'}: the aggregate does not fit in the gradients' dtype "
                f"{self.dtype}: it holds {big:.6g} (coordinate {flat % max(self.n, 1)}), beyond "
                f"that dtype's range; pass the gradients as {wider} or rescale them"
            )


def _numpy_float(a: np.ndarray, fn: str, what: str) -> np.ndarray:
    """float32/float64 as they are; float16 upcast to float32; a non-native byte order
    (big-endian on x86) converted to the native one, values unchanged; anything else is a
    TypeError."""
    if a.dtype.kind == "f" and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype in _NATIVE_DTYPES:
        return a
    if a.dtype == np.float16:
        return a.astype(np.float32)
    raise TypeError(
        f"{fn}: {what} must have a floating dtype (float16, float32 or float64), got {a.dtype}"
    )


def _check_torch_tensor(t: Any, fn: str, what: str) -> Any:
    """Refuse what the kernels cannot read (sparse layouts, meta tensors), with the function and
    argument named; give back a tensor without the lazy negation bit (``torch._neg_view``),
    whose raw memory holds -x: the native code reads raw memory."""
    import torch

    if t.layout != torch.strided:
        raise TypeError(
            f"{fn}: {what} must be a dense (strided) torch tensor, got layout {t.layout}; "
            "call .to_dense() first"
        )
    if t.device.type == "meta":
        raise ValueError(
            f"{fn}: {what} is on the meta device (it holds no data), got {_describe(t)}"
        )
    if t.is_neg():
        t = t.resolve_neg()
    return t


def _torch_to_numpy(t: Any, fn: str, what: str) -> np.ndarray:
    import torch

    if not _torch_dtype_ok(t):
        raise TypeError(f"{fn}: {what} must have a floating dtype, got {t.dtype}")
    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)  # float16 / bfloat16: computed in float32
    return np.asarray(t.numpy())


def plain_ndarray(a: np.ndarray, fn: str, what: str) -> np.ndarray:
    """A numpy array as a base-class ndarray. A masked array is refused (the kernels read the
    data under the mask: its masked values would be used); other subclasses (np.matrix, memmap)
    are viewed as plain arrays, whose values they hold."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{fn}: {what} must not be a numpy masked array (the masked values would be "
            "aggregated); fill it (a.filled(...)) or drop the masked workers first"
        )
    return a if type(a) is np.ndarray else np.asarray(a)


def as_stack(gradients: Any, fn: str, *, arg: str = "gradients") -> Stack:
    st: Stack
    if isinstance(gradients, (list, tuple)):
        st = _list_stack(gradients, fn, arg)
    elif isinstance(gradients, np.ndarray):
        st = _array_stack(plain_ndarray(gradients, fn, arg), fn, arg, "numpy")
    elif is_torch_tensor(gradients):
        st = _array_stack(gradients, fn, arg, "torch")
    else:
        raise TypeError(
            f"{fn}: {arg} must be a numpy array, a torch tensor, or a list/tuple of them, "
            f"got {_describe(gradients)}"
        )
    st.fn = fn
    return st


def _array_stack(x: Any, fn: str, arg: str, framework: str) -> Stack:
    shape = tuple(x.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"{fn}: {arg} must be (p, n) or (b, p, n), got shape {shape}")
    batched = len(shape) == 3
    b, p, n = shape if batched else (1, *shape)
    if p == 0:
        raise ValueError(f"{fn}: {arg} must hold at least one worker (p >= 1), got shape {shape}")
    if b == 0:
        raise ValueError(f"{fn}: {arg} must hold at least one problem (b >= 1), got shape {shape}")
    if framework == "torch":
        x = _check_torch_tensor(x, fn, arg)
        if not _torch_dtype_ok(x):
            raise TypeError(f"{fn}: {arg} must have a floating dtype, got {x.dtype}")
        st = Stack(b, p, n, batched, "torch", x.dtype, device=x.device)
        x3 = x.detach().reshape(b, p, n)
        if x.device.type != "cpu":
            st.torch_data = x3
            return st
        arr = _torch_to_numpy(x3, fn, arg)
    else:
        st = Stack(b, p, n, batched, "numpy", x.dtype)
        arr = _numpy_float(x, fn, arg).reshape(b, p, n)
    if n > 1 and arr.strides[2] != arr.itemsize:
        arr = np.ascontiguousarray(arr)  # the kernels need a contiguous last axis
    st.data = arr
    return st


def _list_stack(items: Sequence[Any], fn: str, arg: str) -> Stack:
    if len(items) == 0:
        raise ValueError(
            f"{fn}: {arg} must hold at least one worker (p >= 1), "
            f"got an empty {type(items).__name__}"
        )
    items = [
        plain_ndarray(g, fn, f"{arg}[{i}]") if isinstance(g, np.ndarray) else g
        for i, g in enumerate(items)
    ]
    first = items[0]
    if isinstance(first, np.ndarray):
        framework = "numpy"
    elif is_torch_tensor(first):
        framework = "torch"
    else:
        raise TypeError(
            f"{fn}: {arg}[0] must be a numpy array or a torch tensor, got {_describe(first)}"
        )
    shape = tuple(first.shape)
    dtype = first.dtype
    device = getattr(first, "device", None)
    for i, g in enumerate(items):
        ok_type = isinstance(g, np.ndarray) if framework == "numpy" else is_torch_tensor(g)
        if not ok_type:
            raise TypeError(
                f"{fn}: {arg}[{i}] must be a {framework} "
                f"{'array' if framework == 'numpy' else 'tensor'} like {arg}[0], got {_describe(g)}"
            )
        if tuple(g.shape) != shape:
            raise ValueError(
                f"{fn}: {arg}[{i}] has shape {tuple(g.shape)}, but {arg}[0] has shape {shape}"
            )
        if g.dtype != dtype:
            raise TypeError(f"{fn}: {arg}[{i}] has dtype {g.dtype}, but {arg}[0] has dtype {dtype}")
        if framework == "torch":
            if g.device != device:
                raise ValueError(f"{fn}: {arg}[{i}] is on {g.device}, but {arg}[0] is on {device}")
            _check_torch_tensor(g, fn, f"{arg}[{i}]")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    p = len(items)
    st = Stack(1, p, n, False, framework, dtype, device=device, from_list=True, item_shape=shape)
    if framework == "torch":
        if not _torch_dtype_ok(first):
            raise TypeError(f"{fn}: {arg} must have a floating dtype, got {dtype}")
        items = [_check_torch_tensor(g, fn, f"{arg}[{i}]") for i, g in enumerate(items)]
        if device is not None and device.type != "cpu":
            import torch

            st.torch_data = torch.stack([g.detach().reshape(n) for g in items]).reshape(1, p, n)
            return st
        rows = [
            np.ascontiguousarray(_torch_to_numpy(g.reshape(n), fn, f"{arg}[{i}]"))
            for i, g in enumerate(items)
        ]
    else:
        rows = [
            np.ascontiguousarray(_numpy_float(g, fn, f"{arg}[{i}]")).reshape(n)
            for i, g in enumerate(items)
        ]
    st.data = rows
    return st


def check_state_keys(fn: str, state: Any, keys: Sequence[str]) -> None:
    """A ``state_dict()`` given back to ``load_state_dict``: a dict with exactly ``keys``
    (TypeError for another type, ValueError for other keys; both name fn)."""
    if not isinstance(state, dict):
        raise TypeError(
            f"{fn}: state must be the dict state_dict() returned (keys {sorted(keys)}), got "
            f"{type(state).__name__}"
        )
    if set(state) != set(keys):
        raise ValueError(
            f"{fn}: state must be the dict state_dict() returned (keys {sorted(keys)}), got "
            f"the keys {', '.join(sorted(map(repr, state)))}"
        )


def check_int(
    value: Any, fn: str, name: str, *, low: int | None = None, high: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        # str() of an int above 4300 digits raises: name such a value by its size
        got = str(v) if v.bit_length() <= 256 else f"an int of {v.bit_length()} bits"
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}], got {got}")
    return v


def check_float(
    value: Any, fn: str, name: str, *, low: float | None = None, strict_low: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{fn}: {name} must be a real number, got {value!r} ({type(value).__name__})"
        )
    try:
        with np.errstate(over="ignore"):  # np.longdouble beyond float64: Inf, refused below
            v = float(value)
    except OverflowError:  # an int beyond float64's range (about 1.8e308)
        raise ValueError(
            f"{fn}: {name} must be finite, got an int of {int(value).bit_length()} bits, "
            "beyond float64's range (about 1.8e308)"
        ) from None
    if not np.isfinite(v):
        raise ValueError(f"{fn}: {name} must be finite, got {v}")
    if low is not None and (v < low or (strict_low and v == low)):
        op = ">" if strict_low else ">="
        raise ValueError(f"{fn}: {name} must be {op} {low}, got {v}")
    return v


def check_choice(value: Any, fn: str, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{fn}: {name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
    return value
