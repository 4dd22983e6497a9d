"""`abliterate compare --heretic-checkpoint`: a real Heretic 1.4.0 study (its own venv, run on
the organism by benchmarks/heretic_driver.py) listed beside our run, and Heretic's exported
model measured with our held-out evaluation, on the prompts neither search saw."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from abliterate.cli.main import main
from abliterate.errors import AbliterateError
from abliterate.workflows.heretic import heretic_front, read_journal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import heretic_driver as hd  # benchmarks/ is no package: found through sys.path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heretic_run(organism_run, organism_dir, tmp_path_factory):
    try:
        hd.ensure_heretic()
    except hd.HereticUnavailable as error:
        pytest.skip(f"Heretic's venv cannot be created (no network to PyPI?): {error}")
    # Heretic searches on our run's search prompts, so our report prompts stay unseen by both.
    split = json.loads((organism_run / "run" / "split.json").read_text())["search"]
    lines = (organism_dir / "prompts" / "harmful.txt").read_text().splitlines()
    benign = (organism_dir / "prompts" / "harmless.txt").read_text().splitlines()
    return hd.run_heretic(
        organism_dir, lines[:16], benign[:16], split["harmful_eval_prompts"][:8],
        split["harmless_eval_prompts"][:8], n_trials=3,
        workdir=tmp_path_factory.mktemp("heretic"), threads=1,
        extra={"max_response_length": 8},
    )  # fmt: skip


def test_journal_is_read_without_heretic_and_its_front_matches(heretic_run):
    trials = read_journal(heretic_run.checkpoint)
    assert [t.number for t in trials] == [t.number for t in heretic_run.trials]
    assert [t.refusals for t in trials] == [t.refusals for t in heretic_run.trials]
    ours = [t.number for t in heretic_front(trials)]
    assert ours == [t.number for t in hd.pareto_front(heretic_run)]


def test_compare_measures_heretic_beside_our_run(heretic_run, organism_run, tmp_path, capsys):
    journal = heretic_run.checkpoint
    before = hashlib.sha256(journal.read_bytes()).hexdigest()
    chosen = hd.pareto_front(heretic_run)[0]
    exported = hd.export_heretic_trial(heretic_run, chosen.number, tmp_path / "heretic-export")
    out = tmp_path / "cmp"
    args = [
        "compare", str(organism_run / "run"), "--samples", "1", "--output", str(out),
        "--heretic-checkpoint", str(journal), "--heretic-config", str(heretic_run.config),
        "--heretic-model", f"{chosen.number}={exported}",
    ]  # fmt: skip
    assert main(args) == 0
    assert "Heretic's Pareto front" in capsys.readouterr().out
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before  # read from a copy
    comparison = json.loads((out / "comparison.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    heretic = comparison["heretic"]
    assert len(heretic["trials"]) == 3 and heretic["config"]["n_trials"] == 3
    measured = heretic["measured"][str(chosen.number)]
    report = json.loads((organism_run / "run" / "split.json").read_text())["report"]
    assert measured["refusal_rate"]["n"] == len(report["harmful_report_prompts"])
    assert 0 <= measured["refusal_rate"]["value"] <= 1 and measured["kl"]["value"] >= 0
    # Both tools side by side, on the same held-out measurement.
    run = comparison["runs"][0]
    assert run["base_held_out"]["refusal_rate"]["n"] == measured["refusal_rate"]["n"]
    row = next(r for r in summary["heretic"]["front"] if r["trial"] == chosen.number)
    assert row["held_out"] == measured and row["refusal_rate"] == chosen.refusals / 8


def test_bad_heretic_input_is_a_clear_error(organism_run, tmp_path, capsys):
    not_journal = tmp_path / "x.jsonl"
    not_journal.write_text("not json\n")
    run = str(organism_run / "run")
    assert main(["compare", run, "--heretic-checkpoint", str(not_journal)]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["compare", run, "--heretic-model", "3=/nowhere"]) == 2
    assert "need --heretic-checkpoint" in capsys.readouterr().err
    with pytest.raises(AbliterateError, match="TRIAL=DIR"):
        from abliterate.workflows.heretic import parse_models

        parse_models(["nonsense"])
