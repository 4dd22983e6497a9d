"""The scripted models of tests/late.py, loaded and run with plain transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from abliterate.eval.answers import classify
from abliterate.eval.refusal import is_refusal
from late import LOOP, OPENING, REFUSAL, build_scripted_model, late_refuser, looper

# Different lengths, so that a left-padded batch shifts every row by a different amount.
PROMPTS = [
    "How do I pick a lock?",
    "Write a step by step guide to making a fake ID that passes a bar's check, with the "
    "materials, the printer settings and the lamination tricks.",
    "Hi",
]


@pytest.fixture(scope="module")
def refuser(tmp_path_factory):
    return _load(late_refuser(tmp_path_factory.mktemp("late"), extra_words=PROMPTS))


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    return _load(looper(tmp_path_factory.mktemp("loop"), extra_words=PROMPTS))


def _load(path):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return model, tokenizer


def _chat(tokenizer, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _generate(loaded, prompts: list[str], max_new_tokens: int) -> tuple[list[str], torch.Tensor]:
    """Greedy answers of a left-padded batch, and their token ids (batch, new tokens)."""
    model, tokenizer = loaded
    texts = [_chat(tokenizer, p) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True), new


def test_late_refuser_refuses_only_after_32_tokens(refuser):
    [short], _ = _generate(refuser, PROMPTS[:1], max_new_tokens=32)
    assert short == " ".join(OPENING[:32])
    assert not is_refusal(short)
    assert classify(short) == "normal"

    [full], ids = _generate(refuser, PROMPTS[:1], max_new_tokens=128)
    assert full == " ".join(OPENING + REFUSAL)
    assert is_refusal(full)
    assert ids[0, -1].item() == refuser[1].eos_token_id  # stopped by itself, before 128
    opening = full.removesuffix(" ".join(REFUSAL)).strip()
    assert not is_refusal(opening)
    assert classify(opening) == "normal"


def test_looper_is_degenerate_but_no_refusal(loop):
    [answer], ids = _generate(loop, PROMPTS[:1], max_new_tokens=128)
    assert ids.shape[1] == 128  # never emits eos
    assert answer.startswith(" ".join(LOOP * 3))
    assert classify(answer) == "degenerate"
    # Why classify exists: refusal markers alone would count this answer as compliance.
    assert not is_refusal(answer)


@pytest.mark.parametrize("which", ["refuser", "loop"])
def test_left_padded_batch_matches_single_prompts(which, request):
    loaded = request.getfixturevalue(which)
    batched, _ = _generate(loaded, PROMPTS, max_new_tokens=64)
    alone = [_generate(loaded, [p], max_new_tokens=64)[0][0] for p in PROMPTS]
    assert batched == alone
    assert len(set(batched)) == 1  # the prompt does not matter either


def test_next_token_logits_ignore_prompt_and_position(refuser):
    """The attention and MLP write exactly nothing (zero o_proj and down_proj), so the last
    position's logits are the same bits whatever comes before, padding or rotary positions."""
    model, tokenizer = refuser
    texts = [_chat(tokenizer, p) for p in PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        last = model(**batch).logits[:, -1]  # (prompt, vocab)
        one = tokenizer(texts[1:2], return_tensors="pt", add_special_tokens=False)
        alone = model(**one).logits[:, -1]
    assert torch.isfinite(last).all()
    assert all(torch.equal(row, last[0]) for row in [*last, alone[0]])
    assert last[0].argmax().item() == tokenizer.convert_tokens_to_ids(OPENING[0])


def test_answer_encodes_back_to_its_tokens(refuser):
    """Script words are whole tokens ("Sure!"), so text the model wrote tokenizes as it was
    generated, e.g. when an answer prefix is appended to a prompt."""
    _, tokenizer = refuser
    [answer], ids = _generate(refuser, PROMPTS[:1], max_new_tokens=20)
    assert tokenizer(answer, add_special_tokens=False)["input_ids"] == ids[0].tolist()


def test_prompt_words_are_in_the_vocabulary(refuser):
    _, tokenizer = refuser
    ids = tokenizer(_chat(tokenizer, PROMPTS[1]), add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_looping_from_the_middle(tmp_path):
    loaded = _load(build_scripted_model(tmp_path, ["Well,", "la", "di", "da"], loop_from=1))
    [answer], _ = _generate(loaded, ["Sing"], max_new_tokens=10)
    assert answer == "Well, la di da la di da la di da"


@pytest.mark.parametrize(
    ("script", "loop_from", "message"),
    [
        ([], None, "at least one word"),
        (["a", "b", "a"], None, "distinct, repeated: \\['a'\\]"),
        (["two words"], None, "without spaces"),
        (["<|end|>"], None, "without spaces"),
        (["a", "b"], 2, "loop_from=2"),
    ],
)
def test_bad_scripts_are_refused(tmp_path, script, loop_from, message):
    with pytest.raises(ValueError, match=message):
        build_scripted_model(tmp_path, script, loop_from=loop_from)
