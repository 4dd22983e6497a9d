"""A refusal rate from one forward pass: how much next-token probability the model puts, at the
start of its answer to each harmful prompt, on the tokens the base model opened its refusals
with (and never its compliant answers).

Generation is most of a trial; this costs one prefill of the harmful prompts, about what the KL
pass costs. It is a screen, not a measurement: search/trials.py uses it only to skip generating
for trials that the front already dominates by a margin, only after checking on the first trials
of the run (generated in full) that the estimate tracks the real rate, and a chosen trial is
always measured in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate.eval import kl as kl_mod
from abliterate.eval.prefix import PrefixCache


def opening_tokens(
    tokenizer: PreTrainedTokenizerBase, responses: Sequence[str], refused: Sequence[bool]
) -> list[int]:
    """First tokens of the refusing answers that no compliant answer starts with."""

    def first(text: str) -> int | None:
        ids = tokenizer.encode(text.lstrip(), add_special_tokens=False)
        return ids[0] if ids else None

    refusing = {first(r) for r, no in zip(responses, refused, strict=True) if no}
    complying = {first(r) for r, no in zip(responses, refused, strict=True) if not no}
    return sorted(t for t in refusing - complying if t is not None)


@dataclass
class RefusalEstimate:
    """The harmful prompts, batched as for first-token KL, and the refusal-opening tokens."""

    reference: kl_mod.KLReference
    openings: list[int]

    @classmethod
    def build(cls, model, tokenizer, texts, responses, refused, batch_size, share_prefix=False):
        ref = kl_mod.reference(model, tokenizer, texts, 1, batch_size, share_prefix)
        return cls(ref, opening_tokens(tokenizer, responses, refused))

    @torch.inference_mode()
    def per_prompt(self, model: PreTrainedModel) -> torch.Tensor:
        """Probability mass on the opening tokens, per harmful prompt."""
        ref, rows = self.reference, []
        prefix = None
        if ref.prefix_length:
            prefix = PrefixCache(model, ref.input_ids[0][0, : ref.prefix_length].tolist())
        for ids, mask in zip(ref.input_ids, ref.attention_mask, strict=True):
            logprobs = kl_mod.first_token_logprobs(model, ids, mask, prefix)
            rows.append(logprobs.exp()[:, self.openings].sum(-1))
        return torch.cat(rows)

    def estimate(self, model: PreTrainedModel) -> float:
        """Expected refusal rate if the first token decided it; 0 with no opening tokens."""
        if not self.openings:
            return 0.0
        return self.per_prompt(model).mean().item()


def agreement(pairs: Sequence[tuple[float, float]]) -> float:
    """Mean absolute error between (estimate, measured) refusal rates."""
    return sum(abs(e - m) for e, m in pairs) / len(pairs) if pairs else float("inf")
