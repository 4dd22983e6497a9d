"""`abliterate run MODEL`: the automatic search, with progress, the Pareto front and a choice."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import TaskID
from rich.prompt import Prompt
from rich.table import Table

from abliterate.cli.console import err, out, progress
from abliterate.cli.flags import add_settings_arguments, overrides
from abliterate.config import Settings, load_settings
from abliterate.errors import AbliterateError
from abliterate.export.hub import push
from abliterate.search.select import DEFAULT_POLICY, Candidate

if TYPE_CHECKING:  # loaded by the commands that run, not for --help (torch, transformers)
    from abliterate import pipeline
    from abliterate.export.api import Exported
    from abliterate.model.arch import Layout
    from abliterate.search.record import TrialRecord
    from abliterate.stages.session import Session


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="search automatically for the edit that removes refusals (the main command)",
        description="Find refusal directions, search edits with Optuna, export the chosen one.",
    )
    parser.add_argument("model", help="Hugging Face model id or local model directory")
    parser.add_argument("--config", help="TOML file with settings (flags override it)")
    parser.add_argument(
        "--new-run",
        action="store_true",
        help="start over even if the run directory holds a run with other "
        "settings (the old directory is kept under a new name)",
    )
    add_settings_arguments(parser, exclude={"model"})
    parser.set_defaults(handler=handle)


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, model=args.model, **overrides(args))


def handle(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    return execute(settings, new_run=args.new_run)


class Display:
    """Rich rendering of pipeline events."""

    def __init__(self):
        self.bars = progress()
        self.tasks: dict[str, TaskID] = {}
        self.n_trials = 0
        self.started = time.perf_counter()

    def events(self) -> pipeline.RunEvents:
        from abliterate import pipeline

        return pipeline.RunEvents(
            message=self.message,
            progress=self.progress,
            trial=self.trial,
            opened=self.opened,
            measured=self.measured,
            resumed=self.resumed,
        )

    def opened(self, session: Session) -> None:
        self.bars.console.print(f"  run directory: {session.run_dir.path}")
        self.bars.console.print(layout_table(session.layout, list(session.settings.components)))

    def measured(self, session: Session, base) -> None:
        prompts = session.prompts
        self.bars.console.print(
            f"  base model: refusals {base['refusal_rate']:.2f}, over-refusal "
            f"{base['overrefusal_rate']:.2f} on {len(prompts['harmful_eval_prompts'])} + "
            f"{len(prompts['harmless_eval_prompts'])} evaluation prompts"
        )

    def resumed(self, done: int) -> None:
        if done:
            self.bars.console.print(f"  resuming: {done} finished trial(s) in the run directory")
        self.progress("trials", min(done, self.n_trials), self.n_trials)

    def message(self, text: str) -> None:
        self.bars.console.print(f"  {text}", highlight=False)

    def progress(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bars.add_task(stage, total=total)
        self.bars.update(self.tasks[stage], completed=done, total=total)
        if done >= total and not stage.startswith("trials"):
            self.bars.remove_task(self.tasks.pop(stage))

    def trial(self, record: TrialRecord, counts: dict) -> None:
        self.bars.console.print(trial_line(record), highlight=False)
        self.progress("trials", counts["complete"], self.n_trials)

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        self.bars.__exit__(*exc)


def trial_line(record: TrialRecord) -> str:
    """One line per trial: where and how hard it edited, and what that did."""
    m, p = record.metrics, record.params
    short = {"attn_out": "attn", "mlp_down": "mlp"}
    kern = " ".join(
        f"{short.get(c, c)} {k.max_weight:.2f}@{k.peak:.1f}±{k.span:.1f}"
        for c, k in sorted(p.kernels.items())
    )
    scope = f"dir {p.direction_index:.2f}" if p.scope == "global" else "per-layer"
    tag = " pruned" if record.pruned else ""
    return (
        f"  #{record.number:<3} {scope:<9} {kern:<30} refusals {m.refusal_rate:.2f} "
        f"over {m.overrefusal_rate:.2f} KL {m.kl:.4f} "
        f"{record.seconds['total']:.1f}s{tag}"
    )


def layout_table(layout: Layout, components: list[str]) -> Table:
    """Which weights are edited, per group of layers with the same layout."""
    table = Table(title="Residual writers", title_justify="left", show_lines=False)
    table.add_column("layers")
    table.add_column("component")
    table.add_column("weights edited")
    groups: list[tuple[list[int], list[tuple[str, str]]]] = []
    for i in range(layout.n_layers):
        sig = [
            (
                w.component,
                re.sub(r"\.\d+\.", ".", w.describe().split(layout.layers_path)[-1], count=1),
            )
            for w in layout.layer_writers(i)
            if w.component in components
        ]
        if groups and groups[-1][1] == sig:
            groups[-1][0].append(i)
        else:
            groups.append(([i], sig))
    for layers, sig in groups:
        span = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
        for j, (comp, desc) in enumerate(sig):
            table.add_row(span if j == 0 else "", comp, desc.lstrip("."))
    if "embed" in components:
        table.add_row("embed", "embed", layout.by_component("embed")[0].describe())
    return table


def front_table(
    cands: list[Candidate], records: dict[int, TrialRecord], chosen: int | None = None
) -> Table:
    table = Table(title="Pareto front", title_justify="left")
    for col in ("trial", "refusals", "over-refusal", "KL", "refusal score", "scope"):
        table.add_column(col, justify="right" if col != "scope" else "left")
    for c in cands:
        rec = records.get(c.number)
        mark = " *" if c.number == chosen else ""
        table.add_row(
            f"{c.number}{mark}",
            f"{c.refusal_rate:.2f}",
            f"{rec.metrics.overrefusal_rate:.2f}" if rec else "",
            f"{c.kl:.4f}",
            f"{c.refusal_score:.3f}",
            rec.params.scope if rec else "",
        )
    return table


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def execute(settings: Settings, new_run: bool = False) -> int:
    """`abliterate run`, displayed: pipeline.run does the work, this shows it."""
    from abliterate import pipeline

    policy = settings.select or (None if interactive() else DEFAULT_POLICY)
    err.print(f"[bold]abliterate run[/bold] {settings.model}")
    with Display() as display:
        display.n_trials = settings.n_trials
        result = pipeline.run(settings, display.events(), new_run=new_run, policy=policy)
    session = result.session
    if result.interrupted:
        err.print(
            f"[yellow]interrupted[/yellow]: finished trials are saved in "
            f"{session.run_dir.path}; run the same command to resume"
        )
        return 130
    out.print(front_table(result.front, result.records, result.chosen))
    if result.chosen is None:
        return menu(session, result.front, result.records)
    err.print(f"chose trial {result.chosen} (policy {result.policy})")
    if result.held_out is not None:
        out.print(held_out_table(result.held_out))
    if result.exported is not None:
        report_export(result.exported, result.chosen)
    else:
        err.print(
            "no --output given: nothing exported (use `abliterate export "
            f"{session.run_dir.path} --trial {result.chosen} --output DIR`)"
        )
    return 0


ACTIONS = ["merged", "adapter", "both", "chat", "upload", "back", "quit"]


def menu(session: Session, front: list[Candidate], records: dict[int, TrialRecord]) -> int:
    """Choose a trial from the front, then what to do with it, until the user quits."""
    from abliterate.search.choice import record_choice

    numbers = [str(c.number) for c in front]
    last_export: Path | None = None
    while True:
        pick = Prompt.ask("trial to use (q to quit)", choices=[*numbers, "q"], default=numbers[0])
        if pick == "q":
            return 0
        record = records[int(pick)]
        record_choice(session.run_dir, record.number, "interactive")
        while True:
            action = Prompt.ask("action", choices=ACTIONS, default="merged")
            if action == "quit":
                return 0
            if action == "back":
                break
            if action == "chat":
                from abliterate.cli.chat import chat_with_trial

                chat_with_trial(session, record)
            elif action == "upload":
                if last_export is None:
                    err.print("export the trial first (merged, adapter or both)")
                    continue
                repo = Prompt.ask("Hugging Face repository id (user/name)")
                private = Prompt.ask("private?", choices=["y", "n"], default="y") == "y"
                try:
                    err.print(f"[green]uploaded[/green] to {push(last_export, repo, private)}")
                except AbliterateError as exc:
                    err.print(f"[red]error:[/red] {exc}")
            else:
                default = f"{session.run_dir.path}-trial{pick}-{action}"
                target = Path(Prompt.ask("output directory", default=default))
                try:
                    export(session, record, str(target), action)
                    last_export = target
                except AbliterateError as exc:
                    err.print(f"[red]error:[/red] {exc}")


def export(session: Session, record: TrialRecord, output: str, kind: str) -> None:
    """An export chosen in the menu, then measured on the held-out prompts like a run's."""
    from abliterate import pipeline
    from abliterate.events import Events

    exported = pipeline.export(session, record, output, kind)
    report_export(exported, record.number)
    say = Events(message=lambda m: err.print(f"  {m}", highlight=False))
    held = pipeline.report(session, record, exported, say)
    if held is not None:
        out.print(held_out_table(held))


