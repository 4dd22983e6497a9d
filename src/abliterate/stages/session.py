"""Stages 1-4 of a run: the run directory, the model, the prompt sets and the refusal
directions, held together in a `Session` that the search, the choice and the exports work on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from abliterate.config import Settings
from abliterate.edit.check import check_writes
from abliterate.edit.editor import WeightEditor, untie_embeddings
from abliterate.edit.plan import Directions
from abliterate.errors import AbliterateError
from abliterate.eval.evaluate import Evaluator, Metrics
from abliterate.events import Events
from abliterate.model import loading
from abliterate.model.arch import Layout, discover
from abliterate.prompts import load_prompt_set
from abliterate.runs import (
    RunDir,
    describe_differences,
    differences,
    settings_dict,
)
from abliterate.search import study as st
from abliterate.search.objective import ObjectiveWeights
from abliterate.search.space import read_analysis
from abliterate.stages.directions import check_shape, directions_from_tensors, obtain_directions
from abliterate.stages.split import PAIRS, ReportSplit, report_split


@dataclass
class Session:
    """A loaded model in its run: what `run`, `export` and `chat --trial` work on."""

    settings: Settings
    run_dir: RunDir
    model: Any
    tokenizer: Any
    layout: Layout
    directions: Directions
    editor: WeightEditor
    prompts: dict[str, list[str]] = field(default_factory=dict)
    evaluator: Evaluator | None = None
    base: Metrics | None = None
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    batch_size: int = 16

    @property
    def base_refusal_rate(self) -> float:
        assert self.base is not None
        return self.base["refusal_rate"]


def resolve_prompt_defaults(settings: Settings, root: str | None = None) -> Settings:
    """A model directory that carries `prompts/` and `eval/` (the organism) supplies the prompt
    sets that were not set explicitly. `root` defaults to the model itself."""
    base = Path(root or settings.model)
    files = {
        "harmful_prompts": base / "prompts" / "harmful.txt",
        "harmless_prompts": base / "prompts" / "harmless.txt",
        "harmful_eval_prompts": base / "eval" / "harmful.txt",
        "harmless_eval_prompts": base / "eval" / "harmless.txt",
    }
    updates: dict[str, Any] = {
        key: {"dataset": str(path), "split": "train", "column": "text"}
        for key, path in files.items()
        if key not in settings.model_fields_set and path.is_file()
    }
    probes = base / "eval" / "capability.jsonl"
    if settings.capability_prompts is None and probes.is_file():
        updates["capability_prompts"] = str(probes)
    if not updates:
        return settings
    return Settings.model_validate({**settings.model_dump(), **updates})


PROMPT_SETS = (
    "harmful_prompts",
    "harmless_prompts",
    "harmful_eval_prompts",
    "harmless_eval_prompts",
)


REPORT_SETS = ("harmful_report_prompts", "harmless_report_prompts")


def load_prompts(settings: Settings, keys: tuple[str, ...] = PROMPT_SETS) -> dict[str, list[str]]:
    """The prompt sets named by `keys`, and the report sets where the settings name them."""
    sets = {}
    for key in keys + REPORT_SETS:
        spec = getattr(settings, key)
        if spec is not None:
            sets[key] = load_prompt_set(spec.dataset, spec.split, spec.column, key)
    return sets


def split_prompts(
    settings: Settings, prompts: dict[str, list[str]]
) -> tuple[dict[str, list[str]], ReportSplit | None]:
    """The sets with the evaluation ones cut to their search part and the report parts added
    (stages/split.py), and the split itself (None when an evaluation set was not loaded)."""
    if not all(key in prompts for key, _ in PAIRS):
        return prompts, None
    split = report_split(prompts, settings.report_fraction, settings.seed)
    return {**prompts, **split.search, **split.report}, split


def check_split(run_dir: RunDir, split: ReportSplit) -> None:
    """A resumed run whose report prompts changed (a prompt file was edited) is stopped before
    the model loads."""
    saved = run_dir.load_split()
    if saved is not None and saved["report"] != split.report:
        raise AbliterateError(
            f"the held-out report prompts differ from the ones {run_dir.path} was started with "
            "(did a prompt file change?); use --new-run to start over"
        )


def load_model(settings: Settings, events: Events) -> loading.Loaded:
    return loading.load(
        settings.model,
        dtypes=settings.dtypes,
        device_map=settings.device_map,
        max_memory=settings.max_memory,
        offload_folder=settings.offload_folder,
        quantization=settings.quantization,
        trust_remote_code=settings.trust_remote_code,
        chat_template=settings.chat_template,
        on_message=events.message,
    )


def batch_size(settings: Settings, model) -> int:
    """The configured batch size, or for 0 a size that suits the device."""
    if settings.batch_size:
        return settings.batch_size
    device = model.get_input_embeddings().weight.device
    if device.type != "cuda":
        # 64 rows: on a CPU a decoding step's matrix products are still far from their peak
        # at 32 rows (a 0.5 B model on 2 cores, 64 prompts x 48 tokens: 102 s at 32 rows, 74 s
        # at 64); more rows would hold more keys and values for models that need the memory.
        return min(settings.max_batch_size, 64)
    free, _total = torch.cuda.mem_get_info(device)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Generation memory grows with batch x length x layers x hidden; this stays well inside it.
    per_row = max(
        1,
        4
        * model.config.get_text_config().num_hidden_layers
        * model.get_input_embeddings().weight.shape[1]
        * 1024
        * 2,
    )
    fit = max(1, int(0.5 * max(free - 0.1 * params, 0) // per_row))
    return max(1, min(settings.max_batch_size, 2 ** (fit.bit_length() - 1)))


def open_session(
    settings: Settings, events: Events | None = None, new_run: bool = False, for_search: bool = True
) -> Session:
    """Stages 1-4. Also used by export and chat, which only need the directions."""
    events = events or Events()
    settings = resolve_prompt_defaults(settings)
    run_dir = RunDir.for_settings(settings)
    loading.resolve(settings.model, settings.trust_remote_code)  # a missing model first
    settings.check_files()
    if for_search and settings.warm_start_analysis:
        read_analysis(settings.warm_start_analysis, settings.residual_stream)
    if for_search:
        run_dir.check(settings, new_run=new_run)
        if settings.storage:
            join_study(settings, run_dir)
    # Prompt sets before the model: a bad path or an offline hub id should not cost a load.
    prompts, split = split_prompts(settings, load_prompts(settings))
    if for_search and split is not None and not new_run:
        check_split(run_dir, split)
    loaded = load_model(settings, events)
    model, tokenizer = loaded.model, loaded.tokenizer
    if "embed" in settings.components and untie_embeddings(model):
        events.message(
            "input and output embeddings were tied; untied them so that editing the "
            "embedding leaves the output head as it was"
        )
    layout = discover(model)
    for warning in layout.warnings:
        events.message(f"[yellow]warning:[/yellow] {warning}")
    if for_search:
        run_dir.commit(settings, new_run=new_run)
        if split is not None:
            run_dir.save_split(split.record())
    bs = batch_size(settings, model)
    tensors = obtain_directions(settings, run_dir, model, tokenizer, layout, prompts, events, bs)
    directions = directions_from_tensors(tensors)
    check_shape(directions, layout)
    editor = WeightEditor(
        layout, settings.row_normalization, settings.full_normalization_rank, model=model
    )
    if for_search:
        # A writer that discovery missed would make every trial a partial edit: say so loudly.
        problems = check_writes(model, layout, editor)
        for problem in problems:
            events.message(f"[yellow]warning:[/yellow] {problem}")
        if not problems:
            n = len(layout.writers)
            events.message(f"writer check: every layer's residual write is edited ({n} weights)")
    return Session(
        settings,
        run_dir,
        model,
        tokenizer,
        layout,
        directions,
        editor,
        prompts,
        weights=ObjectiveWeights.from_settings(settings),
        batch_size=bs,
    )


def join_study(settings: Settings, run_dir: RunDir) -> None:
    """Workers of one shared study must search the same thing: the first publishes its settings,
    the others are checked against them."""
    study, lock = st.open_study_for(settings, run_dir)
    with lock():
        saved = st.get_shared(study, "settings")
        if saved is None:
            st.set_shared(study, "settings", settings_dict(settings))
            return
    diff = differences(saved, settings)
    if diff:
        raise AbliterateError(
            f"study {settings.study_name!r} in {settings.storage} was started with other "
            f"settings: {describe_differences(saved, settings, diff)}; use the same settings "
            "on every worker, or another --study-name"
        )
