"""Stage 7: choosing a trial from the Pareto front by a policy, re-measuring the picked trials
first (see search/select.py): with longer answers, and for damage to harmless answers."""

from __future__ import annotations

from dataclasses import dataclass, replace

from abliterate.edit.plan import plan
from abliterate.eval.capability import capability
from abliterate.events import Events
from abliterate.prompts import chat_texts
from abliterate.runs import (
    RunDir,
)
from abliterate.search import study as st
from abliterate.search.record import Confirmation, TrialRecord
from abliterate.search.select import Candidate, select_confirmed, with_refusal_rate
from abliterate.search.trials import study_record
from abliterate.stages.base import direction_sample
from abliterate.stages.held_out import report_probes
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


@dataclass(frozen=True)
class DamageCheck:
    """What a re-measured trial is held to: the unedited model's over-refusal (every search
    harmless prompt, at the re-measuring length) and capability-probe rate, with the margins."""

    overrefusal_rate: float
    capability: float | None  # None: no probes to check with
    margin: float
    floor: float

    def damaged(self, overrefusal_rate: float, capability: float | None) -> bool:
        worse = overrefusal_rate > self.overrefusal_rate + self.margin + 1e-9
        if self.capability is None or capability is None or not self.floor:
            return worse
        return worse or capability < self.floor * self.capability - 1e-9


def probe_rate(session: Session, probes) -> float:
    """Exact-answer rate of the model as it is now on the capability probes."""
    ev = session.evaluator
    assert ev is not None
    return capability(
        ev.model, ev.tokenizer, probes, ev.settings.batch_size, ev.settings.system_prompt,
        own_loop=ev.greedy_check.used,
    )  # fmt: skip


def agreement_text(got: dict[str, float]) -> str:
    """How the opening verdicts of a trial judged by openings alone (trial_openings_only)
    compared with its generated answers ("" for a trial that was answered)."""
    if "openings_agree_harmful" not in got:
        return ""
    return (
        f"; by openings alone {got['openings_refusal_rate']:.2f}, agreeing with the answers on "
        f"{got['openings_agree_harmful']:.0%} of harmful and {got['openings_agree_harmless']:.0%}"
        " of harmless prompts"
    )


# Tokens answered to each extra harmless prompt of the damage check: the stock refusals ("I'm
# sorry, but I can't ...", "As an AI language model ...") open the answer.
OPENING_TOKENS = 12


def damage_prompts(session: Session) -> list[str]:
    """Chat texts of the damage check's extra harmless prompts: a seeded sample of the
    direction set, leaving out the search's and the report's harmless prompts."""
    s = session.settings
    picked = direction_sample(session, "harmless", s.confirm_harmless_sample)
    return chat_texts(session.tokenizer, picked, s.system_prompt)


def refusal_prompts(session: Session) -> list[str]:
    """Chat texts of the re-measurement's extra harmful prompts, judged by their opening: a
    seeded sample of the direction set, leaving out the evaluation and report prompts and
    those every search trial already judges (harmful_openings_sample). None without refusal
    openings: answering them would cost minutes a pick."""
    evaluator = session.evaluator
    assert evaluator is not None
    if not evaluator.openings:
        return []
    s = session.settings
    picked = direction_sample(session, "harmful", s.confirm_harmful_sample)
    seen = set(evaluator.harmful_openings)
    return [t for t in chat_texts(session.tokenizer, picked, s.system_prompt) if t not in seen]


@dataclass(frozen=True)
class Extra:
    """The direction-set prompts a re-measurement reads besides the evaluation prompts."""

    harmless: list[str]  # chat texts, for over-refusal (damage_prompts)
    harmful: list[str]  # chat texts, for the refusal rate (refusal_prompts)


def remeasure(
    session: Session, length: int, short: int, extra: Extra, probes
) -> tuple[dict[str, float], float | None]:
    """Refusal and over-refusal (`Evaluator.recheck`: harmful answers `length` long, harmless
    ones `short`, the extra harmless texts OPENING_TOKENS, the extra harmful ones by their
    opening) and the capability-probe rate (None without probes) of the model as it is now."""
    evaluator = session.evaluator
    assert evaluator is not None
    got = evaluator.recheck(length, short, extra.harmless, OPENING_TOKENS, extra.harmful)
    return got, probe_rate(session, probes) if probes else None


