"""`abliterate compare RUN_DIR [RUN_DIR ...]`: trials side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from abliterate.atomic import write_text
from abliterate.cli.console import err, out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("compare", help="compare trials of one or more runs (JSON + table)")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--trials", default="pareto", help="pareto (default), all, or trial numbers like 3,7,12"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=3,
        help="answers per prompt set from base and edited model (default 3)",
    )
    parser.add_argument(
        "--output",
        default=".",
        help="directory for comparison.json and summary.json (default: current directory)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.workflows.compare import compare_runs

    comparison, summary = compare_runs(
        args.run_dirs,
        args.trials,
        args.samples,
        message=lambda m: err.print(f"  {m}", highlight=False),
    )
    target = Path(args.output)
    target.mkdir(parents=True, exist_ok=True)
    write_text(target / "comparison.json", json.dumps(comparison, indent=2))
    write_text(target / "summary.json", json.dumps(summary, indent=2))
    out.print(summary_table(comparison, summary))
    err.print(f"wrote {target / 'comparison.json'} and {target / 'summary.json'}")
    return 0


def summary_table(comparison: dict, summary: dict) -> Table:
    table = Table(title="Best trial per policy", title_justify="left")
    for col in ("run", "policy", "trial", "refusals", "over-refusal", "KL"):
        table.add_column(col, justify="left" if col in ("run", "policy") else "right")
    for run in comparison["runs"]:
        for policy, best in summary[run["run_dir"]].items():
            m = best["metrics"]
            table.add_row(
                Path(run["run_dir"]).name,
                policy,
                str(best["trial"]),
                f"{m['refusal_rate']:.2f}",
                f"{m.get('overrefusal_rate', 0):.2f}",
                f"{m['kl']:.4f}",
            )
    return table
