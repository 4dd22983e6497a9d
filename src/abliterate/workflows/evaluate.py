"""`abliterate evaluate`: one model measured against a base model, as a dict of metrics."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from abliterate.config import Settings
from abliterate.errors import AbliterateError
from abliterate.eval.capability import capability, read_probes
from abliterate.eval.evaluate import Evaluator
from abliterate.events import Events
from abliterate.model import loading
from abliterate.stages.base import eval_settings
from abliterate.stages.held_out import Baseline, add_judge, report_probes
from abliterate.stages.session import batch_size, load_model, load_prompts, resolve_prompt_defaults


def evaluate_against_base(
    settings: Settings,
    model: str,
    base: str,
    message: Callable[[str], None] = lambda _m: None,
    loaded: tuple | None = None,
) -> dict:
    """Refusal rate, over-refusal, KL from `base`, hedging, compliance gap (and capability when
    probes are configured) of `model`, and of `base`; under "report", both measured as a run's
    held-out report is (stages/held_out.py). `loaded` = (model, tokenizer) measures a model
    already in memory (e.g. right after training) instead of loading `model`."""
    settings = _checked(settings, model, base)
    prompts = load_prompts(settings, ("harmful_eval_prompts", "harmless_eval_prompts"))
    probes = read_probes(settings.capability_prompts) if settings.capability_prompts else None
    events = Events(message=message)

    base_model = load_model(settings, events)
    bs = batch_size(settings, base_model.model)
    evaluator = Evaluator(
        base_model.model,
        base_model.tokenizer,
        prompts["harmful_eval_prompts"],
        prompts["harmless_eval_prompts"],
        eval_settings(settings, bs),
    )
    measured = _measure(evaluator, probes, settings.system_prompt)
    result: dict[str, Any] = {"model": model, "base": base, "base_metrics": measured}
    baseline = Baseline.of(
        base_model.model, base_model.tokenizer, evaluator.harmful_prompts,
        evaluator.harmless_prompts, evaluator.settings, settings.report_response_length,
        report_probes(settings),
    )  # fmt: skip
    base_ids = base_model.tokenizer(evaluator.harmless_texts[0])["input_ids"]
    # The reference log-probs live on the CPU: the base model can go before the model loads.
    del base_model
    evaluator.model = None  # type: ignore[assignment]  # freed until the edited model is set
    gc.collect()

    edited_model, edited_tok = loaded or _load(settings, model, events)
    if edited_tok(evaluator.harmless_texts[0])["input_ids"] != base_ids:
        raise AbliterateError(
            f"{model} and {base} tokenize differently: KL divergence needs the same tokenizer"
        )
    evaluator.model, evaluator.tokenizer = edited_model, edited_tok
    result["metrics"] = _measure(evaluator, probes, settings.system_prompt)
    # The report's figures: longer answers, intervals and n, answer classes, multi-token KL.
    result["report"] = {"base": baseline.base, "model": baseline.against(edited_model, edited_tok)}
    if settings.judge:
        del edited_model
        evaluator.model = None  # type: ignore[assignment]
        gc.collect()
        add_judge(settings, (result["report"]["base"], result["report"]["model"]), message)
    result["prompts"] = {k: len(v) for k, v in prompts.items() if "eval" in k}
    return result


def _load(settings: Settings, model: str, events: Events) -> tuple[Any, Any]:
    """(model, tokenizer), the model referenced once, so that a judge can have its memory."""
    edited = load_model(settings.model_copy(update={"model": model}), events)
    return edited.model, edited.tokenizer


def _checked(settings: Settings, model: str, base: str) -> Settings:
    """The settings with the prompt sets a model directory supplies, and everything that can be
    wrong with the input checked, before either model loads."""
    settings = resolve_prompt_defaults(settings.model_copy(update={"model": base}))
    settings = resolve_prompt_defaults(settings, root=model)
    for spec in (base, model, *([settings.judge] if settings.judge else [])):
        loading.resolve(spec, settings.trust_remote_code)
    settings.check_files()
    return settings


def _measure(evaluator: Evaluator, probes, system_prompt: str | None) -> dict[str, float]:
    """The evaluator's metrics of the model it holds, with capability when there are probes."""
    metrics = dict(evaluator.evaluate().values)
    if probes:
        bs = evaluator.settings.batch_size
        metrics["capability"] = capability(
            evaluator.model, evaluator.tokenizer, probes, bs, system_prompt
        )
    return metrics
