"""Batched greedy generation for evaluation, with early stopping on refusal markers.

A refusal is decided by its first few words, so a batch stops as soon as every row has either
ended its turn or already contains a refusal marker; compliant rows run to the length limit.

Reasoning ("thinking") models are judged on their answer, never on their reasoning: a row whose
reasoning block is still open is not done, and the returned responses keep their reasoning
blocks with the delimiters (scorers remove them with `strip_reasoning`). Knows nothing about
what counts as a refusal beyond `settled_refusal`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import (
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)

from abliterate import threads
from abliterate.eval import greedy
from abliterate.eval.prefix import (
    MIN_PREFIX,
    PrefixCache,
    common_prefix_length,
    prefix_batches,
    token_rows,
)
from abliterate.eval.refusal import (
    REASONING_DELIMITERS,
    REFUSAL_MARKERS,
    open_reasoning,
    settled_refusal,
)


def special_pattern(
    tokenizer: PreTrainedTokenizerBase, delimiters: Sequence[tuple[str, str]]
) -> re.Pattern[str]:
    """Matches the special-token strings to delete from decoded text: every special token
    except those that spell part of a reasoning delimiter.

    Decoding with `skip_special_tokens=True` would also delete gpt-oss's `<|channel|>`,
    `<|message|>` and `<|end|>`, and its reasoning could then never be found."""
    added = (t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    specials = {*tokenizer.all_special_tokens, *added} - {""}
    kept = {s for s in specials if any(s in d for pair in delimiters for d in pair)}
    # Longest first, so a special token that contains another is removed whole.
    ordered = sorted(specials - kept, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)) or "(?!)")


def decode_rows(
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor | list[list[int]],
    prefixes: Sequence[str],
    specials: re.Pattern[str],
) -> list[str]:
    """Text of generated `ids` (batch, new), each row after its prefix, with `specials` removed."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=False)
    return [specials.sub("", p + t) for p, t in zip(prefixes, texts, strict=True)]


def reopened(prompt: str, delimiters: Sequence[tuple[str, str]]) -> str:
    """The opening delimiter of a reasoning block the formatted `prompt` leaves open, else "".

    DeepSeek-R1 distills (and Qwen3 with thinking on) end their generation prompt with
    "<think>\n", so the model writes only the closing tag; prefixing the opening one makes the
    response say where its reasoning is ("<think>...</think> answer")."""
    return open_reasoning(prompt, delimiters) or ""


class RefusalStop(StoppingCriteria):
    """Marks a row finished once its new text is already a refusal (it cannot become one less).

    `prefixes` (one per row, see `reopened`) are the reasoning blocks the prompts opened."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_width: int,
        markers: Sequence[str],
        delimiters: Sequence[tuple[str, str]] = REASONING_DELIMITERS,
        prefixes: Sequence[str] | None = None,
    ):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.markers = markers
        self.delimiters = delimiters
        self.prefixes = prefixes
        self.specials = special_pattern(tokenizer, delimiters)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs):
        prefixes = self.prefixes or [""] * input_ids.shape[0]
        new = decode_rows(
            self.tokenizer, input_ids[:, self.prompt_width :], prefixes, self.specials
        )
        done = [settled_refusal(t, self.markers, self.delimiters) for t in new]
        return torch.tensor(done, device=input_ids.device)


def model_device(model: PreTrainedModel) -> torch.device:
    """Where inputs go: the embedding's device (also right for models spread by accelerate)."""
    return next(model.get_input_embeddings().parameters()).device


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
        threads.recheck()  # batches are where a long evaluation can follow the machine's load
        yield len(batch), enc.to(device)


def generation_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int,
    share_prefix: bool = False,
) -> Iterator[tuple[int, dict]]:
    """(batch length, `model.generate` inputs) per batch: plain left-padded batches, or with
    `share_prefix` the shared-prefix layout, each batch starting from a copy of the prefix's
    keys and values (see eval/prefix.py; the caller has checked that the model agrees)."""
    if share_prefix:
        rows = token_rows(tokenizer, texts)
        p = common_prefix_length(rows)
        if p >= MIN_PREFIX:
            cache = PrefixCache(model, rows[0][:p])
            device = model_device(model)
            for b in prefix_batches(rows, p, batch_size, tokenizer.pad_token_id, device):
                n = b.input_ids.shape[0]
                threads.recheck()
                inputs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
                yield n, {**inputs, cache.keyword: cache.for_batch(n)}
            return
    for n, enc in encoded_batches(model, tokenizer, texts, batch_size):
        yield n, dict(enc)


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    batch_size: int = 32,
    stop_markers: Sequence[str] | None = REFUSAL_MARKERS,
    on_batch: Callable[[int], None] | None = None,
    delimiters: Sequence[tuple[str, str]] = REASONING_DELIMITERS,
    share_prefix: bool = False,
    own_loop: bool = False,
) -> list[str]:
    """Greedy continuations of already chat-formatted `texts`.

    Special tokens are removed except those in reasoning `delimiters`; a reasoning block the
    prompt opened is re-opened at the start of its response (see `reopened`).
    `stop_markers=None` always generates `max_new_tokens` (or up to eos). `own_loop` decodes
    with eval/greedy.py (finished rows leave the batch; the caller has checked that the model
    agrees), which also takes a budget per text."""
    budgets = (
        [max_new_tokens] * len(texts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    )
    if not own_loop and len(set(budgets)) > 1:
        raise ValueError("a budget per text needs own_loop")
    specials = special_pattern(tokenizer, delimiters)
    prefixes = [reopened(t, delimiters) for t in texts]
    eos = greedy.eos_ids(model, tokenizer) if own_loop else set()
    outputs: list[str] = []
    for n, inputs in generation_batches(model, tokenizer, texts, batch_size, share_prefix):
        rows = prefixes[len(outputs) : len(outputs) + n]
        row_budgets = budgets[len(outputs) : len(outputs) + n]
        stop = (stop_markers, delimiters, rows)
        if own_loop:
            new = _own_loop(model, tokenizer, inputs, row_budgets, eos, *stop, specials)
        else:
            new = _generate(model, tokenizer, inputs, row_budgets[0], *stop)
        outputs += decode_rows(tokenizer, new, rows, specials)
        if on_batch:
            on_batch(n)
    return outputs


def _generate(model, tokenizer, inputs: dict, budget: int, stop_markers, delimiters, rows):
    width = inputs["input_ids"].shape[1]
    stops = (
        [RefusalStop(tokenizer, width, stop_markers, delimiters, rows)] if stop_markers else None
    )
    out = model.generate(
        **inputs,
        max_new_tokens=budget,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        stopping_criteria=stops,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[:, width:]


def _own_loop(
    model, tokenizer, inputs: dict, budgets, eos, stop_markers, delimiters, rows, specials
):
    finished = None
    if stop_markers:

        def finished(row: int, ids: list[int]) -> bool:
            text = decode_rows(tokenizer, [ids], [rows[row]], specials)[0]
            return settled_refusal(text, stop_markers, delimiters)

    cache = inputs.get("cache", inputs.get("past_key_values"))
    cached = cache.get_seq_length() if cache is not None else 0
    return greedy.decode(
        model, inputs["input_ids"], inputs["attention_mask"], budgets, eos, finished, cache, cached
    )
