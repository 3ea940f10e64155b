"""The wire format of every flagcore collective: a payload of the size every rank agreed on,
followed by a fixed 32-byte header saying what the sender really had.

gloo aborts the receiving process when a message has another size than the receive buffer
("Received data size doesn't match expected size"): one rank sending a bucket 5 elements too
long used to kill its peers. So a contribution never goes on the wire as it is. Every rank
sends exactly ``expected_numel`` values of ``expected_dtype`` (the bucket's, agreed by DDP; the
parameter server checks its size on every rank at construction) plus a header

    int64[4] = (tag_a, tag_b, numel, dtype code)

(tag: bucket index and call for the hook, step and 0 for the server). A contribution of another
size, dtype or shape (not 1-D), or not a tensor, is replaced by NaN on the sending side and its
header says what it was (``kind_word``: the dtype code, with the number of dimensions and the
first dimension of a tensor that is not 1-D); every receiver checks every header and fills the
row of any mismatch with NaN itself (a sender may lie in its payload, not in what the others
see of it). A NaN row is excluded by
every flagcore rule and counted against f (f_eff = max(f - e, 0)), so the step goes on without
that worker, identically on every rank, and ``CommStats.last_rejected`` says why.

This protects against anything a rank can send through flagcore (attacks, bugs in the model
or the training loop of one rank, wrong dtypes, ranks out of step). A process that bypasses
flagcore and writes other byte counts into the transport itself cannot be defended at this
level: gloo checks sizes in C++ and aborts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEADER_WORDS = 4
HEADER_BYTES = 8 * HEADER_WORDS


def _dtype_table() -> dict[Any, int]:
    import torch

    return {
        torch.float32: 0,
        torch.float64: 1,
        torch.float16: 2,
        torch.bfloat16: 3,
        torch.int64: 4,
        torch.int32: 5,
        torch.uint8: 6,
        torch.int8: 7,
        torch.int16: 8,
        torch.bool: 9,
        torch.complex64: 10,
        torch.complex128: 11,
    }


def dtype_code(dtype: Any) -> int:
    return _dtype_table().get(dtype, 99)


def dtype_name(code: int) -> str:
    for dt, c in _dtype_table().items():
        if c == code:
            return str(dt).replace("torch.", "")
    return f"<unknown dtype code {code}>"


# the header's fourth word: the dtype code (bits 0-7); for a tensor that is not 1-D also
# ndim + 1 (bits 8-15, at most 255) and, for a 2-D tensor, its first dimension (bits 16-62)
_NDIM_SHIFT, _DIM0_SHIFT, _DIM0_MAX = 8, 16, (1 << 47) - 1


def kind_word(dtype: Any, shape: Sequence[int]) -> int:
    """The header word saying a contribution's dtype and, when it is not 1-D, its shape."""
    code = dtype_code(dtype)
    nd = len(shape)
    if nd == 1:
        return code
    word = code | (min(nd + 1, 255) << _NDIM_SHIFT)
    if nd == 2 and 0 < int(shape[0]) <= _DIM0_MAX:
        word |= int(shape[0]) << _DIM0_SHIFT
    return word


def describe_mismatch(who: str, numel_word: int, kind: int, numel: int, dtype: Any) -> str:
    """The rejection message of a header (numel_word, kind) that differs from the expected
    (numel, dtype), e.g. "rank 2 sent a gradient of 5 float64 values, expected 4 float32" or
    "rank 2 sent a gradient of shape (4, 1), expected (4,)" (``who``: "rank 2 sent a gradient")."""
    want = f"{numel} {dtype_name(dtype_code(dtype))}"
    if numel_word < 0:
        return f"{who} of something that is not a tensor, expected {want}"
    code, nd1, d0 = kind & 0xFF, (kind >> _NDIM_SHIFT) & 0xFF, kind >> _DIM0_SHIFT
    if numel_word != numel or code != dtype_code(dtype) or nd1 == 0:
        return f"{who} of {numel_word} {dtype_name(code)} values, expected {want}"
    nd = nd1 - 1
    if nd == 0:
        shape = "()"
    elif nd == 2 and d0 > 0:
        shape = f"({d0}, {numel_word // d0})"
    else:
        shape = f"of {nd if nd < 254 else 'at least 254'} dimensions"
    return f"{who} of shape {shape}, expected ({numel},)"


def payload_bytes(numel: int, dtype: Any) -> int:
    import torch

    return int(numel) * torch.empty((), dtype=dtype).element_size()


def pack(contribution: Any, numel: int, dtype: Any, device: Any, tag: Sequence[int]) -> Any:
    """The (payload + header) uint8 message of this rank: ``contribution`` when it is a 1-D
    tensor of ``numel`` values of ``dtype``, else NaN (its header says what it was: a tensor of
    the right size in another shape is never flattened)."""
    import torch

    nb = payload_bytes(numel, dtype)
    msg = torch.empty(nb + HEADER_BYTES, dtype=torch.uint8, device=device)
    body = msg[:nb].view(dtype)
    if isinstance(contribution, torch.Tensor):
        c_numel = int(contribution.numel())
        c_code = kind_word(contribution.dtype, tuple(contribution.shape))
    else:
        c_numel, c_code = -1, -1
    if c_numel == numel and c_code == dtype_code(dtype):
        body.copy_(contribution.detach())
    else:
        body.fill_(float("nan"))
    head = torch.tensor([int(tag[0]), int(tag[1]), c_numel, c_code], dtype=torch.int64)
    msg[nb:].copy_(head.view(torch.uint8))
    return msg


def unpack(
    rows: Any, numel: int, dtype: Any, tag: Sequence[int], ranks: Sequence[int], what: str
) -> tuple[Any, dict[int, str]]:
    """``rows``: (p, payload + header) uint8, row i from ``ranks[i]``. Returns the (p, numel)
    payload view in ``dtype`` (rows of mismatching headers filled with NaN, in place) and
    {rank: message} for those rows."""
    import torch

    nb = payload_bytes(numel, dtype)
    head_bytes = torch.empty((rows.shape[0], HEADER_BYTES), dtype=torch.uint8).copy_(
        rows[:, nb:]
    )  # aligned
    heads = head_bytes.view(torch.int64).tolist()
    stack = rows[:, :nb].view(dtype)
    code = dtype_code(dtype)
    bad = {}
    for i, (r, h) in enumerate(zip(ranks, heads)):
        if (h[0], h[1]) != (int(tag[0]), int(tag[1])):
            bad[r] = (
                f"rank {r} sent {what} tagged ({h[0]}, {h[1]}), expected ({tag[0]}, {tag[1]}): "
                f"the ranks are out of step"
            )
        elif (h[2], h[3]) != (numel, code):
            bad[r] = describe_mismatch(f"rank {r} sent {what}", h[2], h[3], numel, dtype)
        if r in bad:
            stack[i].fill_(float("nan"))
    return stack, bad
