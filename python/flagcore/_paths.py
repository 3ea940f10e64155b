"""Checks at the command line's seams: output paths before the work starts, and matplotlib.

A command that runs for minutes must not lose its results to a bad ``--out`` or ``--json`` at
the end. ``check_output_dir`` and ``check_output_file`` say up front, with the option named,
whether a path can be written, without creating anything that stays behind: they probe the
nearest existing folder by creating and removing a temporary file there (which also catches
read-only file systems and permissions that ``os.access`` misreports for root).

``pyplot_or_none`` returns matplotlib's pyplot (Agg backend) or None with the reason printed
once, so a command without matplotlib still writes its JSON and says how to get plots.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

PLOTS_HINT = (
    "install matplotlib for the plots: pip install matplotlib "
    "(or the 'cli' extra: pip install 'flagcore[cli]')"
)


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


def check_output_dir(path: Any, where: str, option: str = "--out") -> str:
    """Check that ``path`` is, or can become, a folder this process can write files into.

    Creates nothing. Returns the path. Raises ValueError naming ``where`` (the command or
    function) and ``option`` when the path is an existing file, when a component above it is a
    file, or when its nearest existing folder does not let us create files.
    """
    path = _as_path(path, where, option, "folder")
    return _check_dir(path, where, option)


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


def check_output_file(path: Any, where: str, option: str = "--json") -> str:
    """Check that ``path`` can be written as a file (its folder may not exist yet: the command
    creates it). Creates nothing. Returns the path; raises ValueError naming ``where`` and
    ``option`` otherwise (an existing folder at that path, a file above it, no permission)."""
    return _check_file(_as_path(path, where, option, "file"), where, option)


def _check_file(path: str, where: str, option: str) -> str:
    if os.path.isdir(path):
        raise ValueError(f"{where}: {option} {path!r} is an existing folder, not a file")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f"{where}: {option} {path!r} exists and is not writable")
        return path
    parent = os.path.dirname(os.path.abspath(path))
    base = _nearest_existing(parent)
    if not os.path.isdir(base):
        raise ValueError(
            f"{where}: {option} {path!r} cannot be created: {base!r} is a file, not a folder"
        )
    _probe_writable(base, where, option, path)
    return path


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
