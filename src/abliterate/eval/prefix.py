"""Shared-prefix prefill: chat-formatted prompts all start with the same tokens (the template's
opening and its system prompt: on Qwen2.5 about half the tokens of a short request). Their keys
and values are computed once per pass and each batch continues from a copy, so a trial's
prefill only runs over the tokens that differ.

A batch is laid out as [shared prefix | left padding | the row's own tokens]: the padding sits
in the middle, which the attention mask hides, and positions are counted over unmasked tokens
only, so each row sees exactly the sequence it would see alone. Whether a model computes the
same thing this way is not assumed: `check` measures it on the unedited model and the caller
falls back to plain batches where it does not (recurrent layers, sliding windows shorter than
the prompts, remote code).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_PREFIX = 4


@dataclass(frozen=True)
class PrefixBatch:
    """One batch in the shared-prefix layout, on the model's device."""

    input_ids: Tensor  # (b, P + W): prefix, then left-padded suffixes
    attention_mask: Tensor  # (b, P + W)
    prefix_length: int  # P


def positions(attention_mask: Tensor) -> Tensor:
    """Positions counted over unmasked tokens (padding gets 0 and is never read)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the last
    position's logits and the generation start there)."""
    if not rows:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def token_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of already chat-formatted texts (the template holds the special tokens)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def prefix_batches(
    rows: Sequence[Sequence[int]],
    prefix_length: int,
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> Iterator[PrefixBatch]:
    """Batches of `rows` (which all start with the same `prefix_length` tokens)."""
    prefix = list(rows[0][:prefix_length])
    for start in range(0, len(rows), batch_size):
        suffixes = [list(r[prefix_length:]) for r in rows[start : start + batch_size]]
        width = max(len(s) for s in suffixes)
        ids, mask = [], []
        for s in suffixes:
            pad = width - len(s)
            ids.append(prefix + [pad_id] * pad + s)
            mask.append([1] * prefix_length + [0] * pad + [1] * len(s))
        yield PrefixBatch(
            torch.tensor(ids, device=device), torch.tensor(mask, device=device), prefix_length
        )


def cache_keyword(model) -> str:
    """The name a model's forward takes its key/value cache under: `cache` since transformers
    5.24 (the old `past_key_values` then warns, and goes in 5.40), `past_key_values` before."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class PrefixCache:
    """Keys and values of the shared prefix under the model's current weights. Build it again
    after an edit: it is one forward pass over a few dozen tokens."""

    @torch.inference_mode()
    def __init__(self, model: PreTrainedModel, prefix_ids: Sequence[int]):
        device = next(model.get_input_embeddings().parameters()).device
        self.length = len(prefix_ids)
        self.keyword = cache_keyword(model)
        ids = torch.tensor([list(prefix_ids)], device=device)
        out = model(
            input_ids=ids, **{self.keyword: DynamicCache(config=model.config)}, use_cache=True
        )
        self.cache = out["cache"] if "cache" in out else out["past_key_values"]

    def for_batch(self, size: int) -> DynamicCache:
        """A private copy for a batch of `size` rows (generation appends to it)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(size)
        return cache

    @torch.inference_mode()
    def forward(self, model: PreTrainedModel, ids: Tensor, mask: Tensor, keep: int) -> Tensor:
        """Logits of the last `keep` positions of `ids`, a batch in the shared-prefix layout
        (prefix included; its cached part is not recomputed)."""
        p = self.length
        return model(
            input_ids=ids[:, p:],
            attention_mask=mask,
            position_ids=positions(mask)[:, p:],
            **{self.keyword: self.for_batch(ids.shape[0])},
            use_cache=True,
            logits_to_keep=keep,
        ).logits[:, -keep:]


@dataclass(frozen=True)
class PrefixCheck:
    """What `check` found: tokens shared, the measured disagreement, and the verdict."""

    shared_tokens: int
    kl: float | None  # mean KL(plain || shared) of the next-token distributions; None: not run
    used: bool
    reason: str


def _sliding_window(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


@torch.inference_mode()
def check(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_new_tokens: int,
    sample: int = 8,
    tolerance: float = 1e-3,
) -> PrefixCheck:
    """Whether the shared-prefix layout gives this model the same next-token distributions as
    plain left-padded batches, measured on the first `sample` texts."""
    rows = token_rows(tokenizer, texts)
    p = common_prefix_length(rows)
    if p < MIN_PREFIX:
        return PrefixCheck(p, None, False, "the prompts share too few tokens")
    window = _sliding_window(model)
    if window is not None and max(map(len, rows)) + max_new_tokens > window:
        return PrefixCheck(
            p, None, False, f"prompts and answers exceed the sliding window {window}"
        )
    picked = list(texts[:sample])
    device = next(model.get_input_embeddings().parameters()).device
    enc = tokenizer(picked, return_tensors="pt", padding=True, add_special_tokens=False)
    try:
        plain = model(**enc.to(device), use_cache=False, logits_to_keep=1).logits[:, -1]
        batch = next(
            prefix_batches(rows[: len(picked)], p, len(picked), tokenizer.pad_token_id, device)
        )
        shared = PrefixCache(model, rows[0][:p]).forward(
            model, batch.input_ids, batch.attention_mask, 1
        )[:, -1]
    except Exception as err:  # a cache layout this path does not know (recurrent layers)
        return PrefixCheck(p, None, False, f"{type(err).__name__}: {err}"[:120])
    a, b = torch.log_softmax(plain.float(), -1), torch.log_softmax(shared.float(), -1)
    kl = float((a.exp() * (a - b)).sum(-1).mean())
    if not kl <= tolerance:
        return PrefixCheck(p, kl, False, f"next-token KL {kl:.2g} between the two layouts")
    return PrefixCheck(p, kl, True, "agrees with plain batches")
