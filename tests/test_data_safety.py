"""Nothing lost, nothing leaked: exports never touch their source or run, carry no foreign
weights and no secrets; every input is checked before a model loads; run files are replaced
atomically; the fallback export paths that error messages recommend work."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tiny
from abliterate.cli.main import main
from abliterate.config import load_settings
from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import Directions, EditParams
from abliterate.export.api import export_trial
from abliterate.runs import RunDir, tomllib
from abliterate.search.record import TrialMetrics, TrialRecord
from conftest import SHARED_PROMPTS

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".ckpt", ".h5", ".msgpack")


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def one_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the shared tiny run (model + run directory), free to be damaged; the
    run's settings point at the copied model."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run / "model", root / "model")
    shutil.copytree(tiny_run / "run", root / "run")
    settings = root / "run" / "settings.toml"
    data = tomllib.loads(settings.read_text())
    data.update(model=str(root / "model"), run_dir=str(root / "run"))
    settings.write_text(tomli_w.dumps(data))
    return root


# -- 1. an output never is, holds or sits inside the source or the run ------------------------


@pytest.mark.parametrize(
    ("target", "relation"),
    [
        ("model", "is the source model"),
        ("model/abliterated", "sits inside the source model"),
        (".", "contains the source model"),
        ("run", "is the run directory"),
        ("run/export", "sits inside the run directory"),
    ],
)
def test_output_over_source_or_run_is_refused(capsys, run_copy, target, relation):
    before = digest(run_copy)
    output = run_copy / target
    code, err = cli(
        capsys, "export", str(run_copy / "run"), "--trial", "0", "--output", str(output),
        "--overwrite",
    )  # fmt: skip
    assert relation in one_error(code, err)
    assert digest(run_copy) == before


def test_run_refuses_an_output_in_its_source_before_any_work(capsys, run_copy):
    model = run_copy / "model"
    before = digest(model)
    args = ["run", str(model), "--run-dir", str(run_copy / "new-run"), "--output", str(model)]
    code, err = cli(capsys, *args, "--overwrite")
    assert "is the source model" in one_error(code, err)
    assert digest(model) == before and not (run_copy / "new-run").exists()


def test_overwrite_replaces_only_a_previous_export(capsys, run_copy):
    export = ["export", str(run_copy / "run"), "--trial", "0", "--output"]
    notes = run_copy / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    code, err = cli(capsys, *export, str(notes), "--overwrite")
    assert "not an abliterate export" in one_error(code, err)
    assert (notes / "todo.txt").read_text() == "mine"
    # An earlier export (one kind, or one directory per kind) is replaced.
    out = run_copy / "out"
    assert cli(capsys, *export, str(out), "--export", "both")[0] == 0
    assert cli(capsys, *export, str(out), "--export", "both", "--overwrite")[0] == 0
    assert cli(capsys, *export, str(out), "--overwrite")[0] == 0
    assert (out / "abliterate.toml").is_file() and not (out / "merged").exists()


# -- 2. only config, tokenizer, template, licence and README files travel ---------------------


def test_side_files_never_include_foreign_weights(tmp_path):
    src = tiny.save("llama", tmp_path / "src")
    original = src / "original"
    original.mkdir()
    torch.save({"w": torch.zeros(4)}, original / "consolidated.00.pth")  # Meta layout
    shutil.copy(src / "model.safetensors", original / "model.safetensors")
    (original / "params.json").write_text("{}")
    shutil.copy(src / "tokenizer.json", original / "tokenizer.json")
    torch.save({"w": torch.zeros(4)}, src / "pytorch_model.bin")
    (src / "LICENSE").write_text("Apache-2.0")
    (src / "USE_POLICY.md").write_text("be nice")
    (src / ".cache").mkdir()
    (src / ".cache" / "x.lock").write_text("")

    result = export_trial(load_settings(model=str(src)), _directions(), _record(), tmp_path / "o")
    files = {str(p.relative_to(result.merged)) for p in result.merged.rglob("*") if p.is_file()}
    assert [f for f in files if f.endswith(WEIGHT_SUFFIXES)] == ["model.safetensors"]
    assert {"LICENSE", "USE_POLICY.md", "original/tokenizer.json", "config.json"} <= files
    assert not any(f.startswith(".cache") or f == "original/params.json" for f in files)
    (note,) = [w for w in result.warnings if "not copied from the source" in w]
    for left in ("original/consolidated.00.pth", "original/model.safetensors", "pytorch_model.bin"):
        assert left in note


def _directions() -> Directions:
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(tiny.LAYERS, tiny.HIDDEN, generator=g), dim=-1)
    return Directions(per_layer=d, embedding=d[0])


def _record() -> TrialRecord:
    params = EditParams("per_layer", {"attn_out": Kernel(1.0, 1.0, 0.5, 2.0)})
    return TrialRecord(0, params, TrialMetrics(refusal_rate=0.1, kl=0.1), 0.1, 0.1)


# -- 3. secrets never leave the machine --------------------------------------------------------


def test_export_holds_no_storage_password_or_private_paths(capsys, run_copy):
    settings = run_copy / "run" / "settings.toml"
    data = tomllib.loads(settings.read_text())
    data.update(
        storage="postgresql://user:SECRET@db.example:5432/studies",
        offload_folder=str(run_copy / "offload-SECRET"),
        chat_template=str(run_copy / "model" / "chat_template.jinja"),
    )
    settings.write_text(tomli_w.dumps(data))
    out = run_copy / "out"
    args = ["export", str(run_copy / "run"), "--trial", "0", "--output", str(out)]
    assert cli(capsys, *args, "--export", "both")[0] == 0
    for path in out.rglob("*"):
        if path.is_file():
            assert b"SECRET" not in path.read_bytes(), path
    exported = tomllib.loads((out / "merged" / "abliterate.toml").read_text())
    assert not {"storage", "run_dir", "offload_folder", "output"} & set(exported)
    assert exported["model"] == str(run_copy / "model") and exported["export"]["trial"] == 0


def test_passwords_in_any_exported_url_are_masked(tmp_path):
    src = tiny.save("llama", tmp_path / "src")
    settings = load_settings(
        model=str(src), harmful_prompts={"dataset": "https://me:SECRET@data.example/x.jsonl"}
    )
    result = export_trial(settings, _directions(), _record(), tmp_path / "o")
    text = (result.merged / "abliterate.toml").read_text()
    assert "SECRET" not in text and "https://me:***@data.example/x.jsonl" in text


# -- 4. every input checked before the model loads, in every command ---------------------------


def _prompt_flags(n: int = 4) -> list[str]:
    sets = [
        ("--harmful-prompts", "harmful_train"),
        ("--harmless-prompts", "harmless_train"),
        ("--harmful-eval-prompts", "harmful_val"),
        ("--harmless-eval-prompts", "harmless_val"),
    ]
    return [x for flag, name in sets for x in (flag, f"{SHARED_PROMPTS / name}.jsonl:train[:{n}]")]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["directions", "MODEL", "--harmful-prompts", "MISSING"], "does not exist"),
        (["directions", "MODEL", "--harmless-prompts", "SLICE"], "out of range"),
        (["apply", "MODEL", "--direction", "MISSING", "--output", "OUT"], "does not exist"),
        (["apply", "MODEL", "--layer", "1", "--output", "FULL"], "not empty"),
        (["evaluate", "MISSING", "--base", "MODEL"], "does not exist"),
        (["run", "MODEL", "--direction-file", "MISSING"], "direction_file"),
        (["run", "MODEL", "--capability-prompts", "MISSING"], "capability_prompts"),
    ],
)
def test_inputs_are_checked_before_the_model_loads(capsys, tmp_path, command, expected):
    model = tiny.save("llama", tmp_path / "model")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    names = {
        "MODEL": str(model),
        "MISSING": str(tmp_path / "missing.jsonl"),
        "SLICE": f"{SHARED_PROMPTS / 'harmless_val.jsonl'}:train[:100000]",
        "OUT": str(tmp_path / "out"),
        "FULL": str(full),
    }
    args = [names.get(a, a) for a in command]
    # The command's own flags come last and win over the defaults given here.
    extra = ["--run-dir", str(tmp_path / "run"), "--n-trials", "1"] if args[0] == "run" else []
    code, err = cli(capsys, *args[:2], *_prompt_flags(), *extra, *args[2:])
    assert expected in one_error(code, err)
    assert "loaded " not in err and "no GPU: loading" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# -- 5. atomic run files, unique temporaries ---------------------------------------------------


def test_workers_writing_one_trial_file_never_collide(tmp_path):
    """Two workers of a shared study may write the same trial file (sync_trial_files); with a
    fixed temporary name one would rename the other's temporary away and crash."""
    run = RunDir(tmp_path / "run")
    samples = {"harmful": [{"prompt": "p", "response": "x" * 20_000}]}
    record = replace(_record(), number=3, samples=samples)
    errors = []
    barrier = threading.Barrier(4)

    def write(worker: int) -> None:
        barrier.wait()
        try:
            for i in range(300):
                run.save_trial(replace(record, seconds={"worker": worker, "i": i}))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(run.trial_file(3).read_text())["seconds"]["i"] == 299
    assert [p.name for p in run.trials_dir.iterdir()] == ["3.json"]


