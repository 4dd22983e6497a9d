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


# The acceptance search on the organism, shared by several test modules.
SEARCH = ["--n-trials", "30", "--max-response-length", "32", "--batch-size", "32"]


@pytest.fixture(scope="session")
def organism_run(organism_dir, tmp_path_factory) -> Path:
    """One 30-trial search on the default organism, with the chosen trial exported."""
    from abliterate.cli.main import main

    root = tmp_path_factory.mktemp("organism-run")
    args = [
        "run",
        str(organism_dir),
        *SEARCH,
        "--run-dir",
        str(root / "run"),
        "--select",
        "min-kl-under:0.1",
        "--output",
        str(root / "chosen"),
    ]
    assert main(args) == 0
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A 3-trial run on a tiny random Llama (fast): for report, compare and export commands."""
    import tiny
    from abliterate.cli.main import main

    root = tmp_path_factory.mktemp("tiny-run")
    src = tiny.save("llama", root / "model")
    args = [
        "run",
        str(src),
        "--n-trials",
        "3",
        "--n-startup-trials",
        "2",
        "--harmful-prompts",
        f"{SHARED_PROMPTS / 'harmful_train.jsonl'}:train[:16]",
        "--harmless-prompts",
        f"{SHARED_PROMPTS / 'harmless_train.jsonl'}:train[:16]",
        "--harmful-eval-prompts",
        f"{SHARED_PROMPTS / 'harmful_val.jsonl'}:train[:6]",
        "--harmless-eval-prompts",
        f"{SHARED_PROMPTS / 'harmless_val.jsonl'}:train[:6]",
        "--max-response-length",
        "6",
        "--refusal-markers",
        '["e", "a", "o", " "]',
        "--batch-size",
        "6",
        "--run-dir",
        str(root / "run"),
        "--select",
        "min-refusals",
    ]
    assert main(args) == 0
    return root
