"""A real 2-trial `abliterate run` on a tiny random model of every supported family.

Random models refuse nothing, so these runs count any response containing a common letter as
a refusal: what is tested is that loading, discovery, directions, edits, evaluation, the study
and the export work on every layout, not that refusals fall.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tiny
from abliterate.cli.main import main
from conftest import random_model_run

pytestmark = pytest.mark.slow


def run_args(model, tmp_path, *extra):
    return random_model_run(model, tmp_path / "run", "--output", str(tmp_path / "out"), *extra)


@pytest.mark.parametrize("family", sorted(tiny.FAMILIES))
def test_two_trial_run(family, tmp_path, capsys):
    src = tiny.save(family, tmp_path / "model")
    before = {k: v.clone() for k, v in load_file(src / "model.safetensors").items()}
    assert main(run_args(src, tmp_path)) == 0
    trials = sorted((tmp_path / "run" / "trials").glob("*.json"))
    assert len(trials) == 2
    record = json.loads(trials[0].read_text())
    assert set(record["metrics"]) >= {"refusal_rate", "kl", "overrefusal_rate"}
    # The export loads with plain transformers; the source model is untouched.
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    after = load_file(src / "model.safetensors")
    assert all((before[k] == after[k]).all() for k in before)
    assert "Residual writers" in capsys.readouterr().err


def test_two_trial_run_remote_code_experts(tmp_path):
    src = tiny.save_remote_code_moe(tmp_path / "model")
    assert main(run_args(src, tmp_path, "--trust-remote-code")) == 0
    assert len(list((tmp_path / "run" / "trials").glob("*.json"))) == 2


def test_remote_code_needs_the_flag(tmp_path, capsys):
    src = tiny.save_remote_code_moe(tmp_path / "model")
    assert main(run_args(src, tmp_path)) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
