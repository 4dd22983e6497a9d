"""Greedy decoding in which each row leaves the batch when it is done.

`model.generate` keeps every row of a batch until the last one stops: a row that refused in
five tokens, or ended its turn, is carried (and computed) to the end of the longest compliant
answer. Here a finished row's keys and values are dropped from the cache at once, so a batch
costs what its live rows cost, and rows may have budgets of their own (harmful answers at full
length beside short harmless ones in one pass).

Whether a model decodes the same way here as in `model.generate` is not assumed: `check`
compares the two on the unedited model, and the caller falls back to `model.generate` where
they differ (cache layouts this loop does not know, remote code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from abliterate.eval.prefix import cache_keyword, positions

# (row index in the batch, its new token ids so far) -> whether the row is done
Finished = Callable[[int, list[int]], bool]


def eos_ids(model: PreTrainedModel, tokenizer) -> set[int]:
    """Token ids that end a turn: the generation config's (an int or a list) and the
    tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


@torch.inference_mode()
def decode(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    budgets: Sequence[int],
    eos: set[int],
    finished: Finished | None = None,
    cache: DynamicCache | None = None,
    cached: int = 0,
) -> list[list[int]]:
    """New token ids of each row (without its end-of-turn token): greedy, each row stopping at
    an end-of-turn token, at its budget, or when `finished` says so. `cache` may already hold
    the first `cached` positions of every row (a shared prefix)."""
    keyword = cache_keyword(model)
    rows = list(range(input_ids.shape[0]))
    out: list[list[int]] = [[] for _ in rows]
    live = [r for r in rows if budgets[r] > 0]
    if not live:
        return out
    pos = positions(attention_mask)
    cache = cache if cache is not None else DynamicCache(config=model.config)
    mask, step_ids, step_pos = attention_mask, input_ids[:, cached:], pos[:, cached:]
    if len(live) < len(rows):
        keep = torch.tensor(live)  # on the CPU: valid for cache layers on any device
        mask, step_ids, step_pos = mask[keep], step_ids[keep], step_pos[keep]
        if cached:
            cache.batch_select_indices(keep)
    while live:
        logits = model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
            **{keyword: cache}, use_cache=True, logits_to_keep=1,
        ).logits[:, -1]  # fmt: skip
        chosen = logits.argmax(-1)
        stay = []
        for j, (row, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
            if token in eos:
                continue
            out[row].append(token)
            if len(out[row]) < budgets[row] and not (finished and finished(row, out[row])):
                stay.append(j)
        last = step_pos[:, -1]
        if len(stay) < len(live):
            if not stay:
                break
            keep = torch.tensor(stay)  # on the CPU: valid for cache layers on any device
            cache.batch_select_indices(keep)
            mask, chosen, last = mask[keep], chosen[keep], last[keep]
            live = [live[j] for j in stay]
        step_ids = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        step_pos = (last + 1)[:, None]
    return out


@dataclass(frozen=True)
class GreedyCheck:
    """What `check` found: whether the loop reproduces `model.generate`, and why not."""

    used: bool
    reason: str


@torch.inference_mode()
def check(model: PreTrainedModel, tokenizer, texts: Sequence[str], tokens: int = 16) -> GreedyCheck:
    """Whether `decode` gives the same greedy tokens as `model.generate` on the first texts
    (one left-padded batch, `tokens` new tokens, no early stop). Every other row gets half the
    budget, so rows leave the batch mid-way and the cache's row selection is exercised too
    (recurrent cache layers cannot drop rows)."""
    picked = list(texts[:4])
    if not picked:
        return GreedyCheck(False, "no prompts to check on")
    device = next(model.get_input_embeddings().parameters()).device
    enc = tokenizer(picked, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    eos = eos_ids(model, tokenizer)
    try:
        # GenerationMixin is mixed in at run time
        reference = model.generate(  # type: ignore[operator]
            **enc, max_new_tokens=tokens, do_sample=False, temperature=None, top_p=None,
            top_k=None, pad_token_id=tokenizer.pad_token_id,
        )[:, enc["input_ids"].shape[1] :].tolist()  # fmt: skip
        budgets = [tokens if i % 2 == 0 else max(1, tokens // 2) for i in range(len(picked))]
        ours = decode(model, enc["input_ids"], enc["attention_mask"], budgets, eos)
    except Exception as err:  # a cache layout the loop does not know (recurrent layers)
        return GreedyCheck(False, f"{type(err).__name__}: {err}"[:120])
    for ref, got, budget in zip(reference, ours, budgets, strict=True):
        # generate pads a finished row (with its end-of-turn token, or the pad id) to the end
        cut = next((i for i, t in enumerate(ref) if t in eos), len(ref))
        if ref[: min(cut, budget)] != got:
            return GreedyCheck(False, "differs from model.generate on the unedited model")
    return GreedyCheck(True, "agrees with model.generate")
