"""`abliterate report`: a self-contained page that a real browser renders without errors."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess

import pytest

from abliterate.cli.main import main
from abliterate.errors import AbliterateError
from abliterate.report import build_report

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


def render(page, shot, tmp_path) -> subprocess.CompletedProcess:
    """Headless Chromium with console logging on stderr, taking a screenshot."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium (see .ci/run)")
        pytest.skip("chromium is not installed")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=1200,4200",
            f"--screenshot={shot}",
            f"file://{page}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_renders_in_chromium_without_console_errors(tiny_run, tmp_path):
    path = build_report(tiny_run / "run")
    page = path.read_text()
    # Self-contained: every figure embedded, nothing fetched.
    assert 'src="http' not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # pareto, history, directions, mountain, projections
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    for name in ("pareto", "history", "directions", "mountain", "projections"):
        assert (tiny_run / "run" / "plots" / f"{name}.png").is_file()
    shot = tmp_path / "report.png"
    r = render(path, shot, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] > 1000 and pixels.std() > 0.05  # not a blank page


def test_report_sections_and_samples(tiny_run):
    page = build_report(tiny_run / "run", trial=1).read_text()
    for heading in (
        "In-search result (the prompts the trial was chosen on)",
        "Search",
        "Refusal directions",
        "The chosen edit",
        "Answers before and after",
        "All trials",
        "Settings",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert '<tr class="chosen"><td class=num>1</td>' in page


def test_report_shows_the_held_out_figures_of_the_chosen_trial_first(tiny_run):
    held = json.loads((tiny_run / "run" / "held_out.json").read_text())
    page = build_report(tiny_run / "run").read_text()  # the run's own choice
    assert page.index("<h2>Held-out result</h2>") < page.index("<h2>In-search result")
    refusal = held["chosen"]["refusal_rate"]
    assert f"({refusal['k']}/{refusal['n']})" in page
    other = next(n for n in (0, 1, 2) if n != held["trial"])
    assert "Held-out result" not in build_report(tiny_run / "run", trial=other).read_text()


def test_report_cli_and_errors(tiny_run, tmp_path, capsys):
    assert main(["report", str(tiny_run / "run")]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    with pytest.raises(AbliterateError, match="not a run directory"):
        build_report(tmp_path)
    with pytest.raises(AbliterateError, match="trial 99"):
        build_report(tiny_run / "run", trial=99)
