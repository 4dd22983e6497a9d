"""The edit applied to checkpoint files, one tensor at a time.

Reads the source model's safetensors shards tensor by tensor, edits the residual writers (and
their biases), and writes new shards of at most `max_shard_size`. Peak memory is about one
output shard plus one tensor in float32, whatever the size of the model, and the result is
exact in each tensor's own dtype (the edit is computed in float32 from the stored weights, not
from a quantized copy). The LoRA factors of every edit are collected on the way, for adapters.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from abliterate.edit.orthogonalize import canonical, effective_direction, factors, project_bias
from abliterate.edit.plan import WriterEdit
from abliterate.errors import AbliterateError
from abliterate.export.names import CheckpointNames
from abliterate.model.arch import Layout, Writer, output_scale

WEIGHT_FILES = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|gguf|msgpack|h5)$|.*\.index\.json$")
Progress = Callable[[int, int], None]


def parse_size(size: str | int) -> int:
    """ "5GB" -> 5_000_000_000, "500MiB" -> 524_288_000 (as transformers reads max_shard_size)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise AbliterateError(f"max_shard_size {size!r}: expected e.g. 5GB or 500MiB")
    unit = (m.group(2) or "B").upper()
    powers = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    return int(float(m.group(1)) * powers[unit])


def shard_files(source: Path) -> list[Path]:
    index = source / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [source / f for f in files]
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise AbliterateError(f"{source} holds no .safetensors weights to export from")
    return files


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, Callable[[], Tensor]]]:
    """(name, loader) for every tensor of every shard; loading is deferred and one at a time."""
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield key, partial(f.get_tensor, key)


