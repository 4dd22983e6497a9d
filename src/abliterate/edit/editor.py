"""Apply an edit plan to a model's weights, and restore them exactly.

Writers resident on a device are edited in place: pristine copies are kept, each edit is
computed from them (so edits never compound) and written into the live parameters; writers the
next plan leaves alone are restored from their copies. After any sequence of `apply` calls,
`reset` leaves the weights bitwise equal to the originals. No adapters wrap the model: a trial
costs the edit plus the evaluation's forward passes.

Writers stored in bitsandbytes 4-bit are the exception: their weights are never rewritten. The
edit changes each element by far less than nf4's step, so requantizing the edited weight rounds
most of it away (about 77% of the component along the direction survives on a 1024x2816
writer), and the search would score a barely edited model while the export applies the full
edit. Their packed bytes stay as loaded and the same edit, W' = W + B A with (B, A) computed in
float32 from the dequantized weight, is added to the module's output by a forward hook, as a
LoRA adapter would: out + (x A^T) B^T. The reset removes the hook.

Writers that accelerate offloads (CPU or disk offload of models larger than the GPUs, or than
RAM) have no resident tensor to edit: their weights are loaded into the module for each forward
and dropped after it. For those, the edit is applied at that moment, by a hook chained after
accelerate's, to the freshly loaded copy (never to the stored weights, which stay pristine), so
the result is the same model and the reset is just as exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate.hooks import AlignDevicesHook, ModelHook, SequentialHook, add_hook_to_module
from accelerate.utils import set_module_tensor_to_device
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from abliterate.edit.orthogonalize import canonical, effective_direction, factors, project_bias
from abliterate.edit.plan import WriterEdit
from abliterate.model.arch import Layout, Writer, is_4bit, output_scale


def _offloads(module: nn.Module) -> bool:
    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    return any(isinstance(h, AlignDevicesHook) and h.offload for h in hooks)


def offload_owner(model: nn.Module, writer: Writer) -> nn.Module | None:
    """The module whose accelerate hook loads this writer's weight for each forward, if any."""
    best = None
    for _name, module in model.named_modules():
        if _offloads(module) and any(m is writer.module for m in module.modules()):
            best = module  # named_modules goes outside in: keep the innermost
    return best


class _EditOnLoad(ModelHook):
    """Runs after accelerate's offload hook has put the weights on the execution device: replaces
    each edited writer's weight (and bias) by its edited version for this forward."""

    def __init__(self, editor: WeightEditor, writers: list[Writer]):
        self.editor = editor
        self.writers = writers

    def pre_forward(self, module, *args, **kwargs):
        for w in self.writers:
            edit = self.editor._pending.get(w.name)
            if edit is not None:
                self.editor._edit_loaded(w, edit)
        return args, kwargs


class _AddDelta:
    """Forward hook of a 4-bit writer: adds the edit's delta x A^T B^T to its output, in float32.

    With the canonical weight (d, n) of a 2-D writer, its output is y = x W^T (+ bias) whatever
    the storage axis, so W' = W + B A writes y + (x A^T) B^T."""

    def __init__(self, b: Tensor, a: Tensor):
        self.b, self.a = b, a  # (d, r), (r, n) float32

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = args[0].to(output.device, torch.float32)  # (..., n)
        a, b = self.a.to(output.device), self.b.to(output.device)
        return (output.float() + (x @ a.T) @ b.T).to(output.dtype)  # (..., d)


