"""Entry point of the `abliterate` command: subcommands register themselves here."""

from __future__ import annotations

import argparse
import os
import sys

from abliterate import __version__
from abliterate.cli import (
    apply,
    chat,
    compare,
    demo,
    directions,
    evaluate,
    export,
    heal,
    organism,
    plan,
    report,
    run,
)
from abliterate.cli.console import err
from abliterate.errors import AbliterateError
from abliterate.threads import configure as configure_threads

# Each module adds its subparser(s) and sets `handler` on them.
COMMANDS = [
    run,
    demo,
    export,
    compare,
    report,
    chat,
    evaluate,
    directions,
    apply,
    heal,
    plan,
    organism,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abliterate",
        description="Remove the refusal behaviour of open-weight chat models.",
    )
    parser.add_argument("--version", action="version", version=f"abliterate {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (anywhere on the line)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads for torch (anywhere on the line); default: one per core that other "
        "processes leave idle, followed as the load changes (ABLITERATE_THREADS, OMP_NUM_THREADS "
        "also fix it)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def quiet_transformers() -> None:
    """The CLI draws its own progress bars; transformers' would interleave with them. Set
    through the environment when transformers is not loaded yet, so that it stays unloaded."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def lift_global_options(argv: list[str]) -> list[str]:
    """--debug and --threads are accepted anywhere on the line, not only before the subcommand:
    move them to the front, where argparse expects them."""
    front, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--debug" or arg.startswith("--threads="):
            front.append(arg)
        elif arg == "--threads" and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    argv = lift_global_options(list(sys.argv[1:] if argv is None else argv))
    # Parsing imports nothing heavy: --help, --version and usage errors answer at once; torch
    # and transformers load inside the commands that use them.
    args = build_parser().parse_args(argv)
    debug = args.debug
    try:
        if args.threads < 0:
            raise AbliterateError(
                f"--threads must be 1 or more (0 = automatic), not {args.threads}"
            )
        configure_threads(args.threads, lambda msg: err.print(f"[dim]{msg}[/dim]"))
        quiet_transformers()
        return args.handler(args) or 0
    except AbliterateError as exc:
        if debug:
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
