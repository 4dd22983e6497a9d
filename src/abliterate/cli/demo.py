"""`abliterate demo`: the whole pipeline on the built-in organism, offline, on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from abliterate.cli.console import err, out, stage_progress
from abliterate.config import load_settings
from abliterate.organism.arches import ARCHES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on the built-in model organism")
    parser.add_argument(
        "--output", help="where the abliterated organism goes (default: RUN_DIR-model)"
    )
    parser.add_argument("--arch", default="llama", choices=sorted(ARCHES))
    parser.add_argument("--n-trials", type=int, default=30, help="search budget (default 30)")
    parser.add_argument("--run-dir", help="run directory (default runs/demo-<arch>)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.cli.run import execute
    from abliterate.organism import ORGANISM_VERSION, organism_path
    from abliterate.search.select import DEFAULT_POLICY

    err.print(
        "[bold]abliterate demo[/bold]: the built-in model organism (a tiny chat model "
        "trained to refuse harmful requests), built once and cached"
    )
    with stage_progress() as update:
        organism = organism_path(args.arch, on_progress=update)
    run_dir = Path(args.run_dir or f"runs/demo-v{ORGANISM_VERSION}-{args.arch}")
    # Beside the run directory, not in it: an export never goes inside the run it came from.
    output = Path(args.output) if args.output else run_dir.with_name(f"{run_dir.name}-model")
    settings = load_settings(
        model=str(organism),
        n_trials=args.n_trials,
        max_response_length=32,
        batch_size=32,
        run_dir=str(run_dir),
        select=DEFAULT_POLICY,  # run's own default, chosen without asking
        output=str(output),
        overwrite=args.output is None,
    )
    # The run ends with the held-out report: the export read back from its files and measured
    # with the base organism on evaluation prompts the search never saw.
    code = execute(settings)
    if code:
        return code
    out.print(f"abliterated organism: {output}\nrun directory: {run_dir}", highlight=False)
    return 0
