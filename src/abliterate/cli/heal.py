"""`abliterate heal MODEL --dataset SPEC --output DIR`: DPO healing after abliteration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from abliterate.cli.console import err, out
from abliterate.cli.flags import EVALUATION_GROUPS, add_settings_arguments, overrides
from abliterate.config import format_validation_error, load_settings
from abliterate.errors import AbliterateError
from abliterate.workflows.heal import HealSettings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "heal",
        help="recover quality with a light DPO pass (needs abliterate[heal])",
        description="DPO with LoRA (QLoRA with --load-in-4bit on CUDA) on preference pairs, "
        "then merge and export; metrics before and after, KL against the original base.",
    )
    parser.add_argument("model", help="the (abliterated) model to heal")
    parser.add_argument("--output", required=True, help="directory for the healed model")
    parser.add_argument(
        "--base",
        help="original model for KL (default: the one named in the model's abliterate.toml)",
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-evaluate", action="store_true", help="skip metrics before/after")
    parser.add_argument(
        "--config", help="TOML settings file (prompt sets and markers for the evaluation)"
    )
    add_settings_arguments(parser, model=HealSettings, prefix="heal_", title="healing (DPO)")
    add_settings_arguments(parser, exclude={"model"}, groups_only=EVALUATION_GROUPS)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.workflows.heal import heal

    try:
        cfg = HealSettings(**overrides(args, "heal_"))
    except ValidationError as exc:
        raise AbliterateError(format_validation_error(exc, HealSettings)) from None
    eval_settings = None
    if not args.no_evaluate:
        eval_settings = load_settings(args.config, model=args.model, **overrides(args))
    record = heal(
        args.model,
        Path(args.output),
        cfg,
        eval_settings,
        args.base,
        args.overwrite,
        message=lambda m: err.print(f"  {m}", highlight=False),
    )
    losses = record["losses"]
    err.print(
        f"[green]healed[/green] model in {args.output} (DPO loss {losses[0]:.4f} -> "
        f"{losses[-1]:.4f})"
    )
    out.print(json.dumps({k: record[k] for k in ("before", "after")}, indent=2))
    return 0
