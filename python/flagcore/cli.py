"""The ``flagcore`` command line.

Each area registers its own sub-command from its own module (``register(subparsers)``), so this
file only lists them.
"""
from __future__ import annotations

import argparse
import sys


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
    return parser


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"flagcore {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
