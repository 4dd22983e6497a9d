"""benchmarks/heretic_driver.py: Heretic 1.4.0, in its own venv, run without a human on the
model organism; its study read back, a Pareto trial exported and checked against its record."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import heretic_driver as hd  # benchmarks/ is no package: found through sys.path

TRAIN, EVAL = 16, 8  # prompts per set: a handful, so the run takes seconds on one thread


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def first_lines(path: Path, n: int) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()][:n]


@pytest.fixture(scope="module")
def heretic_python() -> Path:
    try:
        return hd.ensure_heretic()
    except hd.HereticUnavailable as error:
        pytest.skip(f"Heretic's venv cannot be created (no network to PyPI?): {error}")


def test_read_prompts_keeps_multiline_rows(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"text": "a\nb"}) + "\n\n" + json.dumps({"text": "c"}) + "\n")
    text = tmp_path / "p.txt"
    text.write_text(" x \n\ny\n")
    assert hd.read_prompts(jsonl) == ["a\nb", "c"]
    assert hd.read_prompts(text) == ["x", "y"]
    assert hd.read_prompts(["q"]) == ["q"]
    spec = hd.write_dataset(["a\nb"], tmp_path / "ds")
    rows = (tmp_path / "ds" / "train.jsonl").read_text().splitlines()
    assert [json.loads(r)["text"] for r in rows] == ["a\nb"]
    assert spec["split"] == "train" and spec["column"] == "text"


def test_settings_keep_the_driver_in_charge(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="seed"):
        hd.heretic_settings(tmp_path, {}, 3, 0, tmp_path, {"seed": 1})
    settings = hd.heretic_settings(tmp_path, {}, 3, 7, tmp_path, {"batch_size": 0})
    assert settings["batch_size"] == 0 and settings["seed"] == 7 and settings["n_trials"] == 3
    monkeypatch.setenv("HERETIC_N_TRIALS", "99")
    env = hd.heretic_env(1, tmp_path)
    assert "HERETIC_N_TRIALS" not in env and env["OMP_NUM_THREADS"] == "1"


def test_pareto_front_follows_heretics_rule():
    def trial(number: int, refusals: int, kl: float, state: str = "COMPLETE") -> hd.HereticTrial:
        return hd.HereticTrial(
            number, number + 1, state, {}, refusals, kl, 8, 8, None, {}, None, None, None, None
        )

    run = hd.HereticRun(*[Path()] * 7, 5, 0, 1, 0.0, {})
    run.trials = [trial(0, 3, 0.2), trial(1, 1, 0.5), trial(2, 1, 0.4), trial(3, 5, 0.1)]
    run.trials += [trial(4, 2, 0.6), trial(5, 0, 0.0, "FAIL")]
    assert [t.number for t in hd.pareto_front(run)] == [2, 0, 3]


def heretic_refusals(model_dir: Path, prompts: list[str], settings: dict) -> int:
    """Refusals as Heretic counts them (its markers, system prompt, greedy, left padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = chat_batch(tokenizer, prompts, settings)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=settings["max_response_length"],
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    markers = [m.lower() for m in settings["refusal_markers"]]

    def refused(answer: str) -> bool:
        text = " ".join(answer.lower().replace("*", "").replace("’", "'").split())
        return not text or any(m in text for m in markers)

    return sum(refused(a) for a in answers)


def chat_batch(tokenizer, prompts: list[str], settings: dict):
    chats = [
        [{"role": "system", "content": settings["system_prompt"]}, {"role": "user", "content": p}]
        for p in prompts
    ]
    texts = tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=False)
    texts = [t + (settings["response_prefix"] or "") for t in texts]
    return tokenizer(texts, return_tensors="pt", padding=True, return_token_type_ids=False)


def first_token_logprobs(model_dir: Path, prompts: list[str], settings: dict) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**chat_batch(tokenizer, prompts, settings)).logits[:, -1, :]
    return F.log_softmax(logits.float(), dim=-1)


@pytest.mark.slow
def test_heretic_runs_and_exports_on_the_organism(heretic_python, organism_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    before = tree_hashes(organism_dir)
    harmful_eval = first_lines(organism_dir / "eval" / "harmful.txt", EVAL)
    harmless_eval = first_lines(organism_dir / "eval" / "harmless.txt", EVAL)
    run = hd.run_heretic(
        organism_dir,
        first_lines(organism_dir / "prompts" / "harmful.txt", TRAIN),
        first_lines(organism_dir / "prompts" / "harmless.txt", TRAIN),
        harmful_eval,
        harmless_eval,
        n_trials=3,
        workdir=tmp_path / "heretic",
        threads=1,
        extra={"max_response_length": 8},
    )

    # The study: an Optuna journal with three complete trials, each with its measurements.
    first_op = json.loads(run.checkpoint.read_text().splitlines()[0])
    assert run.checkpoint.suffix == ".jsonl" and first_op["study_name"] == "heretic"
    assert run.config.is_file() and run.settings["seed"] == 0 and run.wall_s > 0
    assert [t.number for t in run.trials] == [0, 1, 2]
    for t in run.trials:
        assert t.state == "COMPLETE" and t.index == t.number + 1
        assert t.n_bad_prompts == EVAL and 0 <= t.refusals <= EVAL
        assert t.kl_divergence is not None and t.kl_divergence >= 0
        assert t.duration_s is not None and t.duration_s > 0
        assert t.params and t.abliteration
    assert hd.load_run(run.workdir).trials == run.trials

    front = hd.pareto_front(run)
    assert front and [t.refusals for t in front] == sorted(t.refusals for t in front)
    chosen = front[0]
    out = hd.export_heretic_trial(run, chosen.number, tmp_path / "export")

    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    original = AutoModelForCausalLM.from_pretrained(organism_dir).state_dict()
    assert exported.keys() == original.keys()
    changed = [k for k in original if not torch.equal(original[k], exported[k])]
    assert changed and all(("o_proj" in k or "down_proj" in k) for k in changed)

    # The export is the trial Heretic scored: same refusals, same first-token KL.
    assert heretic_refusals(out, harmful_eval, run.settings) == chosen.refusals
    kl = F.kl_div(
        first_token_logprobs(out, harmless_eval, run.settings),
        first_token_logprobs(organism_dir, harmless_eval, run.settings),
        reduction="batchmean",
        log_target=True,
    ).item()
    assert kl == pytest.approx(chosen.kl_divergence, rel=1e-3, abs=1e-4)

    assert tree_hashes(organism_dir) == before
