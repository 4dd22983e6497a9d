"""Residual collection (activations.collect): batches sorted by prompt length and the vocabulary
projection skipped must still give every prompt's own last-token residuals, in the order given."""

from __future__ import annotations

import pytest
import torch

import tiny
from abliterate import activations
from abliterate.model.arch import discover
from abliterate.prompts import chat_texts

PROMPTS = [
    "Write a poem about the sea, with rhymes, in the style of an old sailor who has seen storms.",
    "Hi",
    "What is two plus two?",
    "How do I pick a lock? Explain every step, and the tools, and what can go wrong.",
    "Name a colour.",
]


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_sorted_batches_give_each_prompt_its_own_residuals(family, share_prefix):
    model, tok = tiny.model(family).eval(), tiny.tokenizer()
    system = "You are a helpful assistant who answers briefly."
    texts = chat_texts(tok, PROMPTS, system)  # a system prompt: a longer shared prefix
    order = activations.length_order(tok, texts)
    assert order != list(range(len(texts)))  # the sort really reorders these prompts
    if share_prefix:  # the prompts do share enough tokens for the prefix layout to be used
        assert activations._prefix_passes(model, tok, texts, 2) is not None
    got = activations.collect(
        model, tok, discover(model), texts, "post", 2, keep_full=True, share_prefix=share_prefix
    )
    assert got.full is not None and got.full.shape[0] == len(texts)
    for i, text in enumerate(texts):
        # the reference: one prompt alone, no padding, read from output_hidden_states
        enc = tok([text], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            states = model(**enc, output_hidden_states=True).hidden_states
        # hidden_states[-1] is after the final norm; the post stream of the last layer is before
        for layer in range(len(states) - 1):
            torch.testing.assert_close(
                got.full[i, layer], states[layer][0, -1], atol=2e-5, rtol=1e-4
            )
    torch.testing.assert_close(got.mean, got.full.double().mean(0), atol=1e-6, rtol=1e-6)
