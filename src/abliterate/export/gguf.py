"""The edit written into a GGUF file: what llama.cpp, Ollama and LM Studio load.

Every metadata key and every tensor of the source GGUF is copied unchanged, byte for byte,
except the edited residual writers: each is dequantized, edited in float32 exactly as the
search edited the model, and stored at `gguf_type` (Q8_0 by default). Requantizing to a 4-bit
type would undo much of a rank-1 edit, whose per-element change is below the 4-bit step; the
share of the edit that the stored type keeps is measured on every tensor and reported.

Tensors are written one at a time (two passes over the source: sizes first, then data), so
memory stays at about one tensor in float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    ReaderTensor,
    dequantize,
    quantize,
)
from gguf.quants import quant_shape_to_byte_shape

from abliterate import __version__
from abliterate.edit.orthogonalize import canonical
from abliterate.errors import AbliterateError
from abliterate.export.stream import Resolved, check_coverage, edit_bias, edit_writer

Q = GGMLQuantizationType
TYPES = {"Q8_0": Q.Q8_0, "F16": Q.F16, "BF16": Q.BF16, "F32": Q.F32}
Progress = Callable[[int, int], None]


@dataclass
class Report:
    path: Path
    edited: int = 0
    kept: float = 1.0  # share of the edit along the direction that the stored values keep
    types: dict[str, int] = field(default_factory=dict)  # stored type -> edited tensors


def tensor_names(model) -> dict[str, str]:
    """GGUF tensor name -> parameter name of the transformers model, from transformers' own
    mapping (the one its GGUF loader uses), for a model built from the converted config."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    return get_gguf_hf_weights_map(model, TensorProcessor())


def output_name(source: Path, gguf_type: str) -> str:
    """`<source stem>-abliterated-q8_0.gguf` (no type suffix when each tensor keeps its own)."""
    suffix = "" if gguf_type == "source" else f"-{gguf_type.lower()}"
    return f"{source.stem}-abliterated{suffix}.gguf"


def _quantizable(qtype: GGMLQuantizationType) -> bool:
    if qtype in (Q.F32, Q.F16):
        return True
    try:
        quantize(np.zeros((1, 256), np.float32), qtype)
    except (NotImplementedError, ValueError, KeyError):
        return False
    return True


def stored_type(t: ReaderTensor, gguf_type: str) -> GGMLQuantizationType:
    """The type an edited tensor is written in; Q8_0 and other block types need whole blocks in
    a row, and fall back to F16 otherwise."""
    qtype = t.tensor_type if gguf_type == "source" else TYPES[gguf_type]
    if gguf_type == "source" and not _quantizable(qtype):
        raise AbliterateError(
            f"gguf_type = source: {t.name} is stored as {qtype.name}, which the gguf package "
            "cannot quantize; use Q8_0 (default), F16, BF16 or F32"
        )
    block = _block(qtype)
    if int(t.shape[0]) % block:  # t.shape is GGUF order: the row length comes first
        return Q.F16
    return qtype


def _block(qtype: GGMLQuantizationType) -> int:
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[qtype][0]


