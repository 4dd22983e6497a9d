"""DPO healing on an abliterated organism, on CPU."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from abliterate.cli.main import main
from abliterate.errors import AbliterateError
from abliterate.workflows.heal import HealSettings, heal, load_preferences, normalise_pair

pytestmark = pytest.mark.slow


def test_heal_an_abliterated_organism(organism_run, tmp_path, capsys):
    prefs = tmp_path / "prefs.jsonl"
    assert main(["organism", "preferences", "--output", str(prefs), "--n", "64"]) == 0
    healed = tmp_path / "healed"
    args = [
        "heal",
        str(organism_run / "chosen"),
        "--dataset",
        str(prefs),
        "--output",
        str(healed),
        "--max-steps",
        "12",
        "--learning-rate",
        "1e-3",
        "--per-device-batch-size",
        "8",
        "--gradient-accumulation",
        "1",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--max-length",
        "128",
        "--max-response-length",
        "32",
        "--batch-size",
        "32",
    ]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((healed / "heal.json").read_text())
    assert len(record["losses"]) == 12 and record["losses"][-1] < record["losses"][0]
    assert record["before"]["refusal_rate"] <= 0.10
    assert record["after"]["refusal_rate"] <= 0.10, record["after"]
    assert record["after"]["capability"] >= 0.8 * record["before"]["capability"]
    card = (healed / "README.md").read_text()
    assert "## Healing" in card and "| refusal_rate |" in card
    model = AutoModelForCausalLM.from_pretrained(healed)
    tok = AutoTokenizer.from_pretrained(healed)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Add 2 and 3."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert not list(tmp_path.glob(".healed.checkpoints"))


def test_preference_formats(tmp_path):
    text = normalise_pair({"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"})
    assert text["prompt"] == [{"role": "user", "content": "Hi"}]
    chat = normalise_pair(
        {
            "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],
        }
    )
    assert chat["prompt"] == [{"role": "user", "content": "Q"}]
    assert chat["rejected"] == [{"role": "assistant", "content": "bad"}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    assert len(load_preferences(str(path))) == 1
    with pytest.raises(AbliterateError, match="chosen and rejected"):
        normalise_pair({"prompt": "a", "answer": "b"})
    with pytest.raises(AbliterateError, match="does not exist"):
        load_preferences(str(tmp_path / "missing.jsonl"))


def test_4bit_needs_cuda(tmp_path, organism_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    with pytest.raises(AbliterateError, match="CUDA"):
        heal(
            str(organism_dir), tmp_path / "out", HealSettings(dataset=str(path), load_in_4bit=True)
        )
