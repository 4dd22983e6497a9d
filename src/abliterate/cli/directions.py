"""`abliterate directions MODEL`: every layer's candidate direction, scored by intervention."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.table import Table

from abliterate.cli.console import err, out
from abliterate.cli.flags import EVALUATION_GROUPS, add_settings_arguments, overrides
from abliterate.cli.run import Display
from abliterate.config import STREAMS, load_settings
from abliterate.runs import default_run_dir


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "directions",
        help="score each layer's candidate refusal direction (the manual workflow)",
        description="Candidate directions for every layer and stream, scored by ablation "
        "(bypass), addition (induce) and KL on held-out prompts; filtered and ranked as in "
        "Arditi et al. 2024.",
    )
    parser.add_argument("model")
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument(
        "--streams", default=",".join(STREAMS), help="streams to analyse (default pre,mid,post)"
    )
    parser.add_argument(
        "--n-eval",
        type=int,
        default=32,
        help="held-out prompts per set used for scoring (default 32)",
    )
    parser.add_argument(
        "--kl-threshold",
        type=float,
        default=0.1,
        help="drop candidates whose KL under ablation exceeds this (default 0.1)",
    )
    parser.add_argument(
        "--output", help="directory for the results (default runs/<model>-directions)"
    )
    add_settings_arguments(
        parser, exclude={"model"}, groups_only=EVALUATION_GROUPS | {"directions"}
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    streams = tuple(s.strip() for s in args.streams.split(",") if s.strip())
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        from abliterate.errors import AbliterateError

        raise AbliterateError(f"--streams {args.streams!r}: choose among {', '.join(STREAMS)}")
    from abliterate.workflows.manual import find_directions

    settings = load_settings(args.config, model=args.model, **overrides(args))
    output = Path(args.output or f"{default_run_dir(args.model)}-directions")
    with Display() as display:
        display.n_trials = 0
        result = find_directions(
            settings, output, streams, args.n_eval, args.kl_threshold, display.events()
        )
    out.print(candidate_table(result.candidates))
    if result.selected:
        s = result.selected
        err.print(
            f"selected: layer {s.layer}, stream {s.stream} (held-out refusals under "
            f"ablation {s.bypass_refusal:.2f}, KL {s.kl:.4f})"
        )
        err.print(
            f"apply it: abliterate apply {args.model} --layer {s.layer} --stream {s.stream}"
            " --output DIR"
        )
    else:
        err.print("[yellow]no candidate passed the filter[/yellow] (see directions.json)")
    err.print(f"wrote {output / 'directions.json'}, safetensors and plots in {output}")
    return 0


def _f(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def candidate_table(cands, limit: int = 24) -> Table:
    table = Table(title="Candidate directions (ranked first)", title_justify="left")
    for col in (
        "rank",
        "stream",
        "layer",
        "bypass refusals",
        "bypass log-odds",
        "induce refusals",
        "KL",
        "separation",
        "note",
    ):
        table.add_column(col, justify="left" if col in ("stream", "note") else "right")
    ordered = sorted(cands, key=lambda c: (c.rank is None, c.rank or 0, c.stream, c.layer))
    for c in ordered[:limit]:
        table.add_row(
            str(c.rank or ""),
            c.stream,
            str(c.layer),
            _f(c.bypass_refusal),
            _f(c.bypass_log_odds),
            _f(c.induce_refusal),
            _f(c.kl, 4),
            _f(c.geometry.get("separation")),
            c.dropped or "",
        )
    return table
