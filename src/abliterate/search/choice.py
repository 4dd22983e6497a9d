"""Stage 7: choosing a trial from the Pareto front by a policy, re-measuring the picked trials
with longer answers first (see search/select.py)."""

from __future__ import annotations

from abliterate.edit.plan import plan
from abliterate.events import Events
from abliterate.runs import (
    RunDir,
)
from abliterate.search import study as st
from abliterate.search.record import Confirmation, TrialRecord
from abliterate.search.select import Candidate, select_confirmed, with_refusal_rate
from abliterate.search.trials import study_record
from abliterate.stages.session import Session


def candidates(study) -> list[Candidate]:
    """Every finished trial, with refusal rates re-measured before a choice where there are."""
    out = []
    confirmed = st.get_shared(study, "confirmed") or {}
    for t in study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,)):
        if "record" not in t.user_attrs:  # told to the study by something other than a worker
            out.append(Candidate(t.number, t.values[0], t.values[1], 1.0, t.values[1]))
            continue
        again = confirmed.get(str(t.number))
        record = study_record(t).with_confirmation(Confirmation.from_dict(again) if again else None)
        out.append(Candidate.from_record(record))
    return out


def with_confirmations(
    records: dict[int, TrialRecord], confirmed: dict[str, dict]
) -> dict[int, TrialRecord]:
    """Trial records with their re-measured figures (from confirmed.json or the study)."""
    return {
        n: r.with_confirmation(Confirmation.from_dict(confirmed[str(n)]))
        if str(n) in confirmed
        else r
        for n, r in records.items()
    }


def confirm_choice(
    session: Session, study, cands: list[Candidate], policy: str, events: Events
) -> Candidate:
    """Choose by `policy`, re-measuring the picked trials with longer answers first (see
    `select_confirmed`); what was re-measured is saved in the run directory and the study."""
    s = session.settings
    evaluator = session.evaluator
    assert evaluator is not None
    length = s.confirm_response_length or 2 * s.max_response_length

    def confirm(c: Candidate) -> Candidate:
        params = session.run_dir.load_trial(c.number).params
        with session.editor.applied(plan(session.layout.writers, session.directions, params)):
            rate = evaluator.harmful_refusal_rate(length)
        again = with_refusal_rate(c, rate, session.base_refusal_rate)
        events.message(
            f"re-measured trial {c.number} with {length}-token answers: refusals "
            f"{c.refusal_rate:.2f} -> {again.refusal_rate:.2f}"
        )
        return again

    chosen, confirmed = select_confirmed(cands, policy, confirm, s.confirm_trials)
    if confirmed:
        entries = {
            str(n): {
                "refusal_rate": c.refusal_rate,
                "refusal_score": c.refusal_score,
                "response_length": length,
            }
            for n, c in confirmed.items()
        }
        session.run_dir.save_confirmed({**session.run_dir.load_confirmed(), **entries})
        st.set_shared(study, "confirmed", {**(st.get_shared(study, "confirmed") or {}), **entries})
    if s.confirm_trials and not policy.startswith("trial:") and chosen.number not in confirmed:
        events.message(f"trial {chosen.number} was not re-measured: confirm_trials spent")
    return chosen


def record_choice(run_dir: RunDir, number: int, policy: str) -> None:
    """Remember the chosen trial (the report marks it)."""
    run_dir.save_choice(number, policy)
