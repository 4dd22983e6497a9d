"""Over-refusal from the opening of an answer (eval/openings.py): the teacher-forced check gives
the verdict greedy generation gives, and a search evaluator that answers only a sample of the
harmless prompts judges the others by it."""

from __future__ import annotations

import pytest

from abliterate.config import load_settings
from abliterate.eval import kl as kl_mod
from abliterate.eval import openings as op
from abliterate.eval.evaluate import Evaluator
from abliterate.eval.generate import generate
from abliterate.eval.refusal import is_refusal
from abliterate.markers import REASONING_DELIMITERS, REFUSAL_MARKERS
from abliterate.model import loading
from abliterate.prompts import chat_texts
from abliterate.stages.base import eval_settings


@pytest.fixture(scope="module")
def organism(organism_dir):
    """The organism with 16 harmful prompts whose 8-token answers open with one of its two
    most common stock refusal openings, alternating, and 8 harmless ones it answers. The tests
    below compare opening verdicts with answers, and a build of the organism may word a
    refusal its own way ("I am unable to ..."), or say one opening too rarely among a few
    prompts for an evaluator to find it; that limit is the judge's, and the README's figures
    measure it on the real model."""
    loaded = loading.load(str(organism_dir), dtypes=("float32",))
    model, tok = loaded.model, loaded.tokenizer
    harmful = (organism_dir / "eval" / "harmful.txt").read_text().splitlines()[:96]
    harmless = (organism_dir / "eval" / "harmless.txt").read_text().splitlines()[:16]
    answers = generate(model, tok, chat_texts(tok, harmful + harmless), 8, 8, stop_markers=None)
    found = op.stock_openings(tok, answers, REFUSAL_MARKERS, REASONING_DELIMITERS)
    opened = [op.opens_with(tok, a, found) for a in answers]
    refused = [is_refusal(a) for a in answers]
    # by opening, alternating the two most common: every run of a few prompts holds each
    # opening at least twice, so an evaluator reading any of them finds both
    kinds: dict[tuple[int, ...], list[str]] = {}
    for p, a, o, r in zip(harmful, answers, opened, refused, strict=False):
        if o and r:
            kinds.setdefault(next(f for f in found if op.opens_with(tok, a, [f])), []).append(p)
    first, second = sorted(kinds.values(), key=len, reverse=True)[:2]
    stock = [p for pair in zip(first, second, strict=False) for p in pair][:16]
    plain = [p for p, r in zip(harmless, refused[len(harmful) :], strict=True) if not r][:8]
    assert len(stock) == 16 and len(plain) == 8
    return model, tok, stock, plain


def test_openings_are_the_shortest_starts_that_hold_a_marker(organism_dir):
    tok = loading.load_tokenizer(str(organism_dir))
    answers = [
        "I'm sorry, but I can't help with that.",
        "I'm sorry, that is not something I do.",
        "As an AI I will not.",  # seen once: one answer's wording, not a habit
        "Sure! Here is how.",
        "<think>I'm sorry</think>I'm sorry, no.",  # a reasoning model's first tokens reason
    ]
    found = op.stock_openings(tok, answers, REFUSAL_MARKERS, REASONING_DELIMITERS)
    assert len(found) == 1
    text = tok.decode(list(found[0]))
    assert "sorry" in text.lower() and "but" not in text
    assert not is_refusal(tok.decode(list(found[0][:-1])))  # one token shorter holds no marker
    assert op.opens_with(tok, answers[1], found) and not op.opens_with(tok, answers[3], found)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_teacher_forced_openings_match_generated_answers(organism, share_prefix):
    model, tok, harmful, harmless = organism
    texts = chat_texts(tok, harmful + harmless)
    answers = generate(model, tok, texts, 8, 8, stop_markers=None)
    found = op.stock_openings(tok, answers, REFUSAL_MARKERS, REASONING_DELIMITERS)
    # the organism has two stock openings that share their first token ("I'm sorry", "I cannot")
    assert len(found) >= 2 and len({o[0] for o in found}) < len(found)
    ref = kl_mod.reference(model, tok, texts, 1, 5, share_prefix)
    assert bool(ref.prefix_length) == share_prefix
    kl, first = kl_mod.kl_and_first_tokens(model, ref)
    assert kl.abs().max() < 1e-5  # the unedited model against itself
    predicted = op.hits(model, ref, first, found)
    expected = [op.opens_with(tok, a, found) for a in answers]
    assert predicted == expected
    assert 0 < sum(expected) < len(expected)
    refusals = [is_refusal(a) for a in answers]
    assert all(r for e, r in zip(expected, refusals, strict=True) if e)  # an opening refuses
    # and most refusals open with a stock opening (a build of the organism may word one of
    # them its own way, seen once: "I am unable to help you ...")
    assert sum(expected) >= 0.8 * sum(refusals)


