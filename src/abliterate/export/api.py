"""Export a trial: merged weights, a LoRA adapter, or both, with settings, trial record and
model card; optionally uploaded to the Hugging Face Hub.

The export never loads the model: it reads the source checkpoint files one tensor at a time
(see stream.py), so a model larger than RAM exports in the memory of one shard, and a run
that searched on a 4-bit model still exports full-precision weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from abliterate.atomic import atomic_directory
from abliterate.config import Settings
from abliterate.edit.plan import Directions, EditParams, plan
from abliterate.errors import AbliterateError
from abliterate.export.adapter import write_adapter
from abliterate.export.card import model_card
from abliterate.export.metadata import write_metadata
from abliterate.export.names import CheckpointNames
from abliterate.export.stream import (
    copy_side_files,
    gains_from_checkpoint,
    parse_size,
    resolve,
    shard_files,
    stream_export,
)
from abliterate.model.arch import discover

KINDS = ("merged", "adapter", "both")


@dataclass
class Exported:
    merged: Path | None
    adapter: Path | None
    warnings: list[str]


def local_source(model: str) -> Path:
    """The directory of the source checkpoint: the path itself, or the hub snapshot in the cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        try:
            return Path(
                snapshot_download(
                    model,
                    allow_patterns=[
                        "*.json",
                        "*.safetensors",
                        "*.jinja",
                        "*.txt",
                        "*.model",
                        "*.py",
                        "*.tiktoken",
                    ],
                )
            )
        except Exception as exc:
            raise AbliterateError(
                f"cannot find the files of {model} locally or on the Hub ({type(exc).__name__})"
            ) from None


def meta_model(source: Path, trust_remote_code: bool):
    """The model's structure without its weights (every tensor on the meta device)."""
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _untie(model, edited_embedding: bool) -> str | None:
    """When the edited embedding is tied to the output head, the name under which the head's
    (unedited) weight must be written so that the output distribution stays as it was."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if not edited_embedding or out is None or out.weight is not inp.weight:
        return None
    return next(f"{n}.weight" for n, m in model.named_modules() if m is out)


def _write_config_untied(directory: Path) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["tie_word_embeddings"] = False
    if isinstance(config.get("text_config"), dict):
        config["text_config"]["tie_word_embeddings"] = False
    path.write_text(json.dumps(config, indent=2) + "\n")


def export_trial(
    settings: Settings,
    directions: Directions,
    record: dict,
    output: str | Path,
    kind: str = "merged",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    base: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Exported:
    """Write trial `record` of a run to `output` (`both`: output/merged and output/adapter)."""
    if kind not in KINDS:
        raise AbliterateError(f"unknown export kind {kind!r}; use merged, adapter or both")
    source = local_source(settings.model)
    model = meta_model(source, settings.trust_remote_code)
    layout = discover(model)
    names = CheckpointNames(model)
    files = shard_files(source)
    params = EditParams.from_dict(record["params"])
    edits = plan(layout.writers, directions, params)
    gains = gains_from_checkpoint(model, layout, files, names)
    resolved = resolve(edits, gains, settings.row_normalization, settings.full_normalization_rank)
    untie = _untie(model, any(e.writer.component == "embed" for e in edits))
    with atomic_directory(output, overwrite) as tmp:
        merged = None if kind == "adapter" else (tmp / "merged" if kind == "both" else tmp)
        adapter = None if kind == "merged" else (tmp / "adapter" if kind == "both" else tmp)
        if merged is not None:
            merged.mkdir(exist_ok=True)
        stream_export(
            source,
            layout,
            names,
            resolved,
            merged,
            parse_size(max_shard_size),
            untie_output_name=untie,
            on_tensor=on_progress,
        )
        warnings = []
        if merged is not None:
            copy_side_files(source, merged)
            if untie:
                _write_config_untied(merged)
            _chat_template(settings, merged)
            write_metadata(
                merged, settings, record, edits, base, model_card(settings, record, base, "merged")
            )
        if adapter is not None:
            warnings = write_adapter(adapter, resolved, settings.model)
            note = "".join(f"\n> Note: {w}\n" for w in warnings)
            write_metadata(
                adapter,
                settings,
                record,
                edits,
                base,
                model_card(settings, record, base, "adapter", extra=note),
            )
    final = Path(output)
    return Exported(
        merged=None if kind == "adapter" else (final / "merged" if kind == "both" else final),
        adapter=None if kind == "merged" else (final / "adapter" if kind == "both" else final),
        warnings=warnings,
    )


def _chat_template(settings: Settings, directory: Path) -> None:
    """A run that supplied --chat-template ships it, so the export works in chat tools."""
    if settings.chat_template:
        template = Path(settings.chat_template).read_text(encoding="utf-8")
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
