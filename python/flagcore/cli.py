"""The ``flagcore`` command line.

Each area registers its own sub-command from its own module (``register(subparsers)``), so this
file only lists them, and applies what every command shares before it runs:

- output paths: every ``--out`` (a folder) and ``--json`` (a file) is checked before the work
  starts (``_paths``), so a long run never ends in a traceback about its output path; an
  existing ``--json`` file, or an ``--out`` folder that holds an earlier run's results, is
  refused unless ``--force`` is given (every command with an output gets that flag here); with
  ``--force`` the earlier run's files that this run did not rewrite are removed after it
  succeeded, or after it failed (or was interrupted) once it had written any of its own files,
  so the folder holds one run. Outputs are written atomically (``_paths.atomic_open``);
- abbreviations: no parser accepts a prefix of an option (``--no-plot`` for ``--no-plots``);
- Ctrl-C: one line, ``flagcore COMMAND: interrupted``, and exit status 130;
- plots: without matplotlib a command that plots writes its JSON and says how to get plots;
- errors: ValueError/TypeError (bad options, bad input) exit with status 2 and one line naming
  the command; OSError while writing exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from . import _paths

# Options that name an output, and what they must be. Every command's options are checked
# against this table before the command runs.
OUTPUT_OPTIONS = {"out": "folder", "json": "file"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagcore",
        description="Robust gradient aggregation and energy/latency models of fork-join services.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from . import demo

    demo.register(sub)

    from .experiments import cli as experiments_cli

    experiments_cli.register(sub)

    from .energy import cli as energy_cli

    energy_cli.register(sub)

    info = sub.add_parser("info", help="print what this build contains (CUDA, SIMD, threads)")
    info.set_defaults(func=_cmd_info)
    _finish_parsers(parser)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                out.append(child)
                out += _subparsers(child)
    return out


def _finish_parsers(parser: argparse.ArgumentParser) -> None:
    """What every command shares, whichever module registered it: no abbreviated options, and
    --force on every command that writes an --out folder or a --json file."""
    for p in [parser, *_subparsers(parser)]:
        p.allow_abbrev = False
        dests = {a.dest for a in p._actions}
        if dests & set(OUTPUT_OPTIONS) and "force" not in dests:
            what = []  # the outputs this command has
            if "json" in dests:
                what.append("an existing --json file")
            if "out" in dests:
                what.append("the earlier results in --out")
            p.add_argument(
                "--force",
                action="store_true",
                help=f"replace {', or '.join(what)} (otherwise refused)",
            )


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def command_name(args: argparse.Namespace) -> str:
    """'flagcore demo', 'flagcore energy sweep', ...: how messages name the command."""
    parts = ["flagcore", str(args.command)]
    sub = getattr(args, "energy_command", None)
    if sub:
        parts.append(str(sub))
    return " ".join(parts)


def check_outputs(args: argparse.Namespace, where: str) -> None:
    """Raise ValueError (naming the command and the option) for an output path that cannot be
    written, or (without --force) that holds an earlier run's results; creates nothing. A command
    whose parser sets a ``check_outputs(args, where)`` default checks its outputs itself
    (robustness: a grid's --resume, and its progress file, have their own answers)."""
    own = getattr(args, "check_outputs", None)
    if callable(own):
        own(args, where)
        return
    refuse = not getattr(args, "force", False)
    for attr, kind in OUTPUT_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        option = "--" + attr.replace("_", "-")
        if kind == "folder":
            _paths.check_output_dir(value, where, option, refuse_existing=refuse)
        else:
            _paths.check_output_file(value, where, option, refuse_existing=refuse)


def _is_matplotlib_missing(exc: ImportError) -> bool:
    return (exc.name or "").split(".")[0] == "matplotlib"


def _skip_plots_on_missing_matplotlib(
    func: Callable[[argparse.Namespace], Any], where: str
) -> Callable[[argparse.Namespace], Any]:
    """``func`` with a missing matplotlib turned into a note: for commands that write their JSON
    before they plot (tests/test_seams.py checks that they do)."""

    def run(args: argparse.Namespace) -> Any:
        try:
            return func(args)
        except ImportError as exc:
            if not _is_matplotlib_missing(exc):
                raise
            print(
                f"{where}: matplotlib is not installed, so no plots were written (the JSON was); "
                f"{_paths.PLOTS_HINT}",
                file=sys.stderr,
            )
            return 0

    return run


def prepare_plots(args: argparse.Namespace, where: str) -> None:
    """Without matplotlib: the robustness run writes results.json only; the energy sweep
    writes sweep.json and skips its plots. Both say so and how to get plots."""
    if _paths.have_matplotlib():
        return
    if args.command == "robustness" and not getattr(args, "no_plots", True):
        args.no_plots = True
        print(
            f"{where}: matplotlib is not installed: results.json only, no plots; "
            f"{_paths.PLOTS_HINT}",
            file=sys.stderr,
        )
    elif getattr(args, "energy_command", None) == "sweep" and getattr(args, "out", None):
        args.func = _skip_plots_on_missing_matplotlib(args.func, where)


def _strip_prefix(msg: str, args: argparse.Namespace | None, where: str) -> str:
    """'flagcore robustness: robustness: x' -> 'x': the command is named once."""
    for prefix in (where, str(getattr(args, "command", where))):
        if msg.startswith(prefix + ": "):
            return msg[len(prefix) + 2 :]
    return msg


def main(argv: list[str] | None = None) -> int:
    where = "flagcore"
    args: argparse.Namespace | None = None
    ran = False  # the command's work started (outputs may have been written)
    rc: int | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        where = command_name(args)
        check_outputs(args, where)
        prepare_plots(args, where)
        _paths.begin_outputs()
        ran = True
        rc = int(args.func(args) or 0)
        return rc
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:
        print(f"{where}: error: {_strip_prefix(str(exc), args, where)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        # --force: the folder holds this run's results only: after a success, and after a
        # failure or Ctrl-C that came once this run had written some of its files (the earlier
        # run's other files would no longer match them); a run that wrote nothing keeps them.
        forced_out = getattr(args, "out", None) if getattr(args, "force", False) else None
        if ran and forced_out and (rc == 0 or _paths.written_outputs()):
            _paths.remove_stale_outputs(forced_out, where)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
