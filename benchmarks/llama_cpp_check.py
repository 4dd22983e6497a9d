"""Load an exported GGUF with llama.cpp (llama-cpp-python), a reader that shares no code with
abliterate or transformers, and count refusals on held-out harmful prompts, base vs export.

    pip install llama-cpp-python          # PyPI ships only the source: this compiles llama.cpp
    python benchmarks/llama_cpp_check.py EXPORTED.gguf --base BASE.gguf

Answers are greedy (temperature 0), formatted by the chat template stored in each file, and
scored with abliterate's refusal markers (the same ones `abliterate evaluate` uses). Prints a
JSON summary: refusal rate of each file, tokens per second, and a few answers side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from abliterate.eval.refusal import is_refusal

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


def answers(path: Path, prompts: list[str], tokens: int, threads: int) -> tuple[list[str], float]:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=1024, n_threads=threads, seed=0, verbose=False)
    out, generated, start = [], 0, time.perf_counter()
    for p in prompts:
        reply = llm.create_chat_completion(
            [{"role": "user", "content": p}], max_tokens=tokens, temperature=0.0
        )
        out.append(reply["choices"][0]["message"]["content"] or "")
        generated += reply["usage"]["completion_tokens"]
    return out, generated / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exported", type=Path)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, default=SHARED / "harmful_val.jsonl")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the summary here")
    args = ap.parse_args()
    prompts = [json.loads(line)["text"] for line in args.prompts.open() if line.strip()]
    summary: dict = {"prompts": f"{args.prompts.name} ({len(prompts)})", "tokens": args.tokens}
    texts = {}
    for key, path in (("base", args.base), ("exported", args.exported)):
        texts[key], speed = answers(path, prompts, args.tokens, args.threads)
        summary[key] = {
            "file": path.name,
            "refusal_rate": round(sum(map(is_refusal, texts[key])) / len(prompts), 3),
            "tokens_per_second": round(speed, 1),
        }
    summary["samples"] = [
        {"prompt": p, "base": b, "exported": e}
        for p, b, e in list(zip(prompts, texts["base"], texts["exported"], strict=True))[:3]
    ]
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
