"""Edits of bitsandbytes 4-bit writers: computed on dequantized weights, requantized, and reset
exactly. Loading a model in 4-bit needs CUDA, but bitsandbytes quantizes on the CPU too, so the
edit path is tested here on writers converted by hand."""

from __future__ import annotations

import pytest
import torch

import tiny
from abliterate.edit.editor import WeightEditor
from abliterate.edit.plan import WriterEdit
from abliterate.model.arch import discover

bnb = pytest.importorskip("bitsandbytes")


def quantize_writers(model):
    """Replace every o_proj/down_proj by a 4-bit copy, as BitsAndBytesConfig would."""
    for layer in model.model.layers:
        for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
            old = getattr(parent, name)
            new = bnb.nn.Linear4bit(
                old.in_features,
                old.out_features,
                bias=False,
                compute_dtype=torch.float32,
                quant_type="nf4",
            )
            new.weight = bnb.nn.Params4bit(
                old.weight.data.clone(), requires_grad=False, quant_type="nf4"
            )
            setattr(parent, name, new.to("cpu"))
    return model


def test_4bit_writers_are_found_edited_and_reset_exactly():
    model = quantize_writers(tiny.model("llama"))
    layout = discover(model)
    o_proj = next(w for w in layout.writers if w.name.endswith("layers.1.self_attn.o_proj.weight"))
    assert o_proj.describe().startswith(o_proj.name + " [64x64]")
    packed = {
        w.name: (w.weight.data.clone(), w.weight.quant_state.absmax.clone())
        for w in layout.writers
        if w.layer >= 0
    }
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    v = torch.nn.functional.normalize(torch.randn(tiny.HIDDEN), dim=0)
    editor = WeightEditor(layout)
    with torch.no_grad():
        before = model(ids).logits
        editor.apply([WriterEdit(w, v, 1.0) for w in layout.writers if w.layer >= 0])
        edited = model(ids).logits
        # The edit is computed on the dequantized weight: what is left along v is only the
        # 4-bit rounding of the edited weight.
        import bitsandbytes.functional as F

        w = F.dequantize_4bit(o_proj.weight.data, o_proj.weight.quant_state).float()
        assert (v @ w).norm() < 0.05 * w.norm()
        editor.reset()
        after = model(ids).logits
    assert (edited - before).abs().max() > 1e-3
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    for w in layout.writers:
        if w.layer >= 0:
            assert torch.equal(w.weight.data, packed[w.name][0])
            assert torch.equal(w.weight.quant_state.absmax, packed[w.name][1])
