"""The orchestrator of `abliterate run`: the stages in order, each result saved in the run
directory.

    1. run directory   resolve it, check that resuming is sound, save the settings
    2. model           load model and tokenizer, find every residual writer, check them
    3. prompt sets     load the four sets, format them as chat turns
    4. directions      load them from the run directory, or compute and save them
    5. base metrics    the unedited model on the evaluation prompts (reference for every trial)
    6. search          Optuna trials until the study holds n_trials complete ones
    7. choice          the Pareto front, and a trial chosen by policy (or by the user: the CLI)
    8. export          the chosen trial written to --output
    9. held-out report the exported model read back from its files, and the base model,
                       measured on report prompts that the search and the choice never saw

Each stage lives in its own module (stages/, search/, export/); this one only calls them in
order. Progress and messages go to an `Events` object, so the library prints nothing and the
CLI decides how things look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from abliterate.config import Settings
from abliterate.errors import AbliterateError
from abliterate.eval.evaluate import Metrics
from abliterate.events import Events
from abliterate.export.api import Exported, export_trial, protected_paths
from abliterate.guard import check_output
from abliterate.model import loading
from abliterate.search.choice import candidates, confirm_choice, record_choice, with_confirmations
from abliterate.search.record import TrialRecord
from abliterate.search.select import DEFAULT_POLICY, Candidate, pareto_front
from abliterate.search.trials import run_trials, session_study, sync_trial_files
from abliterate.stages.base import measure_base
from abliterate.stages.held_out import held_out_report
from abliterate.stages.session import Session, open_session, resolve_prompt_defaults


@dataclass
class RunResult:
    """What a run leaves: its session (model loaded, directions, run directory), the trials'
    records and Pareto front, and the chosen trial and its export when a policy chose."""

    session: Session
    records: dict[int, TrialRecord] = field(default_factory=dict)
    front: list[Candidate] = field(default_factory=list)
    chosen: int | None = None
    policy: str | None = None
    exported: Exported | None = None
    held_out: dict | None = None  # stages/held_out.py
    interrupted: bool = False  # Ctrl-C during the search: finished trials are saved


@dataclass
class RunEvents(Events):
    """`Events` plus the points where a run has something to show between stages."""

    opened: Callable[[Session], None] = lambda _session: None  # stages 1-4 done
    measured: Callable[[Session, Metrics], None] = lambda _session, _base: None
    resumed: Callable[[int], None] = lambda _done: None  # trials already in the run directory


def run(
    settings: Settings,
    events: RunEvents | None = None,
    new_run: bool = False,
    policy: str | None = DEFAULT_POLICY,
) -> RunResult:
    """The whole run. `policy` None stops after the search, with the front for a user to choose
    from; otherwise the policy chooses (see search/select.py) and --output gets the export."""
    events = events or RunEvents()
    # 1. settings: prompt sets a model directory supplies; an unusable --output is refused now,
    #    not after an hour of trials.
    settings = resolve_prompt_defaults(settings)
    if settings.judge:
        loading.resolve(settings.judge, settings.trust_remote_code)
    if settings.output:
        check_output(settings.output, settings.overwrite, protected_paths(settings))
    # 2-4. run directory, model, prompt sets, directions
    session = open_session(settings, events, new_run=new_run)
    events.opened(session)
    # 5. base metrics
    events.measured(session, measure_base(session, events))
    # 6. search, resuming from the trials the run directory already holds
    study, _lock = session_study(session)
    events.resumed(sum(1 for _ in session.run_dir.trial_numbers()))
    try:
        run_trials(session, events)
    except KeyboardInterrupt:
        return RunResult(session, interrupted=True)
    # 7. choice
    sync_trial_files(session, study)
    cands = candidates(study)
    if not cands:
        raise AbliterateError("no trial finished; nothing to choose from")
    result = RunResult(session, session.run_dir.load_trials(), pareto_front(cands))
    if policy is None:
        return result
    chosen = confirm_choice(session, study, cands, policy, events)
    record_choice(session.run_dir, chosen.number, policy)
    result.records = with_confirmations(result.records, session.run_dir.load_confirmed())
    result.front = pareto_front(candidates(study))
    result.chosen, result.policy = chosen.number, policy
    # 8. export
    record = result.records[chosen.number]
    if settings.output:
        result.exported = export(session, record, settings.output)
    # 9. held-out report
    result.held_out = report(session, record, result.exported, events)
    return result


def export(session: Session, record: TrialRecord, output: str, kind: str | None = None) -> Exported:
    """Trial `record` of the session's run written to `output` (kind: the run's export setting)."""
    s = session.settings
    return export_trial(
        s,
        session.directions,
        record,
        output,
        kind or s.export,
        s.max_shard_size,
        s.overwrite,
        session.run_dir.load_base(),
    )


def report(
    session: Session, record: TrialRecord, exported: Exported | None, events: Events
) -> dict | None:
    """Stage 9 for trial `record` (read back from `exported` when given); None when the run
    holds no report prompts (report_fraction 0 and no report sets named)."""
    if not session.prompts.get("harmful_report_prompts"):
        return None
    return held_out_report(session, record, exported, events)