def held_out_table(report: dict) -> Table:
    """The chosen model against the base on the report prompts, with intervals and n."""
    chosen, base = report["chosen"], report["base"]
    table = Table(
        title=f"held-out report: trial {report['trial']}, {chosen['response_length']}-token "
        f"answers, prompts the search never saw ({report['measured']['weights']})"
    )
    for column in ("metric", "base", "chosen", "95% interval", "n"):
        table.add_column(column)
    names = {
        "refusal_rate": "refusal (harmful)",
        "compliance_rate": "compliance (harmful)",
        "overrefusal_rate": "over-refusal (harmless)",
    }
    names |= {k: k.replace("_", " ") + " (harmless)" for k in chosen if k.startswith("kl")}
    names["capability"] = "capability (exact-answer probes)"
    for key, label in names.items():
        if key not in chosen:
            continue
        m = chosen[key]
        before = f"{base[key]['value']:.3f}" if key in base else "0"
        interval = f"[{m['low']:.3f}, {m['high']:.3f}]"
        count = f"{m['k']}/{m['n']}" if "k" in m else str(m["n"])
        table.add_row(label, before, f"{m['value']:.3f}", interval, count)
    return table


def report_export(result: Exported, number: int) -> None:
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    if result.gguf_report is not None:
        g = result.gguf_report
        types = ", ".join(f"{n} x {t}" for t, n in g.types.items())
        err.print(
            f"  GGUF: {g.edited} edited tensors re-encoded ({types}), the rest copied unchanged; "
            f"the stored values keep {g.kept:.1%} of the edit along the refusal direction"
        )
    for path in result.paths:
        err.print(f"[green]saved[/green] trial {number} to {path}")
