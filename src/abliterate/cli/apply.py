"""`abliterate apply MODEL --layer L`: one-shot orthogonalization with one direction."""

from __future__ import annotations

import argparse
from pathlib import Path

from abliterate.cli.console import err, out
from abliterate.cli.flags import EVALUATION_GROUPS, add_settings_arguments, overrides
from abliterate.cli.run import Display
from abliterate.config import COMPONENTS, EXPORT_CHOICES, load_settings
from abliterate.errors import AbliterateError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "apply",
        help="orthogonalize one chosen direction out of the weights and export (no search)",
    )
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, help="layer whose direction to remove")
    parser.add_argument("--stream", choices=("pre", "mid", "post"), default="post")
    parser.add_argument(
        "--direction",
        help="a direction file from `abliterate directions` "
        "(selected.safetensors, or directions-STREAM.safetensors with --layer)",
    )
    parser.add_argument(
        "--weight",
        type=float,
        default=1.0,
        help="edit strength for every edited weight (default 1.0)",
    )
    parser.add_argument(
        "--edit",
        default=",".join(COMPONENTS),
        help="components to edit (default embed,attn_out,mlp_down)",
    )
    parser.add_argument("--export", choices=EXPORT_CHOICES, default="merged")
    parser.add_argument(
        "--no-evaluate",
        action="store_true",
        help="skip the before/after refusal and KL measurement",
    )
    parser.add_argument("--config", help="TOML settings file")
    add_settings_arguments(
        parser,
        exclude={"model", "components", "export"},
        groups_only=EVALUATION_GROUPS | {"directions", "edit", "run"},
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    flags = overrides(args)
    # The article's edit is the plain mean difference unless asked otherwise.
    flags.setdefault("orthogonalize_direction", False)
    if not flags.get("output"):
        raise AbliterateError("--output DIR is required")
    components = [c.strip() for c in args.edit.split(",") if c.strip()]
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise AbliterateError(f"--edit {args.edit!r}: choose among {', '.join(COMPONENTS)}")
    settings = load_settings(args.config, model=args.model, **flags)
    from abliterate.workflows.manual import apply_direction

    with Display() as display:
        display.n_trials = 0
        exported, metrics = apply_direction(
            settings,
            Path(flags["output"]),
            args.layer,
            args.stream,
            args.weight,
            components,
            args.direction,
            args.export,
            evaluate=not args.no_evaluate,
            events=display.events(),
        )
    if metrics:
        b, a = metrics["before"], metrics["after"]
        out.print(
            f"refusal rate {b['refusal_rate']:.2f} -> {a['refusal_rate']:.2f}   "
            f"over-refusal {b['overrefusal_rate']:.2f} -> {a['overrefusal_rate']:.2f}   "
            f"KL {a['kl']:.4f}",
            highlight=False,
        )
    for path in exported.paths:
        err.print(f"[green]saved[/green] {path}")
    return 0
