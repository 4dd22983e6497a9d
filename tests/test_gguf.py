"""GGUF in and out, on a real GGUF file (SmolLM2-135M-Instruct, Q4_1, from PyPI).

A GGUF model loads through transformers' GGUF reader (converted once to safetensors); the GGUF
export, read back with that same reader, equals the merged export exactly when the edited
tensors are stored in F32 and closely in Q8_0; every tensor the edit leaves alone is copied
byte for byte and every metadata key survives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

import realmodels
from abliterate.config import load_settings
from abliterate.directions import orthonormal_rows
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import Directions, EditParams
from abliterate.errors import AbliterateError
from abliterate.export.api import export_trial
from abliterate.model import gguf, loading
from abliterate.search.record import TrialMetrics, TrialRecord

pytestmark = pytest.mark.slow
LAYERS, HIDDEN = 30, 576  # SmolLM2-135M


@pytest.fixture(scope="module")
def smollm() -> Path:
    return realmodels.path("smollm2-135m")


def _directions(k: int = 1) -> Directions:
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(LAYERS, HIDDEN, generator=g), dim=-1)
    if k == 1:
        return Directions(per_layer=d, embedding=d[0])
    extra = torch.stack(
        [
            orthonormal_rows(torch.cat([v[None], torch.randn(k - 1, HIDDEN, generator=g)]))[1:]
            for v in d
        ]
    )
    return Directions(per_layer=d, embedding=d[0], extra=extra)


def _record(embed: float = 0.0, extra: float = 0.0) -> TrialRecord:
    params = EditParams(
        scope="per_layer",
        direction_index=None,
        kernels={
            "attn_out": Kernel(1.0, 15.0, 0.5, 40.0),
            "mlp_down": Kernel(1.2, 15.0, 0.3, 40.0),
        },
        embed_weight=embed,
        extra_weight=extra,
    )
    return TrialRecord(3, params, TrialMetrics(refusal_rate=0.1, kl=0.1), 0.1, 0.1)


def _export(src: Path, out: Path, kind: str, gguf_type: str = "Q8_0", record=None, k: int = 1):
    components = (
        ["attn_out", "mlp_down", "embed"] if record and not k > 1 else ["attn_out", "mlp_down"]
    )
    settings = load_settings(model=str(src), gguf_type=gguf_type, components=components)
    return export_trial(settings, _directions(k), record or _record(), out, kind)


def _read(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval()


def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, 49152, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def test_gguf_loads_with_tokenizer_and_chat_template(smollm):
    loaded = loading.load(str(smollm), device_map="cpu")
    assert loaded.model.dtype == torch.float32  # the CPU default, not the checkpoint's
    assert loaded.tokenizer.chat_template and "<|im_start|>" in loaded.tokenizer.chat_template
    assert gguf.source_of(loading.checkpoint_dir(str(smollm))) == smollm.resolve()
    # DIR --gguf-file NAME names the same model.
    settings = load_settings(model=str(smollm.parent), gguf_file=smollm.name)
    assert settings.model == str(smollm)
    # The converted directory holds plain float32 weights: nothing marks it as quantized, so a
    # model read from it (or from a merged export, which copies its config) can be saved again.
    converted = Path(loading.checkpoint_dir(str(smollm)))
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    assert not getattr(loaded.model, "is_quantized", False)


def test_gguf_export_equals_merged_export(smollm, tmp_path):
    result = _export(smollm, tmp_path / "out", "merged,gguf", gguf_type="F32")
    assert result.merged == tmp_path / "out" / "merged"
    assert result.gguf is not None and result.gguf.parent == tmp_path / "out" / "gguf"
    # Every layer is inside the kernels' span: all 2 x 30 writers are edited.
    assert result.gguf_report.edited == 2 * LAYERS and result.gguf_report.kept > 0.9999
    merged = AutoModelForCausalLM.from_pretrained(result.merged).eval()
    from_gguf = _read(result.gguf)
    torch.testing.assert_close(_logits(from_gguf), _logits(merged), rtol=1e-4, atol=1e-4)
    # The edit did something: the base model's logits differ.
    base = _read(smollm)
    assert (_logits(base) - _logits(merged)).abs().max() > 1e-2
    for name in ("abliterate.toml", "trial.json", "README.md"):
        assert (result.gguf.parent / name).is_file()


def test_multi_direction_gguf_export_equals_merged_export(smollm, tmp_path):
    # three directions per layer (directions_per_layer = 3), the extra ones at 0.7 strength
    record = _record(extra=0.7)
    result = _export(smollm, tmp_path / "out", "merged,gguf", "F32", record, k=3)
    assert result.gguf_report.edited == 2 * LAYERS and result.gguf_report.kept > 0.9999
    merged = AutoModelForCausalLM.from_pretrained(result.merged).eval()
    torch.testing.assert_close(_logits(_read(result.gguf)), _logits(merged), rtol=1e-4, atol=1e-4)
    single = _export(smollm, tmp_path / "single", "merged", "F32")
    one = AutoModelForCausalLM.from_pretrained(single.merged).eval()
    assert (_logits(one) - _logits(merged)).abs().max() > 1e-3  # the extra directions count


def test_gguf_export_copies_everything_else_and_keeps_q8_edit(smollm, tmp_path):
    result = _export(smollm, tmp_path / "out", "gguf")
    assert result.gguf.parent == tmp_path / "out"
    assert result.gguf_report.kept > 0.98  # Q8_0 keeps the edit along the direction
    src, out = GGUFReader(smollm), GGUFReader(result.gguf)
    edited = {f"blk.{i}.{n}.weight" for i in range(LAYERS) for n in ("attn_output", "ffn_down")}
    out_tensors = {t.name: t for t in out.tensors}
    assert set(out_tensors) == {t.name for t in src.tensors}
    for t in src.tensors:
        o = out_tensors[t.name]
        if t.name in edited:
            assert o.tensor_type.name == "Q8_0"
        else:
            assert o.tensor_type == t.tensor_type and np.array_equal(o.data, t.data), t.name
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.name":
            continue
        assert out.fields[key].contents() == field.contents(), key
    assert out.fields["general.name"].contents().endswith("(abliterated)")
    assert json.loads(out.fields["abliterate.trial"].contents()) == 3
    # The tokenizer and chat template come back from the exported file's metadata.
    tok = AutoTokenizer.from_pretrained(result.gguf.parent, gguf_file=result.gguf.name)
    assert (
        tok.chat_template
        == AutoTokenizer.from_pretrained(smollm.parent, gguf_file=smollm.name).chat_template
    )
    assert result.gguf.stat().st_size < 1.6 * smollm.stat().st_size


def test_edited_tied_embedding_gets_its_own_output_head(smollm, tmp_path):
    result = _export(smollm, tmp_path / "out", "merged,gguf", "F32", _record(embed=0.8))
    names = {t.name for t in GGUFReader(result.gguf).tensors}
    assert "output.weight" in names  # SmolLM2 ties them; the head must stay unedited
    merged = AutoModelForCausalLM.from_pretrained(result.merged).eval()
    torch.testing.assert_close(_logits(_read(result.gguf)), _logits(merged), rtol=1e-4, atol=1e-4)


def test_source_type_that_cannot_be_quantized_is_a_clear_error(tmp_path):
    qwen = realmodels.path("qwen2.5-0.5b")  # ffn_down is Q4_K/Q6_K there
    with pytest.raises(AbliterateError, match="cannot quantize"):
        settings = load_settings(model=str(qwen), gguf_type="source")
        d = torch.nn.functional.normalize(torch.randn(24, 896), dim=-1)
        record = _record()
        export_trial(settings, Directions(d, d[0]), record, tmp_path / "o", "gguf")
    assert not (tmp_path / "o").exists()
