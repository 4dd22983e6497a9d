"""How many CPU threads torch may use, on a machine that other work may share.

torch's OpenMP threads spin while they wait for each other. When a core is taken by another
process, the thread scheduled on it falls behind and the others spin-wait for it: beside one busy
single-thread job on two cores, training the organism ran 3.4x slower than alone
(benchmarks/busy_cores.py). Using only the cores that are idle avoids it, so by default the
count is chosen from a short sample of how busy each core is, and chosen again during long
loops as the machine's load changes. An explicit count (`--threads`, ABLITERATE_THREADS or
OMP_NUM_THREADS) is kept as it is.

The thread count is a property of the process, not of one model, hence the module-level state.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

# Seconds of CPU history one decision looks at; shorter windows chase noise.
RECHECK_EVERY_S = 2.0
FIRST_SAMPLE_S = 0.25


def usable_cores() -> list[int]:
    """The CPUs this process may run on (a container or taskset can allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_elsewhere(per_cpu: list[float], cores: list[int], own_percent: float) -> float:
    """Cores' worth of CPU used by other processes: the load on our cores minus our own."""
    total = sum(per_cpu[c] for c in cores if c < len(per_cpu)) / 100
    return max(0.0, total - own_percent / 100)


def thread_count(cores: int, busy: float) -> int:
    """One thread per core that other work leaves idle; a core counts as taken from half load."""
    return max(1, cores - int(busy + 0.5))


@dataclass
class _Watch:
    cores: list[int]
    threads: int
    process: psutil.Process
    say: Callable[[str], None]
    last: float


_watch: _Watch | None = None


def _set(threads: int) -> None:
    # Before torch loads, the environment is enough (and keeps `import torch` out of commands
    # that never need it); after, only set_num_threads reaches the running pool.
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def explicit_threads(requested: int | None) -> int | None:
    """The count the user asked for, from the flag, ABLITERATE_THREADS or OMP_NUM_THREADS."""
    if requested:
        return requested
    for name in ("ABLITERATE_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def configure(requested: int | None = None, say: Callable[[str], None] | None = None) -> int:
    """Choose torch's thread count for this process; returns it. With no explicit count the
    choice follows the machine's load at every `recheck()`."""
    global _watch
    say = say or (lambda _msg: None)
    explicit = explicit_threads(requested)
    if explicit is not None:
        _watch = None
        _set(explicit)
        return explicit
    cores = usable_cores()
    process = psutil.Process()
    process.cpu_percent(None)  # starts our own CPU clock for the next window
    per_cpu = psutil.cpu_percent(interval=FIRST_SAMPLE_S, percpu=True)
    busy = busy_elsewhere(per_cpu, cores, process.cpu_percent(None))
    threads = thread_count(len(cores), busy)
    _set(threads)
    if threads < len(cores):
        say(f"{threads} of {len(cores)} CPU threads: other processes keep {busy:.1f} cores busy")
    _watch = _Watch(cores, threads, process, say, time.monotonic())
    return threads


def recheck() -> None:
    """Follow the machine's load in a long loop; cheap enough to call every step (it samples at
    most every RECHECK_EVERY_S seconds) and a no-op without `configure()` or with a fixed count."""
    watch = _watch
    if watch is None or time.monotonic() - watch.last < RECHECK_EVERY_S:
        return
    watch.last = time.monotonic()
    busy = busy_elsewhere(
        psutil.cpu_percent(None, percpu=True), watch.cores, watch.process.cpu_percent(None)
    )
    threads = thread_count(len(watch.cores), busy)
    if threads != watch.threads:
        watch.say(
            f"CPU threads {watch.threads} -> {threads}: other processes keep {busy:.1f} of "
            f"{len(watch.cores)} cores busy"
        )
        watch.threads = threads
        _set(threads)


def reset() -> None:
    """Forget the automatic choice (tests; library users who manage threads themselves)."""
    global _watch
    _watch = None
