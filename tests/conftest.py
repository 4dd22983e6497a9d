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
# Over-refusal answered on every harmless prompt: the tests compare a trial's recorded figures
# with the same figures re-measured from its export, on all of them.
SEARCH = [
    "--n-trials", "30", "--max-response-length", "32", "--batch-size", "32",
    "--overrefusal-sample", "0",
]  # fmt: skip


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


# Characters almost any random continuation contains: every response of a random model then
# counts as a "refusal", which gives a run on a random model something to reduce.
RANDOM_TEXT_MARKERS = json.dumps([*"etaoinsrhldcu", " ", ".", ","])


def random_model_run(model, run_dir, *extra, trials=2, prompts=6, eval_prompts=4) -> list[str]:
    """Arguments of a short `abliterate run` on a random model, on slices of the real prompt
    sets; extra arguments come last and win."""
    data = SHARED_PROMPTS
    return [
        "run",
        str(model),
        "--n-trials",
        str(trials),
        "--n-startup-trials",
        "1",
        "--harmful-prompts",
        f"{data / 'harmful_train.jsonl'}:train[:{prompts}]",
        "--harmless-prompts",
        f"{data / 'harmless_train.jsonl'}:train[:{prompts}]",
        "--harmful-eval-prompts",
        f"{data / 'harmful_val.jsonl'}:train[:{eval_prompts}]",
        "--harmless-eval-prompts",
        f"{data / 'harmless_val.jsonl'}:train[:{eval_prompts}]",
        "--max-response-length",
        "4",
        "--refusal-markers",
        RANDOM_TEXT_MARKERS,
        "--batch-size",
        "4",
        "--run-dir",
        str(run_dir),
        "--select",
        "min-refusals",
        *extra,
    ]


def organism_command(organism_dir, run_dir, n_trials, *extra) -> list[str]:
    """`abliterate run` on the organism as a subprocess (short answers): resume and worker tests."""
    import sys

    return [
        sys.executable,
        "-m",
        "abliterate.cli.main",
        "run",
        str(organism_dir),
        "--n-trials",
        str(n_trials),
        "--max-response-length",
        "16",
        "--batch-size",
        "32",
        "--run-dir",
        str(run_dir),
        *extra,
    ]


def wait_for(path: Path, proc, timeout: float = 600) -> None:
    """Wait until `path` exists while `proc` keeps running."""
    import time

    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else "ended"
        assert time.time() < end, f"timed out waiting for {path}"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A 3-trial run on a tiny random Llama (fast): for report, compare and export commands."""
    import tiny
    from abliterate.cli.main import main

    root = tmp_path_factory.mktemp("tiny-run")
    src = tiny.save("llama", root / "model")
    args = random_model_run(src, root / "run", trials=3, prompts=16, eval_prompts=6)
    assert main(args) == 0
    return root