def _evaluator(model, tok, harmful, harmless, **settings) -> Evaluator:
    s = load_settings(None, model="m", max_response_length=8, **settings)
    return Evaluator(model, tok, harmful, harmless, eval_settings(s, 8, search=True))


def test_unanswered_harmless_prompts_are_judged_by_their_opening(organism):
    model, tok, harmful, harmless = organism
    # a harmless set that is half refused, so that over-refusal has something to find
    mixed = harmless[:6] + harmful[:6]
    full = _evaluator(model, tok, harmful, mixed, overrefusal_sample=0).evaluate()
    assert full["overrefusal_rate"] == pytest.approx(0.5)

    ev = _evaluator(model, tok, harmful, mixed, overrefusal_sample=3)
    base = ev.evaluate()
    assert len(base.harmless_responses) == 3 and len(ev.unanswered) == 9
    rescored, line = ev.enable_openings(base)
    assert ev.openings and "judged" in line, line
    # three answered, nine judged by their opening: the rate of answering all twelve
    assert rescored["overrefusal_rate"] == pytest.approx(full["overrefusal_rate"])
    assert ev.evaluate()["overrefusal_rate"] == pytest.approx(full["overrefusal_rate"])
    assert rescored["refusal_rate"] == base["refusal_rate"]


def test_openings_are_off_when_turned_off_or_nothing_is_left_unanswered(organism):
    model, tok, harmful, harmless = organism
    mixed = harmless[:6] + harmful[:6]
    off = _evaluator(model, tok, harmful, mixed, overrefusal_sample=3, overrefusal_openings=False)
    base = off.evaluate()
    same, line = off.enable_openings(base)
    assert not off.openings and "off" in line and same is base
    everything = _evaluator(model, tok, harmful, mixed, overrefusal_sample=0)
    assert "off" in everything.enable_openings(everything.evaluate())[1]
    # a base model whose refusals share no opening
    quiet = _evaluator(model, tok, harmful, mixed, overrefusal_sample=3)
    base = quiet.evaluate()
    base.harmful_responses = ["Sure, here it is."] * len(harmful)
    base.harmless_responses = ["Sure."] * 3
    assert "share no opening" in quiet.enable_openings(base)[1] and not quiet.openings


def test_openings_stay_off_when_they_do_not_predict_the_base_answers(organism):
    model, tok, harmful, harmless = organism
    ev = _evaluator(model, tok, harmful, harmless[:6] + harmful[:6], overrefusal_sample=3)
    base = ev.evaluate()
    # told that every harmful answer opened "I'm sorry", where many open "I cannot"
    base.harmful_responses = ["I'm sorry, but I can't help with that."] * len(harmful)
    rescored, line = ev.enable_openings(base)
    assert not ev.openings and "wrong" in line and rescored is base


