"""One (p, n) stack from Flower ArrayRecords, without intermediate copies.

A Flower ``Array`` holds its values as the bytes of an ``.npy`` file (``np.save``).
``Array.numpy()``
decodes them into a fresh array; here the header is parsed once per array and the payload is
read as a zero-copy ``np.frombuffer`` view, then copied straight into its slot of the stack.
So the only copy of the clients' models the server makes is the stack itself.

Nothing here imports flwr: an Array is used through its four fields (dtype, shape, stype, data).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

_NPY_STYPE = "numpy.ndarray"


@dataclass(frozen=True)
class Layout:
    """Where each named array of the global model lives in a flattened model vector.

    keys, shapes, dtypes, sizes, offsets: per array, in the global record's order.
    n: total number of values. dtype: the stack's dtype: float32 when every floating array is
    float32 or float16, float64 otherwise (float64 arrays keep their precision). Integer
    buffers such as BatchNorm's ``num_batches_tracked`` do not decide it (one int64 counter
    made the whole stack float64, twice the memory): their updates are computed in float64
    from the exact values (``fill_row`` with ``integer_bases``) and stored in the stack's dtype
    (in float32, exact up to 2^24 per update), and their new value is the exact global value
    plus the rounded aggregate of the updates, see ``apply``.
    """

    keys: tuple[Any, ...]
    shapes: tuple[Any, ...]
    dtypes: tuple[Any, ...]
    sizes: tuple[Any, ...]
    offsets: tuple[Any, ...]
    n: int
    dtype: np.dtype

    @classmethod
    def of(cls, global_arrays: Mapping[str, Any], fn: str) -> Layout:
        keys, shapes, dtypes, sizes, offsets = [], [], [], [], []
        off = 0
        for key, arr in global_arrays.items():
            dt = np.dtype(arr.dtype)
            if dt.kind not in "fiu":
                raise TypeError(f"{fn}: global array {key!r} must have a numeric dtype, got {dt}")
            shape = tuple(int(s) for s in arr.shape)
            size = int(np.prod(shape, dtype=np.int64))
            keys.append(key)
            shapes.append(shape)
            dtypes.append(dt)
            sizes.append(size)
            offsets.append(off)
            off += size
        if not keys:
            raise ValueError(f"{fn}: the global ArrayRecord holds no arrays")
        floats = [d for d in dtypes if d.kind == "f"]
        small = bool(floats) and all(d.itemsize <= 4 for d in floats)
        return cls(
            tuple(keys),
            tuple(shapes),
            tuple(dtypes),
            tuple(sizes),
            tuple(offsets),
            off,
            np.dtype(np.float32 if small else np.float64),
        )

    # ------------------------------------------------------------------ slots
    def new_buffer(self, p: int) -> np.ndarray:
        """The one buffer of p flattened models (uninitialised)."""
        return np.empty(p * self.n, dtype=self.dtype)

    def whole(self, buf: np.ndarray, p: int) -> np.ndarray:
        """Whole-model layout: row i is model i, arrays back to back: (p, n)."""
        return buf.reshape(p, self.n)

    def block(self, buf: np.ndarray, p: int, k: int) -> np.ndarray:
        """Per-array layout: array k of every model is one contiguous (p, size_k) block."""
        o, s = self.offsets[k], self.sizes[k]
        return buf[p * o : p * (o + s)].reshape(p, s)

    def flat_global(self, global_arrays: Mapping[str, Any]) -> np.ndarray:
        """The global model as one (n,) vector in the stack's dtype, with 0 for the integer
        arrays (``fill_row`` writes their updates, not their values: see ``integer_bases``)."""
        out = np.empty(self.n, dtype=self.dtype)
        for k, key in enumerate(self.keys):
            o, s = self.offsets[k], self.sizes[k]
            if self.dtypes[k].kind in "iu":
                out[o : o + s] = 0
                continue
            np.copyto(
                out[o : o + s].reshape(self.shapes[k]), global_arrays[key].numpy(), casting="unsafe"
            )
        return out

    def integer_bases(self, global_arrays: Mapping[str, Any]) -> dict[int, np.ndarray]:
        """Per integer array k, its global values in float64: ``fill_row`` subtracts them before
        the cast to the stack's dtype, so an integer update is computed from the exact values
        (a float32 stack rounds values above 2^24)."""
        return {
            k: np.asarray(global_arrays[key].numpy(), dtype=np.float64).reshape(self.shapes[k])
            for k, key in enumerate(self.keys)
            if self.dtypes[k].kind in "iu"
        }

    def apply(
        self, delta: np.ndarray, g: np.ndarray, global_arrays: Mapping[str, Any]
    ) -> list[Any]:
        """Per key, the new global array: ``g + delta`` in the array's dtype; for integer arrays
        the global value itself plus the rounded update, in integer arithmetic, so a buffer the
        clients leave unchanged stays exact at any size (through float64 it was exact only up
        to 2^53). ValueError when an integer array's result leaves its dtype's range or its
        update is not finite (no wrap-around)."""
        out = []
        for k, key in enumerate(self.keys):
            o, s = self.offsets[k], self.sizes[k]
            dt = self.dtypes[k]
            if dt.kind not in "iu":
                v = delta[o : o + s] + g[o : o + s]
                out.append(v.astype(dt).reshape(self.shapes[k]))
                continue
            d = np.rint(delta[o : o + s].astype(np.float64))
            info = np.iinfo(dt)
            base = np.asarray(global_arrays[key].numpy()).reshape(-1)
            res = None
            if np.isfinite(d).all() and (s == 0 or np.abs(d).max() < 2.0**63):
                di = d.astype(np.int64)
                if s == 0:
                    res = base.astype(dt)
                elif dt != np.uint64 and (
                    info.min <= int(base.min()) + int(di.min())
                    and int(base.max()) + int(di.max()) <= info.max
                ):  # no sum can leave the range: int64 arithmetic is exact
                    res = (base.astype(np.int64) + di).astype(dt)
                else:  # exactly, in Python integers, then checked
                    exact = base.astype(object) + di.astype(object)
                    if info.min <= min(exact) and max(exact) <= info.max:
                        res = exact.astype(dt)
            if res is None:
                raise ValueError(
                    f"RobustStrategy.aggregate_train: the aggregate update of integer array "
                    f"{key!r} ({dt}) is not finite or takes it out of {dt}'s range "
                    f"[{info.min}, {info.max}]: the round is skipped"
                )
            out.append(res.reshape(self.shapes[k]))
        return out

    # ------------------------------------------------------------------ reading replies
    def views(self, arrays: Any) -> tuple[list[Any] | None, str]:
        """Zero-copy views of a reply's arrays, checked against this layout.

        Returns (views, "") where views[k] is (payload view, fortran_order), or (None, reason)
        naming the first problem: a missing or extra array, a wrong shape or dtype, a
        payload that is not a well-formed .npy of exactly that shape and dtype."""
        if not isinstance(arrays, Mapping):
            return None, f"arrays are a {type(arrays).__name__}, not an ArrayRecord"
        got = set(arrays.keys())
        missing = [k for k in self.keys if k not in got]
        if missing:
            return None, f"missing array {missing[0]!r}" + (
                f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            )
        extra = sorted(got - set(self.keys))
        if extra:
            return None, f"unexpected array {extra[0]!r}"
        out = []
        for k, key in enumerate(self.keys):
            v, why = _payload(arrays[key], self.shapes[k], self.dtypes[k])
            if v is None:
                return None, f"array {key!r}: {why}"
            out.append(v)
        return out, ""

    def fill_row(
        self,
        buf: np.ndarray,
        p: int,
        i: int,
        views: list[Any],
        per_array: bool,
        bases: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Copy one reply's views into row i of the buffer (casting to the stack's dtype). For
        the arrays k in ``bases`` (``integer_bases``) the row gets value - bases[k], computed
        in float64 before the cast."""
        whole = None if per_array else self.whole(buf, p)
        for k, (view, fortran) in enumerate(views):
            dst = (
                self.block(buf, p, k)[i]
                if per_array
                else cast(np.ndarray, whole)[i, self.offsets[k] : self.offsets[k] + self.sizes[k]]
            )
            src = view.reshape(self.shapes[k], order="F" if fortran else "C")
            if bases is not None and k in bases:
                src = src.astype(np.float64) - bases[k]
            np.copyto(dst.reshape(self.shapes[k]), src, casting="unsafe")

    def subtract_global(self, buf: np.ndarray, p: int, g: np.ndarray, per_array: bool) -> None:
        """In place: every row minus the global model (client model -> update). Finite values
        whose difference overflows give an infinite update, silently: the rule excludes that
        row (a hostile client must not make the server warn, or raise under -W error)."""
        with np.errstate(over="ignore", invalid="ignore"):
            if not per_array:
                w = self.whole(buf, p)
                np.subtract(w, g, out=w)
                return
            for k in range(len(self.keys)):
                b = self.block(buf, p, k)
                np.subtract(b, g[self.offsets[k] : self.offsets[k] + self.sizes[k]], out=b)

    def compact(self, buf: np.ndarray, p: int, keep: np.ndarray) -> int:
        """Per-array layout, in place: keep only the rows where ``keep`` is True (in order), so
        that ``block(buf, q, k)`` holds them; returns q. Block k moves to a lower offset than
        block k + 1 starts at, so moving the blocks in order overwrites only what has moved."""
        idx = np.flatnonzero(keep)
        q = int(idx.size)
        for k in range(len(self.keys)):
            rows = self.block(buf, p, k)[idx]  # a copy: the new block may overlap the old one
            self.block(buf, q, k)[...] = rows
        return q


