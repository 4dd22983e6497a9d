"""`abliterate compare`: trials of two studies side by side."""

from __future__ import annotations

import json
import shutil

from abliterate.cli.main import main


def test_compare_two_runs(tiny_run, tmp_path, capsys):
    # A second study of the same model: a copy with its own directory is enough to compare.
    second = tmp_path / "second"
    shutil.copytree(tiny_run / "run", second)
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(tiny_run / "run"),
                str(second),
                "--trials",
                "all",
                "--samples",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert len(comparison["runs"]) == 2
    run = comparison["runs"][0]
    assert len(run["trials"]) == 3 and run["base_metrics"]["refusal_rate"] > 0
    trial = run["trials"][0]
    assert set(trial["metrics"]) >= {"refusal_rate", "overrefusal_rate", "kl"}
    for key in ("harmful", "harmless"):
        assert len(trial["samples"][key]) == 2
        assert set(trial["samples"][key][0]) == {"prompt", "base", "edited"}
    # Same prompts for every trial and both runs.
    prompts = {
        tuple(s["prompt"] for s in t["samples"]["harmful"])
        for r in comparison["runs"]
        for t in r["trials"]
    }
    assert len(prompts) == 1
    for policies in summary.values():
        assert set(policies) == {"min-refusals", "knee", "min-kl-under:0.05", "min-kl-under:0.1"}
    assert "Best trial per policy" in capsys.readouterr().out
    # Every trial is also measured on the run's held-out report prompts, the same way twice.
    split = json.loads((tiny_run / "run" / "split.json").read_text())["report"]
    first, copy = comparison["runs"]
    for t in first["trials"]:
        assert t["held_out"]["refusal_rate"]["n"] == len(split["harmful_report_prompts"])
        assert "answers" not in t["held_out"]
    assert [t["held_out"] for t in first["trials"]] == [t["held_out"] for t in copy["trials"]]
    assert first["base_held_out"]["refusal_rate"]["n"] == len(split["harmful_report_prompts"])
    for policies in summary.values():
        assert all("held_out" in choice for choice in policies.values())


def test_compare_rejects_unknown_trials(tiny_run, tmp_path, capsys):
    assert (
        main(["compare", str(tiny_run / "run"), "--trials", "0,42", "--output", str(tmp_path)]) == 2
    )
    assert "no finished trial(s) [42]" in capsys.readouterr().err