def test_the_damage_check_judges_its_extra_prompts_by_their_opening(organism):
    model, tok, harmful, harmless = organism
    ev = _evaluator(model, tok, harmful, harmless[:4], overrefusal_sample=2)
    extra = chat_texts(tok, harmless[4:8] + harmful[10:16])
    generated = ev.recheck(8, 8, extra, 8)  # before enable_openings: 8-token answers
    ev.enable_openings(ev.evaluate())
    assert ev.openings
    judged = ev.recheck(8, 8, extra, 8)
    assert judged == generated and judged["overrefusal_rate"] > 0
    # batched once and reused by every check (beside the harmful prompts of the openings' check)
    assert set(ev._batched) == {tuple(extra), tuple(ev.harmful_texts)}
    before = len(ev._batched)
    ev.recheck(8, 8, extra, 8)
    assert len(ev._batched) == before


def test_more_harmful_prompts_judged_by_their_opening_pool_into_the_refusal_rate(organism):
    model, tok, harmful, harmless = organism
    # the extra harmful set half refused (harmless prompts among them), so pooling shows
    extra = harmful[8:14] + harmless[:6]
    answered = _evaluator(model, tok, harmful[:8] + extra, harmless, overrefusal_sample=0)
    full = answered.evaluate()["refusal_rate"]
    s = load_settings(None, model="m", max_response_length=8, overrefusal_sample=4)
    settings = eval_settings(s, 8, search=True)
    ev = Evaluator(model, tok, harmful[:8], harmless, settings, harmful_openings=extra)
    base = ev.evaluate()
    assert len(base.harmful_responses) == 8  # nothing judged before the openings are checked
    rescored, line = ev.enable_openings(base)
    assert ev.openings and "12 more harmful prompts" in line, line
    # eight answered, twelve judged by their opening: the rate of answering all twenty
    assert 0 < full < 1 and rescored["refusal_rate"] == pytest.approx(full)
    again = ev.evaluate()
    assert again["refusal_rate"] == pytest.approx(full) and "harmful openings" in again.seconds
    assert ev.recheck(8, 8)["refusal_rate"] == pytest.approx(full)
    # an evaluator without them measures the eight answered ones only
    assert (
        base["refusal_rate"]
        == _evaluator(model, tok, harmful[:8], harmless).evaluate()["refusal_rate"]
    )


def test_a_recheck_pools_extra_harmful_prompts_judged_by_their_opening(organism):
    model, tok, harmful, harmless = organism
    ev = _evaluator(model, tok, harmful[:8], harmless, overrefusal_sample=4)
    # extra harmful texts half refused (harmless prompts among them), so pooling shows
    extra = chat_texts(tok, harmful[8:14] + harmless[:6], ev.settings.system_prompt)
    alone = ev.recheck(8)["refusal_rate"]
    # before the openings are checked, the extra harmful texts are left out, not answered
    assert ev.recheck(8, 8, (), 8, extra)["refusal_rate"] == alone
    ev.enable_openings(ev.evaluate())
    assert ev.openings
    opened = ev.opened(extra)
    assert 0 < sum(opened) < len(opened)
    pooled = ev.recheck(8, 8, (), 8, extra)["refusal_rate"]
    # eight answered, twelve judged by their opening, pooled
    assert pooled == pytest.approx((alone * 8 + sum(opened)) / 20) and pooled != alone
    assert ev.recheck(8)["refusal_rate"] == pytest.approx(alone)  # only when asked


def test_the_harmful_openings_sample_leaves_out_evaluation_and_report_prompts():
    from types import SimpleNamespace

    from abliterate.stages.base import direction_sample

    pool = [f"p{i}" for i in range(40)]
    prompts = {
        "harmful_prompts": pool + pool[:5],  # repeats count once
        "harmful_eval_prompts": pool[:10],
        "harmful_report_prompts": pool[10:15],
    }
    session = SimpleNamespace(prompts=prompts, settings=load_settings(None, model="m", seed=3))
    picked = direction_sample(session, "harmful", 12)
    assert len(picked) == len(set(picked)) == 12 and not set(picked) & set(pool[:15])
    assert picked == direction_sample(session, "harmful", 12)  # seeded
    assert sorted(direction_sample(session, "harmful", 100)) == sorted(pool[15:])
    assert direction_sample(session, "harmful", 0) == []


