"""Bad input gets a clear one-line error, exit code 2, no traceback, and nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tiny
from abliterate.cli.main import main
from conftest import SHARED_PROMPTS

HARMFUL = f"{SHARED_PROMPTS / 'harmful_train.jsonl'}:train[:4]"
HARMLESS = f"{SHARED_PROMPTS / 'harmless_train.jsonl'}:train[:4]"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save("llama", tmp_path_factory.mktemp("m") / "model")


def run(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def prompt_flags(tmp_path):
    return [
        "--harmful-prompts",
        HARMFUL,
        "--harmless-prompts",
        HARMLESS,
        "--harmful-eval-prompts",
        HARMFUL,
        "--harmless-eval-prompts",
        HARMLESS,
        "--run-dir",
        str(tmp_path / "run"),
        "--n-trials",
        "1",
    ]


def test_nonexistent_model_path(capsys, tmp_path):
    code, err = run(capsys, "run", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in error_line(err)


def test_hub_id_offline(capsys):
    code, err = run(capsys, "run", "abliterate-test/no-such-model")
    assert code == 2 and "cannot resolve model 'abliterate-test/no-such-model'" in error_line(err)


def test_directory_without_config(capsys, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    code, err = run(capsys, "run", str(tmp_path / "x"))
    assert code == 2 and "without config.json" in error_line(err)


def test_tokenizer_without_chat_template(capsys, tmp_path, model_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    code, err = run(capsys, "run", str(bare), *prompt_flags(tmp_path))
    assert code == 2 and "--chat-template" in error_line(err)
    template = tmp_path / "t.jinja"
    template.write_text((model_dir / "chat_template.jinja").read_text())
    code, err = run(
        capsys,
        "run",
        str(bare),
        *prompt_flags(tmp_path),
        "--chat-template",
        str(template),
        "--refusal-markers",
        '["e", " "]',
        "--max-response-length",
        "2",
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--harmful-prompts", "EMPTY"], "is empty"),
        (
            ["--harmful-prompts", f"{SHARED_PROMPTS / 'harmful_val.jsonl'}:train:goal"],
            "no column 'goal'",
        ),
        (
            ["--harmful-prompts", f"{SHARED_PROMPTS / 'harmful_val.jsonl'}:train[:400]"],
            "out of range",
        ),
        (["--n-startup-trials", "5", "--n-trials", "2"], "n_startup_trials (5) > n_trials (2)"),
        (["--max-weight-range=-1,1"], "max_weight_range"),
        (["--span-range", "0,0"], "span"),
    ],
)
def test_bad_prompt_sets_and_settings(capsys, tmp_path, model_dir, flags, expected):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    flags = [str(empty) if f == "EMPTY" else f for f in flags]
    code, err = run(capsys, "run", str(model_dir), *prompt_flags(tmp_path), *flags)
    assert code == 2 and expected in error_line(err)


def test_identical_prompt_sets_show_no_separation(capsys, tmp_path, model_dir):
    code, err = run(
        capsys, "run", str(model_dir), *prompt_flags(tmp_path), "--harmless-prompts", HARMFUL
    )
    assert code == 2 and "no separation" in error_line(err)


def test_existing_output_is_refused_before_any_work(capsys, tmp_path, model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    code, err = run(capsys, "run", str(model_dir), *prompt_flags(tmp_path), "--output", str(out))
    assert code == 2 and "--overwrite" in error_line(err)
    assert not (tmp_path / "run").exists()
    assert (out / "keep").read_text() == "x"


def test_changed_settings_on_resume_name_the_keys(capsys, tmp_path, model_dir):
    base = [
        "run",
        str(model_dir),
        *prompt_flags(tmp_path),
        "--refusal-markers",
        '["e", " "]',
        "--max-response-length",
        "2",
    ]
    assert run(capsys, *base)[0] == 0
    code, err = run(capsys, *base, "--seed", "7", "--residual-stream", "mid")
    line = error_line(err)
    assert code == 2 and "residual_stream" in line and "seed" in line and "--new-run" in line
    # Runtime settings may change: more trials resume the same run.
    assert run(capsys, *base, "--n-trials", "2")[0] == 0
    assert len(list((tmp_path / "run" / "trials").glob("*.json"))) == 2
    # --new-run keeps the old directory under a new name.
    assert run(capsys, *base, "--seed", "7", "--new-run")[0] == 0
    assert len(list(tmp_path.glob("run.old-*"))) == 1


def test_real_exit_code_and_debug_traceback(tmp_path):
    cmd = [sys.executable, "-m", "abliterate.cli.main", "run", str(tmp_path / "nope")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=300)
    assert "Traceback" in r.stderr


def test_config_file_drives_the_run(capsys, tmp_path, model_dir):
    cfg = tmp_path / "c.toml"
    tables = "".join(
        f'[{key}]\ndataset = "{SHARED_PROMPTS / name}"\nsplit = "train[:{n}]"\n'
        for key, name, n in [
            ("harmful_prompts", "harmful_train.jsonl", 4),
            ("harmless_prompts", "harmless_train.jsonl", 4),
            ("harmful_eval_prompts", "harmful_val.jsonl", 3),
            ("harmless_eval_prompts", "harmless_val.jsonl", 3),
        ]
    )
    cfg.write_text(
        'n_trials = 1\nmax_response_length = 2\nrefusal_markers = ["e", " "]\n'
        f'run_dir = "{tmp_path / "cfgrun"}"\n' + tables
    )
    assert run(capsys, "run", str(model_dir), "--config", str(cfg))[0] == 0
    saved = (tmp_path / "cfgrun" / "settings.toml").read_text()
    assert "train[:4]" in saved and "max_response_length = 2" in saved
    record = json.loads((tmp_path / "cfgrun" / "trials" / "0.json").read_text())
    assert record["number"] == 0