class ShardWriter:
    """Collects tensors and writes shards of at most `limit` bytes, plus the index."""

    def __init__(self, directory: Path, limit: int):
        self.dir, self.limit = directory, limit
        self.buffer: dict[str, Tensor] = {}
        self.size = 0
        self.shards: list[dict[str, int]] = []  # per written shard: name -> bytes
        self.total = 0

    def add(self, name: str, tensor: Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.limit:
            self._flush()
        self.buffer[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        index = len(self.shards)
        save_file(
            self.buffer,
            str(self.dir / f".shard-{index:05d}.safetensors"),
            metadata={"format": "pt"},
        )
        self.shards.append({k: v.numel() * v.element_size() for k, v in self.buffer.items()})
        self.buffer, self.size = {}, 0

    def close(self) -> None:
        if self.buffer or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            (self.dir / ".shard-00000.safetensors").rename(self.dir / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.dir / f".shard-{i:05d}.safetensors").rename(self.dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


@dataclass
class Resolved:
    """One writer's edit, ready for checkpoint tensors."""

    writer: Writer
    u: Tensor  # effective unit direction (d,) or orthonormal rows (k, d), float32 on CPU
    strength: float | Tensor  # one, or one per row of u
    mode: str  # row normalisation
    rank: int = 3  # of the delta when mode == "full"
    experts_seen: set = field(default_factory=set)
    factors: dict = field(default_factory=dict)  # expert index (or None) -> (B, A) canonical
    bias_edited: bool = False
    bias_value: Tensor | None = None  # the edited bias, float32 (for adapters)


def resolve(
    edits: list[WriterEdit],
    gains: dict[str, Tensor | None],
    row_normalization: str,
    full_rank: int = 3,
) -> dict[str, Resolved]:
    out = {}
    for e in edits:
        gain = gains.get(e.writer.name)
        u = effective_direction(e.direction.float().cpu(), None if gain is None else gain.cpu())
        mode = "none" if e.writer.component == "embed" else row_normalization
        out[e.writer.name] = Resolved(e.writer, u, e.lam, mode, full_rank)
    return out


def gains_from_checkpoint(
    model, layout: Layout, files: list[Path], names: CheckpointNames
) -> dict[str, Tensor | None]:
    """Output-norm gains of a model whose weights are not loaded (meta device): the norms'
    weights are read from the checkpoint into CPU copies of the norm modules."""
    needed = {}
    param_names = {id(p): n for n, p in model.named_parameters()}
    for w in layout.writers:
        if w.output_norm is not None:
            for p_name, p in w.output_norm.named_parameters():
                needed[param_names[id(p)]] = (w, p_name)
    found: dict[str, Tensor] = {}
    for key, load in iter_tensors(files):
        target = names.target(key).name
        if target in needed:
            found[target] = load()
    gains: dict[str, Tensor | None] = {w.name: None for w in layout.writers}
    for w in layout.writers:
        if w.output_norm is None:
            continue
        norm = copy.deepcopy(w.output_norm).to_empty(device="cpu")
        with torch.no_grad():
            for full, (owner, p_name) in needed.items():
                if owner is w:
                    if full not in found:
                        raise AbliterateError(f"norm weight {full} not found in the checkpoint")
                    getattr(norm, p_name).copy_(found[full])
        gains[w.name] = output_scale(norm.float(), layout.hidden_size)
    return gains


def stream_export(
    source: Path,
    layout: Layout,
    names: CheckpointNames,
    resolved: dict[str, Resolved],
    merged_dir: Path | None,
    max_shard_size: int,
    untie_output_name: str | None = None,
    on_tensor: Progress | None = None,
) -> dict[str, Resolved]:
    """Edit every writer tensor of `source`; write shards to `merged_dir` when given.

    Returns the resolved edits with their LoRA factors filled in. Raises if any writer with a
    non-zero strength was not found in the files (never a silent partial export)."""
    biases = {r.writer.bias_name: r for r in resolved.values() if r.writer.bias_name}
    files = shard_files(source)
    total = sum(len(safe_open(str(f), framework="pt").keys()) for f in files)
    writer = ShardWriter(merged_dir, max_shard_size) if merged_dir else None
    embed_name = layout.by_component("embed")[0].name
    for i, (key, load) in enumerate(iter_tensors(files)):
        target = names.target(key)
        tensor = None
        if target.name in resolved:
            r = resolved[target.name]
            tensor = load()
            original = tensor if untie_output_name and target.name == embed_name else None
            tensor = edit_writer(tensor, r, target.expert)
            r.experts_seen.add(target.expert)
            if original is not None and writer and untie_output_name:
                writer.add(untie_output_name, original)
        elif target.name in biases:
            r = biases[target.name]
            tensor = load()
            tensor = edit_bias(tensor, r)
        if writer:
            writer.add(key, tensor if tensor is not None else load())
        if on_tensor:
            on_tensor(i + 1, total)
    check_coverage(resolved, source)
    if writer:
        writer.close()
    return resolved


def edit_writer(t: Tensor, r: Resolved, expert: int | None) -> Tensor:
    """Edit one checkpoint tensor: a whole writer, or one expert's slice of a fused writer."""
    axis = _residual_axis(t, r.writer, expert)
    # One float32 copy, edited in place: peak memory stays near one shard plus one tensor.
    out = t.to(torch.float32, copy=True)
    view = canonical(out, axis)
    b, a = factors(view, r.u, r.strength, r.mode, r.rank)
    r.factors[expert] = (b, a)
    if view.ndim == 2:
        view.addmm_(b, a)
    else:
        view.baddbmm_(b, a)
    return out.to(t.dtype)


def _residual_axis(t: Tensor, w: Writer, expert: int | None) -> int:
    """The stored tensor's residual axis: the writer's own, or for one expert's 2-D slice of a
    fused writer (an nn.Linear weight, (hidden, n)) the axis of size hidden."""
    if expert is None:
        return w.out_axis
    return 0 if t.shape[0] == w.weight.shape[w.out_axis] else 1


def edit_bias(t: Tensor, r: Resolved) -> Tensor:
    """b' = b - lambda u (u . b); a (experts, d) bias is handled row by row by broadcasting."""
    r.bias_edited = True
    r.bias_value = project_bias(t.float(), r.u, r.strength)
    return r.bias_value.to(t.dtype)


def check_coverage(resolved: dict[str, Resolved], source: Path) -> None:
    missing = []
    for name, r in resolved.items():
        seen = r.experts_seen
        if r.writer.fused_experts and None not in seen:
            expected = set(range(r.writer.weight.shape[0]))
            if seen != expected:
                missing.append(f"{name} (experts {sorted(expected - seen)})")
        elif not seen:
            missing.append(name)
    if missing:
        raise AbliterateError(
            f"the checkpoint files in {source} do not hold these edited weights under any name "
            f"abliterate can map: {', '.join(missing[:5])}; they may be stored quantized or "
            "renamed. Export from the loaded model instead (--no-stream)"
        )


# What an export takes from the source besides the weights it writes itself: how to load and
# prompt the model, and the terms it is published under. Anything else (a Meta-style
# `original/` folder with consolidated.00.pth, a second copy of the weights, training state)
# stays behind: it would ship un-edited weights next to the edited ones.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "*tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "*.model",  # sentencepiece
    "chat_template.*",
    "*.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "LICEN[CS]E*",
    "NOTICE*",
    "COPYING*",
    "USE_POLICY*",
    "*.md",
)
# Written by the export itself (or by a GGUF conversion): never copied, never reported.
OWN_FILES = {"README.md", "abliterate.toml", "trial.json", "abliterate-gguf.json"}
# Remote model code (trust_remote_code: config.json's auto_map names it), top level only.
CODE_FILES = ("*.py",)


def side_file(relative: Path) -> bool:
    """Whether `relative` (a path inside the source directory) travels with an export."""
    if any(part.startswith(".") for part in relative.parts) or WEIGHT_FILES.match(relative.name):
        return False
    if str(relative) in OWN_FILES:
        return False
    patterns = SIDE_FILES + (CODE_FILES if len(relative.parts) == 1 else ())
    return any(relative.match(p) for p in patterns)


def copy_side_files(source: Path, target: Path) -> list[str]:
    """Copy config, tokenizer, chat template, licence and README-like files (at any depth) from
    `source` to `target`; never a weight file. Returns what was left out, except the source's
    own weight shards, which the export replaces."""
    shards = {p.name for p in shard_files(source)} | {"model.safetensors.index.json"}
    left_out = []
    for item in sorted(source.rglob("*")):
        relative = item.relative_to(source)
        if not item.is_file() or relative.parts[0].startswith("."):
            continue
        if side_file(relative):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target / relative)
        elif str(relative) not in shards | OWN_FILES:
            left_out.append(relative.as_posix())
    return left_out


def group_factors(resolved: dict[str, Resolved]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per writer, canonical factors (B, A): (d, r) and (r, n), or for fused experts
    (E, d, r) and (E, r, n), whatever layout the checkpoint stored."""
    out = {}
    for name, r in resolved.items():
        if None in r.factors:
            out[name] = r.factors[None]
        else:
            experts = sorted(r.factors)
            out[name] = (
                torch.stack([r.factors[e][0] for e in experts]),
                torch.stack([r.factors[e][1] for e in experts]),
            )
    return out
