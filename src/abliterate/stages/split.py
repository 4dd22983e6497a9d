"""Stage 3b: the held-out report prompts, kept away from the search and the choice of trial.

A trial chosen on the prompts that scored it looks better than it is: the choice itself fits
their noise. So each evaluation set is split once, seeded, into a search part (scores every
trial and the choice) and a report part that only the final re-measurement of the chosen model
reads. Named report sets (`harmful_report_prompts`, `harmless_report_prompts`) replace the split;
any of their prompts that also occur in the evaluation sets are removed from the search part.
The split is saved in the run directory (`split.json`), with the report prompts themselves, so a
resumed run and an independent re-count see the same sets.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from abliterate.errors import AbliterateError

# (evaluation set, report set) keys of the session's prompt dictionary.
PAIRS = (
    ("harmful_eval_prompts", "harmful_report_prompts"),
    ("harmless_eval_prompts", "harmless_report_prompts"),
)


@dataclass(frozen=True)
class ReportSplit:
    """What the search measures on, and what only the report does."""

    search: dict[str, list[str]]
    report: dict[str, list[str]]
    fraction: float
    seed: int
    named: dict[str, bool]  # report set named in the settings (True) or split off (False)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def split_off(prompts: list[str], fraction: float, seed: int, name: str) -> tuple[list, list]:
    """(search part, report part) of one set, each in the set's order. Split over distinct
    prompts, so a prompt that occurs twice cannot land on both sides."""
    distinct = list(dict.fromkeys(prompts))
    if fraction <= 0:
        return prompts, []
    if len(distinct) < 2:
        raise AbliterateError(
            f"{name} has {len(distinct)} distinct prompt(s); a held-out report needs at least 2 "
            f"(add prompts, name {name.replace('eval', 'report')}, or set report_fraction 0)"
        )
    k = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    held = set(random.Random(seed).sample(distinct, k))
    return [p for p in prompts if p not in held], [p for p in distinct if p in held]


def without(prompts: list[str], held: list[str], name: str) -> list[str]:
    """The search part of an evaluation set when its report set was named: its prompts minus
    the report's."""
    held_set = set(held)
    kept = [p for p in prompts if p not in held_set]
    if not kept:
        raise AbliterateError(
            f"every prompt of {name} is also a report prompt; nothing to search on"
        )
    return kept


def report_split(
    prompts: dict[str, list[str]],
    fraction: float,
    seed: int,
) -> ReportSplit:
    """Split `prompts` (the session's sets, with the named report sets where there are any)."""
    search: dict[str, list[str]] = {}
    report: dict[str, list[str]] = {}
    named: dict[str, bool] = {}
    for eval_key, report_key in PAIRS:
        named[report_key] = report_key in prompts
        if named[report_key]:
            report[report_key] = list(dict.fromkeys(prompts[report_key]))
            search[eval_key] = without(prompts[eval_key], report[report_key], eval_key)
        else:
            search[eval_key], report[report_key] = split_off(
                prompts[eval_key], fraction, seed, eval_key
            )
    return ReportSplit(search, report, fraction, seed, named)
