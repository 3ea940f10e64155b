"""``flagcore robustness``: compare aggregation rules on a simulated parameter server."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the harness imports numpy and more: only load it when a command runs
    from .harness import RobustnessConfig

# Options that are not training settings: they go with a single run, --grid and --quick alike.
# Every other option sets one run's training and is refused together with --grid or --quick.
_RUN_OPTIONS = {"grid", "quick", "resume", "out", "no_plots", "no_progress", "force", "help"}


def _record_given(action: argparse.Action) -> None:
    """Make ``action`` add its option to ``namespace.given_options`` when the command line
    gives it (a default is not "given"), so --grid/--quick can refuse training options."""
    base = type(action)

    def __call__(
        self: argparse.Action,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        base.__call__(self, parser, namespace, values, option_string)
        given = getattr(namespace, "given_options", ())
        if self.option_strings[0] not in given:
            namespace.given_options = (*given, self.option_strings[0])

    action.__class__ = type(f"_Given{base.__name__}", (base,), {"__call__": __call__})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .harness import RULES_TAKING_F

    p = sub.add_parser(
        "robustness",
        help="train with p simulated workers, f of them Byzantine, under each aggregation rule",
        description=(
            "A synchronous parameter server with p workers in one process, each on its own shard; "
            "the last "
            "f are Byzantine (a gradient attack, label flipping, or honest workers on distorted "
            "data). The "
            "server aggregates with each rule and steps SGD (momentum, weight decay). Writes "
            "results.json and "
            "PNG plots to --out and prints a table. Rules that need f ("
            + ", ".join(RULES_TAKING_F)
            + ") get f = --byzantine; any rule parameter can be set in the rule "
            "spec: --rules 'flag[max_iter=50,scale=median_norm],multi_krum[m=10]'. With --grid "
            "CONFIG.json (or --quick) "
            "it sweeps rules x attacks x f x heterogeneity x learning rate instead and reports "
            "each rule's "
            "worst-case accuracy over the attacks (flagcore.experiments.grid documents the config)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--rules",
        default="flag,median,mean",
        help="comma list of rule specs NAME or NAME[key=value,...]; 'all' = every rule of "
        "flagcore.rules.RULES",
    )
    p.add_argument(
        "--attack",
        default="random",
        help="none, a gradient attack of flagcore.attacks (random, sign_flip, ...; adaptive ones "
        "such as "
        "optimal_alie, min_max, fa_aware target each rule under test), or a data attack: "
        "label_flip, shuffle_labels, noise, warp, distorted (warp/noise/shuffled labels in turn)",
    )
    p.add_argument(
        "--attack-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra attack parameter (repeatable)",
    )
    p.add_argument("--workers", type=int, default=15, help="p, number of workers")
    p.add_argument(
        "--byzantine",
        type=int,
        default=3,
        help="f, number of Byzantine (or distorted) workers: the last f",
    )
    p.add_argument(
        "--heterogeneity",
        default="iid",
        help="data split over workers: iid, dirichlet:ALPHA or gamma:GAMMA (ByzFL's "
        "gamma-similarity)",
    )
    p.add_argument(
        "--grid",
        default=None,
        metavar="CONFIG.json",
        help="run a grid from this JSON config (rules, attacks, byzantine, heterogeneity, lr, "
        "attack_params, base); training flags (--rules, --steps, ...) are refused with it: "
        "the config sets them",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="without --grid: a built-in grid that runs in seconds; with --grid: cap it at 30 "
        "steps, 1 seed; training flags are refused with it",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --grid/--quick: continue the interrupted grid whose progress is in "
        "--out/grid_progress.json (same config, --quick as before), running only the "
        "combinations it does not hold",
    )
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits (sklearn's bundled 8x8 digits) or blobs (generated)",
    )
    p.add_argument("--model", default="mlp", help="mlp, cnn (images only) or linear")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)"
    )
    p.add_argument("--eval-every", type=int, default=10, help="test accuracy every that many steps")
    p.add_argument(
        "--r", type=int, default=None, help="FA subspace dimension (default (p + 1) // 2)"
    )
    p.add_argument("--lam", type=float, default=0.0, help="FA pairwise-term weight")
    p.add_argument(
        "--max-iter", type=int, default=1, help="FA IRLS iterations (1 = the paper's runs)"
    )
    p.add_argument("--scale", default="paper", help="FA output scale: paper or median_norm")
    p.add_argument(
        "--flag-history",
        default="all",
        help="keep FA's per-step weights/ratios for: all, first_seed, none",
    )
    p.add_argument("--out", default="flagcore_robustness", help="output folder")
    p.add_argument("--no-plots", action="store_true", help="write results.json only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for action in p._actions:
        if action.dest not in _RUN_OPTIONS:
            _record_given(action)
    p.set_defaults(func=run_cli, given_options=(), check_outputs=check_outputs)


def check_outputs(args: argparse.Namespace, where: str = "robustness") -> None:
    """The --out check (flagcore.cli runs it before the command; run_cli again): a writable
    folder that, without --force, holds no earlier results. A grid run into a folder holding an
    interrupted grid's progress file gets the grid's own answer: without --resume or --force it
    is refused with the combinations done named; with --resume the earlier run's other outputs
    there (a --force grid that was killed leaves its predecessor's results.json) are not refused:
    they are replaced when the grid finishes, as with --force (``args.force`` is set, so the
    files this run does not rewrite are then removed)."""
    from .._paths import check_output_dir
    from .grid import PROGRESS_FILE

    force = bool(getattr(args, "force", False))
    progress_file = os.path.join(args.out, PROGRESS_FILE)
    grid_run = args.grid is not None or args.quick
    if grid_run and not force:
        has_progress = os.path.isfile(progress_file)
        if getattr(args, "resume", False):
            # without a progress file run_grid_cli says there is nothing to resume
            check_output_dir(args.out, where, "--out")
            if has_progress:
                args.force = True  # the earlier outputs are replaced when the grid finishes
            return
        if has_progress:
            check_output_dir(args.out, where, "--out")  # a file at --out: its own message
            raise ValueError(
                f"robustness: --out {args.out!r} holds an interrupted grid's progress "
                f"({PROGRESS_FILE}{_progress_note(progress_file)}); add --resume to continue it, "
                "or --force to discard it and start over"
            )
    check_output_dir(args.out, where, "--out", refuse_existing=not force)


def config_from_args(args: argparse.Namespace) -> RobustnessConfig:
    from . import harness

    rules = harness.split_rule_list(args.rules)
    if rules == ["all"]:
        rules = list(harness.available_rules())
    attack_params = {}
    for item in args.attack_param:
        if "=" not in item:
            raise ValueError(f"robustness: --attack-param must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        attack_params[k.strip()] = harness._parse_value(v.strip())
    if args.threads < 0:
        raise ValueError(f"robustness: --threads must be >= 0, got {args.threads}")
    return harness.RobustnessConfig(
        rules=rules,
        attack=args.attack,
        workers=args.workers,
        byzantine=args.byzantine,
        dataset=args.dataset,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seeds=args.seeds,
        seed=args.seed,
        device=args.device,
        r=args.r,
        lam=args.lam,
        max_iter=args.max_iter,
        scale=args.scale,
        eval_every=args.eval_every,
        threads=args.threads or None,
        flag_history=args.flag_history,
        attack_params=attack_params,
        heterogeneity=args.heterogeneity,
    )


def run_cli(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "robustness: needs torch (install the torch build for your machine first)"
        ) from exc
    from . import print_summary, run_robustness, write_outputs

    if args.grid is not None or args.quick:
        return run_grid_cli(args)
    if getattr(args, "resume", False):
        raise ValueError(
            "robustness: --resume continues an interrupted grid (--grid or --quick); "
            "a single run keeps no progress to resume"
        )
    cfg = config_from_args(args)
    cfg.validate(options=True)
    # before the work, so a bad path loses nothing (and, without --force, replaces nothing,
    # nor mixes with an interrupted grid's progress)
    check_outputs(args)
    res = run_robustness(cfg, progress=not args.no_progress)
    print_summary(res)
    written = write_outputs(res, args.out, plots=not args.no_plots)
    print(
        f"wrote {len(written)} files to {os.path.abspath(args.out)}: "
        + ", ".join(os.path.basename(w) for w in written)
    )
    return 0


def run_grid_cli(args: argparse.Namespace) -> int:
    from .._paths import previous_outputs
    from .grid import (
        PROGRESS_FILE,
        load_grid,
        load_progress,
        make_quick,
        print_grid_summary,
        progress_counts,
        quick_grid,
        run_grid,
        write_grid_outputs,
    )

    given = list(getattr(args, "given_options", ()))
    if given:
        what = f"--grid {args.grid!r}" if args.grid is not None else "--quick (the built-in grid)"
        raise ValueError(
            f"robustness: {', '.join(given)} cannot be combined with {what}: the grid sets "
            "every training option (in a --grid config: its lists and its 'base'); "
            "drop them, or run without --grid/--quick"
        )
    if args.grid is not None:
        grid = load_grid(args.grid)  # messages name --grid and the file
        if args.quick:
            grid = make_quick(grid)
    else:
        grid = quick_grid()
    try:
        grid.validate()
    except (ValueError, TypeError) as exc:
        raise type(exc)(_grid_message(str(exc), args.grid)) from None
    resume = getattr(args, "resume", False)
    check_outputs(args)  # (flagcore.cli checked it too); with --resume it may set args.force
    n = len(grid.combinations())
    progress_file = os.path.join(args.out, PROGRESS_FILE)
    # The progress file, checked (and with --force discarded) before the work starts.
    if resume:
        if not os.path.lexists(progress_file):
            raise ValueError(
                f"robustness: --resume: there is no progress file {progress_file!r} to continue "
                "(a grid writes it after each finished combination and removes it once "
                "results.json is written); run without --resume to start the grid"
            )
        try:
            done = load_progress(progress_file, grid, "robustness: --resume")
        except ValueError as exc:
            raise ValueError(
                f"{exc}; to start the grid over instead, drop --resume and add --force"
            ) from None
        print(
            f"robustness grid: resuming from {progress_file}: {len(done)} of {n} combinations "
            f"done, {n - len(done)} to run"
        )
        replaced = [f for f in previous_outputs(args.out) if f != PROGRESS_FILE]
        if replaced:
            print(
                f"robustness grid: the earlier run's {', '.join(replaced)} in {args.out} will be "
                "replaced when the grid finishes (as with --force)"
            )
    elif os.path.lexists(progress_file):  # with --force only: check_outputs refused it otherwise
        what = _progress_note(progress_file)
        os.remove(progress_file)
        print(f"--force: discarded the interrupted grid's progress {progress_file}{what}")
    print(
        f"robustness grid: {n} runs of {len(grid.rules)} rules "
        f"({len(grid.byzantine)} f x {len(grid.heterogeneity)} heterogeneity x {len(grid.lr)} lr x "
        f"{len(grid.attacks)} attacks)"
    )
    try:
        res = run_grid(
            grid,
            progress=not args.no_progress,
            log=print,
            progress_file=progress_file,
            resume=resume,
        )
        print_grid_summary(res)
        written = write_grid_outputs(
            res, args.out, plots=not args.no_plots, progress_file=progress_file
        )
    except BaseException:  # Ctrl-C or an error before results.json was written (the progress
        # file is removed then): say what is kept and how to go on, then let it propagate
        if os.path.lexists(progress_file):
            counts = progress_counts(progress_file)
            what = f"{counts[0]} of {counts[1]}" if counts else "the finished"
            print(
                f"flagcore robustness: {what} grid combinations are done and kept in "
                f"{progress_file}; continue with: {_resume_command(args)}",
                file=sys.stderr,
            )
        raise
    print(
        f"wrote {len(written)} files to {os.path.abspath(args.out)}: "
        + ", ".join(os.path.basename(w) for w in written)
    )
    return 0


def _progress_note(path: str) -> str:
    """': 3 of 8 combinations done' for a readable progress file, '' otherwise."""
    from .grid import progress_counts

    counts = progress_counts(path)
    return f": {counts[0]} of {counts[1]} combinations done" if counts else ""


def _program() -> list[str]:
    """How to start flagcore again as this process was started: ``flagcore`` when it runs as the
    console script, otherwise (``python -m flagcore``, or flagcore.cli.main called from Python)
    this interpreter, by its absolute path, with ``-m flagcore``: that works whatever PATH or
    virtual environment the shell has."""
    name = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "")
    for ext in ("-script.pyw", "-script.py", ".exe"):  # Windows console-script launchers
        name = name.removesuffix(ext)
    if name == "flagcore":
        return ["flagcore"]
    return [sys.executable or "python", "-m", "flagcore"]


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this grid (its outputs as given, plus --resume), with
    absolute paths (it works from any folder) and shell-quoted."""
    argv = [*_program(), "robustness"]
    if args.grid is not None:
        argv += ["--grid", os.path.abspath(args.grid)]
    if args.quick:
        argv.append("--quick")
    argv += ["--out", os.path.abspath(args.out)]
    if args.no_plots:
        argv.append("--no-plots")
    if args.no_progress:
        argv.append("--no-progress")
    return shlex.join([*argv, "--resume"])


def _grid_message(msg: str, path: str | None) -> str:
    """'robustness grid: lr ...' -> "robustness: --grid 'g.json': lr ...": the option named."""
    from .grid import _unprefixed

    where = f"--grid {path!r}" if path is not None else "--quick"
    return f"robustness: {where}: {_unprefixed(msg)}"
