"""`abliterate plan`: the memory each stage will need and the device map it would use, worked
out from the model's config alone (a meta-device model: no weights are read).

Estimates, not measurements: weights are counted exactly, activations from the sizes the
settings imply (batch, prompt and answer lengths), with the same accelerate planner that
loading uses for the device map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from accelerate import infer_auto_device_map
from accelerate.utils import get_max_memory

from abliterate.config import Settings
from abliterate.export.api import local_source, meta_model
from abliterate.export.stream import parse_size
from abliterate.model.arch import discover

BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
PROMPT_TOKENS = 64  # a typical chat-formatted prompt; long system prompts need more


@dataclass
class Stage:
    name: str
    device: str
    bytes: int
    what: str


def _dtype(settings: Settings, config) -> torch.dtype:
    for name in settings.dtypes:
        if name == "auto":
            dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype, None)
            if isinstance(dtype, torch.dtype):
                return dtype
            continue
        return getattr(torch, name)
    return torch.float32


def _ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 16 * 2**30


def plan(settings: Settings) -> tuple[dict, list[Stage], dict]:
    """(device map, stages, facts) for `settings.model` under its memory settings."""
    source = local_source(settings.model)
    model = meta_model(source, settings.trust_remote_code)
    dtype = _dtype(settings, model.config)
    per_param = 0.55 if settings.quantization == "bnb_4bit" else BYTES.get(dtype, 4)
    n_params = sum(p.numel() for p in model.parameters())
    weights = int(n_params * per_param)
    layout = discover(model)
    device_map = _device_map(settings, model, dtype)
    stages = _stages(settings, model, layout, dtype, per_param, n_params)
    facts = {
        "parameters": n_params,
        "dtype": str(dtype),
        "layers": layout.n_layers,
        "hidden": layout.hidden_size,
        "weights_bytes": weights,
        "offloaded": sorted({v for v in device_map.values() if v in ("cpu", "disk")}),
    }
    return device_map, stages, facts


def _device_map(settings: Settings, model, dtype) -> dict:
    """accelerate's placement of the model under the memory settings (RAM as the CPU's)."""
    max_memory: dict = settings.max_memory or {k: v for k, v in get_max_memory().items()}
    if "cpu" not in max_memory:
        max_memory["cpu"] = _ram()
    return infer_auto_device_map(
        model,
        max_memory={(int(k) if str(k).isdigit() else k): v for k, v in max_memory.items()},
        no_split_module_classes=getattr(model, "_no_split_modules", None) or [],
        dtype=dtype,
    )


def _stages(settings: Settings, model, layout, dtype, per_param: float, n_params: int):
    """What each stage holds in memory, and where, estimated from the model's shapes."""
    config = model.config.get_text_config()
    weights = int(n_params * per_param)
    writers = sum(w.weight.numel() for w in layout.writers if w.component != "embed")
    L, d = layout.n_layers, layout.hidden_size
    bs = settings.batch_size or (16 if not torch.cuda.is_available() else settings.max_batch_size)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    tokens = PROMPT_TOKENS + settings.max_response_length
    kv = bs * tokens * L * 2 * kv_heads * head_dim * BYTES.get(dtype, 4)
    vocab = model.get_input_embeddings().weight.shape[0]
    logits = bs * vocab * 4 * 2
    n_dir = 400  # default prompt-set slices
    residuals = 2 * n_dir * (L + 1) * d * 2  # both sets, every layer, float16 on the CPU
    main_device = "cuda:0" if torch.cuda.is_available() else "cpu"
    largest = max(p.numel() for p in model.parameters()) * 4
    stages = [
        Stage("load", "per device map", weights, f"{n_params / 1e9:.2f}B parameters as {dtype}"),
        Stage(
            "directions",
            "cpu",
            residuals,
            f"residuals of {n_dir}+{n_dir} prompts at {L + 1} positions (float16)",
        ),
        Stage(
            "directions",
            main_device,
            bs * PROMPT_TOKENS * d * 4 * 8,
            f"activations of a batch of {bs}",
        ),
        Stage(
            "search",
            "as the writers",
            int(writers * per_param),
            "pristine copies of every residual writer (for the exact reset)",
        ),
        Stage(
            "search", main_device, kv + logits, f"KV cache and logits: batch {bs} x {tokens} tokens"
        ),
        Stage(
            "export",
            "cpu",
            min(parse_size(settings.max_shard_size), weights) + 3 * largest,
            "one output shard and one tensor in float32 (streamed from the files)",
        ),
    ]
    return stages


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"
