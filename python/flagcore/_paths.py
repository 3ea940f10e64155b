"""Checks at the command line's seams: output paths before the work starts, and matplotlib.

A command that runs for minutes must not lose its results to a bad ``--out`` or ``--json`` at
the end. ``check_output_dir`` and ``check_output_file`` say up front, with the option named,
whether a path can be written, without creating anything that stays behind: they probe the
nearest existing folder by creating and removing a temporary file there (which also catches
read-only file systems and permissions that ``os.access`` misreports for root).

A path that ends in a separator (``nd/``) names a folder: it is refused as a file output.
With ``refuse_existing=True`` (the command line without ``--force``) an existing ``--json`` file
and an ``--out`` folder that already holds flagcore output (``OUTPUT_PATTERNS``) are refused too,
so one run never replaces or mixes with another's results unasked.

Every output is written with ``atomic_open`` (or ``atomic_savefig``): into a temporary file in the
same folder, flushed and fsynced, then renamed over the final name. A write that fails (a full
disk, Ctrl-C) removes the temporary file, leaves any previous file untouched and raises
``OutputWriteError``, whose message names the path. The paths written are recorded
(``begin_outputs`` / ``written_outputs``) so that ``remove_stale_outputs`` can clear, after a
``--force`` run succeeded, the earlier run's files that this run did not rewrite. A run's
bookkeeping (a grid's progress file) is written with ``record=False``: it is not a result, so a
``--force`` run interrupted after writing only that removes none of the earlier run's files.

A robustness grid's progress file (``GRID_PROGRESS_FILE``) in an ``--out`` folder is an
interrupted grid: without ``--force`` it is refused like results, with its own message (its
grid's command plus ``--resume`` continues it, ``--force`` discards it).

``pyplot_or_none`` returns matplotlib's pyplot (Agg backend) or None with the reason printed
once, so a command without matplotlib still writes its JSON and says how to get plots.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

PLOTS_HINT = (
    "install matplotlib for the plots: pip install matplotlib "
    "(or the 'cli' extra: pip install 'flagcore[cli]')"
)

# The files flagcore's commands write into an --out folder (demo, robustness, robustness --grid,
# energy sweep). A folder holding any of them holds an earlier run's results.
OUTPUT_PATTERNS = (
    "results.json",
    "accuracy.png",
    "agg_time.png",
    "flag_workers.png",
    "flag_workers_*.png",
    "heatmap_*.png",
    "energy_tradeoff.json",
    "energy_tradeoff.png",
    "sweep.json",
    "latency_vs_x.png",
    "energy_vs_x.png",
    "tradeoff.png",
    "grid_progress.json",  # GRID_PROGRESS_FILE: an interrupted grid (see check_output_dir)
)
# The progress file of an interrupted robustness grid (flagcore.experiments.grid.PROGRESS_FILE).
GRID_PROGRESS_FILE = "grid_progress.json"


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _probe_writable(folder: str, where: str, option: str, path: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".flagcore-write-check-", dir=folder)
    except OSError as exc:
        raise ValueError(
            f"{where}: {option} {path!r} cannot be written: no permission to create files in "
            f"{folder!r} ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.remove(probe)


def _as_path(path: Any, where: str, option: str, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"{where}: {option} must be a {what} path, got {path!r}")
    return str(os.fspath(path))


def check_output_dir(
    path: Any, where: str, option: str = "--out", *, refuse_existing: bool = False
) -> str:
    """Check that ``path`` is, or can become, a folder this process can write files into.

    Creates nothing. Returns the path. Raises ValueError naming ``where`` (the command or
    function) and ``option`` when the path is an existing file, when a component above it is a
    file, or when its nearest existing folder does not let us create files; with
    ``refuse_existing`` also when the folder already holds flagcore output (``OUTPUT_PATTERNS``:
    the command line's answer without ``--force``).
    """
    folder = _check_dir(_as_path(path, where, option, "folder"), where, option)
    if refuse_existing:
        found = previous_outputs(folder)
        if GRID_PROGRESS_FILE in found:
            others = [n for n in found if n != GRID_PROGRESS_FILE]
            also = f", and an earlier run's {_shown(others)}" if others else ""
            raise ValueError(
                f"{where}: {option} {folder!r} holds an interrupted robustness grid's progress "
                f"({GRID_PROGRESS_FILE}{also}); continue that grid with its command plus "
                f"--resume (flagcore robustness --grid CONFIG.json --out {shlex.quote(folder)} "
                "--resume), add --force to discard it, or choose another folder"
            )
        if found:
            raise ValueError(
                f"{where}: {option} {folder!r} already holds the results of an earlier run "
                f"({_shown(found)}); choose another folder, or add --force to replace them"
            )
    return folder


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def previous_outputs(folder: str) -> list[str]:
    """The names of the files in ``folder`` that flagcore writes (OUTPUT_PATTERNS), sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        n
        for n in names
        if any(fnmatch.fnmatchcase(n, pat) for pat in OUTPUT_PATTERNS)
        and os.path.isfile(os.path.join(folder, n))
    )


def _check_dir(path: str, where: str, option: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{where}: {option} {path!r} is an existing file, not a folder")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise ValueError(
            f"{where}: {option} {path!r} cannot be created: {base!r} is a file, not a folder"
        )
    _probe_writable(base, where, option, path)
    return path


