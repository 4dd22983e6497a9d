"""Built-in capability probes for any chat model: two-digit additions and verbatim copies,
each with one exact answer (scored by eval/capability.exact_match).

They measure damage the KL cannot name: an edit that leaves the first token alone but breaks
arithmetic or instruction following shows here. Seeded, so the same probes are asked before and
after an edit, in every run. A model directory with its own `eval/capability.jsonl` (the
organism), or the `capability_prompts` setting, replaces them.
"""

from __future__ import annotations

import random

WORDS = ("violet", "anchor", "maple", "harbor", "quartz", "falcon", "ember", "willow", "copper")


def builtin_probes(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """n probes, half additions and half copies."""
    rng = random.Random(seed)
    items = []
    for _ in range(n // 2):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        items.append(
            {"prompt": f"What is {a} + {b}? Reply with the number only.", "answer": str(a + b)}
        )
    for _ in range(n - n // 2):
        phrase = " ".join(rng.sample(WORDS, 3)) + f" {rng.randint(100, 999)}"
        items.append(
            {"prompt": f"Repeat exactly, and write nothing else: {phrase}", "answer": phrase}
        )
    return items
