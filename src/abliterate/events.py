"""Callbacks from the pipeline's stages: the library reports progress and messages through them
and prints nothing; the CLI decides how they look."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from abliterate.search.record import TrialRecord


@dataclass
class Events:
    """Callbacks from the pipeline; every one is optional."""

    message: Callable[[str], None] = lambda _m: None
    progress: Callable[[str, int, int], None] = lambda _s, _d, _t: None
    trial: Callable[[TrialRecord, dict], None] = lambda _record, _counts: None


def counter(events: Events, stage: str, total: int) -> Callable[[int], None]:
    """A per-batch callback that reports the cumulative progress of one stage."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        events.progress(stage, done, total)

    return tick