def all_finite(views: list[Any]) -> bool:
    """Whether every value of a reply's payload views (from ``Layout.views``) is finite: min
    and max propagate NaN and show an infinity, without a temporary the size of the model."""
    for view, _ in views:
        if view.dtype.kind == "f" and view.size:
            with np.errstate(invalid="ignore"):
                if not (np.isfinite(view.min()) and np.isfinite(view.max())):
                    return False
    return True


def _payload(arr: Any, shape: tuple[Any, ...], dtype: np.dtype) -> tuple[Any, Any]:
    """(zero-copy 1-D view, fortran_order) of an Array's .npy payload, or (None, reason)."""
    try:
        stype, adtype, ashape, data = arr.stype, arr.dtype, tuple(arr.shape), arr.data
    except AttributeError:
        return None, f"not a flwr Array ({type(arr).__name__})"
    if stype != _NPY_STYPE:
        return None, f"serialization type {stype!r}, expected {_NPY_STYPE!r}"
    if ashape != shape:
        return None, f"shape {ashape}, expected {shape}"
    try:
        declared = np.dtype(adtype)
    except TypeError:
        return None, f"dtype {adtype!r} is not a numpy dtype"
    if declared.newbyteorder("=") != dtype:
        return None, f"dtype {adtype}, expected {dtype}"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, f"data of type {type(data).__name__}, expected bytes"
    try:
        fh = io.BytesIO(data)
        major, _ = np.lib.format.read_magic(fh)
        if major == 1:
            hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(fh)
        else:
            hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:  # any malformed header: the reply is unusable, not the server
        return None, f"malformed .npy payload ({exc})"
    if tuple(hshape) != shape or hdtype.newbyteorder("=") != dtype or hdtype.hasobject:
        return None, f"payload header says {hdtype}{tuple(hshape)}, expected {dtype}{shape}"
    size = int(np.prod(shape, dtype=np.int64))
    offset = fh.tell()
    if len(data) - offset != size * hdtype.itemsize:
        return None, f"payload holds {len(data) - offset} bytes, expected {size * hdtype.itemsize}"
    return (
        np.frombuffer(data, dtype=hdtype, count=size, offset=offset),
        bool(fortran) and len(shape) > 1,
    ), ""