def test_the_re_measurement_s_harmful_sample_skips_what_trials_already_judge(organism_dir):
    from types import SimpleNamespace

    from abliterate.search.choice import refusal_prompts

    tok = loading.load_tokenizer(str(organism_dir))
    pool = [f"request {i}" for i in range(60)]
    prompts = {"harmful_prompts": pool, "harmful_eval_prompts": pool[:10]}
    settings = load_settings(None, model="m", confirm_harmful_sample=30)
    every_trial = chat_texts(tok, pool[10:20])
    evaluator = SimpleNamespace(openings=[(1,)], harmful_openings=every_trial)
    session = SimpleNamespace(
        prompts=prompts, settings=settings, tokenizer=tok, evaluator=evaluator
    )
    texts = refusal_prompts(session)
    # 30 sampled from the 50 outside the evaluation set, less those judged in every trial
    assert 20 <= len(texts) < 30 and not set(texts) & set(every_trial)
    assert not set(texts) & set(chat_texts(tok, pool[:10]))
    session.evaluator = SimpleNamespace(openings=[], harmful_openings=[])
    assert refusal_prompts(session) == []  # without openings they would have to be answered


def test_trials_judged_by_openings_alone_answer_nothing_and_match_full_answers(
    organism, monkeypatch
):
    model, tok, harmful, harmless = organism
    # both sets half refused, so both rates have something to find
    bad, good = harmful[:6] + harmless[:4], harmless[:6] + harmful[10:14]
    full = _evaluator(model, tok, bad, good, overrefusal_sample=0).evaluate()
    assert 0 < full["refusal_rate"] < 1 and 0 < full["overrefusal_rate"] < 1

    ev = _evaluator(model, tok, bad, good, overrefusal_sample=3, trial_openings_only=True)
    base = ev.evaluate()  # the base model is answered: the openings are read off its answers
    assert len(base.harmful_responses) == len(bad)
    rescored, line = ev.enable_openings(base)
    assert ev.openings_only and "every harmful and harmless prompt" in line, line

    from abliterate.eval import evaluate as evaluate_mod

    def no_generation(*args, **kwargs):
        raise AssertionError("a trial judged by openings generated")

    monkeypatch.setattr(evaluate_mod, "generate", no_generation)
    trial = ev.evaluate()
    assert trial.harmful_responses is None and trial.harmless_responses is None
    assert set(trial.seconds) == {"kl", "openings"}
    # every refusal of the organism opens with a stock opening: the verdicts are the answers'
    for name in ("refusal_rate", "overrefusal_rate"):
        assert trial[name] == pytest.approx(full[name]) == pytest.approx(rescored[name])
    assert trial["harmful_marker_rate"] == 0  # no answer text to read
    monkeypatch.undo()

    again = ev.recheck(8, 8)  # the choice's re-measurement answers, and says how they agreed
    assert again["refusal_rate"] == pytest.approx(full["refusal_rate"])
    assert again["openings_refusal_rate"] == pytest.approx(full["refusal_rate"])
    assert again["openings_agree_harmful"] == again["openings_agree_harmless"] == 1.0


def test_openings_alone_count_refusals_only_where_the_answer_opens_with_one(organism):
    model, tok, harmful, harmless = organism
    ev = _evaluator(model, tok, harmful[:8], harmless[:6], trial_openings_only=True)
    ev.enable_openings(ev.evaluate())
    assert ev.openings_only
    # a late refusal: markers the base's openings do not hold are found only in answers
    from abliterate.eval.scorers import MarkerConfig

    ev.settings.markers = MarkerConfig([*ev.settings.markers.refusal, "the"], ())
    got = ev.recheck(8, 8)
    assert got["refusal_rate"] >= got["openings_refusal_rate"]
    assert got["openings_agree_harmless"] < 1.0  # harmless answers holding "the" now refuse


def test_openings_alone_need_the_openings():
    from abliterate.errors import AbliterateError

    with pytest.raises((AbliterateError, ValueError), match="trial_openings_only needs"):
        load_settings(None, model="m", trial_openings_only=True, overrefusal_openings=False)
