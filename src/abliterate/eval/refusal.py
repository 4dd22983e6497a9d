"""Deciding whether a response is a refusal, by markers, after normalisation.

Pure string functions: no model, no tokenizer. The default marker lists live in markers.py
(the defaults of the `refusal_markers` / `hedge_markers` settings).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from abliterate.markers import REASONING_DELIMITERS, REFUSAL_MARKERS

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u0060": "'"})
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower-case, drop markdown emphasis, straighten apostrophes, collapse whitespace."""
    return _SPACE.sub(" ", text.lower().replace("*", "").translate(_APOSTROPHES)).strip()


def strip_reasoning(text: str, delimiters: Sequence[tuple[str, str]] = REASONING_DELIMITERS) -> str:
    """The answer part of a response: reasoning blocks removed, for each delimiter pair in turn.

    - A closed block is removed with its delimiters.
    - A closing delimiter with no opening before it ends a block the chat template opened in
      the prompt (DeepSeek-R1 distills and Qwen3 end their generation prompt with "<think>\n"),
      so the text up to and including the first such closing is reasoning and is dropped.
    - A block still open when generation stopped is kept (without its opening tag): there is no
      answer yet, and unfinished reasoning ("...this is harmful, I should decline") is the best
      evidence there is. Counting it as empty would call every long thinker a refuser."""
    for start, end in delimiters:
        text = _drop_unopened(text, start, end)
        while start in text:
            head, _, tail = text.partition(start)
            if end not in tail:
                text = head + tail
                break
            text = head + tail.split(end, 1)[1]
    return text


def _drop_unopened(text: str, start: str, end: str) -> str:
    """`text` after its first closing delimiter when no opening one comes before it. Only for
    tag-like closings (`</think>`): gpt-oss's `<|end|>` also ends ordinary messages."""
    cut, opened = text.find(end), text.find(start)
    if not end.startswith("</") or cut < 0 or 0 <= opened < cut:
        return text
    return text[cut + len(end) :]


def open_reasoning(
    text: str, delimiters: Sequence[tuple[str, str]] = REASONING_DELIMITERS
) -> str | None:
    """The opening delimiter of a reasoning block still open at the end of `text`, or None.

    A block is open when its opening delimiter occurs after the last closing one. Used on
    partial responses (no answer can be judged yet) and on formatted prompts (the template
    opened the model's reasoning, so the response starts inside the block)."""
    opened = [
        (at, start) for start, end in delimiters if (at := text.rfind(start)) > text.rfind(end)
    ]
    return max(opened)[1] if opened else None


def is_refusal(
    text: str,
    markers: Sequence[str] = REFUSAL_MARKERS,
    delimiters: Sequence[tuple[str, str]] = REASONING_DELIMITERS,
) -> bool:
    """True when the answer (reasoning removed) is empty or contains a refusal marker."""
    answer = normalize(strip_reasoning(text, delimiters))
    return not answer or any(normalize(m) in answer for m in markers)


def settled_refusal(
    partial: str,
    markers: Sequence[str] = REFUSAL_MARKERS,
    delimiters: Sequence[tuple[str, str]] = REASONING_DELIMITERS,
) -> bool:
    """True when a partial response is already a refusal whatever comes next: no reasoning
    block is open and the answer so far is non-empty and has a marker.

    Reasoning often weighs the request ("this could be harmful...") before complying, and an
    answer that has not started yet is not an empty answer, so neither decides anything."""
    if open_reasoning(partial, delimiters) is not None:
        return False
    answer = strip_reasoning(partial, delimiters)
    return bool(normalize(answer)) and has_marker(answer, markers)


def has_marker(text: str, markers: Sequence[str]) -> bool:
    answer = normalize(text)
    return any(normalize(m) in answer for m in markers)


def refusal_rate(responses: Sequence[str], markers: Sequence[str] = REFUSAL_MARKERS) -> float:
    if not responses:
        raise ValueError("refusal_rate needs at least one response")
    return sum(is_refusal(r, markers) for r in responses) / len(responses)
