"""Prompt sets and chat formatting.

Loading prompt sets from files or the Hugging Face Hub lives here too (see `load_prompt_set`);
this module never touches a model.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from abliterate.errors import AbliterateError


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]


def chat_texts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], system_prompt: str | None = None
) -> list[str]:
    """Each prompt as one user turn, formatted by the model's chat template with the
    generation prompt appended (the position where the residuals are read)."""
    return [
        str(
            tokenizer.apply_chat_template(
                chat_messages(p, system_prompt), add_generation_prompt=True, tokenize=False
            )
        )
        for p in prompts
    ]


# -- prompt sets ------------------------------------------------------------------------------

_SLICE = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def _bound(text: str | None, n: int, what: str, spec: str) -> int | None:
    if text is None:
        return None
    value = round(n * float(text[:-1]) / 100) if text.endswith("%") else int(text)
    if abs(value) > n:
        raise AbliterateError(
            f"prompt set {spec}: split {what} {text} is out of range (the split has {n} rows)"
        )
    return value


def slice_rows(rows: list[str], split: str, spec: str) -> list[str]:
    """Apply a `name[start:stop]` split slice (rows or percentages) to rows of a local file."""
    m = _SLICE.match(split.strip())
    if not m:
        raise AbliterateError(f"prompt set {spec}: cannot parse split {split!r}, e.g. train[:400]")
    start = _bound(m["start"], len(rows), "start", spec)
    stop = _bound(m["stop"], len(rows), "end", spec)
    return rows[start:stop]


def _column(records: list[dict], column: str, spec: str) -> list[str]:
    if not records:
        return []
    if column not in records[0]:
        keys = ", ".join(sorted(records[0]))
        raise AbliterateError(f"prompt set {spec} has no column {column!r}; it has: {keys}")
    return [str(r[column]) for r in records]


def _read_local(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return _column([json.loads(line) for line in lines if line.strip()], column, str(path))
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # {"rows": [...]} or {"text": [...]} layouts
            data = data.get(column, data.get("rows", data.get("data", [])))
        if data and isinstance(data[0], str):
            return list(data)
        return _column(list(data), column, str(path))
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return _column(list(csv.DictReader(f)), column, str(path))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            names = ", ".join(table.column_names)
            raise AbliterateError(f"prompt set {path} has no column {column!r}; it has: {names}")
        return [str(x) for x in table.column(column).to_pylist()]
    raise AbliterateError(
        f"prompt set {path}: unsupported file type {suffix!r} (use .txt, .jsonl, .json, .csv, "
        ".parquet or a datasets save_to_disk directory)"
    )


def _read_saved_dataset(path: Path, split: str, column: str) -> list[str]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    name = _SLICE.match(split.strip())
    if isinstance(data, DatasetDict):
        key = name["name"] if name else split
        if key not in data:
            raise AbliterateError(
                f"prompt set {path} has no split {key!r}; it has: {', '.join(data)}"
            )
        data = data[key]
    if column not in data.column_names:
        raise AbliterateError(
            f"prompt set {path} has no column {column!r}; it has: {', '.join(data.column_names)}"
        )
    return slice_rows([str(x) for x in data[column]], split, str(path))


HUB = ("huggingface.co", 443)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt: offline, `datasets` would retry for about a minute before
    failing with a message that names no flag."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return True  # the user asked for the cache; let datasets read it
    try:
        socket.create_connection(HUB, timeout=timeout).close()
    except OSError:
        return False
    return True


def _local_hint(setting: str | None) -> str:
    flag = f"--{setting.replace('_', '-')} FILE" if setting else "a local file"
    return (
        f"pass {flag} (.jsonl with a 'text' field, .txt, .csv or .parquet); the four sets are "
        "--harmful-prompts, --harmless-prompts, --harmful-eval-prompts, --harmless-eval-prompts"
    )


def _read_hub(dataset: str, split: str, column: str, setting: str | None = None) -> list[str]:
    from datasets import load_dataset

    if not hub_reachable():
        raise AbliterateError(
            f"prompt set {setting or ''} = {dataset} is a Hugging Face dataset and the Hub cannot "
            f"be reached; {_local_hint(setting)}"
        )
    try:
        data = load_dataset(dataset, split=split)
    except ValueError as exc:  # e.g. slice out of range, unknown split
        raise AbliterateError(f"prompt set {dataset}:{split}: {exc}") from None
    except Exception as exc:  # network, missing repo: datasets raises many types
        raise AbliterateError(
            f"cannot load dataset {dataset!r} (split {split}): not a local file and not "
            f"available from the Hugging Face Hub or its cache ({type(exc).__name__}); "
            f"{_local_hint(setting)}"
        ) from None
    if column not in data.column_names:
        raise AbliterateError(
            f"dataset {dataset} has no column {column!r}; it has: {', '.join(data.column_names)}"
        )
    return [str(x) for x in data[column]]


def load_prompt_set(
    dataset: str, split: str = "train", column: str = "text", setting: str | None = None
) -> list[str]:
    """The prompts of a set: a local file or `save_to_disk` directory, or a hub dataset id.

    Blank rows are dropped; an empty result is an error."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        rows = _read_saved_dataset(path, split, column)
    elif path.is_file():
        try:
            rows = slice_rows(_read_local(path, column), split, dataset)
        except UnicodeDecodeError as exc:
            raise AbliterateError(
                f"prompt set file {dataset} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                f"at offset {exc.start}); save it as UTF-8"
            ) from None
        except json.JSONDecodeError as exc:
            raise AbliterateError(f"prompt set file {dataset} is not valid JSON ({exc})") from None
    elif dataset.startswith((".", "/", "~")) or path.suffix in (
        ".txt",
        ".jsonl",
        ".json",
        ".csv",
        ".parquet",
    ):
        raise AbliterateError(f"prompt set file {dataset} does not exist")
    else:
        rows = _read_hub(dataset, split, column, setting)
    rows = [r.strip() for r in rows if r and r.strip()]
    if not rows:
        raise AbliterateError(f"prompt set {dataset} (split {split}, column {column}) is empty")
    return rows
