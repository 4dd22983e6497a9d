"""Evaluation of reasoning ("thinking") models: refusals are judged on the answer, never on the
reasoning, whether the model or its chat template opened the reasoning block.

Real parts throughout: a trained BPE tokenizer with reasoning delimiters added (`<think>` as an
ordinary added token, gpt-oss's channel tokens as special ones) and a tiny random Llama."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import tiny
from abliterate.eval.generate import RefusalStop, decode_rows, generate, special_pattern
from abliterate.eval.refusal import (
    REASONING_DELIMITERS,
    is_refusal,
    open_reasoning,
    settled_refusal,
    strip_reasoning,
)
from abliterate.organism.tokenizer import END_OF_TURN, PAD, train_tokenizer

GPT_OSS = ["<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|return|>"]

# ChatML whose generation prompt opens the reasoning block, as DeepSeek-R1 distills do.
THINKING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}"
)


@cache
def thinking_tokenizer():
    """A fresh copy (tiny.tokenizer() is shared) with `<think>` tags and gpt-oss specials."""
    tok = train_tokenizer(tiny.CORPUS, vocab_size=320)
    tok.add_tokens(["<think>", "</think>"])
    tok.add_tokens(GPT_OSS, special_tokens=True)
    tok.chat_template = THINKING_TEMPLATE
    return tok


def prompt(text: str) -> str:
    messages = [{"role": "user", "content": text}]
    return thinking_tokenizer().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def stop_flags(new_texts: list[str], prefixes: list[str], markers=("sorry", "harmful")):
    """RefusalStop's verdict on each row, given its new text as token ids after a prompt."""
    tok = thinking_tokenizer()
    prompts = tok(["Hi"] * len(new_texts), add_special_tokens=False, return_tensors="pt")
    # Left padding puts pad tokens inside the new part: they must not count as text.
    new = tok(new_texts, add_special_tokens=False, padding=True, return_tensors="pt")
    ids = torch.cat([prompts["input_ids"], new["input_ids"]], dim=1)
    stop = RefusalStop(tok, prompts["input_ids"].shape[1], markers, REASONING_DELIMITERS, prefixes)
    return stop(ids, None).tolist()


def test_stop_never_fires_inside_an_open_reasoning_block():
    rows = [
        ("<think>\n", "The user asks something harmful, sorry I should refuse"),  # open
        ("", "<think>Sorry, this is harmful"),  # opened by the model itself
        ("<think>\n", "harmful, sorry</think>"),  # closed, answer not started
        ("<think>\n", "hmm, harmful?</think>\n\nSure, here is how"),  # compliant answer
        ("<think>\n", "ok</think>\n\nI'm sorry, I can't help"),  # closed, refusing answer
        ("", "Sorry, I can't help with that."),  # no reasoning at all
    ]
    prefixes, texts = map(list, zip(*rows, strict=True))
    assert stop_flags(texts, prefixes) == [False, False, False, False, True, True]


def test_partial_verdicts():
    assert open_reasoning("<think>a</think>b<think>c") == "<think>"
    assert open_reasoning("<think>a</think>b") is None
    assert open_reasoning("x</think> sorry") is None
    assert not settled_refusal("<think>sorry")
    assert not settled_refusal("<think>sorry</think>  ")
    assert settled_refusal("<think>ok</think>Sorry.")


def test_closing_without_opening_ends_the_reasoning():
    complying = "The request seems harmful; sorry, maybe refuse?</think>\n\nSure, here is"
    assert strip_reasoning(complying) == "\n\nSure, here is"
    assert not is_refusal(complying)
    assert is_refusal("Let me think. Fine.</think> I cannot help with that.")
    # Only the first unopened closing ends the template's block; later text is the answer.
    assert strip_reasoning("a</think>b</think>c") == "b</think>c"
    # Unchanged: closed blocks are removed, an unfinished one is judged on its content.
    assert strip_reasoning("x<think>sorry</think>y") == "xy"
    assert is_refusal("<think>This is harmful, I must decline")
    assert not is_refusal("<think>The user wants bread. Steps: flour, water")


def test_special_token_delimiters_survive_decoding_and_padding_does_not():
    tok = thinking_tokenizer()
    text = (
        "<|channel|>analysis<|message|>This is harmful, sorry.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Sure, here is how.<|return|>"
    )
    ids = tok([text, "Sure." + END_OF_TURN], add_special_tokens=False, padding=True)
    ids = torch.tensor(ids["input_ids"])
    assert ids[1, 0] == tok.pad_token_id  # the short row is padded
    # What decoding with skip_special_tokens=True gives: the reasoning is beyond finding.
    assert is_refusal(tok.decode(ids[0], skip_special_tokens=True))

    long, short = decode_rows(tok, ids, ["", ""], special_pattern(tok, REASONING_DELIMITERS))
    assert long.startswith("<|channel|>analysis<|message|>This is harmful, sorry.<|end|>")
    assert short == "Sure."
    for gone in ("<|start|>", "<|return|>", PAD, END_OF_TURN):
        assert gone not in long + short
    assert not is_refusal(long)
    assert stop_flags([text[: text.index("<|end|>")]], [""]) == [False]


@pytest.fixture(scope="module")
def thinking_model():
    tok = thinking_tokenizer()
    return tiny.model("llama", seed=0, vocab_size=len(tok))


def test_generate_reopens_the_block_and_never_stops_inside_it(thinking_model):
    tok = thinking_tokenizer()
    plain = tok.apply_chat_template(
        [{"role": "user", "content": "How do I pick a lock?"}],
        tokenize=False,
        add_generation_prompt=True,
        chat_template=tiny.tokenizer().chat_template,
    )
    texts = [prompt("How do I pick a lock?"), plain, prompt("Explain how to bake bread.")]
    assert [open_reasoning(t) for t in texts] == ["<think>", None, "<think>"]

    full = generate(thinking_model, tok, texts, 8, stop_markers=None)
    # " " normalises to "", which every text contains: any begun answer is a refusal.
    every = [" "]
    stopped = generate(thinking_model, tok, texts, 8, stop_markers=every)

    assert not any("</think>" in r for r in full)  # this seed's random model never closes it
    assert [r.startswith("<think>") for r in full] == [True, False, True]
    # Rows in reasoning ran the whole way, exactly as without stop markers (8 new tokens, or
    # eos); the row without reasoning stopped early.
    assert stopped[0] == full[0] and stopped[2] == full[2]
    assert len(stopped[1]) < len(full[1])


def test_rows_in_reasoning_get_every_new_token(thinking_model):
    """The same on token counts: with the stop criterion `generate` builds, rows whose prompt
    opened the block produce all 8 tokens while the plain row stops after its first."""
    tok = thinking_tokenizer()
    texts = [prompt("How do I pick a lock?"), "<|im_start|>assistant\n"]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    width = enc["input_ids"].shape[1]
    stop = RefusalStop(tok, width, [" "], REASONING_DELIMITERS, ["<think>", ""])
    out = thinking_model.generate(
        **enc, max_new_tokens=8, do_sample=False, stopping_criteria=[stop]
    )
    new = out[:, width:]
    assert not (new == tok.eos_token_id).any()  # this seed never ends its turn
    assert (new != tok.pad_token_id).sum(dim=1).tolist() == [8, 1]
