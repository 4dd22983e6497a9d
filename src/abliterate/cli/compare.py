"""`abliterate compare RUN_DIR [RUN_DIR ...]`: trials side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from abliterate.atomic import write_text
from abliterate.cli.console import err, out
from abliterate.errors import AbliterateError


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
    parser.add_argument(
        "--heretic-checkpoint",
        metavar="JOURNAL",
        help="a Heretic study (its checkpoints/<model>.jsonl) to list beside the runs",
    )
    parser.add_argument("--heretic-config", metavar="TOML", help="the config.toml of that run")
    parser.add_argument(
        "--heretic-model",
        action="append",
        default=[],
        metavar="TRIAL=DIR",
        help="Heretic's exported model of one of its trials (Optuna's trial number), measured "
        "with the first run's held-out prompts and base model; repeatable",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.workflows.compare import HereticInput, compare_runs
    from abliterate.workflows.heretic import parse_models, read_journal

    heretic = None
    if args.heretic_checkpoint:
        journal = Path(args.heretic_checkpoint)
        read_journal(journal)  # a bad file is refused before any model loads
        config = Path(args.heretic_config) if args.heretic_config else None
        if config is not None and not config.is_file():
            raise AbliterateError(f"--heretic-config {config}: no such file")
        heretic = HereticInput(journal, config, parse_models(args.heretic_model))
    elif args.heretic_model or args.heretic_config:
        raise AbliterateError("--heretic-model and --heretic-config need --heretic-checkpoint")
    comparison, summary = compare_runs(
        args.run_dirs,
        args.trials,
        args.samples,
        message=lambda m: err.print(f"  {m}", highlight=False),
        heretic=heretic,
    )
    target = Path(args.output)
    target.mkdir(parents=True, exist_ok=True)
    write_text(target / "comparison.json", json.dumps(comparison, indent=2))
    write_text(target / "summary.json", json.dumps(summary, indent=2))
    out.print(summary_table(comparison, summary))
    if "heretic" in summary:
        out.print(heretic_table(summary["heretic"]))
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


def heretic_table(section: dict) -> Table:
    table = Table(title="Heretic's Pareto front (its own figures; held-out where measured)")
    for col in ("trial", "refusals", "KL", "held-out refusal", "held-out KL"):
        table.add_column(col, justify="right")
    for row in section["front"]:
        held = row.get("held_out")
        rate = row["refusal_rate"]
        table.add_row(
            str(row["trial"]),
            "n/a" if rate is None else f"{rate:.2f}",
            f"{row['kl']:.4f}",
            f"{held['refusal_rate']['value']:.2f}" if held else "",
            f"{held['kl']['value']:.4f}" if held else "",
        )
    return table
