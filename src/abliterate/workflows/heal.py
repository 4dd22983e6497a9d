"""Healing: a light DPO pass after abliteration, as in Labonne's "Uncensor any LLM with
abliteration" (NeuralDaredevil-8B: QLoRA, a preference mix, one epoch, lr 5e-6, LoRA r 64 /
alpha 32), which recovers most of the quality the edit cost.

Built on TRL's DPOTrainer and PEFT (`pip install "abliterate[heal]"`). Metrics before and after
are the ones `abliterate evaluate` reports, KL measured against the original base model, so a
user sees what healing bought and whether refusals came back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from abliterate.atomic import atomic_directory
from abliterate.config import Settings
from abliterate.errors import AbliterateError
from abliterate.guard import check_output, source_paths
from abliterate.runs import to_toml, tomllib

# Modules that import torch, transformers or the heal extra (trl, peft, datasets) are imported
# inside the functions that use them: `abliterate --help` imports this module for HealSettings
# and must not pay for torch.


class HealSettings(BaseSettings):
    """DPO healing hyper-parameters; defaults are the article's (ABLITERATE_HEAL_* overrides)."""

    model_config = SettingsConfigDict(env_prefix="ABLITERATE_HEAL_", extra="forbid")
    dataset: str = Field(description="preference data: hub id (id:split) or .jsonl/.parquet")
    learning_rate: float = Field(5e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many steps (-1: run the epochs)")
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    lora_r: int = Field(64, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    per_device_batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=16)
    max_samples: int | None = Field(None, ge=1, description="use at most this many pairs")
    load_in_4bit: bool = Field(False, description="QLoRA: base weights in 4-bit (CUDA only)")
    save_steps: int = Field(100, ge=1)
    training_seed: int = 0
    export: Literal["merged", "adapter"] = Field("merged", description="what --output receives")


def _require_trl():
    try:
        import trl  # noqa: F401
    except ImportError:
        raise AbliterateError('healing needs TRL: pip install "abliterate[heal]"') from None


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    raise AbliterateError(
        f"preference field must be text or chat messages, got {type(value).__name__}"
    )


def normalise_pair(row: dict) -> dict:
    """A DPO row in conversational form. Accepts prompt/chosen/rejected as text or messages,
    or chosen/rejected as whole conversations sharing their first turns (implicit prompt)."""
    if not {"chosen", "rejected"} <= set(row):
        raise AbliterateError(f"preference rows need chosen and rejected; got {sorted(row)}")
    if row.get("prompt"):
        return {
            "prompt": _as_messages(row["prompt"], "user"),
            "chosen": _as_messages(row["chosen"], "assistant"),
            "rejected": _as_messages(row["rejected"], "assistant"),
        }
    chosen, rejected = (
        _as_messages(row["chosen"], "assistant"),
        _as_messages(row["rejected"], "assistant"),
    )
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise AbliterateError("rows without a prompt must be conversations with a shared prompt")
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def load_preferences(spec: str, max_samples: int | None = None) -> list[dict]:
    """Preference pairs from a local .jsonl/.json/.parquet file or a hub dataset (`id[:split]`)."""
    path = Path(spec)
    if path.suffix in (".jsonl", ".json", ".parquet") and not path.is_file():
        raise AbliterateError(f"preference file {spec} does not exist")
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            rows = [
                json.loads(line)
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
    else:
        from datasets import load_dataset

        name, _, split = spec.partition(":")
        try:
            rows = list(load_dataset(name, split=split or "train"))
        except Exception as exc:
            raise AbliterateError(
                f"cannot load preference dataset {spec!r} ({type(exc).__name__})"
            ) from None
    if max_samples:
        rows = rows[:max_samples]
    if not rows:
        raise AbliterateError(f"preference set {spec} is empty")
    return [normalise_pair(r) for r in rows]


def heal(
    model_path: str,
    output: Path,
    cfg: HealSettings,
    eval_settings: Settings | None = None,
    base: str | None = None,
    overwrite: bool = False,
    message: Callable[[str], None] = lambda _m: None,
) -> dict:
    """DPO-heal `model_path` into `output`; returns losses and metrics before and after."""
    _require_trl()
    import torch

    from abliterate.model.loading import load_tokenizer, resolve
    from abliterate.workflows.evaluate import evaluate_against_base

    resolve(model_path)
    check_output(output, overwrite, source_paths(model_path))
    if cfg.load_in_4bit and not torch.cuda.is_available():
        raise AbliterateError("--load-in-4bit needs a CUDA GPU (bitsandbytes); none is available")
    pairs = load_preferences(cfg.dataset, cfg.max_samples)
    base = base or _original_base(model_path) or model_path
    before = {}
    if eval_settings:
        before = evaluate_against_base(eval_settings, model_path, base, message)["metrics"]
    message(f"healing {model_path} on {len(pairs)} preference pairs")

    checkpoints = output.parent / f".{output.name}.checkpoints"
    trainer = _trainer(model_path, cfg, pairs, checkpoints)
    resume = _last_checkpoint(checkpoints)
    if resume:
        message(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    trainer.model.eval()
    after = {}
    if eval_settings:
        # The evaluation's own tokenizer set-up (left padding, pad fallback), not TRL's.
        tok = load_tokenizer(model_path, eval_settings.chat_template)
        after = evaluate_against_base(
            eval_settings, model_path, base, message, loaded=(trainer.model, tok)
        )["metrics"]
    record = {
        "model": model_path,
        "base": base,
        "dataset": cfg.dataset,
        "pairs": len(pairs),
        "settings": cfg.model_dump(),
        "losses": losses,
        "before": before,
        "after": after,
    }
    _save(trainer, model_path, output, overwrite, cfg, checkpoints, record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def _trainer(model_path: str, cfg: HealSettings, pairs: list[dict], checkpoints: Path):
    """TRL's DPOTrainer over a LoRA of every linear layer, checkpointing into `checkpoints`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from abliterate.model.loading import quantization_config

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=torch.bfloat16 if cuda else torch.float32,
        quantization_config=quantization_config("bnb_4bit") if cfg.load_in_4bit else None,
        device_map="auto" if cuda else None,
        use_safetensors=True,  # never unpickle a checkpoint (it can run code)
    )
    args = DPOConfig(
        output_dir=str(checkpoints),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        beta=cfg.beta,
        max_length=cfg.max_length,
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=cfg.training_seed,
        bf16=cuda,
        use_cpu=not cuda,
        disable_tqdm=False,
    )
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _save(trainer, model_path, output, overwrite, cfg, checkpoints: Path, record: dict) -> None:
    """The healed model (merged, or the adapter alone), its tokenizer, metadata and card,
    written atomically into `output`."""
    from transformers import AutoTokenizer

    with atomic_directory(output, overwrite) as tmp:
        if cfg.export == "adapter":
            trainer.model.save_pretrained(tmp)
        elif cfg.load_in_4bit:
            # QLoRA: the adapter was trained against 4-bit weights; merge it onto the base in
            # full precision, as merging into 4-bit weights would round the edit away.
            trainer.model.save_pretrained(checkpoints / "final-adapter")
            merge_full_precision(model_path, checkpoints / "final-adapter").save_pretrained(tmp)
        else:
            trainer.model.merge_and_unload().save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
        _copy_metadata(Path(model_path), tmp)
        (tmp / "heal.json").write_text(json.dumps(record, indent=2))
        _update_card(tmp, record)


def merge_full_precision(model_path: str, adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    full = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, use_safetensors=True)
    return PeftModel.from_pretrained(full, str(adapter)).merge_and_unload()


def _last_checkpoint(directory: Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json after the weights,
    optimizer and RNG state, so a checkpoint without it was cut off (kill -9, power loss) and
    resuming from it would fail."""
    if not directory.is_dir():
        return None
    found = sorted(
        (p for p in directory.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(found[-1]) if found else None


def _original_base(model_path: str) -> str | None:
    """The model an abliterate export was made from (its abliterate.toml), for KL."""
    path = Path(model_path) / "abliterate.toml"
    if path.is_file():
        return tomllib.loads(path.read_text()).get("model")
    return None


def _copy_metadata(source: Path, target: Path) -> None:
    from abliterate.export.metadata import public_dict

    for name in ("trial.json", "README.md"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    settings = source / "abliterate.toml"
    if settings.is_file():  # cleaned again: an export made by an older abliterate kept secrets
        data = public_dict(tomllib.loads(settings.read_text(encoding="utf-8")))
        (target / "abliterate.toml").write_text(to_toml(data), encoding="utf-8")


def _update_card(directory: Path, record: dict) -> None:
    card = directory / "README.md"
    text = card.read_text() if card.is_file() else f"# {directory.name}\n"
    s = record["settings"]
    rows = ["| metric | before healing | after healing |", "| --- | --- | --- |"]
    for key in ("refusal_rate", "overrefusal_rate", "kl", "capability"):
        b, a = record["before"].get(key), record["after"].get(key)
        if b is not None or a is not None:
            fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
            rows.append(f"| {key} | {fmt(b)} | {fmt(a)} |")
    loss = record["losses"]
    text += (
        "\n## Healing\n\n"
        f"After abliteration the model was healed with DPO ({record['pairs']} preference pairs "
        f"from `{record['dataset']}`; LoRA r {s['lora_r']} / alpha {s['lora_alpha']}, learning "
        f"rate {s['learning_rate']}, beta {s['beta']}, {s['epochs']} epoch(s)"
        f"{', 4-bit base (QLoRA)' if s['load_in_4bit'] else ''}). DPO loss "
        f"{loss[0]:.4f} -> {loss[-1]:.4f}. KL is measured against `{record['base']}`.\n\n"
        + "\n".join(rows)
        + "\n"
    )
    card.write_text(text)
