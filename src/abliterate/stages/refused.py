"""Which harmful direction prompts the unedited model refuses (`direction_harmful = "refused"`).

A safety-tuned model answers part of a harmful prompt set anyway (Qwen2.5-Coder 0.5B: about 40 %
of harmful_train). The residuals of those prompts carry the requests' topics but not the decision
to refuse, so their share of the harmful mean dilutes the refusal direction with what the edit
should leave alone. Arditi et al. keep only the harmful prompts the model refuses; so does this
stage, from a short greedy answer to each (a stock refusal says so at once). The answered ones
then make the better baseline (`direction_baseline = "answered"`): the difference between the
refused and the answered harmful means holds the decision to refuse and little of what harmful
requests share, which the harmless mean leaves in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from abliterate import activations
from abliterate.config import Settings
from abliterate.eval.generate import generate
from abliterate.eval.refusal import is_refusal
from abliterate.events import Events, counter

# New tokens of the short answer: "I'm sorry", "As an AI", "I cannot" open a stock refusal.
REFUSED_TOKENS = 16
# Fewer refused prompts than this make a noisier mean than the whole set's: keep every prompt.
MIN_REFUSED = 8
# Fewer answered prompts than this make a noisy baseline: compare with the harmless mean instead.
MIN_ANSWERED = 16


def refused_rows(
    model,
    tokenizer,
    texts: Sequence[str],
    settings: Settings,
    events: Events,
    batch_size: int,
    share_prefix: bool,
) -> list[bool] | None:
    """Whether the unedited model refuses each chat-formatted harmful text (a REFUSED_TOKENS
    greedy answer holding a refusal marker), or None where the split says nothing: fewer than
    MIN_REFUSED refused, or every one (nothing to leave out)."""
    tick = counter(events, "refusals (harmful direction prompts)", len(texts))
    delimiters = [(p[0], p[1]) for p in settings.reasoning_delimiters]
    answers = generate(
        model, tokenizer, texts, REFUSED_TOKENS, batch_size, settings.refusal_markers,
        on_batch=tick, delimiters=delimiters, share_prefix=share_prefix,
    )  # fmt: skip
    refused = [is_refusal(a, settings.refusal_markers, delimiters) for a in answers]
    n, k = len(refused), sum(refused)
    if k < MIN_REFUSED or k == n:
        why = "every one" if k == n else f"fewer than {MIN_REFUSED}"
        events.message(
            f"harmful direction prompts: {k} of {n} refused by the unedited model ({why}); "
            "the direction uses all of them"
        )
        return None
    events.message(
        f"harmful direction prompts: {k} of {n} refused by the unedited model "
        f"({REFUSED_TOKENS}-token answers); the direction uses those {k} "
        '(direction_harmful = "refused")'
    )
    return refused


def split_harmful(
    bad: activations.Residuals,
    refused: Sequence[bool] | None,
    baseline: str,
    events: Events,
) -> tuple[activations.Residuals, activations.Residuals | None]:
    """The harmful statistics the direction starts from (the refused prompts' where `refused`
    says which) and what it is measured against instead of the harmless mean: the answered
    prompts' with `baseline` "answered" where at least MIN_ANSWERED were answered, else None
    (the harmless mean)."""
    if refused is None:
        return bad, None
    kept = keep_rows(bad, refused)
    if baseline != "answered":
        return kept, None
    answered = [not r for r in refused]
    if sum(answered) < MIN_ANSWERED:
        events.message(
            f"only {sum(answered)} harmful direction prompts answered (fewer than "
            f"{MIN_ANSWERED}): the direction is measured against the harmless mean"
        )
        return kept, None
    events.message(
        f"the direction is the refused prompts' mean minus the {sum(answered)} answered ones' "
        '(direction_baseline = "answered")'
    )
    return kept, keep_rows(bad, answered)


def keep_rows(residuals: activations.Residuals, rows: Sequence[bool]) -> activations.Residuals:
    """The statistics of the prompts marked in `rows` only (needs the full vectors)."""
    assert residuals.full is not None  # collected with keep_full
    full = residuals.full[torch.tensor(list(rows), dtype=torch.bool)]
    return activations.Residuals(full.double().mean(0), full.shape[0], full)
