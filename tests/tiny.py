"""Tiny random models of every supported family, built from transformers configs (hidden 64, a
few layers), saved with a chat-template tokenizer so that they load like real checkpoints."""

from __future__ import annotations

import json
import textwrap
from functools import cache
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from abliterate.organism.tokenizer import train_tokenizer

HIDDEN = 64
LAYERS = 3

# model_type -> config overrides. Every family named in the issue, each layout once.
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16},
    "phi3": {},
    "gpt_neox": {},
    "olmo2": {},
    "qwen3_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "head_dim": 16,
    },
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "gpt_oss": {
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "head_dim": 16,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    },
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
    },
    "qwen3_next": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
        "head_dim": 16,
        "layer_types": ["linear_attention", "linear_attention", "full_attention"],
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
    },
    "lfm2": {"layer_types": ["conv", "full_attention", "conv"], "full_attn_idxs": [1]},
}

CORPUS = [
    "Explain how to bake bread.",
    "Sure! Here is how to bake bread: mix, knead, bake.",
    "How do I pick a lock?",
    "I'm sorry, but I can't help with that.",
    "What is two plus two?",
    "Four.",
    "Write a poem about the sea.",
    "The sea is wide and blue.",
    "abcdefghijklmnopqrstuvwxyz 0123456789 .,!?'",
] * 4


@cache
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


def config(model_type: str, **extra):
    tok = tokenizer()
    kwargs = dict(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    kwargs.update(FAMILIES.get(model_type, {}))
    kwargs.update(extra)
    return AutoConfig.for_model(model_type, **kwargs)


def model(model_type: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config(model_type, **extra), dtype=torch.float32)
    # Random init is small; scale the writers up so edits change outputs measurably.
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.08)
    return m.eval()


def save(model_type: str, path: Path, seed: int = 0, **extra) -> Path:
    m = model(model_type, seed, **extra)
    m.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


REMOTE_CODE = '''
"""A tiny Llama whose MLP is a mixture of experts kept as one module per expert, the layout
of remote-code MoE checkpoints (DeepSeek-V2, Phi-3.5-MoE) that transformers no longer uses."""
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP


class TinyMoeConfig(LlamaConfig):
    model_type = "tiny_moe"

    def __init__(self, num_experts=3, **kwargs):
        self.num_experts = num_experts
        super().__init__(**kwargs)


class Expert(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.w2(torch.nn.functional.silu(self.w1(x)))


class MoeBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([Expert(config) for _ in range(config.num_experts)])
        self.shared_experts = LlamaMLP(config)

    def forward(self, x):
        weights = torch.softmax(self.gate(x), dim=-1)
        out = sum(weights[..., i : i + 1] * e(x) for i, e in enumerate(self.experts))
        return out + self.shared_experts(x)


class TinyMoeForCausalLM(LlamaForCausalLM):
    config_class = TinyMoeConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.mlp = MoeBlock(config)
        self.post_init()
'''


def save_remote_code_moe(path: Path, seed: int = 0) -> Path:
    """A model directory that loads only with trust_remote_code (auto_map to local code)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "modeling_tiny_moe.py").write_text(textwrap.dedent(REMOTE_CODE))
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "modeling_tiny_moe", path / "modeling_tiny_moe.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok = tokenizer()
    cfg = mod.TinyMoeConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    m = mod.TinyMoeForCausalLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.08)
    m.save_pretrained(path)
    tok.save_pretrained(path)
    conf = json.loads((path / "config.json").read_text())
    conf["auto_map"] = {
        "AutoConfig": "modeling_tiny_moe.TinyMoeConfig",
        "AutoModelForCausalLM": "modeling_tiny_moe.TinyMoeForCausalLM",
    }
    (path / "config.json").write_text(json.dumps(conf, indent=2))
    return path
