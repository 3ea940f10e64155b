"""A check before the p-space work: the (p, p) float64 matrices the Gram-based rules and the
Flag Aggregator build grow as p^2 (12.8 GB each at p = 40000), and an allocation Linux grants
lazily then ends in the OOM killer, not a MemoryError. So a call whose estimated peak exceeds
the memory available to this process (MemAvailable, and the cgroup's limit in a container) is
refused with a MemoryError naming the function, p and both amounts, before anything is
allocated. ``FLAGCORE_MEMORY_CHECK=0`` turns the check off (the estimate is a model, see below).

The estimates are peak resident memory over (b p^2 8 bytes), measured (2 threads, p = 3000,
n = 2, one process per case, ru_maxrss before and after the call):
``PYTHONPATH=... python mem.py RULE 3000 "{params}"`` (the script is in the session record of
2026-12-05). Pre-aggregation steps add theirs (an over-estimate by up to ~30 %: steps and rule
share the Gram).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# peak / (p^2 * 8 bytes) of one problem, per rule (0: no p-space matrix: coordinate rules)
RULE_FACTORS = {
    "mean": 0.0,
    "median": 0.0,
    "trimmed_mean": 0.0,
    "meamed": 0.0,
    "phocas": 0.0,
    "krum": 2.2,
    "multi_krum": 2.2,
    "geometric_median": 2.2,
    "centered_clipping": 2.2,
    "bulyan": 3.2,
    "monna": 3.2,
    "cge": 3.0,
    "dnc": 3.2,
    "mda": 5.2,
    "smea": 5.2,
    "fltrust": 6.0,
    "caf": 7.2,
    "clipped_clustering": 7.3,
    "signguard": 10.1,
    "flag": 11.0,
}
# what a pre-aggregation step adds (clipping and arc: measured with the mean)
PRE_FACTORS = {"bucketing": 3.1, "nnm": 5.2, "clipping": 5.1, "arc": 5.1}
# the Flag Aggregator over b problems (a batch or layers): about 3.4 per problem plus the
# eigensolver's work space of the problems solved at once (2 threads: 11.0 for b = 1, 5.3 per
# problem for b = 4 and 3.5 for 8 layers of p = 1500)
FLAG_PER_PROBLEM, FLAG_PER_THREAD, FLAG_FIXED = 3.4, 4.0, 4.0


def available_bytes() -> int | None:
    """Memory this process may still take: /proc/meminfo's MemAvailable, lowered to the
    cgroup v2 limit's headroom (memory.max - memory.current) in a container; None where
    neither can be read (other systems: no check)."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
                used = int(fh.read().strip())
            room = max(int(limit) - used, 0)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_pspace_memory(fn: str, what: str, b: int, p: int, factor: float) -> None:
    """Raise MemoryError (naming fn, what, p and the amounts) when ``factor`` (p, p) float64
    matrices per problem, b problems, exceed the memory available."""
    if factor <= 0 or os.environ.get("FLAGCORE_MEMORY_CHECK", "1") == "0":
        return
    need = factor * b * p * p * 8.0
    if need < 2**30:  # below 1 GiB: not worth reading /proc
        return
    avail = available_bytes()
    if avail is not None and need > avail:
        problems = "" if b == 1 else f" for {b} problems"
        raise MemoryError(
            f"{fn}: {what} at p = {p} needs about {_gib(need)}{problems} (the equivalent of "
            f"{factor:.1f} float64 (p, p) matrices per problem, estimated), more than the "
            f"{_gib(avail)} available; use fewer workers per call, a rule without p x p "
            f"matrices (mean, median, trimmed_mean, meamed, phocas) or a machine with more "
            f"memory (FLAGCORE_MEMORY_CHECK=0 skips this estimate)"
        )


def rule_factor(name: str, pre: Sequence[object]) -> float:
    """The estimate for a rule and its pre-aggregation steps (names, or clipping objects)."""
    total = RULE_FACTORS.get(name, 0.0)
    for s in pre:
        key = s if isinstance(s, str) else getattr(s, "name", "clipping")
        total += PRE_FACTORS.get(str(key), 5.1)
    return total


def flag_factor(b: int, threads: int) -> float:
    """Per problem, for the Flag Aggregator over b problems on ``threads`` threads."""
    return FLAG_PER_PROBLEM + (FLAG_PER_THREAD * min(b, threads) + FLAG_FIXED) / b
