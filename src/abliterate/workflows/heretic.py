"""Heretic's study beside ours in `abliterate compare`, as ICONOCLAST compares it.

Heretic (p-e-w/heretic) keeps its Optuna study in a journal file (`checkpoints/<model>.jsonl`);
each complete trial carries Heretic's own figures as user attributes: `refusals` (a count over
`n_bad_prompts` harmful prompts), `kl_divergence`, the edit `parameters`. This module reads that
journal (from a private copy: the user's file is never opened for writing), lists the trials and
Heretic's Pareto front by its own rule, and measures the models Heretic exported for some of
those trials with the same held-out evaluation as our trials, on our run's report prompts and
against our run's base model, so both tools' numbers come from one measurement.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from abliterate.errors import AbliterateError
from abliterate.model import loading

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class HereticTrial:
    number: int  # Optuna's trial number
    index: int | None  # Heretic's "Trial N"
    refusals: int
    n_prompts: int | None
    kl: float
    parameters: dict[str, Any]

    @property
    def refusal_rate(self) -> float | None:
        return self.refusals / self.n_prompts if self.n_prompts else None


def read_journal(journal: Path) -> list[HereticTrial]:
    """The complete trials of the one study in a Heretic journal."""
    if not journal.is_file():
        raise AbliterateError(f"--heretic-checkpoint {journal}: no such file")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / journal.name
        shutil.copyfile(journal, copy)
        try:
            storage = JournalStorage(JournalFileBackend(str(copy)))
            names = optuna.get_all_study_names(storage)
            if len(names) != 1:
                raise AbliterateError(
                    f"{journal} holds {len(names)} studies; expected Heretic's one"
                )
            study = optuna.load_study(study_name=names[0], storage=storage)
            trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        except (ValueError, KeyError) as exc:
            raise AbliterateError(f"{journal} is not an Optuna journal ({exc})") from None
    out = []
    for t in trials:
        attrs = t.user_attrs
        if "refusals" not in attrs or "kl_divergence" not in attrs:
            raise AbliterateError(
                f"{journal}: trial {t.number} has no refusals/kl_divergence; is this Heretic's?"
            )
        refusals, kl = int(attrs["refusals"]), float(attrs["kl_divergence"])
        n, params = attrs.get("n_bad_prompts"), attrs.get("parameters", {})
        out.append(HereticTrial(t.number, attrs.get("index"), refusals, n, kl, params))
    return out


def heretic_front(trials: list[HereticTrial]) -> list[HereticTrial]:
    """Heretic's own rule: sorted by (refusals, KL), each kept when its KL is below every kept
    one's. Fewest refusals first."""
    front: list[HereticTrial] = []
    lowest = float("inf")
    for t in sorted(trials, key=lambda t: (t.refusals, t.kl)):
        if t.kl < lowest:
            lowest = t.kl
            front.append(t)
    return front


def parse_models(specs: list[str]) -> dict[int, Path]:
    """`N=DIR` pairs: Heretic's exported model of trial N (Optuna's number) in DIR."""
    models = {}
    for spec in specs:
        number, sep, directory = spec.partition("=")
        if not sep or not number.strip().isdigit():
            raise AbliterateError(f"--heretic-model {spec!r}: expected TRIAL=DIR, e.g. 12=out/t12")
        path = Path(directory).expanduser()
        loading.check_directory(path)
        models[int(number)] = path
    return models


def heretic_section(
    journal: Path, config: Path | None, models: dict[int, Path], held_out, settings, say
) -> dict[str, Any]:
    """comparison.json's "heretic" entry: the study's trials and front, and each given model
    measured by `held_out` (workflows/compare.HeldOut of the first run) when there is one."""
    trials = read_journal(journal)
    known = {t.number for t in trials}
    missing = sorted(set(models) - known)
    if missing:
        raise AbliterateError(f"--heretic-model: no complete trial {missing} in {journal}")
    front = heretic_front(trials)
    section: dict[str, Any] = {
        "checkpoint": str(journal),
        "config": tomllib.loads(config.read_text(encoding="utf-8")) if config else None,
        "trials": [{**asdict(t), "refusal_rate": t.refusal_rate} for t in trials],
        "front": [t.number for t in front],
        "measured": {},
    }
    for number, directory in models.items():
        say(f"heretic trial {number}: measuring {directory} on the held-out prompts")
        loaded = loading.load(
            str(directory), dtypes=settings.dtypes, device_map=settings.device_map
        )
        try:
            section["measured"][str(number)] = held_out.measure_model(
                loaded.model, loaded.tokenizer
            )
        finally:
            del loaded
            gc.collect()
    return section
