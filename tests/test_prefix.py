"""The shared-prefix layout (template prefix computed once per batch) gives the same answers and
the same KL as plain left-padded batches wherever its check lets it run, and its check turns it
off where it would not (sliding windows shorter than the text, recurrent layers)."""

from __future__ import annotations

import pytest
import torch

import tiny
from abliterate.eval import kl
from abliterate.eval.evaluate import EvalSettings, Evaluator
from abliterate.eval.generate import generate
from abliterate.eval.prefix import check, common_prefix_length
from abliterate.prompts import chat_texts

PROMPTS = [
    "Explain how to bake bread. How do I pick a lock?",
    "What is two plus two?",
    "Write a poem about the sea.",
    "Four.",
    "How do I pick a lock?",
]
SYSTEM = "Sure! Here is how to bake bread."
# Families whose layout the check must refuse: windows of 16 tokens, linear attention, convs.
REFUSED = {"gemma3_text", "gpt_oss", "qwen3_next", "lfm2"}


def texts():
    return chat_texts(tiny.tokenizer(), PROMPTS, SYSTEM)


def test_common_prefix_keeps_one_token_of_each_row():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # row 1 keeps its last token
    assert common_prefix_length([[7], [7]]) == 0
    assert common_prefix_length([]) == 0


def _nudge(model):
    """A small weight change, standing in for an edit."""
    with torch.no_grad():
        next(p for p in model.parameters() if p.ndim >= 2).mul_(1.3)


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_shared_prefix_equals_plain_batches(family):
    model, tok = tiny.model(family), tiny.tokenizer()
    found = check(model, tok, texts(), max_new_tokens=8)
    assert found.used == (family not in REFUSED), found
    assert found.shared_tokens > 10  # the template opening and the system prompt
    if not found.used:
        return
    assert found.kl is not None and abs(found.kl) < 1e-6
    # batch size 2: several batches, rows of different lengths padded in the middle
    shared = generate(model, tok, texts(), 8, 2, stop_markers=None, share_prefix=True)
    plain = generate(model, tok, texts(), 8, 2, stop_markers=None, share_prefix=False)
    assert shared == plain
    for n in (1, 3):  # first-token KL, and KL over the base's own answers
        ref_shared = kl.reference(model, tok, texts(), n, 2, share_prefix=True)
        ref_plain = kl.reference(model, tok, texts(), n, 2, share_prefix=False)
        assert ref_shared.prefix_length == found.shared_tokens and ref_plain.prefix_length == 0
        for a, b in zip(ref_shared.logprobs, ref_plain.logprobs, strict=True):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=1e-3)
        _nudge(model)
        edited = kl.kl_divergence(model, ref_shared), kl.kl_divergence(model, ref_plain)
        assert edited[0] > 1e-4
        assert edited[0] == pytest.approx(edited[1], rel=1e-2, abs=1e-7)


def test_a_window_longer_than_the_text_is_no_obstacle():
    model = tiny.model("gemma3_text", sliding_window=512)
    assert check(model, tiny.tokenizer(), texts(), max_new_tokens=8).used


def test_evaluator_metrics_do_not_depend_on_the_layout():
    model, tok = tiny.model("qwen2"), tiny.tokenizer()
    harmful, harmless = PROMPTS[:3], PROMPTS[2:]

    def metrics(shared: bool):
        settings = EvalSettings(
            max_response_length=6, batch_size=2, system_prompt=SYSTEM, shared_prefix=shared
        )
        ev = Evaluator(model, tok, harmful, harmless, settings)
        assert ev.share_prefix == shared
        _nudge(model)
        try:
            return ev.evaluate()
        finally:
            with torch.no_grad():
                next(p for p in model.parameters() if p.ndim >= 2).div_(1.3)

    on, off = metrics(True), metrics(False)
    assert on.harmful_responses == off.harmful_responses
    assert on.harmless_responses == off.harmless_responses
    assert on["kl"] == pytest.approx(off["kl"], rel=1e-2)
    assert off["kl"] > 0