def test_chosen_json_survives_a_full_disk(tmp_path):
    """A write that fails half-way (here: the disk is full) leaves the previous file whole."""
    from abliterate.errors import AbliterateError
    from abliterate.search.choice import record_choice

    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)])
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        run = RunDir(mount / "run")
        run.path.mkdir()
        record_choice(run, 1, "knee")
        filler = mount / "filler"
        with pytest.raises(OSError), filler.open("wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises((OSError, AbliterateError)):
            record_choice(run, 2, "x" * 40_000)
        assert json.loads(run.chosen_file.read_text()) == {"trial": 1, "policy": "knee"}
        assert [p.name for p in run.path.iterdir()] == ["chosen.json"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_heal_never_unpickles_a_checkpoint(capsys, tmp_path):
    """A model directory holding only pickled weights is refused before any training."""
    pytest.importorskip("trl")
    model = tiny.save("llama", tmp_path / "model")
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    prefs = tmp_path / "p.jsonl"
    prefs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    args = ["heal", str(model), "--dataset", str(prefs), "--output", str(tmp_path / "healed")]
    code, err = cli(capsys, *args, "--no-evaluate", "--max-steps", "1")
    assert "never loads pickled" in one_error(code, err)
    assert not (tmp_path / "healed").exists()


# -- 6. the fallback paths that error messages recommend ---------------------------------------


def test_no_stream_export_equals_the_streaming_export(capsys, run_copy):
    """`--no-stream` (recommended when the checkpoint files cannot be mapped) runs end to end
    and writes the same model as the streaming export."""
    export = ["export", str(run_copy / "run"), "--trial", "1", "--output"]
    assert cli(capsys, *export, str(run_copy / "streamed"))[0] == 0
    code, err = cli(capsys, *export, str(run_copy / "loaded"), "--no-stream")
    assert code == 0, err
    loaded = run_copy / "loaded"
    assert {"abliterate.toml", "trial.json", "README.md", "config.json"} <= {
        p.name for p in loaded.iterdir()
    }
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tiny.tokenizer()), (2, 10), generator=g)
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(run_copy / "streamed")(ids).logits
        b = AutoModelForCausalLM.from_pretrained(loaded)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(run_copy / "model")(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert not torch.allclose(a, base, atol=1e-4)  # and the trial did change the model
