"""Inference-time interventions: ablation by hooks equals weight orthogonalization."""

from __future__ import annotations

import pytest
import torch

import tiny
from abliterate.edit.editor import WeightEditor, untie_embeddings
from abliterate.edit.plan import WriterEdit
from abliterate.interventions import ablation, addition, gains
from abliterate.model.arch import discover

# float32 tiny models: the two paths differ only by summation order.
TOLERANCE = 2e-5


def _ids(seed=3):
    vocab = len(tiny.tokenizer())
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(seed))


def _unit(seed=7):
    v = torch.randn(tiny.HIDDEN, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_hook_ablation_equals_weight_orthogonalization(family):
    torch.set_num_threads(1)
    model = tiny.model(family)
    untie_embeddings(model)  # the hook leaves the output head alone; so must the weight edit
    layout = discover(model)
    v, ids = _unit(), _ids()
    with torch.no_grad():
        plain = model(ids).logits
        with ablation(layout, v):
            hooked = model(ids).logits
        after_hooks = model(ids).logits
        editor = WeightEditor(layout)
        editor.apply([WriterEdit(w, v, 1.0) for w in layout.writers])
        edited = model(ids).logits
    torch.testing.assert_close(after_hooks, plain, atol=0, rtol=0)  # hooks removed cleanly
    assert (hooked - plain).abs().max() > 1e-3  # the intervention does something
    torch.testing.assert_close(hooked, edited, atol=TOLERANCE, rtol=0)


def test_per_layer_directions_match_too():
    model = tiny.model("gemma3_text")
    untie_embeddings(model)
    layout = discover(model)
    dirs = torch.nn.functional.normalize(
        torch.randn(tiny.LAYERS, tiny.HIDDEN, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    with torch.no_grad(), ablation(layout, dirs, gains(layout)):
        hooked = model(_ids()).logits
    WeightEditor(layout).apply([WriterEdit(w, dirs[max(w.layer, 0)], 1.0) for w in layout.writers])
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, hooked, atol=TOLERANCE, rtol=0)


def test_addition_at_a_layer_output_is_addition_at_the_next_input():
    model = tiny.model("llama")
    layout = discover(model)
    vec = 3.0 * _unit()
    with torch.no_grad():
        with addition(layout, 0, vec, "post"):
            a = model(_ids()).logits
        with addition(layout, 1, vec, "pre"):
            b = model(_ids()).logits
        with addition(layout, 1, vec, "mid"):
            c = model(_ids()).logits
        plain = model(_ids()).logits
    torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0)
    assert (a - plain).abs().max() > 1e-2 and (c - plain).abs().max() > 1e-2
    assert (c - a).abs().max() > 1e-4  # mid is a different place
