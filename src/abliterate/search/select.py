"""Choosing a trial from the Pareto front, by a named policy."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from abliterate.errors import AbliterateError

if TYPE_CHECKING:  # only for annotations: this module is loaded for --help, records bring torch
    from abliterate.search.record import TrialRecord


@dataclass(frozen=True)
class Candidate:
    """A trial as the choice sees it: its two objectives and the figures behind them."""

    number: int
    refusal_score: float
    kl_score: float
    refusal_rate: float
    kl: float
    damaged: bool = False  # re-measured and found to hurt harmless answers (search/choice.py)

    @classmethod
    def from_record(cls, record: TrialRecord) -> Candidate:
        """Re-measured figures (see search/choice.py) win over the search's own."""
        m, again = record.metrics, record.confirmed
        cand = cls(record.number, record.refusal_score, record.kl_score, m.refusal_rate, m.kl)
        if again is None:
            return cand
        return replace(
            cand,
            refusal_rate=again.refusal_rate,
            refusal_score=again.refusal_score,
            damaged=again.damaged,
        )


def pareto_front(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates not dominated in (refusal_score, kl_score), sorted by refusal score."""
    front = []
    for c in cands:
        dominated = any(
            o.refusal_score <= c.refusal_score
            and o.kl_score <= c.kl_score
            and (o.refusal_score < c.refusal_score or o.kl_score < c.kl_score)
            for o in cands
        )
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: (c.refusal_score, c.kl_score, c.number))


def _knee(front: list[Candidate]) -> Candidate:
    """The front point farthest from the line joining its two ends, with KL on a log scale (KL
    spans orders of magnitude; on a linear scale the knee sits wherever the largest KL is)."""
    if len(front) <= 2:
        return min(front, key=lambda c: (c.refusal_score + c.kl_score, c.number))
    r = [c.refusal_score for c in front]
    k = [math.log10(max(c.kl_score, 1e-9)) for c in front]
    r_span = (max(r) - min(r)) or 1.0
    k_span = (max(k) - min(k)) or 1.0
    pts = [((ri - min(r)) / r_span, (ki - min(k)) / k_span) for ri, ki in zip(r, k, strict=True)]
    (x0, y0), (x1, y1) = pts[0], pts[-1]

    def dist(p):
        return abs((y1 - y0) * p[0] - (x1 - x0) * p[1] + x1 * y0 - y1 * x0)

    return front[max(range(len(front)), key=lambda i: (dist(pts[i]), -front[i].number))]


# Without a terminal: the lowest KL among trials refusing at most 3 % once re-measured, of those
# with KL at most 0.25. A bound at the rate a user wants held out (0.10), or at 0.05, picks
# trials that only just pass it on the prompts they were chosen on and refuse more on others
# (Qwen2.5 0.5B: re-measured 0.048, held out 3/20). Held-out first-token KL ran 0.6-1.1x the
# search's there: the ceiling keeps the export under the 0.25 a user notices in the answers.
DEFAULT_POLICY = "min-kl-under:0.03,max-kl:0.25"
POLICIES = ("min-kl-under:R[,max-kl:K]", "min-refusals", "knee", "trial:N")


def _bounds(policy: str) -> tuple[float, float]:
    """The refusal bound and KL ceiling of `min-kl-under:R[,max-kl:K]`."""
    bound_text, _, ceiling_text = policy.removeprefix("min-kl-under:").partition(",max-kl:")
    try:
        return float(bound_text), float(ceiling_text) if ceiling_text else math.inf
    except ValueError:
        raise AbliterateError(
            f"bad policy {policy!r}: expected min-kl-under:0.05 or min-kl-under:0.05,max-kl:0.2"
        ) from None


def check_policy(policy: str) -> None:
    """Raise on a policy `select` cannot read: checked when the settings load, not after the
    search."""
    if policy.startswith("min-kl-under:"):
        _bounds(policy)
    elif policy.startswith("trial:"):
        if not policy.removeprefix("trial:").isdigit():
            raise AbliterateError(f"bad policy {policy!r}: expected trial:N, a trial number")
    elif policy not in ("min-refusals", "knee"):
        raise AbliterateError(
            f"unknown selection policy {policy!r}; use one of: {', '.join(POLICIES)}"
        )


def _min_kl_under(cands: Sequence[Candidate], policy: str) -> Candidate:
    """`min-kl-under:R[,max-kl:K]` (see `select`)."""
    bound, ceiling = _bounds(policy)
    # a KL ceiling leaves out the edits that buy their last refusals with the model's answers
    # (Qwen2.5 0.5B: the only trial under 0.05 had KL 0.42, the next ones 0.06 at KL 0.13)
    cands = [c for c in cands if c.kl <= ceiling] or list(cands)
    ok = [c for c in cands if c.refusal_rate <= bound]
    if not ok:
        return min(cands, key=lambda c: (c.refusal_rate, c.kl, c.number))
    return min(ok, key=lambda c: (c.kl, c.refusal_rate, c.number))


def select(cands: Sequence[Candidate], policy: str) -> Candidate:
    """Pick one trial. `min-kl-under:R`: lowest KL among trials with refusal rate <= R (else
    the lowest refusal rate), and with `,max-kl:K` among the trials of KL <= K only (all of
    them when none is); `min-refusals`: lowest refusal score, then KL; `knee`: the Pareto
    knee; `trial:N`: trial N. Trials found damaged when re-measured are passed over unless
    every trial is (or one is named)."""
    check_policy(policy)
    if not cands:
        raise AbliterateError("the study has no finished trials to choose from")
    if not policy.startswith("trial:"):
        cands = [c for c in cands if not c.damaged] or list(cands)
    if policy.startswith("min-kl-under:"):
        return _min_kl_under(cands, policy)
    if policy.startswith("trial:"):
        wanted = policy.split(":", 1)[1]
        for c in cands:
            if str(c.number) == wanted:
                return c
        raise AbliterateError(f"policy {policy!r}: no finished trial number {wanted}")
    if policy == "min-refusals":
        return min(cands, key=lambda c: (c.refusal_score, c.kl, c.number))
    return _knee(pareto_front(cands))  # "knee": check_policy allows nothing else


def with_refusal_rate(c: Candidate, rate: float, base_refusal_rate: float) -> Candidate:
    """`c` with its refusal rate re-measured; the refusal score is linear in the rate, so it
    moves by the same amount over the base rate."""
    score = c.refusal_score + (rate - c.refusal_rate) / base_refusal_rate
    return replace(c, refusal_rate=rate, refusal_score=score)


def select_confirmed(
    cands: Sequence[Candidate],
    policy: str,
    confirm: Callable[[Candidate], Candidate],
    budget: int,
) -> tuple[Candidate, dict[int, Candidate]]:
    """Choose by `policy`, but before settling on a trial re-measure it (`confirm`) and choose
    again with what it gave, until the choice lands on a re-measured trial or `budget` trials
    have been re-measured. A policy bound such as min-kl-under:0.1 otherwise favours the trial
    whose search figure happened to fall just under the bound (the winner's curse); re-measured
    with longer answers, refusals only go up, so such a trial drops out and the next one is
    checked. A re-measured trial marked `damaged` drops out the same way (see `select`). When
    the budget is spent before the choice lands on a re-measured trial, the policy chooses
    among the re-measured trials that are not damaged: the next unmeasured pick's figure is
    as optimistic as those that just failed (on Qwen2.5 0.5B all three picks went from 1/19
    to 2/19 refusals, and the next was a KL 0.42 edit). Returns the choice and the
    re-measured candidates by trial number.

    A re-measured trial over a min-kl-under bound is not picked again while the budget lasts,
    even as the lowest rate when none passes: its figure comes from more prompts, so it cannot
    be ranked against the search figures of the others (Qwen2.5 0.5B: two trials at 2/19, the
    cheaper one re-measured at 0.048 and so kept the other from ever being measured)."""
    pool = list(cands)
    confirmed: dict[int, Candidate] = {}
    if policy.startswith("trial:"):
        return select(pool, policy), confirmed
    for _ in range(budget):
        pick = select(_still_open(pool, confirmed, policy), policy)
        if pick.number in confirmed or _not_worth_it(pick, cands, confirmed, policy):
            break
        confirmed[pick.number] = confirm(pick)
        pool = [confirmed.get(c.number, c) for c in pool]
    pick = select(pool, policy)
    sound = [c for c in confirmed.values() if not c.damaged]
    if pick.number not in confirmed and sound:
        pick = select(sound, policy)
    return pick, confirmed


def _still_open(
    pool: list[Candidate], confirmed: dict[int, Candidate], policy: str
) -> list[Candidate]:
    """The trials a min-kl-under policy may still pick for re-measuring: not those found over
    its bound once re-measured (all of them when every one is)."""
    if not policy.startswith("min-kl-under:"):
        return pool
    bound = _bounds(policy)[0]
    failed = {n for n, c in confirmed.items() if c.refusal_rate > bound}
    return [c for c in pool if c.number not in failed] or pool


def _not_worth_it(
    pick: Candidate, cands: Sequence[Candidate], confirmed: dict[int, Candidate], policy: str
) -> bool:
    """Whether a min-kl-under pick, left after others failed, is not worth re-measuring: over
    the KL ceiling while some trial is under it (never the final choice), or over the bound by
    its search figure where a trial of a lower or equal search figure already failed."""
    if not policy.startswith("min-kl-under:"):
        return False
    bound, ceiling = _bounds(policy)
    if pick.kl > ceiling and any(c.kl <= ceiling for c in cands):
        return True
    searched = [c.refusal_rate for c in cands if c.number in confirmed]
    return pick.refusal_rate > bound and any(r < pick.refusal_rate for r in searched)
