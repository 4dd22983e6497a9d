"""Batched greedy generation for evaluation, with early stopping on refusal markers.

A refusal is decided by its first few words, so a batch stops as soon as every row has either
ended its turn or already contains a refusal marker; compliant rows run to the length limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import (
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)

from abliterate.eval.refusal import REFUSAL_MARKERS, is_refusal


class RefusalStop(StoppingCriteria):
    """Marks a row finished once its new text is already a refusal (it cannot become one less)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_width: int, markers: Sequence[str]
    ):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.markers = markers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs):
        new = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_width :], skip_special_tokens=True
        )
        # An empty answer so far is not a refusal yet: only stop on a marker that is present.
        done = [bool(t.strip()) and is_refusal(t, self.markers) for t in new]
        return torch.tensor(done, device=input_ids.device)


def model_device(model: PreTrainedModel) -> torch.device:
    """Where inputs go: the embedding's device (also right for models spread by accelerate)."""
    return model.get_input_embeddings().weight.device


def encoded_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int,
) -> Iterator[tuple[int, BatchEncoding]]:
    """(batch length, left-padded encoding on the model's input device) for each batch of
    already chat-formatted texts (no special tokens added: the template has them)."""
    device = model_device(model)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        yield len(batch), enc.to(device)


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_markers: Sequence[str] | None = REFUSAL_MARKERS,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of already chat-formatted `texts`, decoded without special tokens.

    `stop_markers=None` always generates `max_new_tokens` (or up to eos)."""
    outputs: list[str] = []
    for n, enc in encoded_batches(model, tokenizer, texts, batch_size):
        width = enc["input_ids"].shape[1]
        stops = [RefusalStop(tokenizer, width, stop_markers)] if stop_markers else None
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            stopping_criteria=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        outputs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        if on_batch:
            on_batch(n)
    return outputs
