"""Stage 9: the held-out report. The chosen model, loaded back from its exported files (or, with
no export, edited in memory), and the base model, both measured on the report prompts that the
search and the choice never saw (stages/split.py), with longer answers than the search's.

Every rate has its count, n and a Wilson 95 % interval; KL has its n and a normal-approximation
interval of the mean over prompts. Each answer is kept with its labels (refusal by markers;
empty, degenerate or normal by eval/answers.py), so any figure can be re-counted from the saved
answers without trusting this code.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor

from abliterate.atomic import write_text
from abliterate.edit.plan import plan
from abliterate.eval import greedy
from abliterate.eval import kl as kl_mod
from abliterate.eval.answers import classify, wilson
from abliterate.eval.capability import exact_match, probe_answers, read_probes
from abliterate.eval.evaluate import EvalSettings
from abliterate.eval.generate import generate
from abliterate.eval.judge import LABELS, agreement, judge
from abliterate.eval.prefix import check as prefix_check
from abliterate.eval.probes import builtin_probes
from abliterate.eval.refusal import is_refusal, strip_reasoning
from abliterate.events import Events
from abliterate.export.api import Exported
from abliterate.export.card import with_held_out
from abliterate.model import gguf, loading
from abliterate.prompts import chat_texts
from abliterate.search.record import TrialRecord
from abliterate.stages.base import eval_settings
from abliterate.stages.session import Session

# Teacher-forced KL over the first tokens of the base model's own answers: first-token KL is
# blind where the first token is fixed, and damage often shows a few tokens in.
MULTI_TOKEN_KL = 16

Progress = Callable[[str, int, int], None]
HARMLESS_REPORT = "harmless_report_prompts"


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    """A proportion with its count, n and Wilson 95 % interval."""
    k, n = sum(flags), len(flags)
    low, high = wilson(k, n)
    return {"value": k / n if n else 0.0, "k": k, "n": n, "low": low, "high": high}


def mean_interval(values: Tensor) -> dict[str, Any]:
    """A mean over prompts with n and a normal-approximation 95 % interval (floored at 0)."""
    n = values.numel()
    mean = values.mean().item() if n else 0.0
    half = 1.96 * values.std().item() / math.sqrt(n) if n > 1 else 0.0
    return {"value": mean, "n": n, "low": max(0.0, mean - half), "high": mean + half}


@dataclass
class ReportTexts:
    """The report prompts, chat-formatted for one tokenizer."""

    harmful: list[str]
    harmless: list[str]
    harmful_texts: list[str]
    harmless_texts: list[str]

    @classmethod
    def build(
        cls, tokenizer, harmful: list[str], harmless: list[str], system: str | None
    ) -> ReportTexts:
        return cls(
            harmful,
            harmless,
            chat_texts(tokenizer, harmful, system),
            chat_texts(tokenizer, harmless, system),
        )


def labelled_answers(
    model, tokenizer, prompts: list[str], texts: list[str], es: EvalSettings, length: int,
    tick: Callable[[int], None] | None = None, own_loop: bool = False, share_prefix: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Greedy answers of `length` new tokens, each with its refusal and answer-class labels.
    No early stop on refusal markers: a refusal may be followed by text that changes nothing,
    but the report keeps the whole answer for a reader."""
    responses = generate(
        model, tokenizer, texts, length, es.batch_size, stop_markers=(), on_batch=tick,
        delimiters=es.markers.delimiters, own_loop=own_loop, share_prefix=share_prefix,
    )  # fmt: skip
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        refused = is_refusal(response, es.markers.refusal, es.markers.delimiters)
        out.append(
            {
                "prompt": prompt,
                "response": response,
                "refusal": refused,
                "class": classify(strip_reasoning(response, es.markers.delimiters)),
            }
        )
    return out


def summary(harmful: list[dict], harmless: list[dict]) -> dict[str, Any]:
    """Rates from labelled answers. An empty or degenerate answer to a harmful prompt is not
    compliance, whatever the markers say."""
    complied = [not a["refusal"] and a["class"] == "normal" for a in harmful]
    classes = {
        name: {c: sum(a["class"] == c for a in answers) for c in ("empty", "degenerate", "normal")}
        for name, answers in (("harmful", harmful), ("harmless", harmless))
    }
    return {
        "refusal_rate": rate([a["refusal"] for a in harmful]),
        "compliance_rate": rate(complied),
        "overrefusal_rate": rate([a["refusal"] for a in harmless]),
        "answer_classes": classes,
    }


