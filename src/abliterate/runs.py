"""The run directory: where every artifact of a run lives, and how a run resumes.

    runs/<name>/
      settings.toml           the resolved settings of the run
      directions.safetensors  refusal directions, the means they came from, per-layer statistics
      study.journal           Optuna journal (unless `storage` names a database)
      trials/<n>.json         every finished trial: parameters, metrics, sample responses
      report.html, plots/     made by `abliterate report`

Re-running the same command resumes: finished trials are never recomputed. A command whose
settings would change what the run computes is refused, naming the keys that differ.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from abliterate.atomic import atomic_file, write_text
from abliterate.config import Settings
from abliterate.errors import AbliterateError

if TYPE_CHECKING:
    from torch import Tensor

    from abliterate.search.record import TrialRecord

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Settings that may change between invocations of one run: they steer how the run is carried
# out or what happens after it, not what any trial computes.
RUNTIME_KEYS = frozenset(
    {
        "n_trials",
        "n_startup_trials",
        "output",
        "export",
        "select",
        "confirm_trials",
        "confirm_response_length",
        "confirm_overrefusal_margin",
        "confirm_capability_floor",
        "confirm_harmless_sample",
        "confirm_harmful_sample",
        "gguf_type",
        "max_shard_size",
        "overwrite",
        "batch_size",
        "shared_prefix",  # a faster layout of the same computation (checked to agree)
        "own_decoding",  # the same greedy answers, decoded faster (checked to agree)
        "max_batch_size",
        "device_map",
        "max_memory",
        "offload_folder",
        "run_dir",
    }
)


def settings_dict(settings: Settings) -> dict[str, Any]:
    """JSON/TOML-ready settings, without unset (None) values."""
    return {k: v for k, v in settings.model_dump(mode="json").items() if v is not None}


def to_toml(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)


def differences(saved: dict[str, Any], settings: Settings) -> list[str]:
    """Keys of `settings` that differ from `saved` and would change what a run computes."""
    new = settings_dict(settings)
    keys = (set(saved) | set(new)) - RUNTIME_KEYS - {"storage", "study_name"}
    return sorted(k for k in keys if saved.get(k) != new.get(k))


def describe_differences(saved: dict[str, Any], settings: Settings, keys: list[str]) -> str:
    new = settings_dict(settings)
    return ", ".join(f"{k} ({_short(saved.get(k))} -> {_short(new.get(k))})" for k in keys[:6])


def default_run_dir(model: str) -> Path:
    name = Path(model.rstrip("/")).name or "model"
    return Path("runs") / name


@dataclass
class RunDir:
    path: Path

    @classmethod
    def for_settings(cls, settings: Settings) -> RunDir:
        return cls(Path(settings.run_dir) if settings.run_dir else default_run_dir(settings.model))

    # -- paths ---------------------------------------------------------------------------
    @property
    def settings_file(self) -> Path:
        return self.path / "settings.toml"

    @property
    def directions_file(self) -> Path:
        return self.path / "directions.safetensors"

    @property
    def journal_file(self) -> Path:
        return self.path / "study.journal"

    @property
    def lock_file(self) -> Path:
        return self.path / "study.lock"

    @property
    def trials_dir(self) -> Path:
        return self.path / "trials"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def base_file(self) -> Path:
        return self.path / "base.json"

    @property
    def chosen_file(self) -> Path:
        return self.path / "chosen.json"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    @property
    def confirmed_file(self) -> Path:
        return self.path / "confirmed.json"

    @property
    def split_file(self) -> Path:
        return self.path / "split.json"

    @property
    def held_out_file(self) -> Path:
        return self.path / "held_out.json"

    def trial_file(self, number: int) -> Path:
        return self.trials_dir / f"{number}.json"

    def exists(self) -> bool:
        return self.settings_file.is_file()

    # -- settings ------------------------------------------------------------------------
    def saved_settings(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.settings_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AbliterateError(f"cannot read {self.settings_file}: {exc}") from None

    def differences(self, settings: Settings) -> list[str]:
        """Keys whose values differ from the saved settings and would change the results."""
        return differences(self.saved_settings(), settings)

    def check(self, settings: Settings, new_run: bool = False) -> None:
        """Refuse to resume a run whose settings differ (unless `new_run`), before any work.

        Nothing is written here: a command that fails while loading must not leave a run
        directory behind that would then refuse the corrected command."""
        if self.exists():
            diff = self.differences(settings)
            if diff and not new_run:
                shown = describe_differences(self.saved_settings(), settings, diff)
                raise AbliterateError(
                    f"run directory {self.path} was made with different settings: {shown}; "
                    "use the same settings to resume, another --run-dir, or --new-run to "
                    "start over (the old directory is kept under a new name)"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise AbliterateError(
                f"{self.path} exists, is not empty and is not a run directory (no settings.toml)"
            )

    def commit(self, settings: Settings, new_run: bool = False) -> None:
        """Create (or, with `new_run`, archive and recreate) the directory and save settings."""
        if self.exists() and new_run and self.differences(settings):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.path.rename(self.path.with_name(f"{self.path.name}.old-{stamp}"))
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        self.write_settings(settings)

    def write_settings(self, settings: Settings) -> None:
        write_text(self.settings_file, to_toml(settings_dict(settings)))

    # -- directions ------------------------------------------------------------------------
    def save_directions(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        with atomic_file(self.directions_file) as tmp:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"abliterate": json.dumps(meta)},
            )

    def load_directions(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        if not self.directions_file.is_file():
            return None
        return read_directions(self.directions_file)

    # -- base metrics and the chosen trial -------------------------------------------------
    def save_base(self, record: dict[str, Any]) -> None:
        write_text(self.base_file, json.dumps(record, indent=2))

    def load_base(self) -> dict[str, Any] | None:
        path = self.base_file
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_choice(self, number: int, policy: str) -> None:
        write_text(self.chosen_file, json.dumps({"trial": number, "policy": policy}))

    def load_choice(self) -> dict[str, Any] | None:
        path = self.chosen_file
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_confirmed(self, confirmed: dict[str, dict[str, float]]) -> None:
        """Trials re-measured before a choice, by trial number (trial files stay as the search
        wrote them)."""
        write_text(self.confirmed_file, json.dumps(confirmed, indent=2))

    def load_confirmed(self) -> dict[str, dict[str, float]]:
        path = self.confirmed_file
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def save_split(self, record: dict[str, Any]) -> None:
        write_text(self.split_file, json.dumps(record, indent=2))

    def load_split(self) -> dict[str, Any] | None:
        path = self.split_file
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_held_out(self, record: dict[str, Any]) -> None:
        """The held-out report of the chosen trial (and of the base model, for reference)."""
        write_text(self.held_out_file, json.dumps(record, indent=2))

    def load_held_out(self) -> dict[str, Any] | None:
        path = self.held_out_file
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    # -- trials ----------------------------------------------------------------------------
    def save_trial(self, record: TrialRecord) -> None:
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.trial_file(record.number), json.dumps(record.to_dict(), indent=2))

    def load_trial(self, number: int) -> TrialRecord:
        path = self.trial_file(number)
        if not path.is_file():
            raise AbliterateError(f"trial {number} has no record in {self.trials_dir}")
        # Imported here: this module is loaded for `abliterate --help`, and a record's edit
        # parameters bring torch with them.
        from abliterate.search.record import TrialRecord

        return TrialRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def load_trials(self) -> dict[int, TrialRecord]:
        return {n: self.load_trial(n) for n in self.trial_numbers()}

    def trial_numbers(self) -> list[int]:
        if not self.trials_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.trials_dir.glob("*.json") if p.stem.isdigit())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_directions(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("abliterate", "{}"))
    return load_file(str(path)), meta
