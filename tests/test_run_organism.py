"""`abliterate run` end to end on the model organism: the acceptance bar, the export, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from abliterate.cli.main import main
from abliterate.config import load_settings
from abliterate.eval.refusal import is_refusal
from abliterate.organism.check import read_lines
from abliterate.search import study as st
from abliterate.workflows.evaluate import evaluate_against_base
from conftest import SEARCH, organism_command, wait_for

pytestmark = pytest.mark.slow


def _trials(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"))]


def test_search_finds_a_trial_that_meets_the_bar(organism_run, organism_dir):
    trials = _trials(organism_run / "run")
    assert len(trials) == 30
    good = [
        t
        for t in trials
        if t["metrics"]["refusal_rate"] <= 0.10 and t["metrics"]["overrefusal_rate"] <= 0.05
    ]
    assert good, [(t["number"], t["metrics"]) for t in trials]
    best = min(good, key=lambda t: t["metrics"]["kl"])
    # Export that trial (resuming the finished study adds no trials) and measure it from the
    # files alone, against the base organism, on the held-out sets.
    out = organism_run / f"trial{best['number']}"
    args = [
        "run",
        str(organism_dir),
        *SEARCH,
        "--run-dir",
        str(organism_run / "run"),
        "--select",
        f"trial:{best['number']}",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    assert len(_trials(organism_run / "run")) == 30
    # Measured on the search part of the evaluation sets: the prompts the trial was scored on
    # (the held-out part has its own test in test_held_out.py).
    split = json.loads((organism_run / "run" / "split.json").read_text())["search"]
    sets = {}
    for key, prompts in split.items():
        path = organism_run / f"{key}.txt"
        path.write_text("\n".join(prompts) + "\n")
        sets[key] = {"dataset": str(path), "split": "train", "column": "text"}
    settings = load_settings(model=str(organism_dir), max_response_length=32, batch_size=32, **sets)
    result = evaluate_against_base(settings, str(out), str(organism_dir))
    after, before = result["metrics"], result["base_metrics"]
    assert after["refusal_rate"] <= 0.10 and after["overrefusal_rate"] <= 0.05
    assert after["capability"] >= 0.9 * before["capability"]
    # The exported model reproduces the metrics the trial recorded during the search.
    assert after["refusal_rate"] == pytest.approx(best["metrics"]["refusal_rate"], abs=0.02)
    assert after["overrefusal_rate"] == pytest.approx(best["metrics"]["overrefusal_rate"], abs=0.02)
    assert after["kl"] == pytest.approx(best["metrics"]["kl"], rel=0.02, abs=1e-4)


def test_export_loads_with_plain_transformers(organism_run, organism_dir):
    out = organism_run / "chosen"
    for name in (
        "config.json",
        "abliterate.toml",
        "trial.json",
        "README.md",
        "tokenizer.json",
        "generation_config.json",
    ):
        assert (out / name).is_file(), name
    assert list(out.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    prompts = read_lines(organism_dir / "eval" / "harmful.txt")[:8]
    answers = []
    for p in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        gen = model.generate(**ids, max_new_tokens=24, do_sample=False)
        answers.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    assert sum(is_refusal(a) for a in answers) <= 2, answers
    card = (out / "README.md").read_text()
    assert "refusal rate" in card and "abliterate run" in card


def _command(organism_dir, run_dir, n):
    return organism_command(organism_dir, run_dir, n, "--select", "min-refusals")


def _study(run_dir: Path):
    return st.open_study(st.open_storage(None, run_dir / "study.journal"), "abliterate")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_without_recomputing(organism_dir, tmp_path, sig):
    run_dir, n = tmp_path / "run", 5
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _command(organism_dir, run_dir, n),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        # A shell that starts a job in the background ignores SIGINT in it, and Python then
        # never turns SIGINT into KeyboardInterrupt: give the child the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(run_dir / "trials" / "1.json", proc)
    first = {i: (run_dir / "trials" / f"{i}.json").read_bytes() for i in (0, 1)}
    proc.send_signal(sig)
    # communicate, not wait: the run's progress goes to the pipe, which must not fill up
    err = proc.communicate(timeout=120)[1].decode(errors="replace")
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), err[-3000:]
    done = subprocess.run(
        _command(organism_dir, run_dir, n), capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stderr
    study = _study(run_dir)
    counts = st.counts(study)
    assert counts["complete"] == n and counts["running"] == 0
    for i, data in first.items():  # finished trials are never recomputed
        assert (run_dir / "trials" / f"{i}.json").read_bytes() == data
    interrupted = [t for t in study.get_trials() if t.state == st.TrialState.FAIL]
    if interrupted:  # killed mid-trial: the same parameters ran again
        retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") is not None]
        # A kill during sampling leaves only the parameters drawn so far; the retry keeps
        # those and draws the rest.
        assert retry and interrupted[0].params.items() <= retry[0].params.items()
    assert len(list((run_dir / "trials").glob("*.json"))) == n


def test_choice_is_re_measured_with_longer_answers_and_export_agrees(organism_run):
    run_dir = organism_run / "run"
    chosen = json.loads((run_dir / "chosen.json").read_text())["trial"]
    trials = {t["number"]: t for t in _trials(run_dir)}
    confirmed = {int(n): c for n, c in json.loads((run_dir / "confirmed.json").read_text()).items()}
    assert chosen in confirmed and 1 <= len(confirmed) <= 3
    assert not any("confirmed" in t for t in trials.values())  # trial files stay as searched
    card = (organism_run / "chosen" / "README.md").read_text()
    assert f"measured again with 64-token answers: {confirmed[chosen]['refusal_rate']:.3f}" in card
    for n, c in confirmed.items():
        assert c["response_length"] == 64  # twice the search's 32 tokens
        # Longer greedy answers extend the shorter ones: refusals can only be added.
        assert c["refusal_rate"] >= trials[n]["metrics"]["refusal_rate"]
        # checked for damage too: over-refusal on every harmless prompt, the organism's probes
        assert 0 <= c["overrefusal_rate"] <= 1 and 0 <= c["capability"] <= 1
    assert not confirmed[chosen]["damaged"] or all(c["damaged"] for c in confirmed.values())
    assert "over-refusal on every search harmless prompt" in card
    # `export` choosing from the run directory by the same policy lands on the same trial.
    from abliterate.cli.export import from_run_dir, pick_record

    records = from_run_dir(str(run_dir))[2]
    assert pick_record(records, None, "min-kl-under:0.1").number == chosen
