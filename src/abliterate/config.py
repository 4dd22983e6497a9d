"""Typed settings: one model, read from a TOML file, `ABLITERATE_*` environment variables and
command-line flags, in increasing precedence.

Every setting has one name, used unchanged as the TOML key, as the environment variable
(`ABLITERATE_<NAME>`) and as the flag (`--name-with-dashes`). Fields are grouped (the `group`
in `json_schema_extra`) only for documentation: `config.default.toml` and `--help`.
"""

from __future__ import annotations

import contextvars
import difflib
import math
import re
import textwrap
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from abliterate.errors import AbliterateError
from abliterate.markers import HEDGE_MARKERS, REASONING_DELIMITERS, REFUSAL_MARKERS
from abliterate.search.select import check_policy

# Titles of the setting groups, in --help and config.default.toml.
GROUP_TITLES = {
    "model": "model loading",
    "prompts": "prompt sets",
    "directions": "refusal directions",
    "edit": "weight edit",
    "search": "search",
    "space": "search space",
    "objective": "objective",
    "evaluation": "evaluation",
    "run": "run directory and output",
}

Component = Literal["attn_out", "mlp_down", "embed"]
COMPONENTS: tuple[str, ...] = ("attn_out", "mlp_down", "embed")


class PromptSet(BaseModel):
    """A prompt set: a local file or directory, or a Hugging Face dataset id."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "train"
    column: str = "text"

    @classmethod
    def parse(cls, spec: str) -> PromptSet:
        """`path` or `id:split:column` (split and column optional), as given on the CLI."""
        if Path(spec).exists():
            return cls(dataset=spec)
        parts = re.split(r":(?![^\[]*\])", spec)  # colons inside a slice [a:b] do not split
        if len(parts) > 3:
            raise AbliterateError(f"prompt set {spec!r}: expected PATH or ID[:SPLIT[:COLUMN]]")
        fields = dict(zip(("dataset", "split", "column"), parts, strict=False))
        return cls(**{k: v for k, v in fields.items() if v})

    def describe(self) -> str:
        if Path(self.dataset).exists():
            return self.dataset
        return f"{self.dataset}:{self.split}:{self.column}"


def _field(default: Any, group: str, description: str, **kwargs: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"group": group}, **kwargs)


_TOML_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml", default=None)


class ModelSettings(BaseModel):
    """Which model, and how it is loaded and batched."""

    model: str = _field(
        "",
        "model",
        "Hugging Face model id, local model directory, or GGUF file (a local .gguf, or "
        "ORG/REPO/FILE.gguf on the Hub).",
    )
    gguf_file: str | None = _field(
        None,
        "model",
        "A GGUF file inside the model directory or Hub repository (same as MODEL/FILE.gguf).",
    )
    dtypes: list[str] = _field(
        ["auto", "bfloat16", "float16", "float32"],
        "model",
        "Data types to try in order; the first that loads and generates one token wins.",
    )
    device_map: str = _field(
        "auto", "model", "Device placement passed to transformers/accelerate ('auto', 'cpu'...)."
    )
    max_memory: dict[str, str] | None = _field(
        None, "model", 'Memory cap per device for device_map, e.g. {"0": "20GiB", "cpu": "64GiB"}.'
    )
    offload_folder: str | None = _field(
        None, "model", "Folder for accelerate's disk offload when the model exceeds RAM + VRAM."
    )
    quantization: Literal["none", "bnb_4bit"] = _field(
        "none", "model", "Load the model in 4-bit with bitsandbytes (CUDA only)."
    )
    trust_remote_code: bool = _field(
        False, "model", "Allow model code from the model repository to run."
    )
    chat_template: str | None = _field(
        None, "model", "Jinja chat template file, for tokenizers that have none."
    )
    batch_size: int = _field(0, "model", "Prompts per batch; 0 finds the largest that fits.", ge=0)
    max_batch_size: int = _field(64, "model", "Upper bound for the automatic batch size.", ge=1)
    system_prompt: str | None = _field(
        None, "model", "System prompt for every conversation; none uses the template's default."
    )


class PromptSettings(BaseModel):
    """The four prompt sets: two for directions, two for evaluation."""

    harmful_prompts: PromptSet = _field(
        PromptSet(dataset="mlabonne/harmful_behaviors", split="train[:400]"),
        "prompts",
        "Harmful prompts for computing refusal directions.",
    )
    harmless_prompts: PromptSet = _field(
        PromptSet(dataset="mlabonne/harmless_alpaca", split="train[:400]"),
        "prompts",
        "Harmless prompts for computing refusal directions.",
    )
    harmful_eval_prompts: PromptSet = _field(
        PromptSet(dataset="mlabonne/harmful_behaviors", split="test[:100]"),
        "prompts",
        "Harmful prompts for measuring refusals of each trial.",
    )
    harmless_eval_prompts: PromptSet = _field(
        PromptSet(dataset="mlabonne/harmless_alpaca", split="test[:100]"),
        "prompts",
        "Harmless prompts for KL divergence and over-refusal of each trial.",
    )
    harmful_report_prompts: PromptSet | None = _field(
        None,
        "prompts",
        "Harmful prompts for the held-out report only, never seen by the search or the choice; "
        "default: report_fraction of harmful_eval_prompts, split off before the search.",
    )
    harmless_report_prompts: PromptSet | None = _field(
        None,
        "prompts",
        "Harmless prompts for the held-out report only; default: report_fraction of "
        "harmless_eval_prompts.",
    )


class DirectionSettings(BaseModel):
    """How refusal directions are computed from residuals."""

    residual_stream: Literal["pre", "mid", "post"] = _field(
        "post",
        "directions",
        "Where residuals are read: input of each layer (pre), after the attention add (mid), "
        "or output of each layer (post).",
    )
    winsorize_quantile: float = _field(
        1.0,
        "directions",
        "Clamp each residual vector to this quantile of its absolute values (1.0 = off).",
        gt=0.0,
        le=1.0,
    )
    direction_harmful: Literal["refused", "all"] = _field(
        "refused",
        "directions",
        "Which harmful prompts the refusal direction is the mean of: 'refused' keeps those the "
        "unedited model refuses (a 16-token greedy answer with a refusal marker; Arditi et al. "
        "filter theirs the same way), 'all' every one. The prompts a model answers anyway "
        "carry the requests' topics, not the refusal: on Qwen2.5-Coder 0.5B the refused 77 of "
        "130 gave 10/169 held-out refusals where all 130 gave 16/169, at the same KL (README). "
        "Every prompt is used where fewer than 8 are refused.",
    )
    direction_baseline: Literal["answered", "harmless"] = _field(
        "answered",
        "directions",
        "What the refused harmful prompts' mean is compared with (direction_harmful = "
        "'refused'): 'answered', the harmful prompts the unedited model answers, where at least "
        "16 are (else the harmless mean); 'harmless', the harmless prompts' mean. The refused "
        "minus the answered mean keeps the decision to refuse and drops what all harmful "
        "requests share: on Qwen2.5-Coder 0.5B 1/169 held-out refusals at KL 0.20 where the "
        "harmless baseline gave 5/169 at KL 0.23 (README).",
    )
    orthogonalize_direction: bool = _field(
        True,
        "directions",
        "Remove the component along the harmless mean from each direction (projected "
        "abliteration, grimjim).",
    )
    benign_subspace_rank: int = _field(
        0,
        "directions",
        "Top principal directions of the harmless residuals to keep out of the refusal "
        "direction (ICONOCLAST); 0 disables.",
        ge=0,
    )
    direction_variance_floor: float = _field(
        0.01,
        "directions",
        "Ignore benign principal directions whose variance is below this fraction of the top one.",
        ge=0.0,
        lt=1.0,
    )
    directions_per_layer: int = _field(
        1,
        "directions",
        "Refusal directions per layer: 1 is the mean difference alone; k > 1 adds k - 1 "
        "directions from k clusters of the harmful residuals (each cluster's mean minus the "
        "harmless mean, made orthogonal to the first), edited at a strength the search "
        "chooses (extra_weight_range).",
        ge=1,
        le=16,
    )
    direction_scope: Literal["search", "global", "per_layer"] = _field(
        "search",
        "directions",
        "One interpolated direction for all layers (global), each layer's own (per_layer), "
        "or let the search choose per trial.",
    )
    direction_file: str | None = _field(
        None,
        "directions",
        "Use directions from this safetensors file (from `abliterate directions`) "
        "instead of computing them.",
    )


class EditSettings(BaseModel):
    """Which weights an edit touches, and how."""

    components: list[Component] = _field(
        ["attn_out", "mlp_down"],
        "edit",
        "Residual writers to edit: attention/mixer outputs, MLP down projections, embeddings.",
    )
    row_normalization: Literal["none", "pre", "full"] = _field(
        "none",
        "edit",
        "none; pre: compute the edit on row-normalised weights; full: also restore row norms "
        "(norm-preserving, stored as a low-rank delta).",
    )
    full_normalization_rank: int = _field(
        3, "edit", "Rank of the delta kept when row_normalization = full.", ge=1
    )


class SearchSettings(BaseModel):
    """The Optuna study: budget, seed, warm starts."""

    n_trials: int = _field(200, "search", "Trials in the study (in total, across workers).", ge=1)
    n_startup_trials: int | None = _field(
        None,
        "search",
        "Random trials before TPE starts modelling; unset = 30% of n_trials, at most 60.",
        ge=0,
    )
    seed: int = _field(0, "search", "Seed of the sampler.")
    warm_starts: list[float] = _field(
        [0.5, 0.65, 0.8],
        "search",
        "First trials: the flat edit of Arditi et al. (one direction, strength 1 on every layer) "
        "with the direction taken at each of these depth fractions; [] starts at random.",
    )
    warm_start_analysis: str | None = _field(
        None,
        "search",
        "directions.json written by `abliterate directions`: flat edits at its best-ranked "
        "layers (of the run's residual_stream, up to three) come first, before warm_starts.",
    )


class SpaceSettings(BaseModel):
    """The search space: ranges of the kernel and direction parameters."""

    max_weight_range: tuple[float, float] = _field(
        (0.5, 1.5),
        "space",
        "Range of a component's peak edit strength. Above about 1.5 the edit turns the "
        "direction's component over instead of removing it, and Qwen2.5 0.5B then refuses short "
        "harmless requests ('Who wrote Romeo and Juliet?').",
    )
    peak_range: tuple[float, float] = _field(
        (0.4, 1.0), "space", "Range of the kernel's peak position, as a fraction of the layers."
    )
    span_range: tuple[float, float] = _field(
        (0.05, 0.6),
        "space",
        "Range of the kernel's half-width, as a fraction of the layers (at least one layer).",
    )
    min_weight_range: tuple[float, float] = _field(
        (0.0, 1.0), "space", "Range of the kernel's edge strength, as a fraction of max weight."
    )
    direction_index_range: tuple[float, float] = _field(
        (0.3, 0.9),
        "space",
        "Range of the global direction's layer index, as a fraction of the layers.",
    )
    embed_weight_range: tuple[float, float] = _field(
        (0.0, 1.0), "space", "Range of the embedding edit strength (when embed is edited)."
    )
    extra_weight_range: tuple[float, float] = _field(
        (0.0, 1.0),
        "space",
        "Range of the strength of the extra directions (directions_per_layer > 1), as a "
        "fraction of the kernel's strength at each layer.",
    )
    projection_range: tuple[float, float] = _field(
        (0.0, 1.0),
        "space",
        "Range of how far the direction is projected off the harmless mean (with "
        "orthogonalize_direction): 0 = the plain mean difference (Arditi et al.), 1 = projected "
        "abliteration; [1, 1] keeps the projected direction in every trial.",
    )


class ObjectiveSettings(BaseModel):
    """The two objectives: how the refusal score weighs its parts, and the KL floor."""

    kl_divergence_target: float = _field(
        0.01,
        "objective",
        "Below this KL divergence the KL objective stops rewarding further reductions.",
        ge=0.0,
    )
    refusal_estimate: bool = _field(
        False,
        "objective",
        "Screen each trial with a one-pass refusal estimate (next-token mass on the base "
        "model's refusal openings) and skip generating for trials the front already dominates "
        "by a margin; on only once the first refusal_estimate_check trials, generated in full, "
        "show it tracks the measured rate.",
    )
    refusal_estimate_check: int = _field(
        8,
        "objective",
        "Trials generated in full to check the refusal estimate before it may skip any.",
        ge=1,
    )
    kl_prune_threshold: float = _field(
        5.0,
        "objective",
        "Trials whose KL divergence exceeds this skip refusal generation (recorded as pruned).",
        gt=0.0,
    )
    overrefusal_penalty: float = _field(
        1.0, "objective", "Weight of the over-refusal rate in the refusal objective.", ge=0.0
    )
    harmful_marker_penalty: float = _field(
        0.1,
        "objective",
        "Weight of the share of compliant harmful answers that still moralise.",
        ge=0.0,
    )
    compliance_gap_penalty: float = _field(
        0.0,
        "objective",
        "Weight of |harmless compliance - harmful compliance| in the refusal objective.",
        ge=0.0,
    )


class EvaluationSettings(BaseModel):
    """How a model is measured: answers, KL, over-refusal, markers."""

    max_response_length: int = _field(
        100, "evaluation", "New tokens generated per response when counting refusals.", ge=1
    )
    kl_token_count: int = _field(
        1,
        "evaluation",
        "Tokens over which KL divergence is averaged: 1 = first token; N > 1 = the first N "
        "tokens of the base model's own greedy answers (for reasoning models).",
        ge=1,
    )
    report_fraction: float = _field(
        0.5,
        "evaluation",
        "Share of each evaluation set held out for the report of the chosen trial (seeded; "
        "0 = no held-out report unless report prompt sets are named).",
        ge=0,
        lt=1,
    )
    report_response_length: int = _field(
        128,
        "evaluation",
        "New tokens per answer in the held-out report (longer than the search's: refusals that "
        "come after a compliant opening count).",
        ge=1,
    )
    judge: str | None = _field(
        None,
        "evaluation",
        "A local chat model (directory or .gguf) that also labels every held-out answer as "
        "refusal, evasion, compliance or incoherent, from its next-token probabilities of "
        "those words; its agreement with the markers is reported.",
    )
    overrefusal_sample: int = _field(
        32,
        "evaluation",
        "Harmless evaluation prompts answered in each trial to measure over-refusal (a seeded "
        "sample, the same in every trial; 0 = all). KL always reads every harmless prompt, and "
        "`evaluate` answers all of them.",
        ge=0,
    )
    overrefusal_response_length: int = _field(
        16,
        "evaluation",
        "New tokens per harmless answer in a search trial (0 = max_response_length). A refusal "
        "opens the answer, so short answers find over-refusal for less (compliant answers "
        "never stop early: on Qwen2.5 0.5B with 32 sampled prompts a trial took 85 s at "
        "100 tokens, 70-74 s at 16); "
        "`evaluate`, the re-measured picks and the chosen trial's figures use full-length "
        "answers.",
        ge=0,
    )
    overrefusal_openings: bool = _field(
        True,
        "evaluation",
        "Judge the harmless prompts a search trial does not answer (outside overrefusal_sample) "
        "by their opening: whether the greedy answer would start the way the base model's "
        "refusals did ('I'm sorry', 'As an AI'), from one short teacher-forced pass after the "
        "KL pass. Checked against the base model's generated answers first, and left off where "
        "the two disagree.",
    )
    trial_openings_only: bool = _field(
        False,
        "evaluation",
        "Judge a search trial's harmful and harmless prompts by their opening alone (as "
        "overrefusal_openings does): a trial is the KL pass and one teacher-forced pass over "
        "the harmful prompts, with no generation. The trials a policy picks are re-measured "
        "with generated answers before the choice (confirm_trials), and the agreement of the "
        "two verdicts is printed; the held-out report answers the chosen trial's report "
        "prompts. Refusals that come after a compliant opening are missed, so "
        "search figures run low; needs overrefusal_openings, and is off where the openings "
        "fail their check on the base model.",
    )
    harmful_openings_sample: int = _field(
        0,
        "evaluation",
        "Harmful prompts of the direction set (a seeded sample, none of the evaluation or "
        "report prompts) also judged in every search trial and re-measurement by their opening "
        "(as overrefusal_openings judges harmless ones), pooled with the answered harmful "
        "prompts into the refusal rate, for a finer rate than the few harmful evaluation "
        "prompts give. Off by default: 64 of them cost Qwen2.5 0.5B 8-13 s a trial (24 -> "
        "31 s) and the search found no better front (README, real model) (0 = off).",
        ge=0,
    )
    shared_prefix: bool = _field(
        True,
        "evaluation",
        "Compute the chat template's shared prefix (template opening, system prompt) once per "
        "batch instead of once per prompt. Checked against plain batches on the unedited model "
        "and left off where the two disagree (sliding windows, recurrent layers).",
    )
    own_decoding: bool = _field(
        True,
        "evaluation",
        "Decode a search's answers with abliterate's own greedy loop, in which a row leaves the "
        "batch as soon as it refused, ended its turn or reached its length, instead of "
        "model.generate (which computes every row until the batch's last one stops). Checked "
        "against model.generate on the unedited model and left off where the two disagree.",
    )
    capability_prompts: str | None = _field(
        None,
        "evaluation",
        'JSONL of {"prompt", "answer"} exact-match probes reported by evaluate and demo '
        "(default: eval/capability.jsonl of the model directory, if any).",
    )
    refusal_markers: list[str] = _field(
        list(REFUSAL_MARKERS), "evaluation", "Substrings that make a response a refusal."
    )
    hedge_markers: list[str] = _field(
        list(HEDGE_MARKERS), "evaluation", "Substrings of moralising in a compliant answer."
    )
    reasoning_delimiters: list[tuple[str, str]] = _field(
        list(REASONING_DELIMITERS),
        "evaluation",
        "Chain-of-thought blocks (open, close) skipped before looking for markers.",
    )


class RunSettings(BaseModel):
    """The run directory, the choice of a trial and the export."""

    run_dir: str | None = _field(None, "run", "Run directory; default runs/<model name>.")
    storage: str | None = _field(
        None,
        "run",
        "Optuna storage URL (sqlite:///..., postgresql://...); default a journal file in the "
        "run directory.",
    )
    study_name: str = _field("abliterate", "run", "Name of the Optuna study in the storage.")
    output: str | None = _field(None, "run", "Write the chosen model here when the search ends.")
    export: str = _field(
        "merged",
        "run",
        "What --output receives: merged (safetensors), adapter (PEFT LoRA), gguf, both (merged "
        "and adapter), or a list such as merged,gguf (then one sub-directory each).",
    )
    gguf_type: Literal["Q8_0", "F16", "BF16", "F32", "source"] = _field(
        "Q8_0",
        "run",
        "Type of the edited tensors in a GGUF export (the others are copied as they are); "
        "'source' requantizes to each tensor's own type, which can lose part of the edit.",
    )
    select: str | None = _field(
        None,
        "run",
        "Choose a trial without asking: min-kl-under:R (lowest KL with refusal rate <= R, else "
        "the lowest refusal rate), min-kl-under:R,max-kl:K (the same among trials with KL <= "
        "K), min-refusals, knee or trial:N. Without a terminal, min-kl-under:0.03,max-kl:0.25.",
    )
    confirm_trials: int = _field(
        3,
        "run",
        "When a policy chooses, re-measure the refusal rate of the trial it picks with longer "
        "answers and choose again, for up to this many trials (0 = off).",
        ge=0,
    )
    confirm_response_length: int = _field(
        0,
        "run",
        "New tokens per answer when a chosen trial is re-measured (0 = twice max_response_length).",
        ge=0,
    )
    confirm_overrefusal_margin: float = _field(
        0.02,
        "run",
        "A re-measured trial whose over-refusal (every search harmless prompt, answered at the "
        "re-measuring length, and the confirm_harmless_sample prompts) exceeds the base model's "
        "by more than this is passed over.",
        ge=0.0,
    )
    confirm_capability_floor: float = _field(
        0.95,
        "run",
        "A re-measured trial that answers fewer capability probes than this fraction of the "
        "base model's is passed over (0 = not checked).",
        ge=0.0,
        le=1.0,
    )
    confirm_harmless_sample: int = _field(
        128,
        "run",
        "Harmless prompts of the direction set (a seeded sample, none of the report's) that the "
        "damage check also reads: judged by their opening where the search's refusal openings "
        "are on (overrefusal_openings), else answered with 12 tokens. An edit can make a model "
        "refuse one kind of harmless request (short factual lists, on Qwen2.5 0.5B), which the "
        "search's few harmless prompts may not hold (0 = only those).",
        ge=0,
    )
    confirm_harmful_sample: int = _field(
        128,
        "run",
        "Harmful prompts of the direction set (a seeded sample, none of the evaluation or "
        "report prompts) that a re-measured trial is also judged on by their opening, pooled "
        "with its answered harmful prompts into its refusal rate, where the search's refusal "
        "openings are on. The search's few harmful prompts cannot tell an edit refusing 3 % "
        "from one refusing 8 %; 128 more nearly can, for one teacher-forced pass a pick (0 = only "
        "the evaluation prompts).",
        ge=0,
    )
    max_shard_size: str = _field("5GB", "run", "Largest safetensors shard of a merged export.")
    overwrite: bool = _field(False, "run", "Replace a non-empty output directory.")


class Settings(
    RunSettings,
    EvaluationSettings,
    ObjectiveSettings,
    SpaceSettings,
    SearchSettings,
    EditSettings,
    DirectionSettings,
    PromptSettings,
    ModelSettings,
    BaseSettings,
):
    """Every setting, composed of the groups above. Each keeps one flat name: the TOML key, the
    environment variable ABLITERATE_<NAME> and the flag --name-with-dashes."""

    model_config = SettingsConfigDict(
        env_prefix="ABLITERATE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.gguf_file:
            # One spec for the model everywhere (run directory name, resume checks, loading).
            if self.model.lower().endswith(".gguf"):
                raise ValueError(f"gguf_file {self.gguf_file} given, but model is a file")
            self.model = f"{self.model.rstrip('/')}/{self.gguf_file}"
            self.gguf_file = None
        export_kinds(self.export)
        if self.select is not None:
            check_policy(self.select)
        if self.trial_openings_only and not self.overrefusal_openings:
            raise ValueError("trial_openings_only needs overrefusal_openings (the openings)")
        if self.n_startup_trials is not None and self.n_startup_trials > self.n_trials:
            raise ValueError(
                f"n_startup_trials ({self.n_startup_trials}) > n_trials ({self.n_trials})"
            )
        for name in (
            "max_weight_range",
            "peak_range",
            "span_range",
            "min_weight_range",
            "direction_index_range",
            "embed_weight_range",
        ):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} = ({lo}, {hi}): need 0 <= low <= high")
        for name in ("extra_weight_range", "projection_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"{name} = ({lo}, {hi}): need 0 <= low <= high <= 1")
        if any(not 0 <= f <= 1 for f in self.warm_starts):
            raise ValueError(f"warm_starts {self.warm_starts}: depth fractions must be in [0, 1]")
        if self.span_range[1] <= 0:
            raise ValueError("span_range upper bound must be positive (span 0 edits nothing)")
        if self.max_weight_range[1] <= 0:
            raise ValueError("max_weight_range upper bound must be positive")
        if not self.components:
            raise ValueError("components is empty: nothing would be edited")
        if not self.dtypes:
            raise ValueError("dtypes is empty")
        return self

    def check_files(self) -> None:
        """The files these settings name exist: checked before a model loads, not after."""
        for name in (
            "chat_template",
            "capability_prompts",
            "direction_file",
            "warm_start_analysis",
        ):
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_file():
                raise AbliterateError(f"{name} = {value}: no such file")

    @property
    def startup_trials(self) -> int:
        if self.n_startup_trials is not None:
            return self.n_startup_trials
        return min(60, math.ceil(0.3 * self.n_trials))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags (init kwargs) > environment > TOML file > defaults.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _TOML_FILE.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


EXPORT_KINDS = ("merged", "adapter", "gguf")
EXPORT_CHOICES = ("merged", "adapter", "both", "gguf")  # single kinds; `export` takes a list
STREAMS = ("pre", "mid", "post")  # where residuals are read (see residual_stream)


def export_kinds(spec: str) -> tuple[str, ...]:
    """`merged`, `adapter`, `gguf`, `both` (merged and adapter) or a comma-separated list."""
    kinds: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        expanded = ["merged", "adapter"] if part == "both" else [part]
        for kind in expanded:
            if kind not in EXPORT_KINDS:
                raise ValueError(
                    f"export kind {part!r}: use merged, adapter, gguf, both or a list such as "
                    "merged,gguf"
                )
            if kind not in kinds:
                kinds.append(kind)
    return tuple(kinds)


def redact(text: str) -> str:
    """`text` with the password of any URL in it masked: `postgresql://user:***@host/db`."""

    def mask(m: re.Match) -> str:
        try:
            parts = urlsplit(m.group(0))
        except ValueError:
            return m.group(0)
        if parts.password is None:
            return m.group(0)
        host = parts.netloc.rsplit("@", 1)[1]
        return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()

    return re.sub(r"[A-Za-z][\w+.-]*://\S+", mask, text)


def load_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Resolve settings from `config_file`, the environment and `flags` (highest precedence).

    Raises AbliterateError with one readable line per problem."""
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise AbliterateError(f"config file {config_file} does not exist")
    token = _TOML_FILE.set(config_file)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise AbliterateError(format_validation_error(exc)) from None
    finally:
        _TOML_FILE.reset(token)


