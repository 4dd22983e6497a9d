"""Where each model family keeps its decoder layers and the weights that write into the residual
stream.

The result is a list of `Writer`s: weight tensors with the axis that indexes the hidden
dimension, their bias, the module whose output is the write (for hooks), and the elementwise norm
that some families (Gemma 2/3, OLMo 2, GLM 4) apply to that output before adding it to the
residual. Editing works on these tensors directly, so every layout can be edited and reset:
ordinary linears, one linear per expert, experts fused into one 3-D parameter (Mixtral, Qwen3-MoE
and gpt-oss in transformers 5), shared experts, and hybrid layers whose mixer is a linear
attention or a convolution.

Discovery is by name, checked by behaviour: `check_writes` edits every writer of a layer
against a direction and verifies that the layer then writes nothing along it. A writer that
discovery missed shows up there, loudly, instead of as a silent no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel

# Leaf names of modules that write into the residual stream.
WRITER_NAMES = frozenset(
    {
        "o_proj",
        "out_proj",
        "dense",
        "c_proj",
        "wo",
        "down_proj",
        "dense_4h_to_h",
        "fc2",
        "w2",
        "output_linear",
        "c_fc2",
    }
)
# Path parts that mark the token-mixing half of a layer (attention, linear attention, conv, SSM).
MIXER_PARTS = ("attn", "attention", "mixer", "conv", "mamba", "linear_attn", "token_mixer")
# Path parts that mark the channel-mixing half (dense MLP, MoE, experts).
MLP_PARTS = ("mlp", "ffn", "feed_forward", "moe", "experts", "expert", "block_sparse_moe")
# Names of norms applied to a half's output before the residual add ("sandwich" norms).
OUTPUT_NORMS = {
    "attn_out": ("post_self_attn_layernorm", "post_attn_norm", "post_attention_norm"),
    "mlp_down": ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffn_norm"),
}
# Containers that hold the decoder layers, most specific first.
LAYER_PATHS = (
    "model.language_model.layers",
    "model.model.language_model.layers",
    "language_model.model.layers",
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.layers",
    "gpt_neox.layers",
    "backbone.layers",
    "model.model.layers",
)


class ArchitectureError(Exception):
    """The model's layout is not understood; the message says what was found."""


@dataclass(eq=False)
class Writer:
    """One tensor that writes into the residual stream."""

    name: str  # parameter name in the model
    component: str  # "attn_out" | "mlp_down" | "embed"
    layer: int  # decoder layer; -1 for the embedding
    module: nn.Module  # holds the weight; its output is the write (before `output_norm`)
    attr: str  # the weight's attribute on `module` ("weight", or "down_proj" for fused experts)
    out_axis: int  # axis of the weight of size hidden (the residual dimension)
    bias_attr: str | None = None
    bias_name: str | None = None
    output_norm: nn.Module | None = None  # elementwise norm between the write and the residual

    # Tensors are looked up when needed, not held: accelerate replaces the Parameter objects of
    # offloaded modules on every forward.
    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.module, self.attr)

    @property
    def bias(self) -> nn.Parameter | None:
        return getattr(self.module, self.bias_attr) if self.bias_attr else None

    @property
    def fused_experts(self) -> bool:
        return self.weight.ndim == 3

    def describe(self) -> str:
        w = self.weight
        shape = "x".join(map(str, w.quant_state.shape if is_4bit(w) else w.shape))  # type: ignore[attr-defined]  # bitsandbytes Params4bit
        extras = []
        if self.fused_experts:
            extras.append(f"{self.weight.shape[0]} fused experts")
        if self.bias is not None:
            extras.append("bias")
        if self.output_norm is not None:
            extras.append("output norm")
        suffix = f" ({', '.join(extras)})" if extras else ""
        return f"{self.name} [{shape}]{suffix}"


@dataclass
class Layout:
    """All residual writers of a model, and where its layers are."""

    layers: nn.ModuleList
    layers_path: str
    hidden_size: int
    writers: list[Writer]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def by_component(self, component: str) -> list[Writer]:
        return [w for w in self.writers if w.component == component]

    def components(self) -> list[str]:
        return sorted({w.component for w in self.writers})

    def layer_writers(self, layer: int) -> list[Writer]:
        return [w for w in self.writers if w.layer == layer]


