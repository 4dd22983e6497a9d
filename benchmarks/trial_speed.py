"""Time one trial of the search, split into its parts, and report peak memory.

    python benchmarks/trial_speed.py                       # random ~110M Llama, CPU
    python benchmarks/trial_speed.py --preset llama-3.1-8b  # 8B config, bf16, CUDA, 100+100
    python benchmarks/trial_speed.py --model DIR --device cuda --dtype bfloat16

On CUDA it also prints the roofline the search is measured against: the time one decode step
needs to read every weight once (measured copy bandwidth), times the number of decode steps.

The default model is built from a Llama config with random weights (nothing downloaded);
prompts come from ../shared/data/prompts. Random models never stop early, so generation always
runs to --max-response-length: the worst case for a trial.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from abliterate.edit.editor import WeightEditor
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import Directions, EditParams, plan
from abliterate.eval.evaluate import EvalSettings, Evaluator
from abliterate.eval.scorers import MarkerConfig
from abliterate.model.arch import discover
from abliterate.organism.tokenizer import train_tokenizer
from abliterate.prompts import load_prompt_set

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


PRESETS = {
    # Llama-3.1-8B's shapes with random weights (its 128k vocabulary kept via vocab_size).
    "llama-3.1-8b": dict(
        hidden=4096,
        layers=32,
        ffn=14336,
        kv_heads=8,
        vocab_size=128256,
        dtype="bfloat16",
        prompts=100,
        max_response_length=100,
        batch_size=100,
    ),
}


def random_llama(
    hidden: int,
    layers: int,
    ffn: int,
    dtype: torch.dtype,
    device: str,
    kv_heads: int | None = None,
    vocab_size: int = 8000,
):
    corpus = load_prompt_set(str(SHARED / "harmless_train.jsonl"))
    tok = train_tokenizer(corpus, vocab_size=min(vocab_size, 16000))
    heads = hidden // 128 if hidden >= 2048 else hidden // 64
    cfg = LlamaConfig(
        vocab_size=max(vocab_size, len(tok)),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    return model, tok


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="model directory (default: random Llama)")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=3072)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=32, help="harmful and harmless prompts each")
    ap.add_argument("--max-response-length", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    args = ap.parse_args()
    if args.preset:
        for key, value in PRESETS[args.preset].items():
            setattr(args, key, value)
        args.device = "cuda"
    dtype = getattr(torch, args.dtype)

    if args.model:
        from transformers import AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
        tok = AutoTokenizer.from_pretrained(args.model)
        tok.padding_side = "left"
    else:
        model, tok = random_llama(
            args.hidden, args.layers, args.ffn, dtype, args.device, args.kv_heads, args.vocab_size
        )
    n_params = sum(p.numel() for p in model.parameters())
    harmful = load_prompt_set(str(SHARED / "harmful_train.jsonl"))[: args.prompts]
    harmless = load_prompt_set(str(SHARED / "harmless_val.jsonl"))[: args.prompts]

    layout = discover(model)
    editor = WeightEditor(layout)
    gen = torch.Generator().manual_seed(0)
    per_layer = torch.nn.functional.normalize(
        torch.randn(layout.n_layers, layout.hidden_size, generator=gen), dim=-1
    )
    directions = Directions(per_layer=per_layer, embedding=per_layer[0])
    L = layout.n_layers
    params = EditParams(
        scope="per_layer",
        kernels={
            "attn_out": Kernel(1.0, 0.6 * L, 0.3, 0.4 * L),
            "mlp_down": Kernel(1.2, 0.7 * L, 0.4, 0.4 * L),
        },
    )
    settings = EvalSettings(
        max_response_length=args.max_response_length,
        batch_size=args.batch_size,
        markers=MarkerConfig(("sorry", "i cannot"), ()),
    )
    evaluator = Evaluator(model, tok, harmful, harmless, settings)
    edits = plan(layout.writers, directions, params)

    rows = []
    for _ in range(args.trials):
        t = {}
        start = time.perf_counter()
        editor.apply(edits)
        _sync(args.device)
        t["edit"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluator.kl()
        _sync(args.device)
        t["kl"] = time.perf_counter() - start
        start = time.perf_counter()
        responses = evaluator._responses(evaluator.harmful_texts, "harmful", None)
        responses += evaluator._responses(evaluator.harmless_texts, "harmless", None)
        _sync(args.device)
        t["generation"] = time.perf_counter() - start
        start = time.perf_counter()
        editor.reset()
        _sync(args.device)
        t["reset"] = time.perf_counter() - start
        t["tokens"] = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses)
        rows.append(t)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    total = med["edit"] + med["kl"] + med["generation"] + med["reset"]
    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "parameters_M": round(n_params / 1e6, 1),
        "dtype": args.dtype,
        "prompts": 2 * args.prompts,
        "max_response_length": args.max_response_length,
        "seconds": {k: round(med[k], 4) for k in ("edit", "reset", "kl", "generation")},
        "trial_seconds": round(total, 3),
        "edit_plus_reset_share": round((med["edit"] + med["reset"]) / total, 4),
        "generated_tokens_per_second": round(med["tokens"] / med["generation"], 1),
        "peak_memory_MB": round(peak_memory_mb(args.device)),
    }
    if args.device.startswith("cuda"):
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bandwidth = copy_bandwidth()
        steps = args.max_response_length * -(-2 * args.prompts // args.batch_size)
        roofline = weight_bytes / bandwidth * steps
        result["roofline_seconds"] = round(roofline, 3)
        result["trial_over_roofline"] = round(total / roofline, 2)
        result["copy_bandwidth_GBps"] = round(bandwidth / 1e9)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def copy_bandwidth(n_bytes: int = 2 * 2**30) -> float:
    """Device memory bandwidth, bytes/s, from timed device-to-device copies (read + write)."""
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * n_bytes * 10 / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
