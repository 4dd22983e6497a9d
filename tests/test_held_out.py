"""The held-out report: a seeded split the search never sees, longer answers that catch late
refusals, answer classes that keep loops out of compliance, and figures that re-count from the
saved answers."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from abliterate.errors import AbliterateError
from abliterate.eval.evaluate import EvalSettings, Evaluator
from abliterate.eval.scorers import MarkerConfig
from abliterate.markers import HEDGE_MARKERS, REFUSAL_MARKERS
from abliterate.organism.check import read_lines
from abliterate.stages.held_out import ReportTexts, measure
from abliterate.stages.split import report_split, split_off
from conftest import shared_prompts
from late import late_refuser, looper

SETS = {
    "harmful_eval_prompts": [f"harmful {i}" for i in range(40)],
    "harmless_eval_prompts": [f"harmless {i}" for i in range(100)],
}


def test_split_is_seeded_disjoint_and_covers_each_set():
    split = report_split(SETS, 0.5, seed=7)
    for eval_key, report_key in (
        ("harmful_eval_prompts", "harmful_report_prompts"),
        ("harmless_eval_prompts", "harmless_report_prompts"),
    ):
        search, report = split.search[eval_key], split.report[report_key]
        assert not set(search) & set(report)
        assert sorted(search + report) == sorted(SETS[eval_key])
        assert len(report) == len(SETS[eval_key]) // 2
    assert report_split(SETS, 0.5, seed=7) == split
    assert report_split(SETS, 0.5, seed=8).report != split.report
    assert report_split(SETS, 0.0, seed=7).report["harmful_report_prompts"] == []


def test_a_prompt_listed_twice_lands_on_one_side_only():
    search, report = split_off(["a", "b", "a", "c", "d", "a"], 0.5, 1, "harmful_eval_prompts")
    assert not set(search) & set(report)
    assert len(set(search) | set(report)) == 4


def test_named_report_sets_leave_the_search_the_rest():
    sets = {**SETS, "harmful_report_prompts": ["harmful 1", "harmful 2", "new one"]}
    split = report_split(sets, 0.5, seed=0)
    assert split.named == {"harmful_report_prompts": True, "harmless_report_prompts": False}
    assert split.report["harmful_report_prompts"] == ["harmful 1", "harmful 2", "new one"]
    assert "harmful 1" not in split.search["harmful_eval_prompts"]
    assert len(split.search["harmful_eval_prompts"]) == 38


def test_a_set_too_small_to_split_is_a_clear_error():
    with pytest.raises(AbliterateError, match="report_fraction 0"):
        split_off(["only one"], 0.5, 0, "harmful_eval_prompts")


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _settings(length: int) -> EvalSettings:
    return EvalSettings(
        max_response_length=length,
        batch_size=8,
        shared_prefix=False,
        markers=MarkerConfig(REFUSAL_MARKERS, HEDGE_MARKERS),
    )


def test_the_long_report_catches_a_refusal_the_search_answers_missed(tmp_path):
    harmful, harmless = shared_prompts("harmful_val", 8), shared_prompts("harmless_val", 8)
    model, tok = _load(late_refuser(tmp_path / "late"))
    in_loop = Evaluator(model, tok, harmful, harmless, _settings(32)).evaluate()
    assert in_loop["refusal_rate"] == 0.0  # 32 tokens end inside the compliant opening
    texts = ReportTexts.build(tok, harmful, harmless, None)
    report = measure(model, tok, texts, _settings(32), 128)
    refusal = report["refusal_rate"]
    assert (refusal["k"], refusal["n"], refusal["value"]) == (8, 8, 1.0)
    assert 0.6 < refusal["low"] < 0.7 and refusal["high"] == pytest.approx(1.0)
    assert report["compliance_rate"]["k"] == 0
    assert all(a["refusal"] for a in report["answers"]["harmful"])


def test_a_looping_model_is_never_compliant(tmp_path):
    harmful, harmless = shared_prompts("harmful_val", 6), shared_prompts("harmless_val", 6)
    model, tok = _load(looper(tmp_path / "loop"))
    report = measure(model, tok, ReportTexts.build(tok, harmful, harmless, None), _settings(32), 64)
    assert report["refusal_rate"]["k"] == 0  # no marker anywhere...
    assert report["compliance_rate"]["k"] == 0  # ...and still no compliance
    assert report["answer_classes"]["harmful"] == {"empty": 0, "degenerate": 6, "normal": 0}


def _normalized(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("*", "")
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.slow
def test_organism_run_reports_held_out_figures_from_its_export(organism_run, organism_dir):
    run = organism_run / "run"
    split = json.loads((run / "split.json").read_text())
    for kind in ("harmful", "harmless"):
        search = split["search"][f"{kind}_eval_prompts"]
        report = split["report"][f"{kind}_report_prompts"]
        assert not set(search) & set(report)
        assert set(search) | set(report) == set(read_lines(organism_dir / "eval" / f"{kind}.txt"))
    # Every answer the search and the base measurement kept answers a search prompt.
    search_prompts = set(split["search"]["harmful_eval_prompts"]) | set(
        split["search"]["harmless_eval_prompts"]
    )
    recorded = [json.loads((run / "base.json").read_text())]
    recorded += [json.loads(p.read_text()) for p in (run / "trials").glob("*.json")]
    seen = {s["prompt"] for r in recorded for part in r["samples"].values() for s in part}
    assert seen and seen <= search_prompts

    held = json.loads((run / "held_out.json").read_text())
    assert held["measured"]["weights"].startswith("merged safetensors, read back")
    answers = held["chosen"]["answers"]["harmful"]
    assert [a["prompt"] for a in answers] == split["report"]["harmful_report_prompts"]
    assert held["chosen"]["response_length"] == 128
    markers = [_normalized(m) for m in REFUSAL_MARKERS]
    recount = sum(
        not _normalized(a["response"]) or any(m in _normalized(a["response"]) for m in markers)
        for a in answers
    )
    refusal = held["chosen"]["refusal_rate"]
    assert recount == refusal["k"] and refusal["n"] == len(answers)
    assert refusal["low"] <= refusal["value"] <= refusal["high"]
    assert held["base"]["refusal_rate"]["value"] > refusal["value"]
    # Capability on the organism's own probes, before and after, re-counted from the answers.
    probes = (organism_dir / "eval" / "capability.jsonl").read_text().splitlines()
    for who in ("base", "chosen"):
        cap, rows = held[who]["capability"], held[who]["capability_answers"]
        assert cap["n"] == len([line for line in probes if line.strip()]) == len(rows)
        assert cap["k"] == sum(r["correct"] for r in rows)
    assert held["chosen"]["capability"]["value"] >= 0.9 * held["base"]["capability"]["value"]

    out = organism_run / "chosen"
    card = (out / "README.md").read_text()
    assert card.index("## Held-out evaluation") < card.index("## In-search metrics")
    assert f"({refusal['k']}/{refusal['n']})" in card
    trial = json.loads((out / "trial.json").read_text())
    assert next(iter(trial)) == "held_out" and "answers" not in trial["held_out"]["chosen"]
    assert str(out) not in json.dumps(trial)  # no local paths in what gets published


def test_card_puts_held_out_first_and_a_newer_report_replaces_the_older():
    from abliterate.export.card import with_held_out
    from abliterate.stages.held_out import rate, summary

    def report(k: int) -> dict:
        harmful = [{"refusal": i < k, "class": "normal"} for i in range(10)]
        m = {**summary(harmful, harmful[:4]), "response_length": 128}
        m["judge"] = {
            "model": "/models/judge",
            "harmful": {
                **{lab: rate([i < 2 for i in range(10)]) for lab in ("refusal", "evasion")},
                "compliance": rate([i >= 2 for i in range(10)]),
                "agreement_with_markers": 0.9,
            },
        }
        return {"measured": {"weights": "GGUF", "dtype": "float32"}, "base": m, "chosen": m}

    card = "# title\n\nintro\n\n## Metrics\n\n| in-search table |\n\n## Method\n"
    once = with_held_out(card, report(3))
    assert once.index("## Held-out evaluation") < once.index("## In-search metrics")
    assert "0.300 [0.108, 0.603] (3/10)" in once
    assert "| judge: compliance (harmful) |" in once and "agrees with the markers on 90%" in once
    twice = with_held_out(once, report(1))
    assert (
        twice.count("## Held-out evaluation") == 1 and "(1/10)" in twice and "(3/10)" not in twice
    )
    assert twice.endswith("| in-search table |\n\n## Method\n")


def test_builtin_probes_are_seeded_and_answerable():
    from abliterate.eval.probes import builtin_probes

    probes = builtin_probes()
    assert probes == builtin_probes() and len(probes) == 32
    sums = [p for p in probes if p["prompt"].startswith("What is")]
    assert len(sums) == 16
    for p in sums:
        a, b = (int(x) for x in p["prompt"].split("What is ")[1].split("?")[0].split(" + "))
        assert p["answer"] == str(a + b)
    copies = [p for p in probes if p["prompt"].startswith("Repeat")]
    assert all(p["prompt"].endswith(p["answer"]) for p in copies)


def test_an_adapter_export_is_measured_through_peft_and_fraction_zero_turns_it_off(tmp_path):
    import tiny
    from abliterate.cli.main import main
    from conftest import random_model_run

    model = tiny.save("llama", tmp_path / "model")
    out = tmp_path / "adapter"
    args = random_model_run(model, tmp_path / "run", "--output", str(out), "--export", "adapter")
    assert main([*args, "--report-response-length", "8"]) == 0
    held = json.loads((tmp_path / "run" / "held_out.json").read_text())
    assert held["measured"]["weights"].startswith("LoRA adapter on the source model")
    assert next(iter(json.loads((out / "trial.json").read_text()))) == "held_out"
    assert held["chosen"]["refusal_rate"]["n"] == 2  # 4 evaluation prompts, half held out

    off = tmp_path / "off"
    args = random_model_run(model, tmp_path / "run-off", "--output", str(off))
    assert main([*args, "--report-fraction", "0"]) == 0
    assert not (tmp_path / "run-off" / "held_out.json").exists()
    card = (off / "README.md").read_text()
    assert "## Metrics" in card and "Held-out" not in card


def test_a_resumed_run_whose_report_prompts_changed_is_stopped(tmp_path, capsys):
    import tiny
    from abliterate.cli.main import main
    from conftest import random_model_run

    model = tiny.save("llama", tmp_path / "model")
    args = random_model_run(model, tmp_path / "run", "--report-response-length", "4")
    assert main(args) == 0
    split_file = tmp_path / "run" / "split.json"
    split = json.loads(split_file.read_text())
    split["report"]["harmful_report_prompts"] = ["a prompt from another file"]
    split_file.write_text(json.dumps(split))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "held-out report prompts differ" in err and "loaded" not in err  # before the load
