"""Edits of bitsandbytes 4-bit writers: computed in float32 on the dequantized weights and added
to the writers' outputs by hooks, the packed weights never touched. Loading a model in 4-bit
needs CUDA, but bitsandbytes quantizes on the CPU too, so the edit path is tested here on
writers converted by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tiny
from abliterate.edit.editor import WeightEditor
from abliterate.edit.plan import WriterEdit
from abliterate.model.arch import Layout, Writer, discover

bnb = pytest.importorskip("bitsandbytes")
import bitsandbytes.functional as bnbf  # noqa: E402


def to_4bit(old: nn.Linear) -> nn.Module:
    """A 4-bit (nf4) copy of a linear layer, as BitsAndBytesConfig would make it."""
    new = bnb.nn.Linear4bit(
        old.in_features,
        old.out_features,
        bias=old.bias is not None,
        compute_dtype=torch.float32,
        quant_type="nf4",
    )
    new.weight = bnb.nn.Params4bit(old.weight.data.clone(), requires_grad=False, quant_type="nf4")
    if old.bias is not None:
        new.bias = nn.Parameter(old.bias.data.clone(), requires_grad=False)
    return new.to("cpu")  # quantizes


def quantize_writers(model):
    """Replace every o_proj/down_proj by a 4-bit copy."""
    for layer in model.model.layers:
        for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
            setattr(parent, name, to_4bit(getattr(parent, name)))
    return model


def dequantize_writers(model):
    """Replace every 4-bit writer by a float32 nn.Linear holding its dequantized weight."""
    for layer in model.model.layers:
        for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
            old = getattr(parent, name)
            new = nn.Linear(old.in_features, old.out_features, bias=False)
            new.weight.data = bnbf.dequantize_4bit(old.weight.data, old.weight.quant_state).float()
            setattr(parent, name, new)
    return model


def dequantized(w: Writer) -> torch.Tensor:
    return bnbf.dequantize_4bit(w.weight.data, w.weight.quant_state).float()  # (d, n)


def residual_writers(layout):
    return [w for w in layout.writers if w.layer >= 0]


def ids():
    return torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))


def test_4bit_writer_output_loses_the_whole_component():
    """On a writer of realistic shape, the hooked 4-bit module's output has nothing left along
    v and equals the float32 edit of its dequantized weight; requantizing the edited weight, as
    the editor used to, keeps a large part of the component."""
    d, n = 1024, 2816
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(n, d)
    linear.weight.data = torch.randn(d, n, generator=gen) * 0.02
    linear.bias.data = torch.randn(d, generator=gen) * 0.02
    module = to_4bit(linear)
    writer = Writer(
        "down_proj.weight", "mlp_down", 0, module, "weight", 0, "bias", "down_proj.bias"
    )
    layout = Layout(nn.ModuleList(), "", d, [writer])
    v = nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    x = torch.randn(64, n, generator=gen)
    w = dequantized(writer)
    with torch.no_grad():
        before = module(x)  # (64, d)
        WeightEditor(layout).apply([WriterEdit(writer, v, 1.0)])
        after = module(x)
    assert ((after @ v).abs().mean() / (before @ v).abs().mean()) < 1e-3
    bias = linear.bias.data - (v @ linear.bias.data) * v
    expected = x @ (w - torch.outer(v, v @ w)).T + bias
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-5)

    state = writer.weight.quant_state
    packed, requantized_state = bnbf.quantize_4bit(
        w - torch.outer(v, v @ w), blocksize=state.blocksize, quant_type="nf4"
    )
    requantized = bnbf.dequantize_4bit(packed, requantized_state)
    kept = (x @ requantized.T @ v).abs().mean() / (x @ w.T @ v).abs().mean()
    assert kept > 0.3


def test_4bit_writers_reset_exactly():
    model = quantize_writers(tiny.model("llama"))
    layout = discover(model)
    writers = residual_writers(layout)
    o_proj = next(w for w in writers if w.name.endswith("layers.1.self_attn.o_proj.weight"))
    assert o_proj.describe().startswith(o_proj.name + " [64x64]")
    # (parameter, its storage, packed bytes, quantization state, absmax) of every writer
    stored = {
        w.name: (
            w.weight,
            w.weight.data_ptr(),
            w.weight.data.clone(),
            w.weight.quant_state,
            w.weight.quant_state.absmax.clone(),
        )
        for w in writers
    }
    gen = torch.Generator().manual_seed(1)
    v1, v2 = nn.functional.normalize(torch.randn(2, tiny.HIDDEN, generator=gen), dim=1)
    editor = WeightEditor(layout)
    with torch.no_grad():
        before = model(ids()).logits
        editor.apply([WriterEdit(w, v1, 1.0) for w in writers])
        # A new plan replaces the hooks: one per edited writer, none on the writers it omits.
        editor.apply([WriterEdit(w, v2, 0.7) for w in writers[1:]])
        assert len(writers[0].module._forward_hooks) == 0
        assert all(len(w.module._forward_hooks) == 1 for w in writers[1:])
        replaced = model(ids()).logits
        editor.reset()
        after = model(ids()).logits
        fresh = WeightEditor(layout)
        fresh.apply([WriterEdit(w, v2, 0.7) for w in writers[1:]])
        direct = model(ids()).logits
        fresh.reset()
    assert (replaced - before).abs().max() > 1e-3
    torch.testing.assert_close(replaced, direct, atol=0, rtol=0)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    for w in writers:
        param, ptr, data, state, absmax = stored[w.name]
        assert w.weight is param and w.weight.data_ptr() == ptr
        assert torch.equal(w.weight.data, data)
        assert w.weight.quant_state is state and torch.equal(state.absmax, absmax)
        assert len(w.module._forward_hooks) == 0


@pytest.mark.parametrize("row_normalization", ["none", "full"])
def test_4bit_hooked_edit_matches_float_edit_of_dequantized_weights(row_normalization):
    quantized = quantize_writers(tiny.model("llama"))
    reference = dequantize_writers(copy.deepcopy(quantized))
    gen = torch.Generator().manual_seed(2)
    v = nn.functional.normalize(torch.randn(tiny.HIDDEN, generator=gen), dim=0)
    editors, plans, logits = [], [], []
    for model in (quantized, reference):
        layout = discover(model)
        editors.append(WeightEditor(layout, row_normalization))
        plans.append([WriterEdit(w, v, 0.8) for w in residual_writers(layout)])
        with torch.no_grad():
            editors[-1].apply(plans[-1])
            logits.append(model(ids()).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    # The factors (what the adapter export writes) are those of the float edit.
    for edit, ref in zip(*plans, strict=True):
        for f, g in zip(editors[0].factors(edit), editors[1].factors(ref), strict=True):
            torch.testing.assert_close(f, g, rtol=1e-5, atol=1e-6)


def test_writer_check_passes_on_a_4bit_model():
    """The behavioural writer check edits and runs the model: with the edits in hooks, the
    quantized writers remove their whole write."""
    from abliterate.edit.check import check_writes, remaining_writes

    model = quantize_writers(tiny.model("llama"))
    layout = discover(model)
    assert max(remaining_writes(model, layout, WeightEditor(layout))) < 1e-4
    assert check_writes(model, layout, WeightEditor(layout)) == []
    assert all(len(w.module._forward_hooks) == 0 for w in residual_writers(layout))
