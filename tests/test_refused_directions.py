"""The refusal direction from the harmful prompts the unedited model refuses (stages/refused.py):
the filter finds them, and the directions equal those computed from the refused prompts alone."""

from __future__ import annotations

import pytest
import torch

from abliterate import activations
from abliterate import directions as dirmath
from abliterate.config import load_settings
from abliterate.eval.generate import generate
from abliterate.eval.refusal import is_refusal
from abliterate.events import Events
from abliterate.model import loading
from abliterate.model.arch import discover
from abliterate.prompts import chat_texts
from abliterate.stages.directions import compute_directions
from abliterate.stages.refused import MIN_ANSWERED, MIN_REFUSED, refused_rows


@pytest.fixture(scope="module")
def organism(organism_dir):
    loaded = loading.load(str(organism_dir), dtypes=("float32",))
    harmful = (organism_dir / "eval" / "harmful.txt").read_text().splitlines()[:12]
    harmless = (organism_dir / "eval" / "harmless.txt").read_text().splitlines()[:28]
    return loaded.model, loaded.tokenizer, harmful, harmless


def _directions(model, tok, harmful, harmless, messages=None, **flags):
    s = load_settings(None, model="m", **flags)
    events = Events(message=messages.append) if messages is not None else Events()
    layout = discover(model)
    prompts = {"harmful_prompts": harmful, "harmless_prompts": harmless}
    return compute_directions(model, tok, layout, s, prompts, events, 8)


def test_the_filter_marks_the_prompts_the_model_refuses(organism):
    model, tok, harmful, harmless = organism
    # a "harmful" set that mixes requests the organism refuses with ones it answers
    mixed = harmful[:8] + harmless[:6]
    s = load_settings(None, model="m")
    texts = chat_texts(tok, mixed, s.system_prompt)
    lines: list[str] = []
    rows = refused_rows(model, tok, texts, s, Events(message=lines.append), 8, False)
    answers = generate(model, tok, texts, 32, 8, stop_markers=None)
    assert rows == [is_refusal(a) for a in answers]  # what longer answers say
    assert rows is not None and MIN_REFUSED <= sum(rows) < len(rows)
    assert f"{sum(rows)} of {len(rows)} refused" in lines[-1]


def test_directions_from_a_mixed_set_equal_those_of_its_refused_prompts(organism):
    model, tok, harmful, harmless = organism
    mixed = harmful[:8] + harmless[:6]
    s = load_settings(None, model="m")
    rows = refused_rows(model, tok, chat_texts(tok, mixed, s.system_prompt), s, Events(), 8, False)
    assert rows is not None
    refused = [p for p, r in zip(mixed, rows, strict=True) if r]
    lines: list[str] = []
    filtered, meta = _directions(
        model, tok, mixed, harmless[6:], lines, direction_baseline="harmless"
    )
    alone, alone_meta = _directions(model, tok, refused, harmless[6:], direction_harmful="all")
    assert meta["direction_harmful"] == "refused" and meta["n_harmful"] == len(refused)
    assert meta["harmful_given"] == len(mixed) and alone_meta["direction_harmful"] == "all"
    for key in ("directions", "mean_difference", "harmful_mean"):
        torch.testing.assert_close(filtered[key], alone[key], atol=1e-5, rtol=1e-4)
    # and they differ from the mixed set's own: the answered prompts are left out
    everything, _ = _directions(model, tok, mixed, harmless[6:], direction_harmful="all")
    assert meta["direction_baseline"] == "harmless"  # asked for; too few answered anyway
    assert not torch.allclose(everything["directions"], filtered["directions"], atol=1e-3)
    assert any("the direction uses those" in line for line in lines)


def test_every_prompt_is_kept_when_the_split_says_nothing(organism):
    model, tok, harmful, harmless = organism
    lines: list[str] = []
    # every prompt refused: nothing to leave out
    kept, meta = _directions(model, tok, harmful[:10], harmless, lines)
    plain, _ = _directions(model, tok, harmful[:10], harmless, direction_harmful="all")
    assert meta["direction_harmful"] == "all" and meta["n_harmful"] == 10
    torch.testing.assert_close(kept["directions"], plain["directions"])
    assert any("uses all of them" in line for line in lines)
    # too few refused (harmless requests given as the harmful set, two real ones among them)
    _, meta = _directions(model, tok, harmless[:10] + harmful[:2], harmless, lines)
    assert meta["direction_harmful"] == "all" and meta["n_harmful"] == 12


def test_the_answered_harmful_prompts_can_be_the_baseline(organism):
    model, tok, harmful, harmless = organism
    # twelve refused and sixteen answered requests in the harmful set
    mixed = harmful[:12] + harmless[:16]
    s = load_settings(None, model="m")
    texts = chat_texts(tok, mixed, s.system_prompt)
    rows = refused_rows(model, tok, texts, s, Events(), 8, False)
    assert rows is not None and len(rows) - sum(rows) >= MIN_ANSWERED
    lines: list[str] = []
    got, meta = _directions(model, tok, mixed, harmless[16:], lines)
    assert meta["direction_baseline"] == "answered" and meta["n_harmful"] == sum(rows)
    assert any("minus the" in line for line in lines)
    layout = discover(model)

    def mean(flags):
        picked = [t for t, f in zip(texts, flags, strict=True) if f]
        return activations.collect(model, tok, layout, picked, batch_size=8).mean

    lead = meta["uninformative_positions"]
    want = dirmath.mean_difference(mean(rows)[lead:], mean([not r for r in rows])[lead:])
    torch.testing.assert_close(got["mean_difference"][lead:], want.float(), atol=1e-4, rtol=1e-3)
    # the harmless baseline gives another direction
    other, _ = _directions(model, tok, mixed, harmless[16:], direction_baseline="harmless")
    assert not torch.allclose(other["mean_difference"], got["mean_difference"], atol=1e-3)