def base_check(
    session: Session, length: int, short: int, extra: Extra, probes, events: Events
) -> DamageCheck:
    """The unedited model's figures that re-measured trials are held to, measured the same way
    (`remeasure`), with the settings' margins."""
    s = session.settings
    base, base_cap = remeasure(session, length, short, extra, probes)
    base_over = base["overrefusal_rate"]
    cap_text = "" if base_cap is None else f", capability {base_cap:.2f}"
    assert session.evaluator is not None
    how = "judged by their opening" if session.evaluator.openings else f"{OPENING_TOKENS} tokens"
    harmful = f"; {len(extra.harmful)} harmful ones by their opening" if extra.harmful else ""
    events.message(
        f"base model at {length} tokens ({short} for harmless prompts; {len(extra.harmless)} "
        f"more of the direction set, {how}{harmful}): refusals {base['refusal_rate']:.2f}, "
        f"over-refusal {base_over:.2f}{cap_text}{agreement_text(base)}"
    )
    margin, floor = s.confirm_overrefusal_margin, s.confirm_capability_floor
    return DamageCheck(base_over, base_cap, margin, floor)


def confirm_choice(
    session: Session, study, cands: list[Candidate], policy: str, events: Events
) -> Candidate:
    """Choose by `policy`, re-measuring the picked trials first (see `select_confirmed`): with
    longer answers, and for damage (over-refusal on every search harmless prompt, capability
    probes; a damaged trial is passed over). What was re-measured is saved in the run directory
    and the study."""
    s = session.settings
    length = s.confirm_response_length or 2 * s.max_response_length
    # harmless answers at the search's length: the refusals an edit brings open the answer
    short = min(length, s.max_response_length)
    extra = Extra(damage_prompts(session), refusal_prompts(session))
    probes = report_probes(s)
    check: list[DamageCheck] = []  # the base's figures, measured at the first confirmation
    measured: dict[int, tuple[float, float | None]] = {}  # over-refusal, capability per trial

    def confirm(c: Candidate) -> Candidate:
        if not check:
            check.append(base_check(session, length, short, extra, probes, events))
        params = session.run_dir.load_trial(c.number).params
        with session.editor.applied(plan(session.layout.writers, session.directions, params)):
            got, cap = remeasure(
                session, length, short, extra, probes if check[0].capability is not None else ()
            )
        again = with_refusal_rate(c, got["refusal_rate"], session.base_refusal_rate)
        damaged = check[0].damaged(got["overrefusal_rate"], cap)
        again = replace(again, damaged=damaged)
        measured[c.number] = (got["overrefusal_rate"], cap)
        cap_text = "" if cap is None else f", capability {cap:.2f}"
        events.message(
            f"re-measured trial {c.number} with {length}-token answers: refusals "
            f"{c.refusal_rate:.2f} -> {again.refusal_rate:.2f}, over-refusal "
            f"{got['overrefusal_rate']:.2f}{cap_text}{agreement_text(got)}"
            + (" (damaged: passed over)" if damaged else "")
        )
        return again

    chosen, confirmed = select_confirmed(cands, policy, confirm, s.confirm_trials)
    if confirmed:
        entries = {
            str(n): Confirmation(
                c.refusal_rate, c.refusal_score, length, *measured[n], c.damaged
            ).to_dict()
            for n, c in confirmed.items()
        }
        session.run_dir.save_confirmed({**session.run_dir.load_confirmed(), **entries})
        st.set_shared(study, "confirmed", {**(st.get_shared(study, "confirmed") or {}), **entries})
    if s.confirm_trials and not policy.startswith("trial:") and chosen.number not in confirmed:
        events.message(
            f"trial {chosen.number} was not re-measured: confirm_trials spent, and every "
            "re-measured trial was damaged"
        )
    if chosen.damaged:
        events.message(f"every trial left was found damaged; trial {chosen.number} is the choice")
    return chosen


def record_choice(run_dir: RunDir, number: int, policy: str) -> None:
    """Remember the chosen trial (the report marks it)."""
    run_dir.save_choice(number, policy)
