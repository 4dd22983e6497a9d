"""Forward hooks in context managers that always remove what they add.

`layer_input`/`layer_output` read a decoder layer's residual whatever calling convention the
family uses; `directional_ablation` and `activation_addition` are the inference-time
interventions of Arditi et al. (2024).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@contextmanager
def hooks(register: Callable[[list[RemovableHandle]], None]) -> Iterator[None]:
    """Run `register(handles)`, yield, then remove every handle it appended, even on error."""
    handles: list[RemovableHandle] = []
    try:
        register(handles)
        yield
    finally:
        for h in handles:
            h.remove()


def layer_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def layer_output(output: Tensor | tuple | list) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _replace_output(output: object, new: Tensor) -> object:
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


def project_out(x: Tensor, u: Tensor) -> Tensor:
    """x - u (u . x) along the last axis, computed in float32, returned in x's dtype."""
    xf = x.float()
    uf = u.to(xf.device, torch.float32)
    return (xf - (xf @ uf).unsqueeze(-1) * uf).to(x.dtype)


@contextmanager
def directional_ablation(modules_and_directions: list[tuple[nn.Module, Tensor]]) -> Iterator[None]:
    """Remove the component along each module's unit direction from that module's output, at
    every position: the hook twin of orthogonalizing the module's weights."""

    def register(handles: list[RemovableHandle]) -> None:
        for module, u in modules_and_directions:

            def hook(_m, _args, output, u=u):
                return _replace_output(output, project_out(layer_output(output), u))

            handles.append(module.register_forward_hook(hook))

    with hooks(register):
        yield


@contextmanager
def activation_addition(layer: nn.Module, vector: Tensor) -> Iterator[None]:
    """Add `vector` to the residual at the input of `layer`, at every position."""

    def pre(_m, args, kwargs):
        x = layer_input(args, kwargs)
        x = x + vector.to(x.device, x.dtype)
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    with hooks(lambda hs: hs.append(layer.register_forward_pre_hook(pre, with_kwargs=True))):
        yield
