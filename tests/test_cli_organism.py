"""`abliterate organism` on the command line: bad input gets one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys


def abliterate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "abliterate.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    r = abliterate("organism", "build", "--output", str(tmp_path))
    assert r.returncode == 2
    assert "not empty" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_unknown_arch_lists_choices():
    r = abliterate("organism", "build", "--output", "x", "--arch", "gpt9")
    assert r.returncode == 2 and "llama" in r.stderr


def test_path_prints_cached_directory(organism_dir):
    r = abliterate("organism", "path")
    assert r.returncode == 0
    assert r.stdout.strip() == str(organism_dir)
