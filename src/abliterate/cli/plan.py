"""`abliterate plan MODEL`: memory per stage and the device map, before anything is loaded."""

from __future__ import annotations

import argparse
from collections import Counter

from rich.table import Table

from abliterate.cli.console import out
from abliterate.cli.flags import add_settings_arguments, overrides
from abliterate.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="memory per stage and device map, without loading")
    parser.add_argument("model")
    parser.add_argument("--config", help="TOML settings file")
    add_settings_arguments(parser, exclude={"model"}, groups_only={"model", "evaluation", "run"})
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.workflows.memory_plan import human, plan

    settings = load_settings(args.config, model=args.model, **overrides(args))
    device_map, stages, facts = plan(settings)
    out.print(
        f"{args.model}: {facts['parameters'] / 1e6:.1f}M parameters, {facts['layers']} "
        f"layers, hidden {facts['hidden']}, {facts['dtype']}: weights "
        f"{human(facts['weights_bytes'])}",
        highlight=False,
    )
    table = Table(title="Memory by stage (estimates)", title_justify="left")
    for col in ("stage", "device", "memory", "what"):
        table.add_column(col, justify="right" if col == "memory" else "left")
    for s in stages:
        table.add_row(s.name, s.device, human(s.bytes), s.what)
    out.print(table)
    placed = Counter(str(v) for v in device_map.values())
    out.print(
        "device map: " + ", ".join(f"{n} module(s) on {d}" for d, n in placed.items()),
        highlight=False,
    )
    if "disk" in placed:
        out.print(
            "some layers go to disk: pass --offload-folder DIR; every forward pass then "
            "reads them from disk (see README, 'Big models')",
            highlight=False,
        )
    return 0
