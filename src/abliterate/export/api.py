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
from abliterate.config import EXPORT_CHOICES, Settings, export_kinds
from abliterate.edit.plan import Directions, WriterEdit, plan
from abliterate.errors import AbliterateError
from abliterate.export.adapter import write_adapter
from abliterate.export.card import model_card
from abliterate.export.gguf import Report as GGUFReport
from abliterate.export.gguf import output_name, tensor_names, write_gguf
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
from abliterate.guard import check_output, source_paths
from abliterate.model import gguf, loading
from abliterate.model.arch import Layout, discover
from abliterate.runs import RunDir
from abliterate.search.record import TrialRecord

KINDS = EXPORT_CHOICES


@dataclass
class Exported:
    merged: Path | None
    adapter: Path | None
    warnings: list[str]
    gguf: Path | None = None
    gguf_report: GGUFReport | None = None

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.merged, self.adapter, self.gguf) if p is not None]


def local_source(model: str) -> Path:
    """The directory of the source checkpoint: the path itself, or the hub snapshot in the cache."""
    if gguf.is_gguf(model):
        return Path(loading.checkpoint_dir(model))
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


def protected_paths(settings: Settings, run_dir: str | Path | None = None) -> list:
    """What an export of this run must never touch (guard.py): the source and the run."""
    run = Path(run_dir) if run_dir is not None else RunDir.for_settings(settings).path
    return [*source_paths(settings.model), ("the run directory", run)]


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
    record: TrialRecord,
    output: str | Path,
    kind: str = "merged",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    base: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    run_dir: str | Path | None = None,
) -> Exported:
    """Write trial `record` of a run to `output`: one kind into `output` itself, several into
    one sub-directory each (`both`: output/merged and output/adapter). The output may not be,
    hold or sit inside the source model, the run directory (`run_dir`, default the settings')
    or a cache (see guard.py)."""
    try:
        kinds = export_kinds(kind)
    except ValueError as exc:
        raise AbliterateError(str(exc)) from None
    check_output(output, overwrite, protected_paths(settings, run_dir))
    job = _job(settings, directions, record, base, on_progress)
    kinds, warnings = _possible_kinds(kinds, job.gguf_source)
    with atomic_directory(output, overwrite) as tmp:
        dirs = {k: tmp / k if len(kinds) > 1 else tmp for k in kinds}
        for d in dirs.values():
            d.mkdir(exist_ok=True)
        if "merged" in dirs or "adapter" in dirs:
            found = job.resolved()
            stream_export(
                job.source, job.layout, job.names, found, dirs.get("merged"),
                parse_size(max_shard_size), untie_output_name=job.untie, on_tensor=on_progress,
            )  # fmt: skip
            if "merged" in dirs:
                warnings += _finish_merged(job, dirs["merged"])
            if "adapter" in dirs:
                warnings += _write_adapter(job, dirs["adapter"], found)
        report = _write_gguf(job, dirs["gguf"]) if "gguf" in dirs else None
    return _exported(Path(output), kinds, warnings, report)


@dataclass
class _Job:
    """What every kind of export of one trial reads: the source files, the model's structure
    (on the meta device) and the planned edits."""

    settings: Settings
    record: TrialRecord
    base: dict | None
    source: Path
    gguf_source: Path | None
    model: torch.nn.Module
    layout: Layout
    names: CheckpointNames
    edits: list[WriterEdit]
    gains: dict
    untie: str | None  # see _untie
    on_progress: Callable[[int, int], None] | None

    def resolved(self):
        """A fresh set of resolved edits per pass over the source files: each pass records
        what it found."""
        s = self.settings
        return resolve(self.edits, self.gains, s.row_normalization, s.full_normalization_rank)

    def card(self, directory: Path, kind: str, extra: str = "") -> None:
        card = model_card(self.settings, self.record, self.base, kind, extra=extra)
        write_metadata(directory, self.settings, self.record, self.edits, self.base, card)


