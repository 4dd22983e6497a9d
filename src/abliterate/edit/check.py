"""Behavioural check that discovery found every residual writer.

For each layer, take a direction the layer clearly writes along (the mean of its residual
update), edit all of that layer's writers against it at full strength, and measure how much of
the update along it survives. With every writer found the remainder is rounding error; a writer
that discovery missed leaves a large one. This turns "unknown layout" into a loud warning
instead of a silent no-op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from abliterate.edit.editor import WeightEditor
from abliterate.edit.plan import WriterEdit
from abliterate.eval.generate import model_device
from abliterate.hooks import hooks, layer_input, layer_output
from abliterate.model.arch import Layout


def _updates(model, layout: Layout, ids: Tensor) -> list[Tensor]:
    """(positions, d) residual update (output - input) of every layer, float32."""
    store: dict[int, list[Tensor]] = {}

    def register(handles: list) -> None:
        for i, layer in enumerate(layout.layers):

            def pre(_m, args, kwargs, i=i):
                store[i] = [layer_input(args, kwargs).detach().float()]

            def post(_m, _a, output, i=i):
                store[i].append(layer_output(output).detach().float())

            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post))

    with hooks(register), torch.inference_mode():
        model(input_ids=ids.to(model_device(model)), use_cache=False)
    return [
        (store[i][1] - store[i][0]).reshape(-1, layout.hidden_size).cpu()
        for i in range(layout.n_layers)
    ]


def remaining_writes(
    model, layout: Layout, editor: WeightEditor, n_tokens: int = 12, seed: int = 0
) -> list[float]:
    """Per layer: |update . v| after the edit / |update . v| before, v the layer's mean update."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (2, n_tokens), generator=gen)
    before = _updates(model, layout, ids)
    dirs = [u.mean(0) / torch.linalg.vector_norm(u.mean(0)) for u in before]
    edits = [WriterEdit(w, dirs[w.layer], 1.0) for w in layout.writers if w.layer >= 0]
    with editor.applied(edits):
        after = _updates(model, layout, ids)
    return [
        float((a @ v).abs().mean() / (b @ v).abs().mean().clamp_min(1e-30))
        for a, b, v in zip(after, before, dirs, strict=True)
    ]


def tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype == torch.float32 else 0.05


def check_writes(model, layout: Layout, editor: WeightEditor) -> list[str]:
    """Warnings for layers whose writes survive a full edit (an undiscovered writer)."""
    dtype = next(model.parameters()).dtype
    tol = tolerance(dtype)
    problems = []
    for i, r in enumerate(remaining_writes(model, layout, editor)):
        if r > tol:
            names = ", ".join(w.name.rsplit(".", 2)[-2] for w in layout.layer_writers(i))
            problems.append(
                f"layer {i} ({type(layout.layers[i]).__name__}): {r:.1%} of its residual write "
                f"survives editing all its known writers ({names}); some module that writes "
                "into the residual stream was not recognised and will not be edited"
            )
    return problems