def check_output_file(
    path: Any, where: str, option: str = "--json", *, refuse_existing: bool = False
) -> str:
    """Check that ``path`` can be written as a file (its folder may not exist yet: the command
    creates it). Creates nothing. Returns the path; raises ValueError naming ``where`` and
    ``option`` otherwise (a path ending in a separator, an existing folder at that path, a file
    above it, no permission; with ``refuse_existing``, an existing file)."""
    return _check_file(_as_path(path, where, option, "file"), where, option, refuse_existing)


def _ends_with_separator(path: str) -> bool:
    return path.endswith(os.sep) or bool(os.altsep and path.endswith(os.altsep))


def _check_file(path: str, where: str, option: str, refuse_existing: bool = False) -> str:
    if _ends_with_separator(path):
        raise ValueError(
            f"{where}: {option} {path!r} ends with {path[-1]!r}, so it names a folder, not a file"
        )
    if os.path.isdir(path):
        raise ValueError(f"{where}: {option} {path!r} is an existing folder, not a file")
    if os.path.exists(path):
        if refuse_existing:
            raise ValueError(
                f"{where}: {option} {path!r} already exists; choose another name, or add "
                "--force to replace it"
            )
        if not os.access(path, os.W_OK):
            raise ValueError(f"{where}: {option} {path!r} exists and is not writable")
    parent = os.path.dirname(os.path.abspath(path))
    base = _nearest_existing(parent)
    if not os.path.isdir(base):
        raise ValueError(
            f"{where}: {option} {path!r} cannot be created: {base!r} is a file, not a folder"
        )
    # The file is written as a temporary file beside it, then renamed: the folder must let us
    # create files even when the file itself exists and is writable.
    _probe_writable(base, where, option, path)
    return path


# ---------------------------------------------------------------- writing outputs


class OutputWriteError(OSError):
    """Writing an output file failed; the message names the file, and says that any previous
    file at that path is unchanged (the new content went to a temporary file first)."""

    def __init__(self, path: str, cause: BaseException) -> None:
        errno = getattr(cause, "errno", None)
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(errno, reason)
        self.filename = path
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot write {self.path!r}: {self.reason} "
            "(nothing was replaced: a previous file at that path is unchanged)"
        )


_written: set[str] | None = None
_run_started = 0.0


def begin_outputs() -> None:
    """Start recording the paths that ``atomic_open`` writes (for ``remove_stale_outputs``)."""
    global _written, _run_started
    _written = set()
    _run_started = time.time()


def written_outputs() -> set[str]:
    """The real paths written since ``begin_outputs``."""
    return set(_written or ())


def _new_file_mode(final: str) -> int:
    try:
        return os.stat(final).st_mode & 0o7777  # keep the replaced file's permissions
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(
    path: str, mode: str = "w", encoding: str | None = "utf-8", *, record: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; when the block ends without an error,
    flush and fsync it and rename it to ``path`` (creating the folder if needed). On any error,
    or Ctrl-C, the temporary file is removed and ``path`` keeps its previous content; an OSError
    becomes an ``OutputWriteError`` naming ``path``. ``record``: add ``path`` to
    ``written_outputs`` (False for bookkeeping that is no result of the run, such as a grid's
    progress file: writing it must not make a failed ``--force`` run clear the earlier one)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    final = os.path.realpath(path)  # write through a symlink, not over it
    folder = os.path.dirname(final)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(final)}.", suffix=".part", dir=folder
        )
        fh: IO[Any] = os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode(final))
        os.replace(tmp, final)
        tmp = None
    except OSError as exc:
        if isinstance(exc, OutputWriteError):
            raise
        raise OutputWriteError(path, exc) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    if record and _written is not None:
        _written.add(final)


def atomic_savefig(fig: Any, path: str, **kwargs: Any) -> str:
    """``fig.savefig`` through ``atomic_open``: a failed write leaves no partial PNG and keeps
    a previous file. Returns ``path``."""
    fmt = kwargs.pop("format", None) or os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=fmt, **kwargs)
    return path


def remove_stale_outputs(folder: str, where: str = "flagcore") -> list[str]:
    """After a ``--force`` run: remove the files of ``folder`` that match OUTPUT_PATTERNS and
    were neither written by this run (``begin_outputs``) nor modified since it started, so the
    folder holds this run's results only. Says what it removed (stdout) and what it could not
    (stderr). Returns the names removed."""
    removed = []
    keep = written_outputs()
    for name in previous_outputs(folder):
        p = os.path.join(folder, name)
        try:
            if os.path.realpath(p) in keep or os.path.getmtime(p) >= _run_started:
                continue
            os.remove(p)
        except OSError as exc:
            print(
                f"{where}: --force: could not remove the earlier run's {p!r}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            continue
        removed.append(name)
    if removed:
        print(f"--force: removed the earlier run's {', '.join(removed)} from {folder}")
    return removed


def have_matplotlib() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot_or_none(where: str) -> Any:
    """matplotlib.pyplot on the Agg backend, or None after printing (to stderr) that ``where``
    writes no plots and how to get them."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"{where}: matplotlib is not installed, so no plots were written (the JSON was); "
            f"{PLOTS_HINT}",
            file=sys.stderr,
        )
        return None
    return plt