def _encode(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return quantize(values.astype(np.float32), qtype)


def _info(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> tuple[tuple[int, ...], type]:
    """(numpy shape, numpy dtype) of a tensor's data as written, for the header pass."""
    if qtype == Q.F32:
        return shape, np.float32
    if qtype == Q.F16:
        return shape, np.float16
    return quant_shape_to_byte_shape(shape, qtype), np.uint8


def _values(t: ReaderTensor) -> np.ndarray:
    """A tensor's values in float32, shaped as transformers holds them ((out, in) for weights)."""
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
        tuple(reversed([int(n) for n in t.shape]))
    )


class _Plan:
    """What happens to each source tensor: copied, or edited (weight or bias) and re-encoded."""

    def __init__(self, reader: GGUFReader, names: dict[str, str], resolved, gguf_type: str):
        self.writers = {}
        self.biases = {}
        bias_names = {r.writer.bias_name: r for r in resolved.values() if r.writer.bias_name}
        for t in reader.tensors:
            hf = names.get(t.name)
            if hf in resolved:
                self.writers[t.name] = (resolved[hf], stored_type(t, gguf_type))
            elif hf in bias_names:
                own = t.tensor_type if t.tensor_type in (Q.F32, Q.F16) else Q.F32
                self.biases[t.name] = (bias_names[hf], own)

    def target(self, t: ReaderTensor) -> GGMLQuantizationType | None:
        """The type an edited tensor is written in (None: copied unchanged)."""
        hit = self.writers.get(t.name) or self.biases.get(t.name)
        return hit[1] if hit else None


def write_gguf(
    source: Path,
    path: Path,
    resolved: dict[str, Resolved],
    names: dict[str, str],
    gguf_type: str = "Q8_0",
    metadata: dict | None = None,
    untie: bool = False,
    on_tensor: Progress | None = None,
) -> Report:
    """Write `source` with the edits of `resolved` applied to `path`. `untie`: the embedding is
    edited and the output head shares it, so the head gets an unedited copy of its own."""
    if gguf_type not in (*TYPES, "source"):
        raise AbliterateError(f"gguf_type {gguf_type!r}: use Q8_0, F16, BF16, F32 or source")
    reader = GGUFReader(source)
    plan = _Plan(reader, names, resolved, gguf_type)
    writer = GGUFWriter(path, arch=reader.fields["general.architecture"].contents())
    _copy_fields(reader, writer, metadata or {})
    extra = _untied_head(reader) if untie else None
    _write_infos(reader, writer, plan, extra)
    report = _write_data(reader, writer, plan, extra, Report(path), on_tensor)
    writer.close()
    check_coverage(resolved, source)
    return report


def _write_infos(reader: GGUFReader, writer: GGUFWriter, plan: _Plan, extra) -> None:
    """Header, metadata and tensor infos: the source's, with the edited writers' new types and
    sizes, and the untied output head (`extra`) at the end."""
    for t in reader.tensors:
        qtype = plan.target(t)
        if qtype is None:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        else:
            shape, dtype = _info(tuple(reversed([int(n) for n in t.shape])), qtype)
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            writer.add_tensor_info(t.name, shape, np.dtype(dtype), nbytes, qtype)
    if extra is not None:
        writer.add_tensor_info(
            "output.weight",
            extra.data.shape,
            extra.data.dtype,
            extra.data.nbytes,
            extra.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()


def _write_data(reader, writer, plan: _Plan, extra, report: Report, on_tensor) -> Report:
    """Every tensor's data in the source's order: edited writers and biases re-encoded, the
    rest copied byte for byte. Fills in how much of the edit the stored values keep."""
    removed = back = 0.0
    total = len(reader.tensors)
    for i, t in enumerate(reader.tensors):
        if t.name in plan.writers:
            r, qtype = plan.writers[t.name]
            data, (rem, bk) = _edited_writer(t, r, qtype)
            removed, back = removed + rem, back + bk
            report.edited += 1
            report.types[qtype.name] = report.types.get(qtype.name, 0) + 1
        elif t.name in plan.biases:
            r, qtype = plan.biases[t.name]
            edited = edit_bias(torch.from_numpy(_values(t)), r)
            data = _encode(edited.numpy(), qtype)
        else:
            data = t.data
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        if on_tensor:
            on_tensor(i + 1, total)
    if extra is not None:
        writer.write_tensor_data(extra.data, tensor_endianess=reader.endianess)
    report.kept = 1.0 - back / removed if removed > 0 else 1.0
    return report


def _edited_writer(
    t: ReaderTensor, r: Resolved, qtype: GGMLQuantizationType
) -> tuple[np.ndarray, tuple[float, float]]:
    """The edited tensor as stored, and how much of the edit along u the stored values lose:
    (|u^T (W - W')|, |u^T (stored - W')|) summed over the tensor's columns."""
    original = torch.from_numpy(_values(t))
    edited = edit_writer(original, r, None)
    r.experts_seen.add(None)
    data = _encode(edited.numpy(), qtype)
    stored = torch.from_numpy(
        np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(edited.shape)
    )
    axis = r.writer.out_axis
    u = r.u

    def along(x: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(u @ canonical(x, axis)))

    return data, (along(original - edited), along(stored - edited))


def _untied_head(reader: GGUFReader) -> ReaderTensor | None:
    """The embedding, to be stored again as the output head when the model ties the two."""
    names = {t.name: t for t in reader.tensors}
    if "output.weight" in names:
        return None
    return names.get("token_embd.weight")


def _copy_fields(reader: GGUFReader, writer: GGUFWriter, metadata: dict) -> None:
    """Every key of the source (the writer adds general.architecture itself), the model's name
    marked as abliterated, and abliterate's own keys (the trial that made it)."""
    for f in reader.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = f.contents()
        if f.name == "general.name":
            value = f"{value} (abliterated)"
        writer.add_key_value(f.name, value, vtype, sub_type=sub)
    writer.add_key_value("abliterate.version", __version__, GGUFValueType.STRING)
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        writer.add_key_value(f"abliterate.{key}", text, GGUFValueType.STRING)