def _job(settings, directions, record, base, on_progress) -> _Job:
    source = local_source(settings.model)
    model = meta_model(source, settings.trust_remote_code)
    layout = discover(model)
    names = CheckpointNames(model)
    edits = plan(layout.writers, directions, record.params)
    gains = gains_from_checkpoint(model, layout, shard_files(source), names)
    untie = _untie(model, any(e.writer.component == "embed" for e in edits))
    return _Job(
        settings, record, base, source, gguf.source_of(source), model, layout, names, edits,
        gains, untie, on_progress,
    )  # fmt: skip


def _possible_kinds(kinds: tuple[str, ...], gguf_source: Path | None):
    """The kinds that can be written from this source, and a warning for any replaced."""
    if "gguf" not in kinds or gguf_source is not None:
        return kinds, []
    kinds = tuple(k for k in kinds if k != "gguf")
    kinds = kinds if "merged" in kinds else ("merged", *kinds)
    return kinds, [
        "a GGUF export needs a GGUF source model; wrote merged safetensors instead. Convert "
        "them with llama.cpp: python convert_hf_to_gguf.py MERGED_DIR --outtype q8_0"
    ]


def _finish_merged(job: _Job, merged: Path) -> list[str]:
    """Side files, config, chat template and card of a merged export whose tensors are written."""
    warnings = []
    left_out = copy_side_files(job.source, merged)
    if left_out:
        more = f" and {len(left_out) - 8} more" if len(left_out) > 8 else ""
        warnings.append(
            "not copied from the source (only config, tokenizer, chat template, "
            f"licence and README files travel): {', '.join(left_out[:8])}{more}"
        )
    if job.untie:
        _write_config_untied(merged)
    _chat_template(job.settings, merged)
    job.card(merged, "merged")
    return warnings


def _write_adapter(job: _Job, directory: Path, found) -> list[str]:
    base_id = str(job.source) if job.gguf_source else job.settings.model
    notes = write_adapter(directory, found, base_id)
    job.card(directory, "adapter", "".join(f"\n> Note: {w}\n" for w in notes))
    return notes


def _write_gguf(job: _Job, directory: Path) -> GGUFReport:
    assert job.gguf_source is not None
    gguf_type = job.settings.gguf_type
    report = write_gguf(
        job.gguf_source,
        directory / output_name(job.gguf_source, gguf_type),
        job.resolved(),
        tensor_names(job.model),
        gguf_type,
        {"trial": job.record.number, "params": job.record.params.to_dict()},
        untie=job.untie is not None,
        on_tensor=job.on_progress,
    )
    job.card(directory, "gguf", gguf_note(report, gguf_type))
    return report


def _exported(final: Path, kinds, warnings: list[str], report: GGUFReport | None) -> Exported:
    """Where each kind landed once the temporary directory took the output's place."""

    def where(k: str) -> Path | None:
        return None if k not in kinds else (final / k if len(kinds) > 1 else final)

    gguf_path = where("gguf")
    if gguf_path is not None and report is not None:
        gguf_path = report.path = gguf_path / report.path.name
    return Exported(where("merged"), where("adapter"), warnings, gguf_path, report)


def gguf_note(report: GGUFReport, gguf_type: str) -> str:
    types = ", ".join(f"{n} as {t}" for t, n in report.types.items())
    return (
        f"\n> GGUF: {report.edited} edited tensors stored re-encoded ({types}; setting gguf_type "
        f"= {gguf_type}), every other tensor copied unchanged from the source file; the stored "
        f"values keep {report.kept:.1%} of the edit along the refusal direction.\n"
    )


def _chat_template(settings: Settings, directory: Path) -> None:
    """A run that supplied --chat-template ships it, so the export works in chat tools."""
    if settings.chat_template:
        template = Path(settings.chat_template).read_text(encoding="utf-8")
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