def format_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    problems = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "settings"
        if e["type"] == "extra_forbidden":
            problems.append(_unknown_key(e["loc"], model or Settings))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}" if e["loc"] else msg)
    return "invalid settings: " + "; ".join(problems)


def _unknown_key(loc: tuple, model: type[BaseModel]) -> str:
    """`unknown setting n_trails (did you mean n_trials?)`, for a typo in a TOML file, an
    environment variable or a table such as [harmful_prompts]."""

    fields: dict[str, Any] = dict(model.model_fields)
    for part in loc[:-1]:  # descend into a nested table
        annotation = fields[str(part)].annotation if str(part) in fields else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = dict(annotation.model_fields)
    key = str(loc[-1])
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {'.'.join(str(p) for p in loc)}{hint}"


def field_default(name: str) -> Any:
    """A setting's default, for the dataclasses that carry a group of settings into the code
    that uses them (search space, objective, evaluation): derived here, never restated."""
    return Settings.model_fields[name].default


def field_group(name: str) -> str:
    extra = Settings.model_fields[name].json_schema_extra
    return str(extra["group"]) if isinstance(extra, dict) else "other"


def default_toml() -> str:
    """The text of config.default.toml: every setting with its default and description."""
    lines = [
        "# abliterate settings with their defaults. Copy the keys you want to change into your",
        "# own file and pass it with --config. Environment variables ABLITERATE_<NAME> and",
        "# command-line flags --name-with-dashes override the file, in that order.",
        "",
    ]
    defaults = Settings.model_construct().model_dump(mode="json")
    tables = []
    current = None
    for name, field in Settings.model_fields.items():
        value = defaults[name]
        group = field_group(name)
        if isinstance(value, dict) and name.endswith("_prompts"):
            tables.append((name, field, value))
            continue
        if group != current:
            lines += ["", f"# -- {GROUP_TITLES.get(group, group)} --"]
            current = group
        lines += [f"# {line}" for line in _wrap(field.description)]
        if value is None:
            lines.append(f"# {name} = (unset)")
        else:
            lines.append(tomli_w.dumps({name: value}).strip())
    lines += ["", "# -- prompt sets: a local file or directory, or a Hugging Face dataset --"]
    for name, field, value in tables:
        lines += ["", *[f"# {line}" for line in _wrap(field.description)], f"[{name}]"]
        lines += [tomli_w.dumps({k: v}).strip() for k, v in value.items()]
    return "\n".join(lines).replace("\n\n\n", "\n\n").lstrip() + "\n"


def _wrap(text: str | None, width: int = 96) -> list[str]:
    return textwrap.wrap(text or "", width)


if __name__ == "__main__":
    print(default_toml(), end="")
