"""Apply an edit plan to a model's weights in place, and restore them exactly.

Pristine copies of every writer are kept; each edit is computed from them (so edits never
compound) and written into the live parameters. Writers the new plan leaves alone are restored
from their copies. After any sequence of `apply` calls, `reset` leaves the weights bitwise equal
to the originals. No adapters or hooks wrap the model: a trial costs the edit plus the
evaluation's forward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from abliterate.edit.orthogonalize import canonical, effective_direction, factors, project_bias
from abliterate.edit.plan import WriterEdit
from abliterate.model.arch import Layout, Writer, output_scale


class WeightEditor:
    def __init__(
        self,
        layout: Layout,
        row_normalization: str = "none",
        full_rank: int = 3,
        backup_device: str | torch.device | None = None,
    ):
        self.layout = layout
        self.row_normalization = row_normalization
        self.full_rank = full_rank
        self._gains: dict[str, Tensor | None] = {}
        self._weights: dict[str, Tensor] = {}
        self._biases: dict[str, Tensor] = {}
        self._dirty: set[str] = set()
        for w in layout.writers:
            device = backup_device or w.weight.device
            self._weights[w.name] = w.weight.detach().to(device, copy=True)
            if w.bias is not None:
                self._biases[w.name] = w.bias.detach().to(device, copy=True)
            self._gains[w.name] = (
                output_scale(w.output_norm, layout.hidden_size) if w.output_norm else None
            )

    def gain(self, writer: Writer) -> Tensor | None:
        return self._gains[writer.name]

    def direction(self, edit: WriterEdit) -> Tensor:
        """The unit vector removed from this writer's output (see effective_direction)."""
        v = edit.direction.to(edit.writer.weight.device, torch.float32)
        return effective_direction(v, self.gain(edit.writer))

    def factors(self, edit: WriterEdit) -> tuple[Tensor, Tensor]:
        """LoRA factors (B, A), float32, of one writer's edit, in its canonical view."""
        w = edit.writer
        original = canonical(self._weights[w.name], w.out_axis).to(w.weight.device, torch.float32)
        # Row normalisation is defined for projections; an embedding's rows are token vectors.
        mode = "none" if w.component == "embed" else self.row_normalization
        return factors(original, self.direction(edit), edit.strength, mode, self.full_rank)

    @torch.no_grad()
    def apply(self, edits: list[WriterEdit]) -> None:
        touched = set()
        for edit in edits:
            self._write(edit)
            touched.add(edit.writer.name)
        for w in self.layout.writers:
            if w.name in self._dirty and w.name not in touched:
                self._restore(w)
        self._dirty = touched

    @torch.no_grad()
    def reset(self) -> None:
        for w in self.layout.writers:
            if w.name in self._dirty:
                self._restore(w)
        self._dirty = set()

    def _write(self, edit: WriterEdit) -> None:
        w = edit.writer
        b, a = self.factors(edit)
        original = canonical(self._weights[w.name], w.out_axis).to(w.weight.device, torch.float32)
        canonical(w.weight.data, w.out_axis).copy_(original + b @ a)
        if w.bias is not None:
            bias = self._biases[w.name].to(w.bias.device, torch.float32)
            w.bias.data.copy_(project_bias(bias, self.direction(edit), edit.strength))

    def _restore(self, w: Writer) -> None:
        w.weight.data.copy_(self._weights[w.name])
        if w.bias is not None:
            w.bias.data.copy_(self._biases[w.name])


def untie_embeddings(model: nn.Module) -> bool:
    """Give the output head its own copy of a tied embedding matrix, so that editing the input
    embedding does not also edit the unembedding. Returns whether anything was untied."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return True
