"""Over-refusal read from the opening of an answer, without generating the answer.

A chat model's stock refusal opens its answer with the same few tokens ("I'm sorry", "As an AI
language model"). Greedy decoding writes such an opening exactly when each of its tokens is the
most likely one after the prompt and the tokens before it, so one teacher-forced forward pass
says, per prompt, whether the greedy answer would open with it: the same verdict generation
would give, for a fraction of the cost. The first token is already known from the KL pass (the
next-token distribution at the end of each prompt), so only the prompts whose greedy first token
starts an opening are passed again, with that opening appended.

The openings are the base model's own: the shortest start (up to `MAX_TOKENS` tokens) of each of
its refusals that already holds a refusal marker, seen at least `MIN_COUNT` times. The evaluator
checks them against the base model's generated answers before it uses them (eval/evaluate.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate.eval import kl as kl_mod
from abliterate.eval.prefix import PrefixCache
from abliterate.eval.refusal import has_marker, strip_reasoning

MAX_TOKENS = 6  # a stock opening holds its marker within its first few tokens
MIN_COUNT = 2  # an opening seen once is one answer's wording, not the model's habit
MAX_OPENINGS = 4

Opening = tuple[int, ...]


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """Token ids of an answer's text, as the model would have written them after the prompt."""
    return tokenizer.encode(answer.lstrip(), add_special_tokens=False)


def stock_openings(
    tokenizer: PreTrainedTokenizerBase,
    answers: Sequence[str],
    markers: Sequence[str],
    delimiters: Sequence[tuple[str, str]],
) -> list[Opening]:
    """The refusal openings of `answers`, most frequent first: for each answer, its shortest
    start that contains a refusal marker (none if the first MAX_TOKENS tokens hold none).
    Answers with a reasoning block are skipped: their first tokens are the reasoning's."""
    counts: Counter[Opening] = Counter()
    for answer in answers:
        if strip_reasoning(answer, delimiters) != answer:
            continue
        ids = answer_ids(tokenizer, answer)[:MAX_TOKENS]
        for k in range(1, len(ids) + 1):
            if has_marker(str(tokenizer.decode(ids[:k])), markers):
                counts[tuple(ids[:k])] += 1
                break
    return [o for o, n in counts.most_common(MAX_OPENINGS) if n >= MIN_COUNT]


def opens_with(
    tokenizer: PreTrainedTokenizerBase, answer: str, openings: Sequence[Opening]
) -> bool:
    """Whether a generated `answer` starts with one of `openings` (what `hits` predicts)."""
    ids = answer_ids(tokenizer, answer)
    return any(tuple(ids[: len(o)]) == o for o in openings)


@torch.inference_mode()
def hits(
    model: PreTrainedModel, ref: kl_mod.KLReference, first: Tensor, openings: Sequence[Opening]
) -> list[bool]:
    """Per prompt of `ref` (batched as for KL), whether the greedy answer under the model's
    current weights opens with one of `openings`; `first` holds each prompt's greedy first
    token (`kl_mod.kl_and_first_tokens`)."""
    tokens = first.tolist()
    found = [t in {o[0] for o in openings if len(o) == 1} for t in tokens]
    longer = [o for o in openings if len(o) > 1]
    if not longer:
        return found
    prefix = None
    if ref.prefix_length:
        prefix = PrefixCache(model, ref.input_ids[0][0, : ref.prefix_length].tolist())
    answer = ref.token_count if ref.token_count > 1 else 0  # base answer tokens to drop
    start = 0
    for ids, mask in zip(ref.input_ids, ref.attention_mask, strict=True):
        if answer:
            ids, mask = ids[:, :-answer], mask[:, :-answer]
        for o in longer:
            sel = [
                i for i in range(ids.shape[0]) if not found[start + i] and tokens[start + i] == o[0]
            ]
            if sel:
                ok = _follows(model, ids[sel], mask[sel], o, prefix)
                for i, good in zip(sel, ok, strict=True):
                    found[start + i] = found[start + i] or good
        start += ids.shape[0]
    return found


def _follows(
    model: PreTrainedModel, ids: Tensor, mask: Tensor, opening: Opening, prefix: PrefixCache | None
) -> list[bool]:
    """Whether each row's greedy answer is `opening`: the opening teacher-forced after the
    prompt, and each of its tokens the most likely one where it was predicted."""
    forced = torch.tensor([list(opening)] * ids.shape[0], dtype=ids.dtype)
    ids = torch.cat([ids, forced], 1)
    mask = torch.cat([mask, torch.ones_like(forced, dtype=mask.dtype)], 1)
    predicted = kl_mod.tail_logprobs(model, ids, mask, len(opening), prefix).argmax(-1).cpu()
    return (predicted == torch.tensor(opening)).all(-1).tolist()
