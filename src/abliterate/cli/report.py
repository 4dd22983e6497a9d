"""`abliterate report RUN_DIR`: an HTML report with plots."""

from __future__ import annotations

import argparse

from abliterate.cli.console import err, out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write RUN_DIR/report.html with plots")
    parser.add_argument("run_dir")
    parser.add_argument(
        "--trial",
        type=int,
        help="trial to show as chosen (default: the run's choice, else the Pareto knee)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.report import build_report

    path = build_report(args.run_dir, args.trial)
    err.print(f"[green]wrote[/green] {path} (figures in {path.parent / 'plots'})")
    out.print(str(path), highlight=False)
    return 0
