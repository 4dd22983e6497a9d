"""The files that travel with every export: settings, trial record, model card."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from abliterate.config import redact
from abliterate.edit.plan import WriterEdit
from abliterate.runs import settings_dict, to_toml
from abliterate.search.record import TrialRecord


def direction_record(edits: list[WriterEdit], scope: str) -> dict:
    """The unit directions the edit used: one for a global scope, one per layer otherwise."""
    rounded = lambda t: (torch.round(t.double() * 1e7) / 1e7).tolist()  # noqa: E731  # (k, d) too
    if scope == "global" and edits:
        return {"scope": "global", "vector": rounded(edits[0].direction)}
    per_layer: dict[str, list] = {}
    for e in edits:
        per_layer.setdefault(str(e.writer.layer), rounded(e.direction))
    return {"scope": scope, "vectors": per_layer}


# Settings of the user's machine that reproduce nothing in the published model: where the run
# and its study lived (a storage URL may hold a database password), where files went, how memory
# was placed. Dropped from the exported abliterate.toml.
PRIVATE_KEYS = frozenset(
    {"storage", "study_name", "run_dir", "output", "overwrite", "offload_folder", "max_memory"}
)


def public_settings(settings) -> dict:
    """The settings an export publishes: without PRIVATE_KEYS, any URL's password masked."""
    return public_dict(settings_dict(settings))


def public_dict(data: dict) -> dict:
    """`public_settings` of settings already read as a dict (e.g. an older export's TOML)."""

    def clean(value):
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {k: clean(v) for k, v in data.items() if k not in PRIVATE_KEYS}


def write_metadata(
    directory: Path,
    settings,
    record: TrialRecord,
    edits: list[WriterEdit],
    base: dict | None,
    card: str,
) -> None:
    data = public_settings(settings)
    data["export"] = {"trial": record.number}
    (directory / "abliterate.toml").write_text(to_toml(data), encoding="utf-8")
    trial = {**record.to_dict(), "direction": direction_record(edits, record.params.scope)}
    if base is not None:
        trial["base_metrics"] = base
    (directory / "trial.json").write_text(json.dumps(trial, indent=2), encoding="utf-8")
    (directory / "README.md").write_text(card, encoding="utf-8")
