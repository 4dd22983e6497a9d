"""Prompt sets from every supported source, with split slicing and clear errors."""

from __future__ import annotations

import csv
import json

import pytest

from abliterate.errors import AbliterateError
from abliterate.prompts import chat_texts, load_prompt_set
from conftest import SHARED_PROMPTS, shared_prompts

ROWS = [f"prompt number {i}" for i in range(10)]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(ROWS) + "\n\n")
    (tmp_path / "p.jsonl").write_text(
        "\n".join(json.dumps({"text": r, "n": i}) for i, r in enumerate(ROWS))
    )
    (tmp_path / "p.json").write_text(json.dumps([{"goal": r} for r in ROWS]))
    with (tmp_path / "p.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["goal", "target"])
        w.writerows([[r, "x"] for r in ROWS])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ROWS}), tmp_path / "p.parquet")
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {"train": Dataset.from_dict({"text": ROWS}), "test": Dataset.from_dict({"text": ROWS[:3]})}
    ).save_to_disk(tmp_path / "saved")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("p.txt", "text"),
        ("p.jsonl", "text"),
        ("p.json", "goal"),
        ("p.csv", "goal"),
        ("p.parquet", "text"),
    ],
)
def test_local_formats(files, name, column):
    assert load_prompt_set(str(files / name), "train", column) == ROWS
    assert load_prompt_set(str(files / name), "train[2:5]", column) == ROWS[2:5]
    assert load_prompt_set(str(files / name), "train[:30%]", column) == ROWS[:3]


def test_save_to_disk_directory(files):
    assert load_prompt_set(str(files / "saved"), "test") == ROWS[:3]
    assert load_prompt_set(str(files / "saved"), "train[-2:]") == ROWS[-2:]


def test_missing_column_lists_the_columns(files):
    with pytest.raises(AbliterateError, match=r"no column 'prompt'; it has: n, text"):
        load_prompt_set(str(files / "p.jsonl"), "train", "prompt")


def test_slice_out_of_range(files):
    with pytest.raises(AbliterateError, match="out of range"):
        load_prompt_set(str(files / "p.txt"), "train[:400]")


def test_empty_set(tmp_path):
    (tmp_path / "e.txt").write_text("\n  \n")
    with pytest.raises(AbliterateError, match="is empty"):
        load_prompt_set(str(tmp_path / "e.txt"))


def test_missing_file_and_offline_hub_id(tmp_path):
    with pytest.raises(AbliterateError, match="does not exist"):
        load_prompt_set(str(tmp_path / "none.txt"))
    with pytest.raises(AbliterateError, match="cannot load dataset"):
        load_prompt_set("abliterate-test/definitely-not-a-dataset", "train")


def test_shared_real_prompt_sets():
    rows = load_prompt_set(str(SHARED_PROMPTS / "harmful_val.jsonl"))
    assert rows == shared_prompts("harmful_val") and len(rows) == 39


def test_chat_texts_end_with_the_generation_prompt():
    import tiny

    texts = chat_texts(tiny.tokenizer(), ["Hi"], system_prompt="Be brief.")
    assert texts[0].endswith("<|im_start|>assistant\n") and "Be brief." in texts[0]
