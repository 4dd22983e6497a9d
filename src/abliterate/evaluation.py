"""`abliterate evaluate`: one model measured against a base model, as a dict of metrics."""

from __future__ import annotations

import gc
from collections.abc import Callable

from abliterate import pipeline
from abliterate.config import Settings
from abliterate.errors import AbliterateError
from abliterate.eval.capability import capability, read_probes
from abliterate.eval.evaluate import Evaluator


def evaluate_against_base(
    settings: Settings, model: str, base: str, message: Callable[[str], None] = lambda _m: None
) -> dict:
    """Refusal rate, over-refusal, KL from `base`, hedging, compliance gap (and capability when
    probes are configured) of `model`, and the same for `base` itself."""
    settings = pipeline.resolve_prompt_defaults(settings.model_copy(update={"model": base}))
    settings = pipeline.resolve_prompt_defaults(settings, root=model)
    prompts = pipeline.load_prompts(settings)
    probes = read_probes(settings.capability_prompts) if settings.capability_prompts else None
    events = pipeline.Events(message=message)

    loaded = pipeline.load_model(settings, events)
    bs = pipeline.batch_size(settings, loaded.model)
    evaluator = Evaluator(
        loaded.model,
        loaded.tokenizer,
        prompts["harmful_eval_prompts"],
        prompts["harmless_eval_prompts"],
        pipeline.eval_settings(settings, bs),
    )
    result = {"model": model, "base": base, "base_metrics": evaluator.evaluate().values}
    if probes:
        result["base_metrics"]["capability"] = capability(
            loaded.model, loaded.tokenizer, probes, bs, settings.system_prompt
        )
    loaded_ids = loaded.tokenizer(evaluator.harmless_texts[0])["input_ids"]
    # The reference log-probs live on the CPU: the base model can go before the model loads.
    del loaded
    evaluator.model = None
    gc.collect()

    edited = pipeline.load_model(settings.model_copy(update={"model": model}), events)
    probe = evaluator.harmless_texts[0]
    if edited.tokenizer(probe)["input_ids"] != loaded_ids:
        raise AbliterateError(
            f"{model} and {base} tokenize differently: KL divergence needs the same tokenizer"
        )
    evaluator.model, evaluator.tokenizer = edited.model, edited.tokenizer
    result["metrics"] = evaluator.evaluate().values
    if probes:
        result["metrics"]["capability"] = capability(
            edited.model, edited.tokenizer, probes, bs, settings.system_prompt
        )
    result["prompts"] = {k: len(v) for k, v in prompts.items() if "eval" in k}
    return result
