"""Errors raised by flagcore.distributed."""

from __future__ import annotations

import numbers
from collections.abc import Sequence


class RankFailureError(RuntimeError):
    """Some ranks did not take part in a collective within the timeout (dead or stalled).

    ``missing_ranks`` lists their global ranks (empty when they could not be determined, for
    example when the c10d store itself became unreachable); ``where`` names the operation
    (e.g. "robust DDP hook, bucket 0, call 12"); ``timeout`` is the limit in seconds.

    It subclasses RuntimeError because DistributedDataParallel re-raises errors from a
    communication hook as RuntimeError with the same message: catch RuntimeError around
    ``loss.backward()`` and read the message, or catch RankFailureError around a
    ``ParameterServer`` call. After this error the process group is unusable: exit (torchrun's
    ``--max-restarts`` restarts the whole group) rather than retry.
    """

    def __init__(
        self,
        message: str,
        *,
        missing_ranks: Sequence[int] = (),
        where: str = "",
        timeout: float | None = None,
    ) -> None:
        super().__init__(message)
        if isinstance(missing_ranks, (str, bytes)) or not all(
            isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in missing_ranks
        ):
            raise TypeError(
                f"RankFailureError: missing_ranks must be a sequence of int ranks, got "
                f"{missing_ranks!r}"
            )
        self.missing_ranks = tuple(int(r) for r in missing_ranks)
        self.where = where
        self.timeout = timeout


class ReplicaDivergenceError(RuntimeError):
    """The ranks' replicas differ and no majority says which is right: with a tie (two ranks
    that disagree, or two groups of equal size) flagcore cannot tell which replica forked (an
    extra or a missed step), so it stops on every rank rather than blame one. ``groups`` maps
    each header tag seen to the ranks that sent it; ``where`` names the operation. Like
    RankFailureError, exit and restart from a checkpoint (the replicas cannot be merged)."""

    def __init__(self, message: str, *, groups: dict[str, list[int]], where: str = "") -> None:
        super().__init__(message)
        self.groups = {str(k): [int(r) for r in v] for k, v in groups.items()}
        self.where = where
