"""Exports: streaming merged weights equal the in-memory edit, the PEFT adapter equals the merged
model, adapter factors are A = v^T W and B = -lambda v, memory stays near one shard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tiny
from abliterate.config import load_settings
from abliterate.edit.editor import WeightEditor, untie_embeddings
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import Directions, EditParams, plan
from abliterate.errors import AbliterateError
from abliterate.export.api import export_trial
from abliterate.export.hub import push
from abliterate.model.arch import discover
from abliterate.search.record import TrialMetrics, TrialRecord

# float32 models; logits differ only by summation order between the paths.
TOLERANCE = 1e-4


def _directions(seed: int = 0) -> Directions:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(tiny.LAYERS, tiny.HIDDEN, generator=g), dim=-1)
    return Directions(per_layer=d, embedding=d[0])


def _record(scope="per_layer", embed=0.0) -> TrialRecord:
    params = EditParams(
        scope=scope,
        direction_index=1.3 if scope == "global" else None,
        kernels={"attn_out": Kernel(1.0, 1.0, 0.5, 2.0), "mlp_down": Kernel(1.3, 1.5, 0.2, 2.0)},
        embed_weight=embed,
    )
    return TrialRecord(7, params, TrialMetrics(refusal_rate=0.1, kl=0.1), 0.1, 0.1)


def _in_memory(src: Path, directions: Directions, record: TrialRecord, row_normalization="none"):
    model = AutoModelForCausalLM.from_pretrained(src)
    untie_embeddings(model)
    layout = discover(model)
    editor = WeightEditor(layout, row_normalization)
    editor.apply(plan(layout.writers, directions, record.params))
    return model


def _logits(model, seed=1):
    ids = torch.randint(
        0, len(tiny.tokenizer()), (2, 12), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model(ids).logits


def _sha(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


FAMILIES = [
    "llama",
    "qwen2",
    "gemma3_text",
    "gpt_neox",
    "mixtral",
    "qwen3_moe",
    "qwen2_moe",
    "phi3",
    "lfm2",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_and_adapter_match_the_in_memory_edit(family, tmp_path):
    src = tiny.save(family, tmp_path / "src")
    before = _sha(src)
    directions, record = _directions(), _record(embed=0.6)
    settings = load_settings(model=str(src), components=["attn_out", "mlp_down", "embed"])
    result = export_trial(settings, directions, record, tmp_path / "out", "both")
    assert result.warnings == []
    reference = _logits(_in_memory(src, directions, record))
    merged = _logits(AutoModelForCausalLM.from_pretrained(result.merged))
    adapted = _logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), result.adapter)
    )
    torch.testing.assert_close(merged, reference, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(adapted, merged, atol=TOLERANCE, rtol=0)
    assert _sha(src) == before, "the source model must never change"
    for d in (result.merged, result.adapter):
        trial = json.loads((d / "trial.json").read_text())
        assert trial["number"] == 7 and trial["direction"]["scope"] == "per_layer"
        assert (d / "abliterate.toml").is_file() and "refusal rate" in (d / "README.md").read_text()
    config = json.loads((result.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(src) and config["r"] == 1


def test_adapter_factors_are_the_rank_one_edit(tmp_path):
    src = tiny.save("llama", tmp_path / "src")
    directions, record = _directions(), _record(scope="global")
    result = export_trial(
        load_settings(model=str(src)), directions, record, tmp_path / "a", "adapter"
    )
    factors = load_file(result.adapter / "adapter_model.safetensors")
    weights = load_file(src / "model.safetensors")
    params = record.params
    from abliterate.directions import interpolate

    v = interpolate(directions.per_layer, params.direction_index)
    lam = params.kernels["attn_out"].strengths(tiny.LAYERS)
    for layer in range(tiny.LAYERS):
        key = f"base_model.model.model.layers.{layer}.self_attn.o_proj"
        if lam[layer] == 0:
            assert f"{key}.lora_A.weight" not in factors
            continue
        w = weights[f"model.layers.{layer}.self_attn.o_proj.weight"]
        torch.testing.assert_close(factors[f"{key}.lora_A.weight"], (v @ w).reshape(1, -1))
        torch.testing.assert_close(
            factors[f"{key}.lora_B.weight"], (-float(lam[layer]) * v).reshape(-1, 1)
        )


@pytest.mark.parametrize("mode", ["pre", "full"])
def test_row_normalised_adapters_match_merged(mode, tmp_path):
    src = tiny.save("qwen2", tmp_path / "src")
    directions, record = _directions(), _record()
    settings = load_settings(model=str(src), row_normalization=mode)
    result = export_trial(settings, directions, record, tmp_path / "out", "both")
    reference = _logits(_in_memory(src, directions, record, mode))
    merged = _logits(AutoModelForCausalLM.from_pretrained(result.merged))
    adapted = _logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), result.adapter)
    )
    torch.testing.assert_close(merged, reference, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(adapted, merged, atol=TOLERANCE, rtol=0)
    rank = json.loads((result.adapter / "adapter_config.json").read_text())["r"]
    assert rank == (3 if mode == "full" else 1)


def test_fused_expert_biases_are_reported_for_adapters(tmp_path):
    src = tiny.save("gpt_oss", tmp_path / "src")
    result = export_trial(
        load_settings(model=str(src)), _directions(), _record(), tmp_path / "out", "both"
    )
    assert result.warnings and all("fused experts bias" in w for w in result.warnings)
    assert "fused experts bias" in (result.adapter / "README.md").read_text()
    merged = _logits(AutoModelForCausalLM.from_pretrained(result.merged))
    torch.testing.assert_close(
        merged, _logits(_in_memory(src, _directions(), _record())), atol=TOLERANCE, rtol=0
    )


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    src = tiny.save("llama", tmp_path / "src")
    import abliterate.export.api as api

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, "write_adapter", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_trial(
            load_settings(model=str(src)), _directions(), _record(), tmp_path / "out", "both"
        )
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_existing_output_is_refused(tmp_path):
    src = tiny.save("llama", tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(AbliterateError, match="--overwrite"):
        export_trial(load_settings(model=str(src)), _directions(), _record(), tmp_path / "out")
    assert (tmp_path / "out" / "x").read_text() == "keep"


def test_push_without_network_fails_after_the_local_export(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tiny.save("llama", tmp_path / "src")
    out = export_trial(load_settings(model=str(src)), _directions(), _record(), tmp_path / "out")
    with pytest.raises(AbliterateError) as exc:
        push(out.merged, "someone/abliterated-test")
    assert "upload to someone/abliterated-test failed" in str(exc.value)
    assert str(out.merged) in str(exc.value) and "\n" not in str(exc.value)
    assert (out.merged / "config.json").is_file()


STREAM_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import torch
    from abliterate.config import load_settings
    from abliterate.edit.kernel import Kernel
    from abliterate.edit.plan import Directions, EditParams
    from abliterate.export.api import export_trial
    from abliterate.search.record import TrialMetrics, TrialRecord

    src, out, cap = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    def vm():
        line = next(l for l in open("/proc/self/status") if l.startswith("VmSize"))
        return int(line.split()[1]) * 1024
    # Start torch's worker threads before measuring: their stacks count as address space.
    torch.randn(256, 256) @ torch.randn(256, 256)
    # A hard cap on address space: the whole model could never be held in memory.
    resource.setrlimit(resource.RLIMIT_AS, (vm() + cap, vm() + cap))
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(4, 768, generator=g), dim=-1)
    params = EditParams("per_layer", {"attn_out": Kernel(1.0, 2.0, 0.5, 2.0),
                                      "mlp_down": Kernel(1.0, 2.0, 0.5, 2.0)})
    record = TrialRecord(0, params, TrialMetrics(refusal_rate=0, kl=0), 0, 0)
    export_trial(load_settings(model=str(src)), Directions(d, d[0]), record, out, "merged",
                 max_shard_size="24MB")
    print(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


@pytest.mark.slow
def test_streaming_export_stays_within_a_memory_cap(tmp_path):
    """A ~350 MB model in 24 MB shards exports under an address-space cap of 160 MB above the
    interpreter's own: only about one shard is ever in memory."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=8000,
        hidden_size=768,
        intermediate_size=6144,
        num_hidden_layers=4,
        num_attention_heads=12,
        num_key_value_heads=12,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path / "src", max_shard_size="24MB")
    tiny.tokenizer().save_pretrained(tmp_path / "src")
    size = sum(p.stat().st_size for p in (tmp_path / "src").glob("*.safetensors"))
    assert size > 300e6
    del model
    script = tmp_path / "stream.py"
    script.write_text(STREAM_SCRIPT)
    r = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            str(160 * 2**20),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        # One malloc arena: glibc reserves 64 MB of address space per extra arena, which would
        # measure the thread count rather than the export.
        env={**os.environ, "MALLOC_ARENA_MAX": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    shards = list((tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 10 and all(p.stat().st_size <= 26e6 for p in shards)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in merged.parameters()) * 4 == pytest.approx(size, rel=0.01)
