"""Stage 6: the trial loop. Each trial applies one edit, measures it, restores the weights and
records the result in the study and the run directory, until the study holds n_trials."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from abliterate.config import Settings
from abliterate.edit.plan import EditParams, plan, strength_table
from abliterate.eval.estimate import agreement
from abliterate.eval.evaluate import Metrics
from abliterate.events import Events
from abliterate.search import study as st
from abliterate.search.objective import kl_score, refusal_score
from abliterate.search.record import TrialMetrics, TrialRecord
from abliterate.search.space import (
    SpaceConfig,
    analysis_depths,
    read_analysis,
    suggest,
    warm_starts,
)
from abliterate.stages.base import answer_samples
from abliterate.stages.session import Session


def space_config(session: Session) -> SpaceConfig:
    available = set(session.layout.components())
    comps = tuple(c for c in session.settings.components if c in available)
    return SpaceConfig.from_settings(session.settings, session.layout.n_layers, comps)


def start_depths(s: Settings, n_layers: int) -> list[float]:
    """Depth fractions of the warm-start trials: the best layers of a directions analysis
    (`warm_start_analysis`) first, then `warm_starts`, each once."""
    depths: list[float] = []
    if s.warm_start_analysis:
        ranked = read_analysis(s.warm_start_analysis, s.residual_stream)
        depths += analysis_depths(ranked, s.residual_stream, n_layers)
    for f in s.warm_starts:
        if all(abs(f - d) > 1e-9 for d in depths):
            depths.append(f)
    return depths


def run_trials(session: Session, events: Events) -> None:
    """Run trials until the study holds `n_trials` complete ones (counting other workers')."""
    s = session.settings
    study, lock = session_study(session)
    sync_trial_files(session, study)
    space = space_config(session)
    depths = start_depths(s, space.n_layers)
    starts = warm_starts(space, tuple(depths))
    if st.enqueue_once(study, starts, s.n_trials, lock):
        events.message(
            f"warm start: {min(len(starts), s.n_trials)} flat edits (strength 1 on every layer, "
            f"direction at depth {', '.join(f'{f:.0%}' for f in depths)}) come first"
        )
    gate = EstimateGate(s.refusal_estimate, s.refusal_estimate_check)
    while True:
        trial = st.claim(study, s.n_trials, s.seed, s.startup_trials, lock)
        if trial is None:
            # The study is full, but other workers may still be running trials: wait for them
            # (or for their heartbeats to go stale and their trials to come back to the queue),
            # so that every worker chooses from the same, complete set of trials.
            if st.counts(study)["complete"] >= s.n_trials:
                break
            time.sleep(st.POLL_SECONDS)
            continue
        try:
            with st.heartbeat(trial):
                params = suggest(trial, space)
                metrics, timing = evaluate_params(session, params, gate.check(session, events))
        except BaseException:  # the edit is already undone (editor.applied)
            st.abandon(study, trial)
            raise
        record = trial_record(session, trial.number, params, metrics, timing)
        stored = record.to_dict()
        trial.set_user_attr("record", {k: v for k, v in stored.items() if k != "samples"})
        trial.set_user_attr("samples", stored["samples"])
        study.tell(trial, [record.refusal_score, record.kl_score])
        session.run_dir.save_trial(record)
        events.trial(record, st.counts(study))
    sync_trial_files(session, study)


# Generation is skipped only for trials the front beats by at least this much (or twice the
# estimate's measured error, if larger) on the estimated refusal rate, at no higher KL.
ESTIMATE_MARGIN = 0.05
# An estimate that misses the measured rate by more than this on average is never used.
ESTIMATE_MAX_ERROR = 0.15


@dataclass
class EstimateGate:
    """Decides, before each trial, whether the refusal estimate may skip its generation: only
    once `check` trials generated in full show it tracks the measured rate (eval/estimate.py)."""

    enabled: bool
    needed: int  # trials generated in full before the estimate may skip any
    said: bool = False

    @staticmethod
    def check_pairs(records) -> list[tuple[float, float]]:
        """(estimate, measured) of the trials generated in full."""
        pairs = []
        for r in records:
            estimate = r.metrics.get("refusal_estimate")
            if not r.pruned and estimate is not None:
                pairs.append((estimate, r.metrics.refusal_rate))
        return pairs

    def check(self, session: Session, events: Events) -> Skip | None:
        if not self.enabled:
            return None
        records = list(session.run_dir.load_trials().values())
        pairs = self.check_pairs(records)
        if len(pairs) < self.needed:
            return None
        scale = calibration(pairs)
        error = agreement([(min(1.0, scale * e), m) for e, m in pairs])
        if not self.said:
            self.said = True
            verdict = "skips" if error <= ESTIMATE_MAX_ERROR else "is too far off: never skips"
            events.message(
                f"refusal estimate x {scale:.2f} vs measured over {len(pairs)} trials: mean "
                f"error {error:.3f}; from now on it {verdict} generation for dominated trials"
            )
        if error > ESTIMATE_MAX_ERROR:
            return None
        front = [(r.metrics.kl, r.metrics.refusal_rate) for r in records if not r.pruned]
        margin = max(ESTIMATE_MARGIN, 2 * error)

        def skip(kl: float, estimate: float) -> float | None:
            rate = min(1.0, scale * estimate)
            beaten = any(k <= kl and ref <= rate - margin for k, ref in front)
            return rate if beaten else None

        return skip


Skip = Callable[[float, float], float | None]


def calibration(pairs: list[tuple[float, float]]) -> float:
    """The factor that best maps estimates onto measured rates (least squares through 0): the
    opening tokens carry only part of the refusals (a refusal can open with a token compliant
    answers share), so the raw estimate runs low by a steady factor."""
    num = sum(e * m for e, m in pairs)
    den = sum(e * e for e, _ in pairs)
    return num / den if den > 0 else 1.0


def evaluate_params(
    session: Session, params: EditParams, skip: Skip | None = None
) -> tuple[Metrics, dict[str, float]]:
    """Apply, evaluate, reset. Returns the metrics and the time of each part."""
    assert session.evaluator is not None and session.base is not None
    t0 = time.perf_counter()
    with session.editor.applied(plan(session.layout.writers, session.directions, params)):
        t1 = time.perf_counter()
        metrics = session.evaluator.evaluate(
            prune_kl=session.settings.kl_prune_threshold, fallback=session.base, skip=skip
        )
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    parts = {f"evaluate_{k}": v for k, v in metrics.seconds.items()}
    timing = {"edit": t1 - t0, "evaluate": t2 - t1, **parts, "reset": t3 - t2}
    return metrics, {**timing, "total": t3 - t0}


def trial_record(
    session: Session, number: int, params: EditParams, metrics: Metrics, timing: dict[str, float]
) -> TrialRecord:
    return TrialRecord(
        number=number,
        params=params,
        metrics=TrialMetrics.from_dict(metrics.values),
        refusal_score=refusal_score(metrics.values, session.base_refusal_rate, session.weights),
        kl_score=kl_score(metrics["kl"], session.weights),
        pruned=metrics.pruned,
        seconds={k: round(v, 4) for k, v in timing.items()},
        strengths=strength_table(session.layout.n_layers, params),
        samples=answer_samples(metrics, session.evaluator),
    )


def sync_trial_files(session: Session, study) -> None:
    """Write trial records that exist in the study but not on disk (other workers' trials, or a
    worker killed between finishing a trial and writing its file)."""
    have = set(session.run_dir.trial_numbers())
    for t in study.get_trials(deepcopy=False, states=(st.TrialState.COMPLETE,)):
        if t.number not in have and "record" in t.user_attrs:
            session.run_dir.save_trial(study_record(t))


def session_study(session: Session):
    return st.open_study_for(session.settings, session.run_dir)


def study_record(trial) -> TrialRecord:
    """The record a worker published with its finished trial (see run_trials)."""
    return TrialRecord.from_dict(
        {**trial.user_attrs["record"], "samples": trial.user_attrs.get("samples", {})}
    )
