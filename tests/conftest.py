"""Shared fixtures: the cached model organisms and the project's real prompt sets."""

from __future__ import annotations

import json
import os

# Nothing is downloaded in tests; fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
from pathlib import Path

import pytest

from abliterate.organism import organism_path

# Real prompt sets shipped beside the project (never copied into it).
SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


def shared_prompts(name: str, limit: int | None = None) -> list[str]:
    """Rows of ../shared/data/prompts/<name>.jsonl, e.g. `harmful_val`."""
    path = SHARED_PROMPTS / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"shared prompt set {path} not present")
    rows = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit]


@pytest.fixture(scope="session")
def organism_dir() -> Path:
    """The default (llama) organism, built once per cache."""
    return organism_path("llama")


@pytest.fixture(scope="session")
def organism_dirs():
    """A function arch -> cached organism directory."""
    return organism_path


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Commands that default to ./runs write into the test's own directory, not the repo."""
    monkeypatch.chdir(tmp_path)
