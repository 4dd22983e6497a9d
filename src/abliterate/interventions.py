"""Inference-time interventions (Arditi et al. 2024), as context managers on any supported model.

- `ablation`: remove the component along a direction from the output of every residual writer
  (and of the embedding), at every position. It is the hook twin of orthogonalizing those
  weights at strength 1: both remove normalize(g * v) from a writer's output when an
  elementwise norm with gain g follows it (see edit/orthogonalize.effective_direction).
- `addition`: add a vector to the residual stream at one layer (pre, mid or post), at every
  position, to induce the behaviour the direction stands for.

https://arxiv.org/abs/2406.11717
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from abliterate.edit.orthogonalize import effective_direction
from abliterate.hooks import (
    _replace_output,
    activation_addition,
    directional_ablation,
    hooks,
    layer_output,
)
from abliterate.model.arch import Layout, output_scale


def gains(layout: Layout) -> dict[str, Tensor | None]:
    """The output-norm gain of every writer (None where no norm follows it)."""
    return {
        w.name: output_scale(w.output_norm, layout.hidden_size) if w.output_norm else None
        for w in layout.writers
    }


def ablation_targets(
    layout: Layout,
    direction: Tensor,
    writer_gains: dict[str, Tensor | None],
    components: tuple[str, ...] = ("embed", "attn_out", "mlp_down"),
) -> list[tuple[torch.nn.Module, Tensor]]:
    """(module, unit direction to remove from its output) for every writer.

    `direction` is one vector (d,) for every writer, or (L, d) for one per decoder layer (the
    embedding then uses layer 0's)."""
    targets = []
    seen = set()
    for w in layout.writers:
        if w.component not in components or id(w.module) in seen:
            continue
        seen.add(id(w.module))
        v = direction if direction.ndim == 1 else direction[max(w.layer, 0)]
        g = writer_gains.get(w.name)
        u = effective_direction(
            v.float().to(w.weight.device), None if g is None else g.to(w.weight.device)
        )
        targets.append((w.module, u))
    return targets


@contextmanager
def ablation(
    layout: Layout,
    direction: Tensor,
    writer_gains: dict[str, Tensor | None] | None = None,
    components: tuple[str, ...] = ("embed", "attn_out", "mlp_down"),
) -> Iterator[None]:
    """Directional ablation of `direction` from every residual write, at every position."""
    g = gains(layout) if writer_gains is None else writer_gains
    with directional_ablation(ablation_targets(layout, direction, g, components)):
        yield


@contextmanager
def addition(layout: Layout, layer: int, vector: Tensor, stream: str = "pre") -> Iterator[None]:
    """Add `vector` to the residual at `layer`: its input (pre), after its token mixer's write
    (mid), or its output (post), at every position."""
    if stream == "pre":
        with activation_addition(layout.layers[layer], vector):
            yield
        return
    if stream == "post":
        module = layout.layers[layer]
    else:
        # mid: add to the mixer's write as it enters the residual (after its output norm).
        writer = next(w for w in layout.layer_writers(layer) if w.component == "attn_out")
        module = writer.output_norm or writer.module

    def hook(_m, _args, output):
        x = layer_output(output)
        return _replace_output(output, x + vector.to(x.device, x.dtype))

    with hooks(lambda hs: hs.append(module.register_forward_hook(hook))):
        yield
