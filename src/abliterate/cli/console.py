"""Shared terminal output: one rich console on stderr for progress, stdout for results."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and messages go to stderr so that stdout stays machine-readable (JSON, paths).
err = Console(stderr=True)
out = Console()


class LoggedProgress(Progress):
    """Rich draws nothing live when stderr is not a terminal (a log file, CI, nohup), so a long
    stage would be silent for minutes: then each task prints a plain line with its ETA, at most
    every `every` seconds and once more when it completes."""

    every = 20.0

    def __init__(self, *columns, **kwargs):
        super().__init__(*columns, **kwargs)
        self._logged: dict[TaskID, tuple[float, float]] = {}  # task -> (time, completed)

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.console.is_terminal or self.disable:
            return
        task = self._tasks[task_id]
        if not task.completed or task.total is None:
            return
        now = time.monotonic()
        last_time, last_done = self._logged.get(task_id, (0.0, -1.0))
        finished = task.completed >= task.total
        if task.completed == last_done or not (finished or now - last_time >= self.every):
            return
        self._logged[task_id] = (now, task.completed)
        eta = (
            ""
            if finished or task.time_remaining is None
            else f", eta {_clock(task.time_remaining)}"
        )
        self.console.print(
            f"  {task.description}: {task.completed:g}/{task.total:g} "
            f"({_clock(task.elapsed or 0)} elapsed{eta})",
            highlight=False,
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress() -> Progress:
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


@contextmanager
def stage_progress() -> Iterator:
    """A callback `(stage, done, total)` that drives one progress bar per stage."""
    with progress() as bars:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        yield update
