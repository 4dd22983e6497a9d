"""The Optuna study: storage, claiming trials, heartbeats, recovery of trials whose worker died.

Guarantees, for any number of workers on one study:
- `n_trials` is the study's total: a worker claims a trial only while COMPLETE + RUNNING trials
  are fewer than `n_trials`, and that check and the claim happen under one study-wide lock
  (a file lock next to a journal or SQLite file, a PostgreSQL advisory lock otherwise);
- a trial whose worker died (killed, machine lost) is marked FAIL by the next worker that claims
  a trial, and its parameters are queued again, so the study still ends with `n_trials`
  complete trials and no finished trial is ever recomputed;
- a worker is dead when it runs on this host and its process is gone, or when its heartbeat
  (a user attribute refreshed while the trial runs) is older than the grace period.

Sampling is reproducible: before each claim the sampler is re-seeded from the seed and the
number of trials so far, so a resumed run continues as an uninterrupted one would have.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from filelock import FileLock
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from abliterate.config import Settings, redact
from abliterate.errors import AbliterateError

if TYPE_CHECKING:
    from torch import Tensor

    from abliterate.runs import RunDir

HEARTBEAT_SECONDS = 10.0
POLL_SECONDS = 2.0  # how often a worker with nothing to claim looks again
GRACE_SECONDS = 120.0
METRIC_NAMES = ["refusal_score", "kl_score"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str | None, journal: Path) -> optuna.storages.BaseStorage:
    """A journal file in the run directory by default, else any Optuna storage URL."""
    if url is None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    # Workers started together would each create Optuna's tables and collide on PostgreSQL's
    # catalog (UniqueViolation), so table creation runs under the study-wide lock, and a
    # collision with a worker of another tool is retried.
    for attempt in range(5):
        try:
            with study_lock(url, journal.with_suffix(".lock"), "storage-init"):
                return RDBStorage(url, engine_kwargs=engine_kwargs(url))
        except Exception as exc:  # driver missing, server down, bad URL: many types
            first = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if attempt < 4 and ("UniqueViolation" in first or "already exists" in first):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise AbliterateError(
                f"cannot open storage {redact(url)}{_where(url)}: {first}"
            ) from None
    raise AssertionError("unreachable")


# A database server that does not answer (wrong host, firewall) would otherwise hold a worker
# for the operating system's TCP timeout, minutes, before any message.
CONNECT_TIMEOUT = 10


def engine_kwargs(url: str) -> dict:
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return kwargs


def _where(url: str) -> str:
    """` (host H, port P)` of a server URL, so an unreachable one is named in the error."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # the URL itself is bad; the driver's message says how
        return ""
    if not parsed.host:
        return ""
    default = {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name())
    port = parsed.port or default
    return f" (host {parsed.host}, port {port})" if port else f" (host {parsed.host})"


@contextmanager
def study_lock(url: str | None, lock_file: Path, study_name: str) -> Iterator[None]:
    """A lock shared by every worker of the study."""
    if url and url.startswith("postgresql"):
        with _pg_advisory_lock(url, study_name):
            yield
        return
    if url and url.startswith("sqlite:///"):
        lock_file = Path(url.removeprefix("sqlite:///") + ".lock")
    elif url:
        # Other databases: no portable lock here; trial counts may overshoot by a few.
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_file)):
        yield


@contextmanager
def _pg_advisory_lock(url: str, name: str) -> Iterator[None]:
    import sqlalchemy

    key = zlib.crc32(f"abliterate:{name}".encode()) & 0x7FFFFFFF
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args=engine_kwargs(url)["connect_args"]
    )
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    engine.dispose()


def open_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=["minimize", "minimize"],
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES)
    return study


def sampler(seed: int, n_startup: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """A TPE sampler seeded by (seed, trials so far): deterministic given the history."""
    return optuna.samplers.TPESampler(
        multivariate=True,
        n_startup_trials=n_startup,
        seed=(seed * 1_000_003 + n_existing) % 2**32,
        constant_liar=True,  # several workers do not all sample the same point
    )


def worker_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: optuna.trial.FrozenTrial, now: float, grace: float = GRACE_SECONDS) -> bool:
    me = worker_id()
    owner = trial.user_attrs.get("worker") or {}
    if owner == me:
        return False
    if owner.get("host") == me["host"] and not _pid_alive(int(owner.get("pid", -1))):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - float(beat) > grace


def recover_stale(study: optuna.Study, grace: float = GRACE_SECONDS) -> list[int]:
    """Fail every RUNNING trial whose worker is gone and queue its parameters again."""
    now = time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, now, grace):
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            recovered.append(t.number)
    return recovered


def enqueue_once(study: optuna.Study, starts: list[dict], n_trials: int, lock) -> int:
    """Queue the warm-start trials of a new study, once across all of its workers."""
    with lock():
        if study.get_trials(deepcopy=False) or get_shared(study, "warm_started"):
            return 0
        for params in starts[:n_trials]:
            study.enqueue_trial(params, user_attrs={"warm_start": True})
        set_shared(study, "warm_started", True)
        return min(len(starts), n_trials)


def counts(study: optuna.Study) -> dict[str, int]:
    out = {"complete": 0, "running": 0, "failed": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        key = {
            TrialState.COMPLETE: "complete",
            TrialState.RUNNING: "running",
            TrialState.FAIL: "failed",
            TrialState.WAITING: "waiting",
        }.get(t.state)
        if key:
            out[key] += 1
    return out


def claim(
    study: optuna.Study,
    n_trials: int,
    seed: int,
    n_startup: int,
    lock,
    grace: float = GRACE_SECONDS,
) -> optuna.Trial | None:
    """The next trial for this worker, or None when the study has all the trials it needs."""
    with lock():
        recover_stale(study, grace)
        c = counts(study)
        if c["complete"] + c["running"] >= n_trials:
            return None
        study.sampler = sampler(seed, n_startup, len(study.get_trials(deepcopy=False)))
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("heartbeat", time.time())
        return trial


@contextmanager
def heartbeat(trial: optuna.Trial, interval: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Refresh the trial's heartbeat from a background thread while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with suppress(Exception):  # a storage hiccup: the next beat tries again
                trial.set_user_attr("heartbeat", time.time())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def abandon(study: optuna.Study, trial: optuna.Trial) -> None:
    """Give a trial up (Ctrl+C, error): mark it failed and queue its parameters again."""
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


SHARED_PREFIX = "abliterate:"


def get_shared(study: optuna.Study, key: str):
    """A value every worker of the study can read (settings, directions, base metrics)."""
    return study.user_attrs.get(SHARED_PREFIX + key)


def set_shared(study: optuna.Study, key: str, value) -> None:
    study.set_user_attr(SHARED_PREFIX + key, value)


def open_study_for(settings: Settings, run_dir: RunDir):
    """The run's study and its lock (see search/study.py)."""
    storage = open_storage(settings.storage, run_dir.journal_file)
    study = open_study(storage, settings.study_name)
    lock = partial(study_lock, settings.storage, run_dir.lock_file, settings.study_name)
    return study, lock


def encode_tensors(tensors: dict[str, Tensor]) -> str:
    from safetensors.torch import save

    return base64.b64encode(save({k: v.contiguous() for k, v in tensors.items()})).decode()


def decode_tensors(text: str) -> dict[str, Tensor]:
    from safetensors.torch import load

    return load(base64.b64decode(text))
