"""`abliterate export RUN_DIR --trial N --output DIR`: write a trial as a model or adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from abliterate.cli.console import err, out, progress
from abliterate.cli.run import report_export
from abliterate.config import load_settings
from abliterate.errors import AbliterateError
from abliterate.export.hub import push
from abliterate.guard import check_output
from abliterate.runs import RunDir
from abliterate.search.select import DEFAULT_POLICY, Candidate, select

if TYPE_CHECKING:  # loaded by the commands that run, not for --help (torch)
    from abliterate.search.record import TrialRecord


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="write a trial as merged weights or a LoRA adapter")
    parser.add_argument(
        "run_dir",
        nargs="?",
        help="run directory of `abliterate run` (or use --storage to export from a shared study)",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--trial", type=int, help="trial number (see the run's Pareto front)")
    choice.add_argument(
        "--select",
        help="choose by policy: min-kl-under:R[,max-kl:K], min-refusals, knee (default: the "
        "run's own choice, else min-kl-under:0.03,max-kl:0.25)",
    )
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument(
        "--export",
        default="merged",
        help="merged, adapter, gguf, both (merged and adapter) or a list such as merged,gguf",
    )
    parser.add_argument(
        "--gguf-type",
        choices=("Q8_0", "F16", "BF16", "F32", "source"),
        help="type of the edited tensors in a GGUF export (default: the run's, Q8_0)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export afterwards")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--storage", help="export from the study in this Optuna storage URL")
    parser.add_argument("--study-name", default="abliterate", help="study name in --storage")
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="export from the loaded model instead of the checkpoint files",
    )
    parser.add_argument(
        "--no-held-out",
        action="store_true",
        help="skip re-measuring the export on the run's held-out report prompts (which loads "
        "the model)",
    )
    parser.set_defaults(handler=handle)


def from_run_dir(path: str):
    """(settings, directions, records by trial number, base metrics) of a run directory."""
    from abliterate.search.choice import with_confirmations
    from abliterate.stages.directions import directions_from_tensors

    run_dir = RunDir(Path(path))
    if not run_dir.exists():
        raise AbliterateError(f"{path} is not a run directory (no settings.toml)")
    settings = load_settings(run_dir.settings_file)
    stored = run_dir.load_directions()
    if stored is None:
        raise AbliterateError(f"{path} has no directions.safetensors: the run never got that far")
    records = run_dir.load_trials()
    records = with_confirmations(records, run_dir.load_confirmed())
    return (
        settings,
        directions_from_tensors(stored[0]),
        records,
        run_dir.load_base(),
    )


def from_study(url: str, name: str):
    """The same, from a shared study: what every worker published there."""
    from abliterate.config import Settings
    from abliterate.search import study as st
    from abliterate.search.choice import with_confirmations
    from abliterate.search.study import decode_tensors
    from abliterate.search.trials import study_record
    from abliterate.stages.directions import directions_from_tensors

    study = st.open_study(st.open_storage(url, Path("unused")), name)
    saved, shared = st.get_shared(study, "settings"), st.get_shared(study, "directions")
    if saved is None or shared is None:
        raise AbliterateError(f"study {name!r} in {url} has no published settings or directions")
    records = {
        t.number: study_record(t)
        for t in study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,))
        if "record" in t.user_attrs
    }
    tensors = decode_tensors(shared["tensors"])
    return (
        Settings.model_validate(saved),
        directions_from_tensors(tensors),
        with_confirmations(records, st.get_shared(study, "confirmed") or {}),
        st.get_shared(study, "base"),
    )


def pick_record(
    records: dict[int, TrialRecord],
    trial: int | None,
    policy: str | None,
    chosen: int | None = None,
) -> TrialRecord:
    """Trial `trial`, else the one `policy` picks, else the run's own choice (`chosen`, made
    with re-measured figures, see search/select.select_confirmed), else the default policy's."""
    if not records:
        raise AbliterateError("no finished trials to export")
    if trial is None and policy is None and chosen in records:
        trial = chosen
    if trial is not None:
        if trial not in records:
            raise AbliterateError(f"no finished trial {trial} (have {sorted(records)[:10]}...)")
        return records[trial]
    cands = [Candidate.from_record(r) for r in records.values()]
    return records[select(cands, policy or DEFAULT_POLICY).number]


def handle(args: argparse.Namespace) -> int:
    from abliterate.export.api import export_trial, protected_paths
    from abliterate.stages.session import open_session

    if args.storage:
        settings, directions, records, base = from_study(args.storage, args.study_name)
    elif args.run_dir:
        settings, directions, records, base = from_run_dir(args.run_dir)
    else:
        raise AbliterateError("give a RUN_DIR, or --storage URL (and --study-name)")
    chosen = None
    if args.run_dir:
        choice = RunDir(Path(args.run_dir)).load_choice()
        chosen = choice["trial"] if choice else None
    record = pick_record(records, args.trial, args.select, chosen)
    if args.gguf_type:
        settings = settings.model_copy(update={"gguf_type": args.gguf_type})
    if args.no_stream:
        from abliterate.export.merged import export_merged as export_loaded

        if args.export != "merged":
            raise AbliterateError("--no-stream writes merged weights only")
        # Refused before the model loads, not after.
        check_output(args.output, args.overwrite, protected_paths(settings, args.run_dir))
        session = open_session(settings, for_search=False)
        path = export_loaded(
            session, record, args.output, args.max_shard_size, args.overwrite, base
        )
        targets = [path]
    else:
        with progress() as bars:
            task = bars.add_task("export", total=None)
            result = export_trial(
                settings,
                directions,
                record,
                args.output,
                args.export,
                args.max_shard_size,
                args.overwrite,
                base,
                on_progress=lambda d, t: bars.update(task, completed=d, total=t),
                run_dir=args.run_dir,
            )
        report_export(result, record.number)
        targets = result.paths
        if args.run_dir and not args.no_held_out:
            held_out_after_export(settings, args.run_dir, record, result)
    if args.push_to_hub:
        url = push(Path(args.output), args.push_to_hub, args.private)
        err.print(f"[green]uploaded[/green] to {url}")
    out.print(json.dumps({"trial": record.number, "paths": [str(p) for p in targets]}))
    return 0


def held_out_after_export(settings, run_dir: str, record, exported) -> None:
    """The export read back and measured on the run's held-out report prompts, as `run` does
    after its choice; the figures go into the export's trial.json and card."""
    from abliterate import pipeline
    from abliterate.cli.run import held_out_table
    from abliterate.events import Events
    from abliterate.stages.session import open_session

    events = Events(message=lambda m: err.print(f"  {m}", highlight=False))
    try:
        session = open_session(
            settings.model_copy(update={"run_dir": run_dir}), events, for_search=False
        )
        held = pipeline.report(session, record, exported, events)
    except AbliterateError as exc:
        # The export is written and complete; a report that cannot be made must not undo it.
        err.print(f"[yellow]warning:[/yellow] no held-out report for this export: {exc}")
        return
    if held is not None:
        err.print(held_out_table(held))
