"""`abliterate evaluate MODEL --base BASE`: metrics of one model against another, as JSON."""

from __future__ import annotations

import argparse
import json

from abliterate.cli.console import err, out
from abliterate.cli.flags import EVALUATION_GROUPS, add_settings_arguments, overrides
from abliterate.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="refusal rate, over-refusal and KL of a model against its base, as JSON",
    )
    parser.add_argument("model", help="the model to measure (directory or hub id)")
    parser.add_argument("--base", required=True, help="the base model KL is measured against")
    parser.add_argument("--config", help="TOML settings file (prompt sets, markers, ...)")
    add_settings_arguments(parser, exclude={"model"}, groups_only=EVALUATION_GROUPS)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.workflows.evaluate import evaluate_against_base

    settings = load_settings(args.config, model=args.base, **overrides(args))
    result = evaluate_against_base(
        settings, args.model, args.base, message=lambda m: err.print(f"  {m}", highlight=False)
    )
    out.print_json(json.dumps(result))
    return 0
