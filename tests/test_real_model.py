"""A real pretrained, safety-tuned chat model end to end, as a user runs it: Qwen2.5-Coder-0.5B-
Instruct as a Q4_K_M GGUF in, a short search, a GGUF out; the run's held-out report reads the
exported file back and measures it on rows of the val sets, which neither the directions nor the
search saw.

SmolLM2-135M-Instruct refuses nothing: the run must stop with the clear error that there is
no refusal behaviour to remove.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import realmodels
from abliterate.cli.main import main
from abliterate.model import gguf
from abliterate.stages.held_out import figures
from conftest import SHARED_PROMPTS

pytestmark = pytest.mark.slow


def sets(directions: int, search: int) -> list[str]:
    """Directions from the first rows of the train sets, the search on the next rows: the val
    sets stay unseen for the held-out measurement."""
    harmful, harmless = (
        SHARED_PROMPTS / "harmful_train.jsonl",
        SHARED_PROMPTS / "harmless_train.jsonl",
    )
    end = directions + search
    return [
        "--harmful-prompts",
        f"{harmful}:train[:{directions}]",
        "--harmless-prompts",
        f"{harmless}:train[:{directions}]",
        "--harmful-eval-prompts",
        f"{harmful}:train[{directions}:{end}]",
        "--harmless-eval-prompts",
        f"{harmless}:train[{directions}:{end}]",
    ]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "abliterate.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_model_without_refusals_is_a_clear_error(tmp_path, capsys):
    smol = realmodels.path("smollm2-135m")
    code = main(["run", str(smol), *sets(16, 12), "--max-response-length", "16",
                 "--n-trials", "2", "--run-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no refusal behaviour to remove" in errors[0]
    assert "Traceback" not in err


def test_gguf_to_gguf_run_lowers_held_out_refusals(tmp_path):
    qwen = realmodels.path("qwen2.5-0.5b")
    out = tmp_path / "out"
    run = cli(
        "run", str(qwen), *sets(32, 16), "--n-trials", "3", "--max-response-length", "16",
        "--run-dir", str(tmp_path / "run"), "--export", "gguf", "--output", str(out),
        # Held out: rows of the val sets, which the run reads only for its report; shorter
        # answers than the default 128 for CI time (the benchmark uses 128).
        "--harmful-report-prompts", f"{SHARED_PROMPTS / 'harmful_val.jsonl'}:train[:20]",
        "--harmless-report-prompts", f"{SHARED_PROMPTS / 'harmless_val.jsonl'}:train[:16]",
        "--report-response-length", "48",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "writer check: every layer's residual write is edited" in run.stderr
    assert "Traceback" not in run.stderr and "warning" not in run.stderr.lower()
    exported = next(out.glob("*.gguf"))
    assert exported.stat().st_size <= 1.6 * qwen.stat().st_size
    trial = json.loads((out / "trial.json").read_text())
    # The run's own held-out report read the exported GGUF back, and cleaned up after itself.
    held = json.loads((tmp_path / "run" / "held_out.json").read_text())
    assert held["measured"]["weights"].startswith("GGUF, read back")
    assert next(iter(trial)) == "held_out"
    assert "## Held-out evaluation" in (out / "README.md").read_text()
    assert not gguf.converted_dir(exported).exists()
    assert not Path(f"{gguf.converted_dir(exported)}.lock").exists()
    # The export as transformers' GGUF reader gives it back, against the base GGUF.
    base, edited = held["base"], held["chosen"]
    assert base["refusal_rate"]["n"] == 20 and base["overrefusal_rate"]["n"] == 16
    assert base["refusal_rate"]["value"] >= 0.3  # the model does refuse plain harmful requests
    assert edited["refusal_rate"]["value"] < base["refusal_rate"]["value"] - 0.1, (
        figures(base), figures(edited), trial["metrics"],
    )  # fmt: skip
    assert edited["kl"]["value"] < 1.0
