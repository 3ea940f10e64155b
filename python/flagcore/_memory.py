"""A check before the p-space work: the (p, p) float64 matrices the Gram-based rules and the
Flag Aggregator build grow as p^2 (12.8 GB each at p = 40000), and an allocation Linux grants
lazily then ends in the OOM killer, not a MemoryError. So a call whose estimated peak exceeds
the memory available to this process (MemAvailable, and the cgroup's limit in a container) is
refused with a MemoryError naming the function, p and both amounts, before anything is
allocated. ``FLAGCORE_MEMORY_CHECK=0`` (or false/no/off) turns the check off: the estimate is a
model (below); of the work the data's size n adds it counts DnC's sampled columns alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# The model, in float64 (p, p) matrices (p^2 * 8 bytes), fitted to peaks measured (2 threads,
# n = 2, fresh processes, VmHWM; p = 1500-6000, b = 1 and 8, layers of p = 4096): the Gram of
# every problem (1 each), each pre-aggregation step's matrices (per problem), and the rule's
# other temporaries once per call (it runs the problems one after the other) on the rows it
# sees (after bucketing).
# RULE_EXTRA: the rule's temporaries besides the Gram (0: no p-space work at all)
RULE_EXTRA = {
    "mean": 0.0,
    "median": 0.0,
    "trimmed_mean": 0.0,
    "meamed": 0.0,
    "phocas": 0.0,
    "krum": 0.05,  # per-row distance buffers (1.2 with its p x p distance matrix); byzfl: below
    "multi_krum": 0.05,
    "geometric_median": 1.2,
    "centered_clipping": 1.2,
    "bulyan": 2.2,
    "monna": 2.2,
    "cge": 0.0,  # the squared norms alone: O(p)
    "dnc": 2.2,  # at cols >= p without cols; with them: dnc_need
    "mda": 4.2,
    "smea": 4.2,
    "fltrust": 0.0,  # norms and products with the reference: O(p) (5.0 with its (p+1)^2 Gram)
    "caf": 6.2,
    "clipped_clustering": 2.2,  # cosine distances, clustered in place (3.3 with a copy; 6.3 numpy)
    "signguard": 1.0,  # feature distances, a temporary (clustered in place; no Gram; was 2.1, 9.1)
    "flag": 0.0,  # flag_factor
}
# Krum and Multi-Krum with neighbours="byzfl" (numpy, per_problem): the scaled copy of the Gram
# and blocks of p / 64 distance rows (measured 2.0 with the Gram at p = 2000; was 3.8 with the
# whole distance matrix and its sorted copy)
KRUM_BYZFL_EXTRA = 1.1
# the rules without p x p matrices (no Gram): the coordinate-wise ones, cge and fltrust
NO_P_SPACE = frozenset(k for k, v in RULE_EXTRA.items() if v == 0.0 and k != "flag")
# what a pre-aggregation step adds per problem besides the Gram (clipping and arc: measured
# with the mean)
PRE_EXTRA = {"bucketing": 2.1, "nnm": 4.2, "clipping": 4.1, "arc": 4.1}
# the Flag Aggregator: 1 per problem (its Gram) + 9 per problem solved at once (the
# eigensolver's work space; up to the thread count) + 1 (b = 1: 11, as measured)
FLAG_PER_SOLVE, FLAG_FIXED = 9.0, 1.0
FLAG_MAX_P = 46340  # p * p must fit an int (csrc/flag/flag_cpu.cpp)
# below this the check is skipped (it reads /proc): far less than any machine's headroom
MIN_CHECKED = 64 << 20


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_room(d: str, limit_f: str, usage_f: str, inactive_key: str) -> int | None:
    """limit - (usage - inactive file cache) of one cgroup directory, None if unlimited or
    unreadable (page cache the kernel can reclaim does not count as used)."""
    limit, usage = _read(os.path.join(d, limit_f)), _read(os.path.join(d, usage_f))
    if limit is None or usage is None or limit.strip() == "max":
        return None
    try:
        lim, used = int(limit), int(usage)
    except ValueError:
        return None
    if lim >= 1 << 60:  # cgroup v1's "unlimited" (a page-rounded 2^63 - 1)
        return None
    inactive = 0
    for line in (_read(os.path.join(d, "memory.stat")) or "").splitlines():
        key, _, value = line.partition(" ")
        if key == inactive_key and value.strip().isdigit():
            inactive = int(value)
    return max(lim - max(used - inactive, 0), 0)


def _cgroup_headroom() -> int | None:
    """The least headroom over this process's memory cgroup and its ancestors, cgroup v2 and
    v1 (/proc/self/cgroup names them; a namespaced container sees its own as the root)."""
    text = _read("/proc/self/cgroup")
    if text is None:
        return None
    best = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hid == "0" and ctrls == "":
            base, files = "/sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in ctrls.split(","):
            base = "/sys/fs/cgroup/memory"
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [q for q in path.split("/") if q and q != ".."]
        for k in range(len(parts), -1, -1):
            room = _cgroup_room(os.path.join(base, *parts[:k]), *files)
            if room is not None:
                best = room if best is None else min(best, room)
    return best


def available_bytes() -> int | None:
    """Memory this process may still take: /proc/meminfo's MemAvailable, lowered to the
    headroom of its memory cgroup and their ancestors (v2 or v1; a container's or a batch
    job's limit); None where neither can be read (other systems: no check)."""
    avail = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                avail = int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                avail = None
            break
    room = _cgroup_headroom()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def _enabled() -> bool:
    v = os.environ.get("FLAGCORE_MEMORY_CHECK", "1").strip().lower()
    return v not in ("0", "false", "no", "off")


def check_memory(fn: str, what: str, need_bytes: float, advice: str) -> None:
    """Raise MemoryError (naming fn, what and the amounts) when need_bytes exceed the memory
    available to this process."""
    if need_bytes < MIN_CHECKED or not _enabled():
        return
    avail = available_bytes()
    if avail is not None and need_bytes > avail:
        raise MemoryError(
            f"{fn}: {what} needs about {_gib(need_bytes)} (estimated), more than the "
            f"{_gib(avail)} available; {advice} (FLAGCORE_MEMORY_CHECK=0 skips this estimate)"
        )


def _mat(p: int) -> float:
    return float(p) * float(p) * 8.0


def flag_need(sizes: Sequence[int], threads: int) -> float:
    """Bytes for the Flag Aggregator over problems of sizes p_l (a batch: b equal ones); 0
    above FLAG_MAX_P, which the native code refuses itself (naming p) before allocating."""
    pm = max(sizes)
    if pm > FLAG_MAX_P:
        return 0.0
    solves = min(len(sizes), max(threads, 1))
    return sum(_mat(p) for p in sizes) + (FLAG_PER_SOLVE * solves + FLAG_FIXED) * _mat(pm)


def dnc_need(b: int, p: int, cols: int) -> float:
    """Bytes for DnC's scores on b problems of p rows and ``cols`` sampled coordinates: the
    gathered float64 columns of every problem, then per problem the scaled and centred rows
    (and, for cols < p, their transpose) and q = min(p, cols) square matrices (the Gram of
    the smaller side and the eigensolver's work); measured (2 threads, VmHWM growth, float32
    p = 1000-4000, cols = 500-10000): 0.87-1.04 of this."""
    q = float(min(p, cols))
    rows = float(p) * float(cols) * 8.0
    return b * rows + (2.0 if cols < p else 1.5) * rows + 3.2 * q * q * 8.0


def rule_need(
    name: str,
    pre: Sequence[object],
    b: int,
    p: int,
    p_rule: int,
    threads: int,
    cols: int | None = None,
    extra: float | None = None,
) -> float:
    """Bytes for rule ``name`` after the steps ``pre`` on b problems of p rows (p_rule rows
    after the steps: what the Flag Aggregator solves on; the other rules' temporaries are
    counted at p, which their mixing with the steps' (p', p) matrices comes to). ``cols``:
    the coordinates DnC samples (its memory grows with them; without it, DnC counts p x p
    matrices alone). ``extra``: the rule's temporaries in p x p matrices when its options
    change them (RULE_EXTRA's otherwise)."""
    steps = _step_names(pre)
    if not steps and name in NO_P_SPACE:
        return 0.0
    pre_part = b * _mat(p) * (1.0 + sum(PRE_EXTRA.get(s, 4.2) for s in steps))
    if name == "flag":
        return (pre_part if steps else 0.0) + flag_need([p_rule] * b, threads)
    if name == "dnc" and cols is not None:
        return (pre_part if steps else 0.0) + dnc_need(b, p_rule, cols)
    return pre_part + (RULE_EXTRA.get(name, 0.0) if extra is None else extra) * _mat(p)


def _step_names(pre: Sequence[object]) -> list[str]:
    return [s if isinstance(s, str) else str(getattr(s, "name", "clipping")) for s in pre]


def check_rule_memory(
    fn: str,
    rule: str,
    pre: Sequence[object],
    b: int,
    p: int,
    p_rule: int,
    threads: int,
    label: str | None = None,
    cols: int | None = None,
    extra: float | None = None,
) -> None:
    """check_memory for a rule call; the message names the rule and its pre steps (or
    ``label``)."""
    need = rule_need(rule, pre, b, p, p_rule, threads, cols, extra)
    steps = _step_names(pre)
    what = label or (f"rule {rule!r}" + (f" with pre={steps}" if steps else ""))
    what += f" at p = {p}" + (f" on {b} problems" if b > 1 else "")
    advice = (
        "aggregate fewer workers (or problems) per call, a rule and pre-aggregation without "
        "p x p matrices (mean, median, trimmed_mean, meamed, phocas without pre), or a machine "
        "with more memory"
    )
    check_memory(fn, what, need, advice)
