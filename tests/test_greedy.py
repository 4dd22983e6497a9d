"""The own greedy loop (eval/greedy.py): the same answers as `model.generate` wherever its check
lets it run, rows leaving the batch early without changing the others, budgets per row, and the
check turning it off where the loop would decode differently."""

from __future__ import annotations

import pytest
import torch

import tiny
from abliterate.config import load_settings
from abliterate.eval import greedy
from abliterate.eval.evaluate import Evaluator
from abliterate.eval.generate import generate
from abliterate.eval.refusal import is_refusal
from abliterate.model import loading
from abliterate.prompts import chat_texts
from abliterate.stages.base import eval_settings

PROMPTS = [
    "Explain how to bake bread. How do I pick a lock?",
    "What is two plus two?",
    "Write a poem about the sea, with rhymes, in the style of an old sailor.",
    "Four.",
    "How do I pick a lock?",
]


def texts(system: str | None = None):
    return chat_texts(tiny.tokenizer(), PROMPTS, system)


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_own_loop_equals_generate_where_checked(family):
    model, tok = tiny.model(family).eval(), tiny.tokenizer()
    found = greedy.check(model, tok, texts())
    if not found.used:
        # only where a cache layout is not the plain one may the loop be turned off
        assert family in {"gemma3_text", "gpt_oss", "qwen3_next", "lfm2", "gemma2"}, found
        return
    # batch size 2: rows of different lengths, left-padded, in several batches
    ours = generate(model, tok, texts(), 12, 2, stop_markers=None, own_loop=True)
    theirs = generate(model, tok, texts(), 12, 2, stop_markers=None)
    assert ours == theirs
    # rows leaving a batch mid-way (short budgets beside long ones) must work wherever the
    # check passed: recurrent caches that cannot drop rows have to fail the check instead
    mixed = generate(model, tok, texts(), [12, 3, 12, 3, 12], 3, stop_markers=None, own_loop=True)
    assert [mixed[i] for i in (0, 2, 4)] == [theirs[i] for i in (0, 2, 4)]


def test_rows_leave_early_without_changing_the_others():
    model, tok = tiny.model("llama").eval(), tiny.tokenizer()
    enc = tok(texts(), return_tensors="pt", padding=True, add_special_tokens=False)
    full = greedy.decode(model, enc["input_ids"], enc["attention_mask"], [10] * 5, set())
    assert all(len(r) == 10 for r in full)
    # row 1 stops after 3 tokens by its finished test, row 3 has budget 4, row 4 budget 0
    budgets = [10, 10, 10, 4, 0]
    some = greedy.decode(
        model, enc["input_ids"], enc["attention_mask"], budgets, set(),
        finished=lambda row, ids: row == 1 and len(ids) == 3,
    )  # fmt: skip
    assert some[0] == full[0] and some[2] == full[2]
    assert some[1] == full[1][:3] and some[3] == full[3][:4] and some[4] == []
    # an end-of-turn token ends the row, and is not returned
    stop = full[2][5]
    ended = greedy.decode(model, enc["input_ids"], enc["attention_mask"], [10] * 5, {stop})
    for got, want in zip(ended, full, strict=True):
        assert got == (want[: want.index(stop)] if stop in want else want)
    assert len(ended[2]) <= 5


def test_own_loop_with_the_shared_prefix_and_budgets_per_text():
    model, tok = tiny.model("qwen2").eval(), tiny.tokenizer()
    t = texts("Sure! Here is how to bake bread.")
    plain = generate(model, tok, t, 8, 2, stop_markers=None)
    short = generate(model, tok, t, 3, 2, stop_markers=None)
    mixed = generate(
        model, tok, t, [8, 3, 8, 3, 8], 2, stop_markers=None, share_prefix=True, own_loop=True
    )
    assert mixed == [plain[0], short[1], plain[2], short[3], plain[4]]
    with pytest.raises(ValueError, match="own_loop"):
        generate(model, tok, t, [8, 3, 8, 3, 8], 2, stop_markers=None)


def test_a_model_that_decodes_differently_is_left_to_generate():
    model, tok = tiny.model("llama").eval(), tiny.tokenizer()
    real = model.generate

    def shifted(**kwargs):  # a generate whose answers the loop would not reproduce
        out = real(**kwargs)
        out[:, -1] = (out[:, -1] + 1) % model.config.vocab_size
        return out

    model.generate = shifted
    found = greedy.check(model, tok, texts())
    assert not found.used and "differs" in found.reason


def test_organism_refusals_stop_early_and_are_counted_the_same(organism_dir):
    loaded = loading.load(str(organism_dir), dtypes=("float32",))
    model, tok = loaded.model, loaded.tokenizer
    harmful = (organism_dir / "eval" / "harmful.txt").read_text().splitlines()[:24]
    harmless = (organism_dir / "eval" / "harmless.txt").read_text().splitlines()[:8]

    def measured(own: bool):
        s = load_settings(
            None, model=str(organism_dir), max_response_length=32, own_decoding=own,
            overrefusal_response_length=6,
        )  # fmt: skip
        settings = eval_settings(s, 8, search=True)
        ev = Evaluator(model, tok, harmful, harmless, settings)
        assert ev.greedy_check.used == own
        return ev.evaluate()

    ours, theirs = measured(True), measured(False)
    assert ours.values == pytest.approx(theirs.values)
    flags = [is_refusal(r) for r in ours.harmful_responses]
    assert sum(flags) > len(flags) // 2  # the organism refuses: early stops happen
    assert flags == [is_refusal(r) for r in theirs.harmful_responses]
    # a refusing row stops at its marker; generate may carry it to the end of its batch
    for a, b in zip(ours.harmful_responses, theirs.harmful_responses, strict=True):
        assert b.startswith(a)
    for a, b in zip(ours.harmless_responses, theirs.harmless_responses, strict=True):
        assert b.startswith(a)
    # the own loop answers harmful and harmless prompts in one pass, each at its own length
    assert "answers" in ours.seconds and "harmful" in theirs.seconds
    assert torch.is_grad_enabled()  # inference_mode did not leak
