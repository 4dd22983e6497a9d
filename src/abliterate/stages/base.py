"""Stage 5: the unedited model measured on the evaluation prompts, the reference of every trial."""

from __future__ import annotations

from abliterate.config import Settings
from abliterate.errors import AbliterateError
from abliterate.eval.evaluate import EvalSettings, Evaluator, Metrics, sample_indices
from abliterate.eval.prefix import PrefixCheck
from abliterate.eval.scorers import MarkerConfig
from abliterate.events import Events
from abliterate.search import study as st
from abliterate.stages.session import Session

SAMPLES = 5  # responses kept per prompt set in each trial record


def eval_settings(settings: Settings, bs: int, search: bool = False) -> EvalSettings:
    """How a model is measured; in a search, over-refusal is answered on a seeded sample."""
    return EvalSettings(
        max_response_length=settings.max_response_length,
        batch_size=bs,
        overrefusal_sample=settings.overrefusal_sample if search else 0,
        overrefusal_response_length=settings.overrefusal_response_length if search else 0,
        overrefusal_openings=settings.overrefusal_openings and search,
        openings_only=settings.trial_openings_only and search,
        sample_seed=settings.seed,
        shared_prefix=settings.shared_prefix,
        own_decoding=settings.own_decoding,
        system_prompt=settings.system_prompt,
        kl_token_count=settings.kl_token_count,
        markers=MarkerConfig(
            settings.refusal_markers,
            settings.hedge_markers,
            [(p[0], p[1]) for p in settings.reasoning_delimiters],
        ),
    )


def prefix_line(check: PrefixCheck) -> str:
    """The log line saying whether prompts share their prefix's computation, and why."""
    if check.used:
        return (
            f"shared prefix: {check.shared_tokens} template tokens computed once per batch "
            f"(next-token KL {check.kl:.1g} against plain batches)"
        )
    return f"shared prefix: off ({check.reason})"


def direction_sample(session: Session, kind: str, k: int) -> list[str]:
    """A seeded sample of `k` prompts of the `kind` ("harmful"/"harmless") direction set,
    leaving out the evaluation and report prompts (0 = none)."""
    if not k:
        return []
    taken = set(session.prompts.get(f"{kind}_eval_prompts", ()))
    taken |= set(session.prompts.get(f"{kind}_report_prompts", ()))
    source = session.prompts.get(f"{kind}_prompts", ())
    pool = list(dict.fromkeys(p for p in source if p not in taken))
    return [pool[i] for i in sample_indices(len(pool), k, session.settings.seed)]


def measure_base(session: Session, events: Events) -> Metrics:
    s = session.settings
    session.evaluator = Evaluator(
        session.model,
        session.tokenizer,
        session.prompts["harmful_eval_prompts"],
        session.prompts["harmless_eval_prompts"],
        eval_settings(s, session.batch_size, search=True),
        # judged by their opening, so only where openings are on
        harmful_openings=direction_sample(
            session, "harmful", s.harmful_openings_sample if s.overrefusal_openings else 0
        ),
    )
    events.message(prefix_line(session.evaluator.prefix_check))
    check = session.evaluator.greedy_check
    events.message(f"own decoding loop: {'on' if check.used else 'off'} ({check.reason})")
    session.base = session.evaluator.evaluate(
        progress=lambda st_, d, t: events.progress(f"base {st_}", d, t)
    )
    if session.base["refusal_rate"] == 0:
        raise AbliterateError(
            "the unedited model refuses none of the harmful evaluation prompts: there is no "
            "refusal behaviour to remove (check the prompt sets, system prompt and markers)"
        )
    session.base, line = session.evaluator.enable_openings(session.base)
    events.message(line)
    if s.refusal_estimate:
        session.evaluator.enable_estimate(session.base)
        estimator = session.evaluator.estimator
        assert estimator is not None
        events.message(
            f"refusal estimate: {estimator.estimate(session.model):.2f} for the base model "
            f"(measured {session.base['refusal_rate']:.2f}), from {len(estimator.openings)} "
            "refusal-opening token(s)"
        )
    record = _metrics_record(session.base, session)
    session.run_dir.save_base(record)
    if session.settings.storage:
        study, _lock = st.open_study_for(session.settings, session.run_dir)
        st.set_shared(study, "base", record)
    return session.base


def _metrics_record(m: Metrics, session: Session) -> dict:
    return {
        "metrics": m.values,
        "pruned": m.pruned,
        "samples": answer_samples(m, session.evaluator),
    }


def answer_samples(m: Metrics, evaluator: Evaluator | None) -> dict[str, list[dict[str, str]]]:
    """The first answers of each set, next to the prompts they answer."""
    out: dict[str, list[dict[str, str]]] = {}
    if evaluator is None:
        return out
    sources = (evaluator.harmful_prompts, evaluator.overrefusal_prompts)
    for key, src, responses in zip(
        ("harmful", "harmless"), sources, (m.harmful_responses, m.harmless_responses), strict=True
    ):
        if responses:
            pairs = zip(src[:SAMPLES], responses[:SAMPLES], strict=True)
            out[key] = [{"prompt": p, "response": r} for p, r in pairs]
    return out
