"""Models larger than memory: the search under accelerate's disk offload, 4-bit errors, plan."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import tiny
from abliterate.cli.main import main
from abliterate.edit.editor import WeightEditor
from abliterate.edit.plan import WriterEdit
from abliterate.model.arch import discover
from conftest import random_model_run

CAP = '{"cpu": "12MB"}'  # the model below is 34 MB: most layers go to disk


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "model"
    cfg = LlamaConfig(
        vocab_size=len(tiny.tokenizer()),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tiny.tokenizer().pad_token_id,
        eos_token_id=tiny.tokenizer().eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return path


def test_edits_under_disk_offload_equal_edits_in_memory(model_dir, tmp_path):
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    v = torch.nn.functional.normalize(
        torch.randn(256, generator=torch.Generator().manual_seed(1)), dim=0
    )

    def run(model):
        layout = discover(model)
        editor = WeightEditor(layout, row_normalization="full", model=model)
        with torch.no_grad():
            before = model(ids).logits
            editor.apply([WriterEdit(w, v, 0.9) for w in layout.writers if w.layer >= 0])
            edited = model(ids).logits
            editor.reset()
            after = model(ids).logits
        return before, edited, after, editor

    resident = run(AutoModelForCausalLM.from_pretrained(model_dir))
    offloaded = AutoModelForCausalLM.from_pretrained(
        model_dir, device_map="auto", max_memory={"cpu": "12MB"}, offload_folder=tmp_path / "off"
    )
    assert "disk" in offloaded.hf_device_map.values()
    before, edited, after, editor = run(offloaded)
    assert len(editor.offloaded) > 10
    torch.testing.assert_close(before, resident[0], atol=0, rtol=0)
    torch.testing.assert_close(edited, resident[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before, atol=0, rtol=0)  # the reset is exact
    assert (edited - before).abs().max() > 1e-2


def _run(model_dir, run_dir, *extra):
    args = random_model_run(model_dir, run_dir, "--n-startup-trials", "2", *extra, prompts=8)
    return main(args)


@pytest.mark.slow
def test_search_under_disk_offload_matches_the_resident_search(model_dir, tmp_path):
    assert _run(model_dir, tmp_path / "resident") == 0
    assert (
        _run(
            model_dir,
            tmp_path / "offload",
            "--max-memory",
            CAP,
            "--offload-folder",
            str(tmp_path / "off"),
        )
        == 0
    )
    for n in (0, 1):
        a = json.loads((tmp_path / "resident" / "trials" / f"{n}.json").read_text())
        b = json.loads((tmp_path / "offload" / "trials" / f"{n}.json").read_text())
        assert a["params"] == b["params"]
        assert b["metrics"]["kl"] == pytest.approx(a["metrics"]["kl"], abs=1e-5)
        assert b["metrics"]["refusal_rate"] == a["metrics"]["refusal_rate"]


def test_4bit_without_cuda_is_a_clear_error(model_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert _run(model_dir, tmp_path / "run", "--quantization", "bnb_4bit") == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


def test_plan_shows_stages_and_the_device_map(model_dir, capsys):
    assert main(["plan", str(model_dir), "--max-memory", CAP]) == 0
    text = capsys.readouterr().out
    for stage in ("load", "directions", "search", "export"):
        assert stage in text
    assert "on disk" in text and "--offload-folder" in text
