"""`abliterate compare`: trials of one or more runs side by side, with sample answers.

Writes `comparison.json` (per run and trial: parameters, every metric, K answers to the same
harmful and harmless prompts from the base and the edited model) and `summary.json` (the best
trial of each run under each selection policy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from abliterate.config import load_settings
from abliterate.edit.plan import plan
from abliterate.errors import AbliterateError
from abliterate.eval.generate import generate
from abliterate.prompts import chat_texts
from abliterate.runs import RunDir
from abliterate.search.record import TrialRecord
from abliterate.search.select import Candidate, pareto_front, select
from abliterate.stages.base import eval_settings
from abliterate.stages.held_out import Baseline, report_probes
from abliterate.stages.held_out import figures as headline_figures
from abliterate.stages.session import Session, open_session
from abliterate.workflows.heretic import heretic_section

POLICIES = ("min-refusals", "knee", "min-kl-under:0.05", "min-kl-under:0.1")


def trial_selection(records: list[TrialRecord], spec: str) -> list[TrialRecord]:
    """`pareto` (default), `all`, or comma-separated trial numbers."""
    if spec == "all":
        return records
    if spec == "pareto":
        front = {c.number for c in pareto_front([Candidate.from_record(r) for r in records])}
        return [r for r in records if r.number in front]
    try:
        wanted = {int(x) for x in spec.split(",") if x.strip()}
    except ValueError:
        raise AbliterateError(f"--trials {spec!r}: expected pareto, all or numbers") from None
    missing = wanted - {r.number for r in records}
    if missing:
        raise AbliterateError(f"no finished trial(s) {sorted(missing)}")
    return [r for r in records if r.number in wanted]


def summary(records: list[TrialRecord]) -> dict[str, dict]:
    cands = [Candidate.from_record(r) for r in records]
    by_number = {r.number: r for r in records}
    out = {}
    for policy in POLICIES:
        c = select(cands, policy)
        out[policy] = {"trial": c.number, "metrics": by_number[c.number].metrics.to_dict()}
    return out


def heretic_summary(section: dict) -> dict:
    """Heretic's front in summary.json: its own figures, and the held-out ones where measured."""
    by_number = {t["number"]: t for t in section["trials"]}
    front = []
    for number in section["front"]:
        t = by_number[number]
        row = {"trial": number, "refusal_rate": t["refusal_rate"], "kl": t["kl"]}
        if str(number) in section["measured"]:
            row["held_out"] = section["measured"][str(number)]
        front.append(row)
    return {"front": front}


def with_held_out(policies: dict[str, dict], entries: list[dict]) -> dict[str, dict]:
    """Each policy's choice with its held-out figures, where that trial was compared."""
    held = {e["number"]: e["held_out"] for e in entries if "held_out" in e}
    return {
        policy: {
            **choice,
            **({"held_out": held[choice["trial"]]} if choice["trial"] in held else {}),
        }
        for policy, choice in policies.items()
    }


def compare_runs(
    run_dirs: list[str],
    trials: str = "pareto",
    samples: int = 3,
    message: Callable[[str], None] = lambda _m: None,
    heretic: HereticInput | None = None,
) -> tuple[dict, dict]:
    """(comparison, summary) for the given run directories, and a Heretic study beside them
    (measured with the first run's held-out prompts and base model)."""
    comparison: dict = {"runs": []}
    summaries: dict = {}
    for path in run_dirs:
        run_dir = RunDir(Path(path))
        if not run_dir.exists():
            raise AbliterateError(f"{path} is not a run directory (no settings.toml)")
        records = [run_dir.load_trial(n) for n in run_dir.trial_numbers()]
        if not records:
            raise AbliterateError(f"{path} has no finished trials")
        chosen = trial_selection(records, trials)
        message(f"{path}: {len(chosen)} trial(s), {samples} sample answer(s) per prompt set")
        first = not comparison["runs"]
        entry = _run_entry(run_dir, chosen, samples, heretic if first else None, message)
        comparison["runs"].append(entry)
        summaries[str(run_dir.path)] = with_held_out(summary(records), entry["trials"])
        if "heretic" in entry:
            comparison["heretic"] = entry.pop("heretic")
            summaries["heretic"] = heretic_summary(comparison["heretic"])
    return comparison, summaries


