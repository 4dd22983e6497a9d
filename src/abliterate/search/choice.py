"""Stage 7: choosing a trial from the Pareto front by a policy, re-measuring the picked trials
with longer answers first (see search/select.py)."""

from __future__ import annotations

from dataclasses import replace

from abliterate.edit.plan import EditParams, plan
from abliterate.events import Events
from abliterate.runs import (
    RunDir,
)
from abliterate.search import study as st
from abliterate.search.select import Candidate, select_confirmed, with_refusal_rate
from abliterate.stages.session import Session


def candidates(study) -> list[Candidate]:
    """Every finished trial, with refusal rates re-measured before a choice where there are."""
    out = []
    confirmed = st.get_shared(study, "confirmed") or {}
    for t in study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,)):
        rec = t.user_attrs.get("record", {})
        m = rec.get("metrics", {})
        cand = Candidate(
            t.number, t.values[0], t.values[1], m.get("refusal_rate", 1.0), m.get("kl", t.values[1])
        )
        out.append(_confirmed(cand, confirmed.get(str(t.number))))
    return out


def candidate_from_record(record: dict) -> Candidate:
    """The trial as the choice sees it: re-measured figures (see `confirm_choice`) win."""
    m = record["metrics"]
    cand = Candidate(
        record["number"], record["refusal_score"], record["kl_score"], m["refusal_rate"], m["kl"]
    )
    return _confirmed(cand, record.get("confirmed"))


def _confirmed(cand: Candidate, confirmed: dict | None) -> Candidate:
    if not confirmed:
        return cand
    return replace(
        cand, refusal_rate=confirmed["refusal_rate"], refusal_score=confirmed["refusal_score"]
    )


def with_confirmations(records: dict[int, dict], confirmed: dict[str, dict]) -> dict[int, dict]:
    """Trial records with their re-measured figures (from confirmed.json or the study)."""
    return {n: {**r, "confirmed": confirmed[str(n)]} if str(n) in confirmed else r
            for n, r in records.items()}  # fmt: skip


def confirm_choice(
    session: Session, study, cands: list[Candidate], policy: str, events: Events
) -> Candidate:
    """Choose by `policy`, re-measuring the picked trials with longer answers first (see
    `select_confirmed`); what was re-measured is saved in the run directory and the study."""
    s = session.settings
    assert session.evaluator is not None
    length = s.confirm_response_length or 2 * s.max_response_length

    def confirm(c: Candidate) -> Candidate:
        params = EditParams.from_dict(session.run_dir.load_trial(c.number)["params"])
        with session.editor.applied(plan(session.layout.writers, session.directions, params)):
            rate = session.evaluator.harmful_refusal_rate(length)
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
