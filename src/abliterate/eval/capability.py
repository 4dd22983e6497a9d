"""Exact-match scoring of capability probes (`{"prompt": ..., "answer": ...}`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from abliterate.errors import AbliterateError
from abliterate.eval.generate import generate
from abliterate.prompts import chat_texts


def _canonical(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).lower()


def exact_match(response: str, answer: str) -> bool:
    """Equal after trimming whitespace, a final period and case."""
    return _canonical(response) == _canonical(answer)


def exact_match_rate(responses: Sequence[str], answers: Sequence[str]) -> float:
    if len(responses) != len(answers) or not answers:
        raise ValueError("need one response per answer, and at least one")
    return sum(map(exact_match, responses, answers)) / len(answers)


def capability(
    model,
    tokenizer,
    items: Sequence[dict[str, str]],
    batch_size: int = 32,
    system_prompt: str | None = None,
    max_new_tokens: int = 24,
    own_loop: bool = False,
) -> float:
    """Exact-match rate of greedy answers to `{"prompt", "answer"}` probes."""
    answers = probe_answers(
        model, tokenizer, items, batch_size, system_prompt, max_new_tokens, own_loop
    )
    return exact_match_rate(answers, [i["answer"] for i in items])


def probe_answers(
    model, tokenizer, items: Sequence[dict[str, str]], batch_size: int = 32,
    system_prompt: str | None = None, max_new_tokens: int = 24, own_loop: bool = False,
    share_prefix: bool = False,
) -> list[str]:  # fmt: skip
    """Greedy answers to the probes (`own_loop`, `share_prefix`: see eval/generate.py)."""
    texts = chat_texts(tokenizer, [i["prompt"] for i in items], system_prompt)
    return generate(
        model, tokenizer, texts, max_new_tokens, batch_size, stop_markers=None,
        own_loop=own_loop, share_prefix=share_prefix,
    )  # fmt: skip


def read_probes(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise AbliterateError(f"capability probe file {path} does not exist")
    items = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if not items or not all({"prompt", "answer"} <= set(i) for i in items):
        raise AbliterateError(f'{path} must hold JSON lines with "prompt" and "answer"')
    return items
