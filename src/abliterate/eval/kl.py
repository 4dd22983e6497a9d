"""KL divergence of an edited model from the base model on harmless prompts.

First-token KL (Heretic's measure) compares next-token distributions at the end of each
chat-formatted prompt. It is blind when the first token is fixed (reasoning models always open
with `<think>`), so `token_count = N > 1` compares the distributions over the first N tokens of
the *base* model's own greedy answers, teacher-forced: one forward pass per batch, base answers
and base log-probabilities computed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate.eval.generate import generation_batches, model_device
from abliterate.eval.prefix import PrefixCache


@dataclass
class KLReference:
    """What the base model said on the harmless prompts, for comparing edits against."""

    input_ids: list[Tensor]  # per batch: (b, width) prompt (+ base answer) ids, left-padded
    attention_mask: list[Tensor]
    logprobs: list[Tensor]  # per batch: (b, N, vocab) float32 (float16 when N > 1), on CPU
    token_count: int
    # > 0: batches are in the shared-prefix layout (eval/prefix.py) with this many shared tokens
    prefix_length: int = 0


@torch.inference_mode()
def tail_logprobs(
    model: PreTrainedModel, ids: Tensor, mask: Tensor, n: int, prefix: PrefixCache | None = None
) -> Tensor:
    """(b, n, vocab) log-probabilities. For n = 1, `ids` is the prompt and the distribution is
    the one at its last position. For n > 1, `ids` is prompt + n answer tokens and these are the
    distributions that predicted each answer token. With `prefix`, the batch is in the
    shared-prefix layout and its prefix is read from the cache."""
    device = model_device(model)
    ids, mask = ids.to(device), mask.to(device)
    # Only the last n (+1) positions are needed: the output head over every prompt position
    # (vocab 152k on Qwen) cost a quarter of a CPU trial.
    keep = 1 if n == 1 else n + 1
    if prefix is not None:
        logits = prefix.forward(model, ids, mask, keep)
    else:
        logits = model(
            input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep
        ).logits
    logits = logits[:, -keep:]  # a model that ignores logits_to_keep returned every position
    picked = logits if n == 1 else logits[:, :n]
    return torch.log_softmax(picked.float(), dim=-1)


@torch.inference_mode()
def reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    token_count: int = 1,
    batch_size: int = 32,
    share_prefix: bool = False,
) -> KLReference:
    """Base-model log-probabilities (and, for N > 1, the base answers that are teacher-forced).
    With `share_prefix` (checked by the caller), batches use the shared-prefix layout."""
    ref = KLReference([], [], [], token_count)
    prefix = None
    for _n, inputs in generation_batches(model, tokenizer, texts, batch_size, share_prefix):
        ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu()
        cache = inputs.get("cache", inputs.get("past_key_values"))
        if cache is not None and prefix is None:
            ref.prefix_length = cache.get_seq_length()
            prefix = PrefixCache(model, ids[0, : ref.prefix_length].tolist())
        if token_count > 1:
            out = model.generate(  # type: ignore[operator]  # GenerationMixin is mixed in at run time
                **inputs,
                do_sample=False,
                max_new_tokens=token_count,
                min_new_tokens=token_count,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            ids = out.cpu()
            mask = torch.cat([mask, torch.ones(ids.shape[0], token_count, dtype=mask.dtype)], 1)
        lp = tail_logprobs(model, ids, mask, token_count, prefix)
        ref.input_ids.append(ids)
        ref.attention_mask.append(mask)
        ref.logprobs.append((lp if token_count == 1 else lp.half()).cpu())
    return ref


def first_token_logprobs(
    model: PreTrainedModel, ids: Tensor, mask: Tensor, prefix: PrefixCache | None = None
) -> Tensor:
    """(b, vocab) log-probabilities of the first answer token after each prompt, on the CPU."""
    return tail_logprobs(model, ids, mask, 1, prefix)[:, 0].cpu()


def kl_from_logprobs(base: Tensor, edited: Tensor) -> Tensor:
    """KL(P_base || P_edited) per row, summed over the vocabulary: (..., V) -> (...)."""
    base = base.float()
    return (base.exp() * (base - edited.float())).sum(-1)


@torch.inference_mode()
def kl_and_first_tokens(model: PreTrainedModel, ref: KLReference) -> tuple[Tensor, Tensor]:
    """KL(P_base || P_edited) of each prompt, averaged over its N tokens, and the edited model's
    greedy first answer token after each prompt (what eval/openings.py starts from): two
    (prompts,) tensors from one pass."""
    rows, first = [], []
    prefix = None
    if ref.prefix_length:  # the prefix's keys and values under the current (edited) weights
        prefix = PrefixCache(model, ref.input_ids[0][0, : ref.prefix_length].tolist())
    for ids, mask, base in zip(ref.input_ids, ref.attention_mask, ref.logprobs, strict=True):
        edited = tail_logprobs(model, ids, mask, ref.token_count, prefix).cpu()
        rows.append(kl_from_logprobs(base, edited).mean(-1))  # (b, N) -> (b,)
        first.append(edited[:, 0].argmax(-1))
    return torch.cat(rows), torch.cat(first)


def kl_per_prompt(model: PreTrainedModel, ref: KLReference) -> Tensor:
    """KL(P_base || P_edited) of each prompt, averaged over its N tokens: (prompts,)."""
    return kl_and_first_tokens(model, ref)[0]


def kl_divergence(model: PreTrainedModel, ref: KLReference) -> float:
    """Mean over prompts (and over the N tokens) of KL(P_base || P_edited)."""
    return kl_per_prompt(model, ref).mean().item()
