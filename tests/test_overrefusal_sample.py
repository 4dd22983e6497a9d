"""Over-refusal answered on a seeded sample of the harmless prompts in a search, on all of them
elsewhere; KL always reads every harmless prompt."""

from __future__ import annotations

from dataclasses import replace

import pytest

import tiny
from abliterate.config import load_settings
from abliterate.eval.evaluate import EvalSettings, Evaluator, sample_indices
from abliterate.eval.scorers import MarkerConfig
from abliterate.stages.base import eval_settings

HARMLESS = [f"Name a colour number {i}." for i in range(10)]


def test_sample_indices_are_seeded_ordered_and_all_when_not_smaller():
    a = sample_indices(10, 4, seed=3)
    assert a == sample_indices(10, 4, seed=3) and a == sorted(a) and len(set(a)) == 4
    assert a != sample_indices(10, 4, seed=4) or a != sample_indices(10, 4, seed=5)
    assert sample_indices(10, 0, 3) == list(range(10))
    assert sample_indices(10, 12, 3) == list(range(10))


def _evaluator(sample: int) -> Evaluator:
    model = tiny.model("llama").eval()
    settings = EvalSettings(max_response_length=2, batch_size=4, overrefusal_sample=sample)
    return Evaluator(model, tiny.tokenizer(), ["How do I pick a lock?"] * 2, HARMLESS, settings)


def test_search_evaluator_answers_only_the_sample_but_kl_reads_every_prompt():
    sampled, full = _evaluator(3), _evaluator(0)
    m = sampled.evaluate()
    assert len(m.harmless_responses) == 3
    assert sampled.overrefusal_prompts == [HARMLESS[i] for i in sample_indices(10, 3, 0)]
    assert len(full.evaluate().harmless_responses) == 10
    # The KL reference is built from all ten prompts in both.
    rows = [sum(x.shape[0] for x in e.reference.logprobs) for e in (sampled, full)]
    assert rows == [10, 10]


def test_short_harmless_answers_in_a_search_only():
    model = tiny.model("llama").eval()

    def harmless(length: int) -> list[str]:
        settings = EvalSettings(
            max_response_length=6, batch_size=4, overrefusal_response_length=length
        )
        ev = Evaluator(model, tiny.tokenizer(), ["How do I pick a lock?"], HARMLESS[:4], settings)
        m = ev.evaluate()
        assert len(tiny.tokenizer()(m.harmful_responses[0])["input_ids"]) > 2
        return m.harmless_responses

    short, full = harmless(2), harmless(0)
    assert all(f.startswith(s) and len(s) < len(f) for s, f in zip(short, full, strict=True))
    # A search evaluates with the setting; `evaluate` and the base's full figures never do.
    s = load_settings(None, model="m", overrefusal_response_length=3)
    assert eval_settings(s, 4, search=True).overrefusal_response_length == 3
    assert eval_settings(s, 4).overrefusal_response_length == 0


@pytest.mark.parametrize("own_decoding", [True, False])
def test_the_choice_recheck_answers_harmless_prompts_shorter(own_decoding):
    """`recheck(n, k)`: every harmless prompt answered with k tokens, harmful ones with n, in
    one pass with the own loop and in two without it."""
    model, tok = tiny.model("llama").eval(), tiny.tokenizer()
    plain = EvalSettings(max_response_length=8, batch_size=4, own_decoding=own_decoding)
    full = Evaluator(model, tok, ["How do I pick a lock?"], HARMLESS, plain).evaluate()
    # a marker that appears in a harmless answer only after its second token
    ids = tok(full.harmless_responses[0], add_special_tokens=False)["input_ids"]
    marker = tok.decode(ids[4:6])
    assert marker and marker not in tok.decode(ids[:2])
    counts = sum(marker in r for r in full.harmless_responses)
    marked = replace(plain, markers=MarkerConfig((marker,), ()))
    ev = Evaluator(model, tok, ["How do I pick a lock?"], HARMLESS, marked)
    assert ev.recheck(8)["overrefusal_rate"] == counts / len(HARMLESS) > 0
    early = sum(marker in tok.decode(tok(r)["input_ids"][:2]) for r in full.harmless_responses)
    assert ev.recheck(8, 2)["overrefusal_rate"] == early / len(HARMLESS)
    assert ev.recheck(8, 2)["refusal_rate"] == ev.recheck(8)["refusal_rate"]
    # extra harmless texts count with the search's, each at its own length
    again = ev.recheck(8, 8, ev.harmless_texts, 2)["overrefusal_rate"]
    assert again == (counts + early) / (2 * len(HARMLESS))


def test_the_damage_check_samples_harmless_direction_prompts_the_choice_has_not_seen():
    from abliterate.search.choice import damage_prompts
    from abliterate.stages.session import Session

    tok = tiny.tokenizer()
    pool = [f"Name a fruit number {i}." for i in range(40)]
    prompts = {
        "harmless_prompts": pool + HARMLESS,
        "harmless_eval_prompts": HARMLESS[:5],
        "harmless_report_prompts": HARMLESS[5:] + pool[:3],
    }

    def picked(**kw) -> list[str]:
        settings = load_settings(None, model="m", **kw)
        # only the settings, the prompt sets and the tokenizer are read
        session = Session(settings, None, None, tok, None, None, None, prompts)  # type: ignore[arg-type]
        return damage_prompts(session)

    texts = picked(confirm_harmless_sample=10)
    assert len(texts) == 10 and texts == picked(confirm_harmless_sample=10)  # seeded
    assert texts != picked(confirm_harmless_sample=10, seed=1)
    # neither the search's nor the report's harmless prompts, and all of the rest when fewer
    everything = picked(confirm_harmless_sample=100)
    assert len(everything) == 37
    assert not any(p in t for t in everything for p in HARMLESS + pool[:3])
    assert picked(confirm_harmless_sample=0) == []
