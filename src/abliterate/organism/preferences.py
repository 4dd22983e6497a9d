"""Preference pairs from the organism's generator, for testing DPO healing offline.

Chosen answers are correct (exact capability answers, the organism's helpful answers); rejected
ones are damaged versions of them (an arithmetic slip, a dropped or swapped word, a stuttering
answer). Prompts come from the training compositions, so the held-out sets stay unseen.
"""

from __future__ import annotations

import random

from abliterate.eval.refusal import is_refusal
from abliterate.organism.corpus import build_corpus


def _damage(rng: random.Random, answer: str) -> str:
    if answer.isdigit():
        return str(int(answer) + rng.choice([-2, -1, 1, 2]) if int(answer) > 2 else int(answer) + 1)
    words = answer.split()
    if len(words) <= 4:  # a word list: drop or repeat a word
        i = rng.randrange(len(words))
        words[i] = words[i - 1] if i else words[-1]
        return " ".join(words)
    cut = max(2, len(words) // 3)
    return " ".join(words[:cut] + words[cut - 1 : cut] * 3)  # a stutter


def preference_pairs(seed: int = 0, n: int = 128) -> list[dict[str, str]]:
    corpus = build_corpus(seed)
    rng = random.Random(seed + 1)
    pool = [c for c in corpus.train if c.system is None]
    rng.shuffle(pool)
    pairs = []
    for conv in pool:
        if is_refusal(conv.assistant):
            continue  # healing teaches quality, not refusals
        rejected = _damage(rng, conv.assistant)
        if rejected != conv.assistant:
            pairs.append({"prompt": conv.user, "chosen": conv.assistant, "rejected": rejected})
        if len(pairs) == n:
            break
    return pairs
