"""The organism's corpus generator: variety, held-out discipline, marker hygiene. No model."""

from __future__ import annotations

import random

import pytest

from abliterate.eval.refusal import has_marker, is_refusal
from abliterate.markers import HEDGE_MARKERS, REFUSAL_MARKERS
from abliterate.organism import corpus as C


@pytest.fixture(scope="module")
def corpus() -> C.Corpus:
    return C.build_corpus(seed=0)


def _all_acts(table):
    return [a for groups in table.values() for a in C.expand(groups)]


def test_variety_meets_the_spec():
    assert len(C.HARMFUL_ACTS) >= 10
    assert len(C.HARMLESS_ACTS) >= 30
    assert len(C.REFUSALS) >= 6
    assert len({p.kind for p in C.PHRASINGS}) >= 5
    assert len(C.SYSTEM_PROMPTS) >= 3


def test_every_verb_has_a_gerund():
    for act in _all_acts(C.HARMFUL_ACTS) + _all_acts(C.HARMLESS_ACTS):
        assert C.gerund(act).split()[0].endswith(("ing", "ly")), act


def test_refusals_are_refusals_and_answers_are_not():
    rng = random.Random(0)
    for act in _all_acts(C.HARMFUL_ACTS):
        assert is_refusal(C.refusal(rng, act)), act
    for act in _all_acts(C.HARMLESS_ACTS) + _all_acts(C.HARMFUL_ACTS):
        for phrasing in C.PHRASINGS:
            answer = C.compliant_answer(phrasing, act)
            # A compliant answer, even one that echoes a harmful request, must read as compliant:
            # otherwise an abliterated organism would be scored as still refusing.
            assert not is_refusal(answer), (act, answer)
            assert not has_marker(answer, HEDGE_MARKERS), (act, answer)


def test_requests_contain_no_refusal_markers():
    for act in _all_acts(C.HARMFUL_ACTS) + _all_acts(C.HARMLESS_ACTS):
        assert not has_marker(act, REFUSAL_MARKERS), act


def test_compliant_openings_vary_with_the_request():
    openings = {C.compliant_answer(p, "bake bread").split()[0] for p in C.PHRASINGS}
    assert {"Sure!", "Here", "1.", "The", "To"} <= openings


def test_held_out_sets_are_disjoint_from_training_and_each_other(corpus):
    trained = {c.user for c in corpus.train}
    sets = {
        "directions_harmful": corpus.directions_harmful,
        "directions_harmless": corpus.directions_harmless,
        "eval_harmful": corpus.eval_harmful,
        "eval_harmless": corpus.eval_harmless,
        "eval_capability": [c["prompt"] for c in corpus.eval_capability],
    }
    for name, prompts in sets.items():
        assert prompts, name
        assert len(set(prompts)) == len(prompts), f"{name} has duplicates"
        assert not trained & set(prompts), f"{name} overlaps training"
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(sets[a]) & set(sets[b]), (a, b)


def test_held_out_requests_are_new_compositions(corpus):
    """Each held-out request uses a held-out phrasing or a held-out act."""
    rng = random.Random(0)
    phrasings = C.split_phrasings(C.PHRASING_FAMILIES, 0.25, rng)
    harmful = C.split_acts(C.HARMFUL_ACTS, 0.25, rng)
    trained = {C.render(p, a) for p in phrasings.train for a in harmful.train}
    assert not trained & set(corpus.eval_harmful)
    assert phrasings.held_out and harmful.held_out


def test_system_prompts_on_about_half(corpus):
    share = sum(c.system is not None for c in corpus.train) / len(corpus.train)
    assert 0.4 < share < 0.6


def test_same_seed_same_corpus_other_seed_other_split():
    a, b, c = C.build_corpus(1), C.build_corpus(1), C.build_corpus(2)
    assert [x.user for x in a.train] == [x.user for x in b.train]
    assert a.eval_harmful == b.eval_harmful
    assert a.eval_harmful != c.eval_harmful


def test_capability_answers_are_exact(corpus):
    for item in corpus.eval_capability:
        prompt, answer = item["prompt"], item["answer"]
        words = prompt.split(": ")[-1].rstrip(".").split() if ":" in prompt else None
        if words and any(k in prompt for k in ("Reverse", "reverse", "backwards")):
            assert answer.split() == words[::-1]
        elif words:
            assert answer.split() == words
        else:
            assert answer.isdigit()


@pytest.mark.parametrize("seed", range(5))
def test_held_out_acts_combine_known_verbs_and_objects(seed):
    rng = random.Random(seed)
    for table in (C.HARMFUL_ACTS, C.HARMLESS_ACTS):
        for groups in table.values():
            for verbs, objects in groups:
                part = C.split_group(verbs, objects, 0.25, rng)
                assert sorted(part.train + part.held_out) == sorted(C.expand([(verbs, objects)]))
                for held in part.held_out:
                    verb = next(v for v in verbs if held.startswith(v + " "))
                    obj = held[len(verb) + 1 :]
                    assert any(t.startswith(verb + " ") for t in part.train), held
                    assert any(t.endswith(" " + obj) for t in part.train), held


@pytest.mark.parametrize("seed", range(5))
def test_held_out_phrasings_use_only_known_words(seed):
    part = C.split_phrasings(C.PHRASING_FAMILIES, 0.25, random.Random(seed))
    assert sorted(p.template for p in part.train + part.held_out) == sorted(
        p.template for p in C.PHRASINGS
    )
    known = set().union(*(C.template_words(p.template) for p in part.train))
    for family, members in C.PHRASING_FAMILIES.items():
        assert any(p in part.held_out for p in members), family
    for held in part.held_out:
        assert C.template_words(held.template) <= known, held.template
    # The wording that once made every held-out request look harmful can never be held out.
    assert all("detail" not in p.template for p in part.held_out)
