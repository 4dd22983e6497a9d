"""Residual writers of every supported family, found by name and checked by behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny
from abliterate.edit.check import check_writes, remaining_writes
from abliterate.edit.editor import WeightEditor
from abliterate.edit.orthogonalize import canonical
from abliterate.edit.plan import WriterEdit
from abliterate.model.arch import ArchitectureError, discover

EXPECTED = {  # a writer name (in layer 1) per component, and whether an output norm follows it
    "llama": ("self_attn.o_proj", "mlp.down_proj", False),
    "mistral": ("self_attn.o_proj", "mlp.down_proj", False),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj", False),
    "qwen3": ("self_attn.o_proj", "mlp.down_proj", False),
    "gemma2": ("self_attn.o_proj", "mlp.down_proj", True),
    "gemma3_text": ("self_attn.o_proj", "mlp.down_proj", True),
    "phi3": ("self_attn.o_proj", "mlp.down_proj", False),
    "gpt_neox": ("attention.dense", "mlp.dense_4h_to_h", False),
    "olmo2": ("self_attn.o_proj", "mlp.down_proj", True),
    "qwen3_moe": ("self_attn.o_proj", "mlp.experts.down_proj", False),
    "mixtral": ("self_attn.o_proj", "mlp.experts.down_proj", False),
    "gpt_oss": ("self_attn.o_proj", "mlp.experts.down_proj", False),
    "qwen2_moe": ("self_attn.o_proj", "mlp.shared_expert.down_proj", False),
    "qwen3_next": ("linear_attn.out_proj", "mlp.experts.down_proj", False),
    "lfm2": ("self_attn.out_proj", "feed_forward.w2", False),
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_discovery_finds_the_expected_writers(family):
    layout = discover(tiny.model(family))
    attn, mlp, normed = EXPECTED[family]
    names = {w.name.split(".1.", 1)[-1].removesuffix(".weight"): w for w in layout.layer_writers(1)}
    assert attn in names and names[attn].component == "attn_out", sorted(names)
    assert mlp in names and names[mlp].component == "mlp_down", sorted(names)
    assert (names[attn].output_norm is not None) is normed
    assert layout.by_component("embed")[0].layer == -1
    assert not layout.warnings


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_full_edit_removes_every_write_along_the_direction(family):
    model = tiny.model(family)
    layout = discover(model)
    editor = WeightEditor(layout)
    assert max(remaining_writes(model, layout, editor)) < 1e-4
    assert check_writes(model, layout, editor) == []


def test_check_catches_a_missed_writer():
    model = tiny.model("llama")
    layout = discover(model)
    layout.writers = [w for w in layout.writers if not (w.layer == 1 and w.component == "mlp_down")]
    problems = check_writes(model, layout, WeightEditor(layout))
    assert len(problems) == 1 and problems[0].startswith("layer 1 (LlamaDecoderLayer)")


def test_fused_gpt_oss_experts_use_the_transposed_axis_and_bias():
    layout = discover(tiny.model("gpt_oss"))
    experts = [w for w in layout.writers if w.fused_experts]
    assert experts and all(w.out_axis == 2 and w.bias is not None for w in experts)


def test_remote_code_experts_as_modules(tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny.save_remote_code_moe(tmp_path / "moe")
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    layout = discover(model)
    names = [w.name for w in layout.layer_writers(0)]
    assert sum(".experts." in n and n.endswith("w2.weight") for n in names) == 3
    assert any("shared_experts.down_proj" in n for n in names)
    assert check_writes(model, layout, WeightEditor(layout)) == []


def test_unknown_layout_is_a_clear_error():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(8, 8)

        def forward(self, x):
            return x + self.mix(x)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([Block(), Block()])

        def get_input_embeddings(self):
            return self.embed

    with pytest.raises(ArchitectureError, match=r"layer 0 \(Block\).*mix \(Linear\)"):
        discover(Toy())


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt_oss", "qwen2_moe"])
def test_reset_is_bitwise_after_many_edits(family):
    model = tiny.model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = discover(model)
    editor = WeightEditor(layout, row_normalization="full")
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        v = torch.randn(tiny.HIDDEN, generator=gen)
        v = v / v.norm()
        chosen = layout.writers[step % 3 :: 2]
        editor.apply([WriterEdit(w, v, 0.5 + step * 0.3) for w in chosen])
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changed
    editor.reset()
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_applied_edits_inside_the_block_and_restores_on_error():
    model = tiny.model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = discover(model)
    editor = WeightEditor(layout)
    v = torch.nn.functional.normalize(torch.randn(tiny.HIDDEN), dim=0)
    edits = [WriterEdit(w, v, 1.0) for w in layout.writers if w.layer >= 0]
    with pytest.raises(RuntimeError, match="inside"), editor.applied(edits):
        w = edits[0].writer
        written = canonical(w.weight, w.out_axis)
        assert float((v @ written).abs().max()) < 1e-5  # the direction is gone from its output
        raise RuntimeError("inside")
    for k, t in model.state_dict().items():
        assert torch.equal(before[k], t), k


def test_apply_does_not_compound():
    model = tiny.model("llama")
    layout = discover(model)
    editor = WeightEditor(layout)
    v = torch.nn.functional.normalize(torch.randn(tiny.HIDDEN), dim=0)
    edits = [WriterEdit(w, v, 0.8) for w in layout.writers if w.layer >= 0]
    editor.apply(edits)
    once = {k: t.clone() for k, t in model.state_dict().items()}
    editor.apply(edits)
    for k, t in model.state_dict().items():
        assert torch.equal(once[k], t), k
