"""The bad-input suite: each mistake a new user makes gets exit code 2, one line, no traceback,
before anything expensive runs; nothing is written and the source model is untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tiny
from abliterate.cli.main import main
from conftest import SHARED_PROMPTS

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "optuna", "datasets", "trl")


def prompt_flags(tmp_path: Path) -> list[str]:
    sets = [
        ("--harmful-prompts", "harmful_train"),
        ("--harmless-prompts", "harmless_train"),
        ("--harmful-eval-prompts", "harmful_val"),
        ("--harmless-eval-prompts", "harmless_val"),
    ]
    flags = [x for flag, name in sets for x in (flag, f"{SHARED_PROMPTS / name}.jsonl:train[:4]")]
    return [*flags, "--run-dir", str(tmp_path / "run"), "--n-trials", "1"]


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tiny.save("llama", tmp_path_factory.mktemp("src") / "model")


def refused(capsys, *args) -> str:
    """Run the CLI in-process; it must exit 2 with one error line and no traceback."""
    code = main(list(args))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "loaded " not in err and "no GPU: loading" not in err, f"the model was loaded: {err}"
    return lines[0]


def copy_model(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "model"))


# -- broken models ----------------------------------------------------------------------------


def _truncate(model: Path) -> None:
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt(model: Path) -> None:
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" * 9)


def _zero_bytes(model: Path) -> None:
    (model / "model.safetensors").write_bytes(b"")


def _unknown_model_type(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "llama9000"}))


def _pickle_only(model: Path) -> None:
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_truncate, "not a readable safetensors file"),
        (_corrupt, "not a readable safetensors file"),
        (_zero_bytes, "(0 bytes"),
        (_unknown_model_type, "model_type 'llama9000'"),
        (_pickle_only, "never loads pickled"),
    ],
)
def test_broken_model_directory(capsys, tmp_path, source, breakage, expected):
    model = copy_model(source, tmp_path)
    breakage(model)
    before = digest(model)
    line = refused(capsys, "run", str(model), *prompt_flags(tmp_path))
    assert expected in line and str(model) in line
    assert not (tmp_path / "run").exists()
    assert digest(model) == before


def _write_gguf(path: Path) -> Path:
    """A real (tiny, weightless-model) GGUF file: a header, metadata and one 64 KiB tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((128, 128), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_that_is_not_a_gguf(capsys, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is a text file")
    line = refused(capsys, "run", str(fake), *prompt_flags(tmp_path))
    assert "is not a GGUF file" in line
    assert not (tmp_path / "run").exists()


def test_truncated_gguf(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ABLITERATE_CACHE_DIR", str(tmp_path / "cache"))
    whole = _write_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 40_000])
    line = refused(capsys, "run", str(cut), *prompt_flags(tmp_path))
    assert "cut.gguf is truncated" in line or "truncated or corrupt" in line
    assert not (tmp_path / "run").exists()
    assert not list((tmp_path / "cache").glob("gguf/cut-*/*"))  # no half conversion


# -- bad settings and prompt files ------------------------------------------------------------


def test_prompt_file_not_utf8(capsys, tmp_path, source):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Comment pirater un compte ? Réponds vite\n".encode("latin-1"))
    line = refused(
        capsys, "run", str(source), *prompt_flags(tmp_path), "--harmful-prompts", str(bad)
    )
    assert "latin1.txt is not UTF-8" in line
    assert not (tmp_path / "run").exists()


def test_toml_unknown_key_names_the_closest(capsys, tmp_path, source):
    cfg = tmp_path / "c.toml"
    cfg.write_text('n_trails = 3\n[harmful_prompts]\ndataset = "x.txt"\ncolum = "text"\n')
    line = refused(capsys, "run", str(source), "--config", str(cfg))
    assert "n_trails (did you mean n_trials?)" in line
    assert "harmful_prompts.colum (did you mean column?)" in line


@pytest.mark.parametrize("n", ["0", "-3"])
def test_n_trials_not_positive(capsys, tmp_path, source, n):
    line = refused(capsys, "run", str(source), *prompt_flags(tmp_path), f"--n-trials={n}")
    assert "n_trials" in line
    assert not (tmp_path / "run").exists()


def test_unreachable_storage_names_host_and_port_within_30s(tmp_path, source):
    """A server that accepts the connection and never answers (a firewall, a wrong service):
    the worst case, which without a connect timeout waits for minutes. A real subprocess, so
    that a hang is a hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    url = f"postgresql://user:SECRET@127.0.0.1:{port}/db"
    cmd = [sys.executable, "-m", "abliterate.cli.main", "run", str(source)]
    cmd += [*prompt_flags(tmp_path), "--storage", url]
    started = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    finally:
        server.close()
    assert time.monotonic() - started < 30
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "host 127.0.0.1" in lines[0] and f"port {port}" in lines[0]
    assert "SECRET" not in r.stderr
    assert not (tmp_path / "run").exists()


# -- outputs that cannot be written -----------------------------------------------------------


def _mount_tmpfs(directory: Path, options: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True
    )
    return r.returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write to: chmod for a normal user, a read-only mount for root
    (who ignores permission bits)."""
    path = tmp_path / "ro"
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if not _mount_tmpfs(path, "size=1m,ro"):
        pytest.skip("running as root and cannot mount a read-only tmpfs here")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def test_output_on_read_only_directory(capsys, tmp_path, source, read_only_dir):
    line = refused(
        capsys,
        "run",
        str(source),
        *prompt_flags(tmp_path),
        "--output",
        str(read_only_dir / "out"),
    )
    assert "not writable" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB filesystem: room for the export to start, not to finish."""
    path = tmp_path / "small"
    if not _mount_tmpfs(path, "size=400k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def test_disk_full_during_export(capsys, tiny_run, tmp_path, small_disk):
    source = tiny_run / "model"
    before = digest(source)
    out = small_disk / "export"
    code = main(["export", str(tiny_run / "run"), "--trial", "0", "--output", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], err
    assert list(small_disk.iterdir()) == []  # the partial export is gone
    assert digest(source) == before


# -- fast feedback ----------------------------------------------------------------------------

NO_HEAVY_IMPORTS = """
import contextlib, io, json, sys
from abliterate.cli.main import main
report = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as e:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    report.append([argv, code, e.getvalue()])
heavy = sorted(m for m in {HEAVY} if m in sys.modules)
print(json.dumps({{"report": report, "heavy": heavy}}))
"""


def test_help_version_and_usage_errors_import_nothing_heavy():
    """--help, --version and every usage error answer before torch, transformers, peft or
    bitsandbytes are imported (seconds each), and without their warnings."""
    cases = [["--help"], ["--version"], ["bogus"], ["export", "--trial", "x"], ["heal"]]
    cases += [[c, "--help"] for c in ("run", "export", "demo", "heal", "apply", "directions")]
    cases += [["organism", "build", "--help"], ["run", "m", "--n-trials", "0"]]
    script = NO_HEAVY_IMPORTS.format(HEAVY=HEAVY)
    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["heavy"] == [], result["heavy"]
    for argv, code, err in result["report"]:
        expected = 0 if any(a in ("--help", "--version") for a in argv) else 2
        assert code == expected, (argv, code, err)
        assert "kernels-community" not in err and "Traceback" not in err, (argv, err)
    assert "n_trials" in result["report"][-1][2]


def test_the_library_is_as_quiet_as_the_cli():
    """Importing abliterate and then peft (which imports bitsandbytes) prints no third-party
    warning about optional kernel packages: benchmarks and notebooks use the library directly."""
    r = subprocess.run(
        [sys.executable, "-c", "import abliterate.pipeline, peft, bitsandbytes"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "kernels-community" not in r.stderr and "Warning" not in r.stderr, r.stderr
