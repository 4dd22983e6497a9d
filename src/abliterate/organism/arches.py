"""Model families the organism can be built in. A registry: add one function per family.

All share one size (hidden 128, 4 layers, ~1.3M parameters) so build time and behaviour are
comparable; they differ in module layout, which is what the editing code has to cope with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# transformers is imported inside each builder: the CLI lists these names for --help.

HIDDEN, LAYERS, HEADS, FFN = 128, 4, 4, 384


@dataclass(frozen=True)
class OrganismArch:
    name: str
    summary: str
    config: Callable[[int, int, int], PretrainedConfig]  # (vocab, eos id, pad id) -> config


def _common(vocab: int, eos: int, pad: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def _llama(vocab: int, eos: int, pad: int) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        **_common(vocab, eos, pad), num_key_value_heads=HEADS, tie_word_embeddings=False
    )


def _qwen2(vocab: int, eos: int, pad: int) -> PretrainedConfig:
    # Untied, like Qwen2-7B: tied embeddings without Gemma's sqrt(d) embedding scale learn too
    # slowly for the CPU training budget (Gemma 3 covers the tied layout).
    from transformers import Qwen2Config

    return Qwen2Config(
        **_common(vocab, eos, pad),
        num_key_value_heads=2,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )


def _gemma3(vocab: int, eos: int, pad: int) -> PretrainedConfig:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        **_common(vocab, eos, pad),
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=64,
        tie_word_embeddings=True,
    )


ARCHES: dict[str, OrganismArch] = {
    a.name: a
    for a in (
        OrganismArch("llama", "Llama layout: separate lm_head, no biases (default)", _llama),
        OrganismArch("qwen2", "Qwen2 layout: q/k/v biases, grouped KV heads", _qwen2),
        OrganismArch(
            "gemma3",
            "Gemma 3 layout: norms after attention and MLP outputs, scaled "
            "and tied embeddings, sliding-window layers",
            _gemma3,
        ),
    )
}


def get_arch(name: str) -> OrganismArch:
    if name not in ARCHES:
        raise ValueError(f"unknown organism arch {name!r}; choose one of: {', '.join(ARCHES)}")
    return ARCHES[name]
