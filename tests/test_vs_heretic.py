"""benchmarks/vs_heretic.py: the comparison's own logic (prompt protocol, matched settings,
ceilings, verdicts), and one tiny end-to-end run of both tools on the organism (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vs_heretic as vs  # benchmarks/ is no package: found through sys.path


def entry(number: int, refusal: float, kl: float, kept: bool | None = True) -> dict:
    return {"number": number, "refusal": refusal, "kl": kl, "capability_kept": kept}


def test_ceilings_take_the_lowest_kl_under_each_and_flag_capability():
    held = {
        "abliterate": [entry(0, 0.04, 0.3), entry(1, 0.08, 0.1, kept=False), entry(2, 0.25, 0.01)],
        "heretic": [entry(5, 0.15, 0.05), entry(6, 0.50, 0.001)],
    }
    rows = {r["ceiling"]: r for r in vs.ceilings(held)}
    assert rows[0.05]["abliterate"]["kl"] == 0.3 and rows[0.05]["heretic"]["kl"] is None
    low = rows[0.10]["abliterate"]
    assert (low["trial"], low["capability_kept"]) == (1, False)
    assert (low["trial_capability_kept"], low["kl_capability_kept"]) == (0, 0.3)
    assert rows[0.30]["abliterate"]["trial"] == 2 and rows[0.30]["heretic"]["trial"] == 5

    speed = {"abliterate": {"median_trial_s": 1.0}, "heretic": {"median_trial_s": 4.0}}
    verdicts = vs.verdicts(speed, list(rows.values()))
    assert [v["pass"] for v in verdicts] == [True, True, False, True]
    assert vs.at_most(None, None) is None and vs.at_most(None, 0.1) is False
    assert vs.at_most(0.2, None) is True


def test_both_tools_get_the_same_prompts_and_none_of_the_held_out(organism_dir, tmp_path):
    prompts = vs.prompt_sets("organism", organism_dir, (16, 8, 6, 5))
    sets = prompts["sets"]
    assert {k: len(v) for k, v in sets.items()} == {
        "harmful_train": 16, "harmless_train": 16, "harmful_search": 8,
        "harmless_search": 8, "harmful_heldout": 6, "harmless_heldout": 5,
    }  # fmt: skip
    given = {p for k, v in sets.items() if "heldout" not in k for p in v}
    assert not given & set(sets["harmful_heldout"] + sets["harmless_heldout"])

    args = vs.parse_args(["--trials", "5", "--max-response-length", "12", "--batch-size", "8"])
    files = vs.write_sets(sets, tmp_path / "prompts")
    command = vs.abliterate_command(args, organism_dir, files, tmp_path / "run")
    extra = vs.heretic_extra(args)
    flag = {command[i]: command[i + 1] for i in range(5, len(command) - 1)}
    assert flag["--max-response-length"] == str(extra["max_response_length"]) == "12"
    assert flag["--n-startup-trials"] == str(extra["n_startup_trials"]) == "2"
    assert flag["--batch-size"] == str(extra["batch_size"]) == "8"
    assert flag["--system-prompt"] == extra["system_prompt"]
    assert flag["--report-fraction"] == "0" and flag["--threads"] == "1"
    rows = (tmp_path / "prompts" / "harmful_search.jsonl").read_text().splitlines()
    assert [json.loads(r)["text"] for r in rows] == sets["harmful_search"]


def test_work_directory_is_emptied_only_when_it_is_ours(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        vs.prepare_work(foreign)
    assert (foreign / "keep.txt").is_file()
    ours = tmp_path / "ours"
    vs.prepare_work(ours)
    (ours / "old").write_text("x")
    vs.prepare_work(ours)
    assert [p.name for p in ours.iterdir()] == [vs.MARKER]


@pytest.mark.slow
def test_tiny_comparison_on_the_organism(tmp_path):
    try:
        vs.hd.ensure_heretic()
    except vs.hd.HereticUnavailable as error:
        pytest.skip(f"Heretic's venv cannot be created (no network to PyPI?): {error}")
    summary = vs.main(
        [
            "--model", "organism", "--trials", "2", "--train", "16", "--search", "8",
            "--heldout-harmful", "6", "--heldout-harmless", "6", "--max-response-length", "8",
            "--heldout-tokens", "12", "--out", str(tmp_path / "out"),
            "--work", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "out" / "vs_heretic-organism.json").read_text())
    assert saved["verdicts"] == summary["verdicts"] and len(saved["verdicts"]) == 4
    for tool in ("abliterate", "heretic"):
        speed = saved["speed"][tool]
        assert speed["trials"] == 2 and 0 < speed["median_trial_s"] < speed["wall_s"]
        front = saved["held_out"][tool]
        assert front and len(front) == len(saved["exports"][tool])
        for e in front:
            assert e["held_out"]["refusal_rate"]["n"] == 6 and e["kl"] >= 0
            assert e["held_out"]["tokenizer_matches_base"]
            assert (tmp_path / "work" / "measured" / f"{tool}-trial-{e['number']}.json").is_file()
    assert saved["speed"]["wall_ratio_abliterate_over_heretic"] > 0
    assert [r["ceiling"] for r in saved["ceilings"]] == list(vs.CEILINGS)