def _get(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def hidden_size(model: PreTrainedModel) -> int:
    return next(model.get_input_embeddings().parameters()).shape[1]


def find_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The decoder layers: a known container, else the longest ModuleList of equal modules."""
    for path in LAYER_PATHS:
        found = _get(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found, path
    best: tuple[nn.ModuleList, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            kinds = {type(m).__name__ for m in module}
            if len(kinds) <= 2 and (best is None or len(module) > len(best[0])):
                best = (module, name)
    if best is None:
        raise ArchitectureError(
            f"cannot find the decoder layers of {type(model).__name__}: none of "
            f"{', '.join(LAYER_PATHS)} exists and no ModuleList of layers was found"
        )
    return best


def _component_of(path: str) -> str | None:
    """attn_out or mlp_down from the module path ("self_attn.o_proj", "mlp.experts"), by the
    names of its containers."""
    parts = path.lower().split(".")[:-1]
    if any(m in p for p in parts for m in MIXER_PARTS):
        return "attn_out"
    if any(m in p for p in parts for m in MLP_PARTS):
        return "mlp_down"
    return None


def _output_norm(layer: nn.Module, component: str) -> nn.Module | None:
    """Gemma 2/3 and OLMo 2 normalise each half's output before the residual add. In those
    families `post_attention_layernorm` is such an output norm; in Llama-style layers the same
    name is the norm *before* the MLP. A `post_feedforward_layernorm` tells them apart."""
    for name in OUTPUT_NORMS[component]:
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    if hasattr(layer, "post_feedforward_layernorm") and component == "attn_out":
        return getattr(layer, "post_attention_layernorm", None)
    return None


def _linear_axis(module: nn.Module, hidden: int) -> int | None:
    """Residual axis of a 2-D writer weight: 0 for nn.Linear (out, in), 1 for GPT-2 Conv1D."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        return None
    if type(module).__name__ == "Conv1D":
        return 1 if w.shape[1] == hidden else None
    if is_4bit(w):  # packed storage: the real shape is in the quantization state
        return 0 if w.quant_state.shape[0] == hidden else None  # type: ignore[attr-defined]  # bitsandbytes Params4bit
    return 0 if w.shape[0] == hidden else None


def is_4bit(weight: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit parameter (packed bytes plus a quantization state)."""
    return getattr(weight, "quant_state", None) is not None


def _fused_axis(module: nn.Module, weight: torch.Tensor, hidden: int) -> int | None:
    """Residual axis of a 3-D (experts, ., .) down projection. transformers marks (experts, in,
    out) storage with `is_transposed` (gpt-oss); the default is (experts, out, in)."""
    transposed = bool(getattr(module, "is_transposed", False))
    axis = 2 if transposed else 1
    if weight.shape[axis] == hidden:
        return axis
    other = 1 if axis == 2 else 2
    return other if weight.shape[other] == hidden else None


def _layer_writers(layer: nn.Module, index: int, prefix: str, hidden: int) -> list[Writer]:
    writers: list[Writer] = []
    for mod_name, module in layer.named_modules():
        leaf = mod_name.rsplit(".", 1)[-1]
        component = _component_of(f"{mod_name}.x")
        # Fused experts: 3-D parameters named like a down projection, held by the experts module.
        for p_name, param in module.named_parameters(recurse=False):
            if param.ndim == 3 and p_name in ("down_proj", "w2") and component:
                axis = _fused_axis(module, param, hidden)
                if axis is None:
                    continue
                has_bias = isinstance(getattr(module, f"{p_name}_bias", None), nn.Parameter)
                writers.append(
                    Writer(
                        name=f"{prefix}.{mod_name}.{p_name}",
                        component="mlp_down",
                        layer=index,
                        module=module,
                        attr=p_name,
                        out_axis=axis,
                        bias_attr=f"{p_name}_bias" if has_bias else None,
                        bias_name=f"{prefix}.{mod_name}.{p_name}_bias" if has_bias else None,
                    )
                )
        if leaf not in WRITER_NAMES or component is None:
            continue
        axis = _linear_axis(module, hidden)
        if axis is None:
            continue
        has_bias = isinstance(getattr(module, "bias", None), nn.Parameter)
        writers.append(
            Writer(
                name=f"{prefix}.{mod_name}.weight",
                component=component,
                layer=index,
                module=module,
                attr="weight",
                out_axis=axis,
                bias_attr="bias" if has_bias else None,
                bias_name=f"{prefix}.{mod_name}.bias" if has_bias else None,
            )
        )
    for w in writers:
        w.output_norm = _output_norm(layer, w.component)
    return writers


def _candidates(layer: nn.Module, hidden: int) -> list[str]:
    """Modules of a layer whose output has the hidden size: what a writer could be."""
    found = []
    for name, module in layer.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[0] == hidden and name:
            found.append(f"{name} ({type(module).__name__})")
    return found


def discover(model: PreTrainedModel) -> Layout:
    """Find the embedding and every residual writer of every decoder layer."""
    layers, path = find_layers(model)
    d = hidden_size(model)
    names = {id(p): n for n, p in model.named_parameters()}
    embed = model.get_input_embeddings()
    writers = [
        Writer(
            name=names.get(id(embed.weight), "embed_tokens.weight"),
            component="embed",
            layer=-1,
            module=embed,
            attr="weight",
            out_axis=1,
        )
    ]
    warnings: list[str] = []
    for i, layer in enumerate(layers):
        found = _layer_writers(layer, i, f"{path}.{i}", d)
        if not found:
            raise ArchitectureError(
                f"layer {i} ({type(layer).__name__}) has no residual writer that abliterate "
                f"recognises; modules with output size {d}: "
                f"{', '.join(_candidates(layer, d)) or 'none'}. Supported writer names: "
                f"{', '.join(sorted(WRITER_NAMES))}"
            )
        kinds = {w.component for w in found}
        if kinds != {"attn_out", "mlp_down"}:
            warnings.append(
                f"layer {i} ({type(layer).__name__}) has only {', '.join(sorted(kinds))} writers"
            )
        writers += found
    for w in writers:
        # Names must be real parameter names: export and reset address tensors by name.
        if id(w.weight) in names:
            w.name = names[id(w.weight)]
        if w.bias is not None and id(w.bias) in names:
            w.bias_name = names[id(w.bias)]
    return Layout(
        layers=layers, layers_path=path, hidden_size=d, writers=writers, warnings=warnings
    )


def output_scale(norm: nn.Module, hidden: int) -> torch.Tensor:
    """The elementwise gain g of an RMS-style norm, up to a positive factor: norm(1) = g / rms(1).

    The residual write of a writer followed by such a norm is g * o / rms(o); it has no component
    along v exactly when o has none along g * v. Works for `weight` and `1 + weight` gains."""
    if isinstance(norm, nn.LayerNorm):
        # LayerNorm(1) is its bias; its gain is the weight. (Its bias adds a constant to every
        # write that no weight edit can remove; check_writes reports the remainder.)
        return norm.weight.detach().float().reshape(-1)
    p = next(norm.parameters())
    ones = torch.ones(1, hidden, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return norm(ones).float().reshape(-1)
