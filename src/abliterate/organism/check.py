"""The organism's acceptance metrics on its own held-out sets."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from abliterate.eval.capability import exact_match_rate
from abliterate.eval.generate import generate
from abliterate.eval.refusal import refusal_rate
from abliterate.prompts import chat_texts


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_capability(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in read_lines(path)]


def organism_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    new_tokens: int = 32,
    system_prompt: str | None = None,
) -> dict[str, float]:
    """Refusal rates on `eval/harmful.txt` and `eval/harmless.txt`, capability exact match."""

    def responses(prompts: list[str]) -> list[str]:
        texts = chat_texts(tokenizer, prompts, system_prompt)
        # Full-length generation: these numbers are the organism's reference, not a search score.
        return generate(model, tokenizer, texts, new_tokens, batch_size=64, stop_markers=None)

    cap = read_capability(directory / "eval" / "capability.jsonl")
    return {
        "harmful_refusal": refusal_rate(responses(read_lines(directory / "eval" / "harmful.txt"))),
        "harmless_refusal": refusal_rate(
            responses(read_lines(directory / "eval" / "harmless.txt"))
        ),
        "capability": exact_match_rate(
            responses([c["prompt"] for c in cap]), [c["answer"] for c in cap]
        ),
        "new_tokens": new_tokens,
    }