# Settings that tell two runs' edits apart, shown beside each run's trials.
_DISTINGUISHING = (
    "benign_subspace_rank",
    "orthogonalize_direction",
    "row_normalization",
    "residual_stream",
    "components",
    "overrefusal_penalty",
)


def _run_entry(
    run_dir: RunDir, chosen: list[TrialRecord], k: int, heretic: HereticInput | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict:  # fmt: skip
    settings = load_settings(run_dir.settings_file)
    session = open_session(settings, for_search=False)
    prompts = {
        "harmful": session.prompts["harmful_eval_prompts"][:k],
        "harmless": session.prompts["harmless_eval_prompts"][:k],
    }
    texts = {
        key: chat_texts(session.tokenizer, p, settings.system_prompt) for key, p in prompts.items()
    }

    def answers() -> dict[str, list[str]]:
        return {
            key: generate(
                session.model,
                session.tokenizer,
                t,
                settings.max_response_length,
                session.batch_size,
                stop_markers=None,
            )
            for key, t in texts.items()
        }

    base = answers()
    held_out = HeldOut.start(session)
    trials = []
    for record in chosen:
        edits = plan(session.layout.writers, session.directions, record.params)
        with session.editor.applied(edits):
            entry = _trial_entry(record, prompts, base, answers())
            if held_out is not None:
                entry["held_out"] = held_out.measure(session)
            trials.append(entry)
    dump = settings.model_dump(mode="json")
    return {
        "run_dir": str(run_dir.path),
        "model": settings.model,
        "settings": {k: v for k, v in dump.items() if k in _DISTINGUISHING},
        "base_metrics": (run_dir.load_base() or {}).get("metrics", {}),
        "base_held_out": held_out.base if held_out is not None else None,
        "trials": trials,
        **({"heretic": heretic.section(held_out, settings, say)} if heretic else {}),
    }


@dataclass
class HereticInput:
    """A Heretic study to compare with (workflows/heretic.py): its journal, config.toml and
    exported models by trial number."""

    journal: Path
    config: Path | None = None
    models: dict[int, Path] = field(default_factory=dict)

    def section(self, held_out: HeldOut | None, settings, say) -> dict:
        if self.models and held_out is None:
            raise AbliterateError(
                "measuring Heretic's models needs held-out report prompts in the first run "
                "(it was made with report_fraction 0)"
            )
        return heretic_section(self.journal, self.config, self.models, held_out, settings, say)


@dataclass
class HeldOut:
    """Each compared trial measured like a run's held-out report (stages/held_out.py), in
    memory, on the run's report prompts, capability probes included: figures only, no
    answers."""

    baseline: Baseline

    @property
    def base(self) -> dict:
        return headline_figures(self.baseline.base)

    @classmethod
    def start(cls, session: Session) -> HeldOut | None:
        """The base model's references and figures; None for a run without report prompts."""
        if not session.prompts.get("harmful_report_prompts"):
            return None
        s = session.settings
        baseline = Baseline.of(
            session.model, session.tokenizer, session.prompts["harmful_report_prompts"],
            session.prompts["harmless_report_prompts"], eval_settings(s, session.batch_size),
            s.report_response_length, report_probes(s),
        )  # fmt: skip
        return cls(baseline)

    def measure(self, session: Session) -> dict:
        """The session's model as it is now (a trial's edit applied)."""
        return self.measure_model(session.model, session.tokenizer)

    def measure_model(self, model, tokenizer) -> dict:
        """Any model with the run's tokenizer (another tool's export of the same base)."""
        return headline_figures(self.baseline.against(model, tokenizer))


def _trial_entry(record: TrialRecord, prompts: dict, base: dict, edited: dict) -> dict:
    """One trial of a run in comparison.json: its figures and each prompt's two answers."""
    return {
        "number": record.number,
        "params": record.params.to_dict(),
        "metrics": record.metrics.to_dict(),
        "refusal_score": record.refusal_score,
        "kl_score": record.kl_score,
        "samples": {
            key: [
                {"prompt": p, "base": b, "edited": e}
                for p, b, e in zip(prompts[key], base[key], edited[key], strict=True)
            ]
            for key in prompts
        },
    }
