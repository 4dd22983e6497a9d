"""Residual vectors at the last prompt token, per layer, for one stream.

The last token of a chat-formatted prompt (after the generation prompt) is where the model
decides how to answer, and where refusal directions are read (Arditi et al. 2024). Prompts are
left-padded, so that position is -1 in every row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate import threads
from abliterate.directions import winsorize
from abliterate.eval.generate import encoded_batches
from abliterate.eval.prefix import (
    MIN_PREFIX,
    PrefixCache,
    common_prefix_length,
    prefix_batches,
    token_rows,
)
from abliterate.hooks import hooks, layer_input, layer_output
from abliterate.model.arch import Layout


@dataclass
class Residuals:
    """Statistics of one prompt set. Index 0 of the layer axis is the embedding output (the
    input of layer 0); index l + 1 is the chosen stream at decoder layer l."""

    mean: Tensor  # (L + 1, d) float64
    count: int
    full: Tensor | None = None  # (n, L + 1, d) float32, only when asked for

    @property
    def embedding_mean(self) -> Tensor:
        return self.mean[0]

    @property
    def layer_mean(self) -> Tensor:
        return self.mean[1:]


def _capture(layout: Layout, stream: str, store: dict[int, Tensor]) -> Callable:
    """Hooks that put the stream's last-position vector of each layer into `store[index]`."""

    def register(handles: list) -> None:
        layers = layout.layers

        def pre0(_m, args, kwargs):
            store[0] = layer_input(args, kwargs)[:, -1].float()

        handles.append(layers[0].register_forward_pre_hook(pre0, with_kwargs=True))
        for i, layer in enumerate(layers):
            if stream == "pre":

                def pre(_m, args, kwargs, i=i):
                    store[i + 1] = layer_input(args, kwargs)[:, -1].float()

                handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
                continue

            def post(_m, _args, output, i=i):
                store[i + 1] = layer_output(output)[:, -1].float()

            if stream == "post":
                handles.append(layer.register_forward_hook(post))
                continue
            # mid: the layer's input plus the writes of its token mixer (attention, conv, ...).
            handles += _mid_hooks(layout, i, layer, store)

    return register


def _mid_hooks(layout: Layout, i: int, layer: nn.Module, store: dict[int, Tensor]) -> list:
    mixers = [w for w in layout.layer_writers(i) if w.component == "attn_out"]
    parts: list[Tensor] = []

    def pre(_m, args, kwargs):
        parts.clear()
        parts.append(layer_input(args, kwargs)[:, -1].float())

    def write(_m, _args, output, norm=None):
        x = layer_output(output)[:, -1:]
        if norm is not None:
            x = norm(x)
        parts.append(x[:, 0].float())

    def done(_m, _args, _output):
        store[i + 1] = torch.stack(parts).sum(0)

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True)]
    for w in mixers:
        handles.append(
            w.module.register_forward_hook(lambda m, a, o, norm=w.output_norm: write(m, a, o, norm))
        )
    handles.append(layer.register_forward_hook(done))
    return handles


@torch.inference_mode()
def collect(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layout: Layout,
    texts: Sequence[str],
    stream: str = "post",
    batch_size: int = 32,
    winsorize_quantile: float = 1.0,
    keep_full: bool = False,
    on_batch: Callable[[int], None] | None = None,
    share_prefix: bool = False,
) -> Residuals:
    """One forward pass per batch; means accumulate in float64 so memory does not grow with the
    number of prompts. `keep_full` also returns every vector (needed for the benign subspace
    and for plots). `share_prefix` (checked by the caller, eval/prefix.py): the tokens every
    prompt starts with (template and system prompt) are computed once, not in every row."""
    n_pos = layout.n_layers + 1
    total = torch.zeros(n_pos, layout.hidden_size, dtype=torch.float64)
    full: list[Tensor] = []
    store: dict[int, Tensor] = {}
    # Prompts of similar length share a batch: left padding is computed like any token, and
    # prompt sets mix one-line requests with paragraph-long ones.
    order = length_order(tokenizer, texts)
    ordered = [texts[i] for i in order]
    passes = _prefix_passes(model, tokenizer, ordered, batch_size) if share_prefix else None
    with hooks(_capture(layout, stream, store)):
        for n in passes or _plain_passes(model, tokenizer, ordered, batch_size):
            vecs = torch.stack([store[p].cpu() for p in range(n_pos)], dim=1)  # (b, L + 1, d)
            vecs = winsorize(vecs, winsorize_quantile)
            total += vecs.double().sum(0)
            if keep_full:
                full.append(vecs)
            if on_batch:
                on_batch(n)
    vectors = None
    if keep_full:
        sorted_vectors = torch.cat(full)
        vectors = torch.empty_like(sorted_vectors)
        vectors[torch.tensor(order)] = sorted_vectors  # back in the order of `texts`
    return Residuals(mean=total / len(texts), count=len(texts), full=vectors)


def _plain_passes(model, tokenizer, texts: list[str], batch_size: int) -> Iterator[int]:
    """Run each left-padded batch through the model (the hooks read it); yield its size."""
    for n, enc in encoded_batches(model, tokenizer, texts, batch_size):
        # only the hooks' residuals are wanted: the vocabulary projection of one position
        # is the least the model computes (a quarter of a 0.5 B model's work per token)
        model(**enc, use_cache=False, logits_to_keep=1)
        yield n


def _prefix_passes(model, tokenizer, texts: list[str], batch_size: int) -> Iterator[int] | None:
    """The same in the shared-prefix layout, or None where the prompts share too little. The
    prefix's own pass runs here, before the caller's hooks exist, so it is never captured."""
    rows = token_rows(tokenizer, texts)
    p = common_prefix_length(rows)
    if p < MIN_PREFIX:
        return None
    cache = PrefixCache(model, rows[0][:p])
    device = next(model.get_input_embeddings().parameters()).device

    def passes() -> Iterator[int]:
        for batch in prefix_batches(rows, p, batch_size, tokenizer.pad_token_id, device):
            threads.recheck()
            cache.forward(model, batch.input_ids, batch.attention_mask, 1)
            yield batch.input_ids.shape[0]

    return passes()


def length_order(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Indices of `texts` from shortest to longest in tokens (stable for equal lengths)."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: lengths[i])
