"""Write an edit as a PEFT LoRA adapter: rank 1 per edited module (rank r for
`row_normalization = full`), loadable with `PeftModel.from_pretrained(base, DIR)`.

Factor layout per writer kind (B, A are the canonical factors, W' = W + B A):
- linear (and GPT-2 Conv1D, with fan_in_fan_out): lora_A = A (r, in), lora_B = B (out, r);
- embedding: lora_embedding_A = A (r, vocab), lora_embedding_B = B (hidden, r);
- fused experts (E, ., .) through `target_parameters`: PEFT stacks expert-major rows in lora_A
  (row e*r + k) and rank-major columns in lora_B (column k*E + e);
- an edited linear bias travels as `base_layer.bias` with bias="lora_only".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from abliterate.export.stream import Resolved, group_factors

PREFIX = "base_model.model."


def _pack_experts(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, d, r), (E, r, n) -> lora_B (d, r*E), lora_A (E*r, n) in PEFT's ParamWrapper order."""
    e, d, r = b.shape
    return b.permute(1, 2, 0).reshape(d, r * e), a.reshape(e * r, a.shape[-1])


def write_adapter(directory: Path, resolved: dict[str, Resolved], base_model: str) -> list[str]:
    """Adapter files for the edits in `resolved` (factors filled in by the streaming pass).

    Returns warnings for edits an adapter cannot express (biases of fused experts)."""
    directory.mkdir(parents=True, exist_ok=True)
    found = _Targets()
    for name, (b, a) in group_factors(resolved).items():
        found.add(name, resolved[name], b, a)
    top = max(found.ranks.values(), default=1)
    pattern = {m: k for m, k in found.ranks.items() if k != top}
    config = LoraConfig(
        r=top,
        lora_alpha=top,  # scaling 1: the adapter adds exactly B A
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=found.modules or None,
        target_parameters=found.parameters or None,
        lora_dropout=0.0,
        bias="lora_only" if found.biases else "none",
        fan_in_fan_out=found.conv1d,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    config.save_pretrained(str(directory))
    save_file(
        {k: v.contiguous().float() for k, v in found.tensors.items()},
        str(directory / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    return found.warnings


@dataclass
class _Targets:
    """The adapter's tensors and the LoraConfig fields they imply, one edited writer at a time."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)  # target_modules
    parameters: list[str] = field(default_factory=list)  # target_parameters (fused experts)
    ranks: dict[str, int] = field(default_factory=dict)
    conv1d: bool = False
    biases: bool = False
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, r: Resolved, b: torch.Tensor, a: torch.Tensor) -> None:
        w = r.writer
        if w.component == "embed":
            module = name.removesuffix(".weight")
            self.tensors[f"{PREFIX}{module}.lora_embedding_A"] = a
            self.tensors[f"{PREFIX}{module}.lora_embedding_B"] = b
            self.modules.append(module)
        elif w.fused_experts:
            module = name.rsplit(".", 1)[0]
            lora_b, lora_a = _pack_experts(b, a)
            self.tensors[f"{PREFIX}{module}.lora_A.weight"] = lora_a
            self.tensors[f"{PREFIX}{module}.lora_B.weight"] = lora_b
            self.parameters.append(name)
            if r.bias_edited:
                self.warnings.append(
                    f"{w.bias_name}: a LoRA adapter cannot carry the edit of a fused "
                    "experts bias; the merged export has it"
                )
        else:
            module = name.removesuffix(".weight")
            self.tensors[f"{PREFIX}{module}.lora_A.weight"] = a
            self.tensors[f"{PREFIX}{module}.lora_B.weight"] = b
            self.modules.append(module)
            self.conv1d |= type(w.module).__name__ == "Conv1D"
            if r.bias_edited and r.bias_value is not None:
                self.tensors[f"{PREFIX}{module}.base_layer.bias"] = r.bias_value
                self.biases = True
        self.ranks[module] = b.shape[-1]