def measure(
    model, tokenizer, report: ReportTexts, es: EvalSettings, length: int,
    references: dict[str, kl_mod.KLReference] | None = None, progress: Progress | None = None,
    probes: Sequence[dict[str, str]] = (), own_loop: bool = False, share_prefix: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Answers, rates, (against `references`, the base model's) KL, and the exact-answer rate on
    capability `probes` of one model. `own_loop`: decode with eval/greedy.py (checked by the
    caller), where rows that end their turn leave the batch; `share_prefix`: the template's
    shared prefix computed once per batch (eval/prefix.py, checked by the caller)."""
    done = 0
    total = len(report.harmful) + len(report.harmless)

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("answers", done, total)

    # One pass over both sets: on a CPU a decoding step costs about the same for 20 rows as for
    # 50, and the report's answers are long.
    both = labelled_answers(
        model, tokenizer, report.harmful + report.harmless,
        report.harmful_texts + report.harmless_texts, es, length, tick, own_loop, share_prefix,
    )  # fmt: skip
    harmful, harmless = both[: len(report.harmful)], both[len(report.harmful) :]
    result = {**summary(harmful, harmless), "response_length": length}
    for name, ref in (references or {}).items():
        result[name] = mean_interval(kl_mod.kl_per_prompt(model, ref))
    if probes:
        result["capability"], result["capability_answers"] = probe_report(
            model, tokenizer, probes, es, own_loop, share_prefix
        )
    result["answers"] = {"harmful": harmful, "harmless": harmless}
    return result


def probe_report(
    model, tokenizer, probes: Sequence[dict[str, str]], es: EvalSettings,
    own_loop: bool = False, share_prefix: bool = False,
):  # fmt: skip
    """(exact-answer rate with its interval, every probe with its answer)."""
    responses = probe_answers(
        model, tokenizer, probes, es.batch_size, es.system_prompt,
        own_loop=own_loop, share_prefix=share_prefix,
    )  # fmt: skip
    correct = [exact_match(r, p["answer"]) for p, r in zip(probes, responses, strict=True)]
    rows = [
        {**p, "response": r, "correct": c}
        for p, r, c in zip(probes, responses, correct, strict=True)
    ]
    return rate(correct), rows


def report_probes(settings) -> list[dict[str, str]]:
    """The capability probes of a report: the configured file, else the built-in ones."""
    return (
        read_probes(settings.capability_prompts)
        if settings.capability_prompts
        else builtin_probes()
    )


def add_judge(settings, reports: Sequence[dict[str, Any]], say=None) -> None:
    """Label every answer of `reports` (measure() results) with the judge model, in place: each
    answer gets its label and scores, each report a "judge" summary with the share of each label
    (Wilson intervals) and the judge's agreement with the markers on refusal."""
    loaded = loading.load(
        settings.judge, dtypes=settings.dtypes, device_map=settings.device_map, on_message=say
    )
    try:
        for report in reports:
            summary: dict[str, Any] = {"model": settings.judge}
            for part, answers in report["answers"].items():
                verdicts = judge(
                    loaded.model, loaded.tokenizer, [a["prompt"] for a in answers],
                    [a["response"] for a in answers], settings.batch_size or 8,
                )  # fmt: skip
                for a, v in zip(answers, verdicts, strict=True):
                    a["judge"], a["judge_scores"] = v.label, v.scores
                summary[part] = {
                    **{label: rate([v.label == label for v in verdicts]) for label in LABELS},
                    "agreement_with_markers": agreement([a["refusal"] for a in answers], verdicts),
                }
            report["judge"] = summary
    finally:
        del loaded
        gc.collect()


def kl_references(
    model, tokenizer, report: ReportTexts, batch_size: int, share_prefix: bool = False
) -> dict:
    """The base model's log-probabilities on the harmless report prompts (first token, and the
    first MULTI_TOKEN_KL tokens of its own answers)."""
    texts = report.harmless_texts
    return {
        "kl": kl_mod.reference(model, tokenizer, texts, 1, batch_size, share_prefix),
        f"kl_{MULTI_TOKEN_KL}_tokens": kl_mod.reference(
            model, tokenizer, texts, MULTI_TOKEN_KL, batch_size, share_prefix
        ),
    }


# -- the stage ------------------------------------------------------------------------------


@contextmanager
def chosen_model(session: Session, record: TrialRecord, exported: Exported | None, say):
    """(model, tokenizer, what was measured) of the chosen trial: loaded back from the first
    exported kind (merged, GGUF, adapter), or with no export the session's model edited in
    memory. A loaded copy is freed when the block ends."""
    path = None if exported is None else exported.merged or exported.gguf or exported.adapter
    if exported is None or path is None:
        with in_memory(session, record, "edited in memory (no export)") as found:
            yield found
        return
    # Reading a GGUF converts it into the cache once; a conversion made only for this report
    # (about 4 bytes per parameter) is removed with it.
    converted = gguf.converted_dir(path) if path == exported.gguf else None
    made_here = converted is not None and not converted.exists()
    try:
        model, tokenizer, what = _load_exported(exported, session.settings, say)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        # A second copy of a model that only just fits would end a finished run in an error;
        # the in-memory edit is the same model (tests/test_export.py proves it), so measure that.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        say(
            "[yellow]warning:[/yellow] no memory for the export beside the model; "
            "measuring the edit in memory"
        )
        with in_memory(session, record, "edited in memory (the export did not fit)") as found:
            yield found
        return
    try:
        yield model, tokenizer, what
    finally:
        del model, tokenizer
        gc.collect()
        if made_here and converted is not None:
            shutil.rmtree(converted, ignore_errors=True)
            Path(str(converted) + ".lock").unlink(missing_ok=True)


@contextmanager
def in_memory(session: Session, record: TrialRecord, weights: str):
    edits = plan(session.layout.writers, session.directions, record.params)
    with session.editor.applied(edits):
        dtype = str(session.model.dtype).removeprefix("torch.")
        what = {"weights": weights, "dtype": dtype, "quantization": session.settings.quantization}
        yield session.model, session.tokenizer, what


def _load_exported(exported: Exported, s, say) -> tuple[Any, Any, dict[str, Any]]:
    """The first exported kind (merged, GGUF, adapter) loaded from its files, and a description
    of the weights measured."""
    options: dict[str, Any] = dict(
        device_map=s.device_map, max_memory=s.max_memory, on_message=say, dtypes=s.dtypes,
        quantization=s.quantization, trust_remote_code=s.trust_remote_code,
    )  # fmt: skip
    if exported.merged is not None or exported.gguf is not None:
        path = exported.merged or exported.gguf
        kind = "merged safetensors" if exported.merged is not None else "GGUF"
        loaded = loading.load(str(path), **options)
        model: Any = loaded.model
    else:
        kind, path = "LoRA adapter on the source model", exported.adapter
        loaded = loading.load(s.model, **options)
        model = PeftModel.from_pretrained(loaded.model, str(path))
    what: dict[str, Any] = {
        "weights": f"{kind}, read back from the exported files",
        "path": str(path),  # for the run directory only; an export does not carry local paths
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "quantization": s.quantization,
    }
    if exported.gguf_report is not None and kind == "GGUF":
        what["gguf_types"] = exported.gguf_report.types
    return model, loaded.tokenizer, what


def held_out_report(
    session: Session, record: TrialRecord, exported: Exported | None, events: Events
) -> dict[str, Any]:
    """Measure base and chosen model on the report prompts; saved as held_out.json in the run
    directory and, with an export, into its trial.json and model card."""
    s = session.settings

    def progress(who: str) -> Progress:
        return lambda part, done, total: events.progress(f"held-out {who} {part}", done, total)

    baseline = Baseline.of(
        session.model, session.tokenizer, session.prompts["harmful_report_prompts"],
        session.prompts[HARMLESS_REPORT], eval_settings(s, session.batch_size),
        s.report_response_length, report_probes(s), progress("base"),
        saved=session.run_dir.load_held_out(),
        # the search already checked the own loop on this same unedited model
        own_loop=session.evaluator.greedy_check.used if session.evaluator else None,
    )  # fmt: skip
    with chosen_model(session, record, exported, events.message) as (model, tokenizer, what):
        chosen = baseline.against(model, tokenizer, progress("chosen"))
    if s.judge:
        add_judge(s, (baseline.base, chosen), events.message)
    result = {"measured": what, "trial": record.number, "base": baseline.base, "chosen": chosen}
    session.run_dir.save_held_out(result)
    if exported is not None:
        for directory in {p if p.is_dir() else p.parent for p in exported.paths}:
            add_to_export(directory, result)
    return result


@dataclass
class Baseline:
    """The base model's side of a report, measured once: its KL references on the report
    prompts and its own report. Every other model (the chosen trial, each compared trial,
    another tool's export, a model given to `evaluate`) is measured `against` it."""

    harmful: list[str]
    harmless: list[str]
    es: EvalSettings
    length: int
    probes: Sequence[dict[str, str]]
    refs: dict
    base: dict[str, Any]
    own_loop: bool = False  # eval/greedy.py agreed with model.generate on the base model
    share_prefix: bool = False  # eval/prefix.py agreed with plain batches on the base model

    @classmethod
    def of(
        cls, model, tokenizer, harmful: list[str], harmless: list[str], es: EvalSettings,
        length: int, probes: Sequence[dict[str, str]] = (), progress: Progress | None = None,
        saved: dict[str, Any] | None = None, own_loop: bool | None = None,
    ) -> Baseline:  # fmt: skip
        """The base report is reused from `saved` (an earlier held_out.json of the same run)
        when that measured the same prompts and probes at the same length: exports of several
        trials measure the base once."""
        texts = ReportTexts.build(tokenizer, harmful, harmless, es.system_prompt)
        # checked here, at the report's length: the search checked its own, shorter one
        share = (
            es.shared_prefix
            and prefix_check(
                model, tokenizer, texts.harmless_texts + texts.harmful_texts, length
            ).used
        )
        refs = kl_references(model, tokenizer, texts, es.batch_size, share)
        if own_loop is None:  # not checked yet on this model
            own_loop = es.own_decoding and greedy.check(model, tokenizer, texts.harmful_texts).used
        reusable = saved is not None and _same_report(saved["base"], texts, length, probes)
        base = saved["base"] if saved is not None and reusable else None
        if base is None:
            base = measure(
                model, tokenizer, texts, es, length, None, progress, probes, own_loop, share
            )
        return cls(harmful, harmless, es, length, probes, refs, base, own_loop, share)

    def against(self, model, tokenizer, progress: Progress | None = None) -> dict[str, Any]:
        """`model`'s report, its KL taken from the base's references. Its own tokenizer formats
        the prompts (a read-back export carries its own copy)."""
        texts = ReportTexts.build(tokenizer, self.harmful, self.harmless, self.es.system_prompt)
        return measure(
            model, tokenizer, texts, self.es, self.length, self.refs, progress, self.probes,
            self.own_loop, self.share_prefix,
        )  # fmt: skip


def _same_report(base: dict[str, Any], texts: ReportTexts, length: int, probes) -> bool:
    answers = base["answers"]
    return (
        base["response_length"] == length
        and [a["prompt"] for a in answers["harmful"]] == texts.harmful
        and [a["prompt"] for a in answers["harmless"]] == texts.harmless
        and [p["prompt"] for p in base.get("capability_answers", [])]
        == [p["prompt"] for p in probes]
    )


def figures(m: dict[str, Any]) -> dict[str, Any]:
    """One model's report without its answers."""
    return {k: v for k, v in m.items() if k not in ("answers", "capability_answers")}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The report without its answers: what trial.json and the card carry."""

    return {
        "measured": {k: v for k, v in result["measured"].items() if k != "path"},
        "trial": result["trial"],
        "base": figures(result["base"]),
        "chosen": figures(result["chosen"]),
    }


def add_to_export(directory: Path, result: dict[str, Any]) -> None:
    """Put the held-out figures first in an export's trial.json and model card."""
    trial_file = directory / "trial.json"
    if trial_file.is_file():
        trial = json.loads(trial_file.read_text(encoding="utf-8"))
        trial = {
            "held_out": headline(result),
            **{k: v for k, v in trial.items() if k != "held_out"},
        }
        write_text(trial_file, json.dumps(trial, indent=2))
    card = directory / "README.md"
    if card.is_file():
        write_text(card, with_held_out(card.read_text(encoding="utf-8"), headline(result)))