class WeightEditor:
    def __init__(
        self,
        layout: Layout,
        row_normalization: str = "none",
        full_rank: int = 3,
        backup_device: str | torch.device | None = None,
        model: nn.Module | None = None,
    ):
        self.layout = layout
        self.row_normalization = row_normalization
        self.full_rank = full_rank
        self._gains: dict[str, Tensor | None] = {}
        self._weights: dict[str, Tensor] = {}
        self._biases: dict[str, Tensor] = {}
        self._dirty: set[str] = set()
        self._offloaded: dict[str, nn.Module] = {}
        self._pending: dict[str, WriterEdit] = {}  # edits of offloaded writers
        self._factors: dict[str, tuple[Tensor, Tensor]] = {}  # cached per plan, offloaded only
        self._packed: dict[str, tuple] = {}  # bitsandbytes 4-bit writers: (bytes, quant state)
        self._hooks: dict[str, RemovableHandle] = {}  # 4-bit writers edited by an output hook
        owners: dict[int, tuple[nn.Module, list[Writer]]] = {}
        for w in layout.writers:
            owner = offload_owner(model, w) if model is not None and w.weight.is_meta else None
            if owner is not None:
                self._offloaded[w.name] = owner
                owners.setdefault(id(owner), (owner, []))[1].append(w)
                continue
            device = backup_device or w.weight.device
            if is_4bit(w.weight):
                # Never modified (see the module docstring): edits are computed from their
                # dequantized values and added to the writer's output.
                self._packed[w.name] = (w.weight.data, w.weight.quant_state)  # type: ignore[attr-defined]  # bitsandbytes Params4bit
            else:
                self._weights[w.name] = w.weight.detach().to(device, copy=True)
            if w.bias is not None:
                self._biases[w.name] = w.bias.detach().to(device, copy=True)
            self._gains[w.name] = (
                output_scale(w.output_norm, layout.hidden_size) if w.output_norm else None
            )
        for owner, writers in owners.values():
            add_hook_to_module(owner, _EditOnLoad(self, writers), append=True)

    @property
    def offloaded(self) -> list[str]:
        return list(self._offloaded)

    def gain(self, writer: Writer) -> Tensor | None:
        if writer.name not in self._gains:  # offloaded: the norm's weight is loaded now
            norm = writer.output_norm
            self._gains[writer.name] = output_scale(norm, self.layout.hidden_size) if norm else None
        return self._gains[writer.name]

    def direction(self, edit: WriterEdit, device: torch.device | None = None) -> Tensor:
        """The unit vector removed from this writer's output (see effective_direction)."""
        v = edit.direction.to(device or edit.writer.weight.device, torch.float32)
        gain = self.gain(edit.writer)
        return effective_direction(v, None if gain is None else gain.to(v.device))

    def _factors_of(self, edit: WriterEdit, original: Tensor) -> tuple[Tensor, Tensor]:
        w = edit.writer
        # Row normalisation is defined for projections; an embedding's rows are token vectors.
        mode = "none" if w.component == "embed" else self.row_normalization
        u = self.direction(edit, original.device)
        return factors(original, u, edit.lam, mode, self.full_rank)

    def factors(self, edit: WriterEdit) -> tuple[Tensor, Tensor]:
        """LoRA factors (B, A), float32, of one resident writer's edit, in its canonical view."""
        return self._factors_of(edit, self._original(edit.writer))

    @torch.no_grad()
    def apply(self, edits: list[WriterEdit]) -> None:
        touched = set()
        self._pending, self._factors = {}, {}
        for edit in edits:
            if edit.writer.name in self._offloaded:
                self._pending[edit.writer.name] = edit
                continue
            self._write(edit)
            touched.add(edit.writer.name)
        for w in self.layout.writers:
            if w.name in self._dirty and w.name not in touched:
                self._restore(w)
        self._dirty = touched

    @contextmanager
    def applied(self, edits: list[WriterEdit]) -> Iterator[None]:
        """`with editor.applied(edits):` the model carries the edits inside the block and is
        restored exactly when it ends, by an exception too. The one way to try an edit."""
        self.apply(edits)
        try:
            yield
        finally:
            self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        for w in self.layout.writers:
            if w.name in self._dirty:
                self._restore(w)
        self._dirty = set()
        self._pending, self._factors = {}, {}

    def _original(self, w: Writer) -> Tensor:
        """The pristine weight of a resident writer, canonical view, float32, on its device."""
        if w.name in self._packed:
            import bitsandbytes.functional as bnbf

            data, state = self._packed[w.name]
            return canonical(bnbf.dequantize_4bit(data, state), w.out_axis).float()
        return canonical(self._weights[w.name], w.out_axis).to(w.weight.device, torch.float32)

    def _write(self, edit: WriterEdit) -> None:
        w = edit.writer
        original = self._original(w)
        b, a = self._factors_of(edit, original)
        if w.name in self._packed:
            self._unhook(w)
            self._hooks[w.name] = w.module.register_forward_hook(_AddDelta(b, a))
        else:
            canonical(w.weight.data, w.out_axis).copy_(original + b @ a)
        if w.bias is not None:
            bias = self._biases[w.name].to(w.bias.device, torch.float32)
            w.bias.data.copy_(project_bias(bias, self.direction(edit), edit.lam))

    @torch.no_grad()
    def _edit_loaded(self, w: Writer, edit: WriterEdit) -> None:
        """Edit the copy of an offloaded writer that accelerate just loaded. A new tensor is set:
        the loaded one may share memory with the stored weights (CPU offload)."""
        loaded = w.weight
        original = canonical(loaded, w.out_axis).float()
        if w.name not in self._factors:
            self._factors[w.name] = self._factors_of(edit, original)
        b, a = self._factors[w.name]
        edited = loaded.detach().clone()
        canonical(edited, w.out_axis).copy_(original + b @ a)
        set_module_tensor_to_device(w.module, w.attr, loaded.device, value=edited)
        if w.bias is not None:
            u = self.direction(edit, loaded.device)
            bias = project_bias(w.bias.float(), u, edit.lam).to(w.bias.dtype)
            set_module_tensor_to_device(w.module, w.bias_attr, loaded.device, value=bias)

    def _unhook(self, w: Writer) -> None:
        handle = self._hooks.pop(w.name, None)
        if handle is not None:
            handle.remove()

    def _restore(self, w: Writer) -> None:
        if w.name in self._packed:
            self._unhook(w)
        else:
            w.weight.data.copy_(self._weights[w.name])
        if w.bias is not None:
            w.bias.data.copy_(self._biases[w.name])


def untie_embeddings(model: PreTrainedModel) -> bool:
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
