"""The one-pass refusal estimate (eval/estimate.py) and the trial gate that lets it skip
generation (search/trials.py): checked on the organism against full generation."""

from __future__ import annotations

import json

import pytest

from abliterate.cli.main import main
from abliterate.eval.estimate import agreement, opening_tokens
from abliterate.model import loading
from abliterate.search.trials import ESTIMATE_MARGIN, calibration


def test_openings_are_refusal_starts_that_compliant_answers_never_use(organism_dir):
    tok = loading.load_tokenizer(str(organism_dir))
    answers = ["I can't help with that.", "I will explain: first", "Sorry, no.", "Sure, here."]
    refused = [True, False, True, False]
    openings = opening_tokens(tok, answers, refused)
    first = {a: tok.encode(a, add_special_tokens=False)[0] for a in answers}
    assert first["Sorry, no."] in openings
    assert first["I can't help with that."] not in openings  # "I" also opens a compliant answer
    assert first["Sure, here."] not in openings


def test_calibration_is_the_least_squares_scale():
    assert calibration([(0.25, 0.5), (0.1, 0.2)]) == pytest.approx(2.0)
    assert calibration([(0.0, 0.3)]) == 1.0
    assert agreement([(0.1, 0.2), (0.5, 0.4)]) == pytest.approx(0.1)


@pytest.mark.slow
def test_estimate_skips_only_dominated_trials_after_checking_itself(organism_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "run", str(organism_dir), "--n-trials", "24", "--max-response-length", "32",
        "--batch-size", "32", "--refusal-estimate", "--refusal-estimate-check", "6",
        "--run-dir", str(run), "--select", "min-kl-under:0.1",
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "vs measured over 6 trials" in x)
    error = float(line.split("mean error")[1].split(";")[0])
    records = sorted(
        (json.loads(p.read_text()) for p in (run / "trials").glob("*.json")),
        key=lambda r: r["number"],
    )
    full = [r for r in records if not r["pruned"]]
    skipped = [r for r in records if r["pruned"] and "refusal_estimate" in r["metrics"]]
    # The estimate was checked on the first trials, each generated in full, before any skip.
    assert all(not r["pruned"] for r in records[:6])
    assert all("refusal_estimate" in r["metrics"] for r in full)
    assert error <= 0.15 and skipped, (error, len(skipped))
    for r in skipped:
        m = r["metrics"]
        before = [f for f in full if f["number"] < r["number"]]
        assert any(
            f["metrics"]["kl"] <= m["kl"]
            and f["metrics"]["refusal_rate"] <= m["refusal_rate"] - ESTIMATE_MARGIN + 1e-9
            for f in before
        ), r["number"]
        assert not {"evaluate_harmful", "evaluate_answers"} & set(r["seconds"])  # none generated
    chosen = json.loads((run / "chosen.json").read_text())["trial"]
    assert chosen in {r["number"] for r in full}
