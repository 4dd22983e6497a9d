"""Fault injection: a real `abliterate` process killed with SIGKILL in the middle of its work.
An export leaves no output (and the next export cleans up and succeeds); heal resumes from its
last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tiny
from abliterate.cli.main import main
from abliterate.config import load_settings
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import EditParams
from abliterate.runs import RunDir
from abliterate.search.record import TrialMetrics, TrialRecord

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "abliterate.cli.main", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as `ready()` is true; it must still be running then."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < end, "timed out waiting for the moment to kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def fabricated_run(tmp_path: Path) -> Path:
    """A run directory for a ~90 MB model (big enough that its export takes a while): settings,
    directions and one trial record, written with the run directory's own API."""
    model = tiny.save(
        "llama",
        tmp_path / "model",
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    run = RunDir(tmp_path / "run")
    run.commit(load_settings(model=str(model), run_dir=str(run.path)))
    d = torch.nn.functional.normalize(torch.randn(9, 512, generator=torch.Generator()), dim=-1)
    run.save_directions({"directions": d}, {})
    params = EditParams("per_layer", {"mlp_down": Kernel(1.0, 4.0, 0.5, 4.0)})
    run.save_trial(TrialRecord(0, params, TrialMetrics(refusal_rate=0.1, kl=0.01), 0.1, 0.01))
    return run.path


def test_kill_during_export_leaves_nothing_and_the_next_export_succeeds(tmp_path):
    run = fabricated_run(tmp_path)
    out = tmp_path / "exports" / "model"
    args = ["export", str(run), "--trial", "0", "--output", str(out), "--max-shard-size", "8MB"]
    proc = cli(*args)
    # Killed once the third shard is on disk: half an export exists, under its temporary name.
    kill_when(proc, lambda: any(out.parent.glob(f".{out.name}.tmp-*/.shard-00002.safetensors")))
    assert not out.exists()
    assert list(out.parent.glob(f".{out.name}.tmp-*"))  # what the killed process left
    assert main(args) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # leftovers removed
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert all((out / f).is_file() for f in set(index["weight_map"].values()))
    assert (out / "abliterate.toml").is_file()


def test_kill_during_heal_resumes_from_the_last_complete_checkpoint(tmp_path):
    pytest.importorskip("trl")
    model = tiny.save("llama", tmp_path / "model")
    # An export made by an older abliterate, whose settings kept the storage password.
    (model / "abliterate.toml").write_text('storage = "postgresql://u:SECRET@h/db"\nseed = 3\n')
    prefs = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "I can't help."}
        for i in range(16)
    ]
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    healed = tmp_path / "healed"
    checkpoints = tmp_path / ".healed.checkpoints"
    args = ["heal", str(model), "--dataset", str(prefs), "--output", str(healed)]
    args += ["--no-evaluate", "--max-steps", "40", "--save-steps", "5", "--lora-r", "4"]
    args += ["--per-device-batch-size", "2", "--gradient-accumulation", "1", "--max-length", "64"]
    proc = cli(*args)
    kill_when(proc, lambda: (checkpoints / "checkpoint-10" / "trainer_state.json").is_file())
    assert not healed.exists()
    complete = sorted(
        int(p.parent.name.split("-")[1]) for p in checkpoints.glob("*/trainer_state.json")
    )
    # A kill while a checkpoint is being written leaves one without its trainer state.
    partial = checkpoints / f"checkpoint-{complete[-1] + 5}"
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)

    again = cli(*args)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert f"resumingfrom{checkpoints}/checkpoint-{complete[-1]}" in "".join(err.split())
    record = json.loads((healed / "heal.json").read_text())
    assert len(record["losses"]) == 40  # the resumed run continued the same 40 steps
    assert not checkpoints.exists()
    assert "SECRET" not in (healed / "abliterate.toml").read_text()
