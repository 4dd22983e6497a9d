"""KL log-probabilities computed from the last positions only (`logits_to_keep`) equal those
taken from the full logits, in every supported family, for first-token and N-token KL."""

from __future__ import annotations

import pytest
import torch

import tiny
from abliterate.eval.kl import tail_logprobs


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_last_positions_only_equal_full_logits(family):
    model = tiny.model(family).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tiny.tokenizer()), (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    torch.testing.assert_close(
        tail_logprobs(model, ids, mask, 1),
        torch.log_softmax(full[:, -1:], -1),
        rtol=1e-4,
        atol=1e-4,
    )
    n = 3  # the distributions that predicted the last n tokens
    torch.testing.assert_close(
        tail_logprobs(model, ids, mask, n),
        torch.log_softmax(full[:, -n - 1 : -1], -1),
        rtol=1e-4,
        atol=1e-4,
    )
