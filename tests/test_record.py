"""TrialRecord and TrialMetrics: the JSON form round-trips, unknown metrics survive, and the
candidate a choice sees takes a re-measured refusal rate over the search's own."""

from __future__ import annotations

import json
from dataclasses import replace

from abliterate.edit.kernel import Kernel
from abliterate.edit.plan import EditParams
from abliterate.runs import RunDir
from abliterate.search.record import Confirmation, TrialMetrics, TrialRecord
from abliterate.search.select import Candidate


def _record() -> TrialRecord:
    params = EditParams(
        "global",
        {"attn_out": Kernel(1.2, 3.5, 0.4, 2.0), "mlp_down": Kernel(0.8, 2.0, 0.1, 1.5)},
        direction_index=2.25,
        embed_weight=0.3,
    )
    metrics = TrialMetrics(
        refusal_rate=0.125, kl=0.0625, overrefusal_rate=0.03, other={"capability": 0.9}
    )
    return TrialRecord(
        4,
        params,
        metrics,
        refusal_score=0.2,
        kl_score=0.0625,
        pruned=False,
        seconds={"total": 1.5},
        strengths={"attn_out": [0.0, 1.2]},
        samples={"harmful": [{"prompt": "p", "response": "r"}]},
        confirmed=Confirmation(0.25, 0.4, 64),
    )


def test_json_round_trip_is_exact():
    record = _record()
    again = TrialRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert again.metrics.get("capability") == 0.9
    assert again.metrics.get("overrefusal_rate") == 0.03
    assert again.params.kernels["attn_out"] == Kernel(1.2, 3.5, 0.4, 2.0)


def test_run_directory_stores_and_reads_records(tmp_path):
    run = RunDir(tmp_path / "run")
    record = replace(_record(), confirmed=None)
    run.save_trial(record)
    assert run.load_trials() == {4: record}
    stored = json.loads(run.trial_file(4).read_text())
    assert stored["metrics"]["refusal_rate"] == 0.125 and "confirmed" not in stored


def test_candidate_prefers_the_confirmed_refusal_rate():
    record = _record()
    cand = Candidate.from_record(record)
    assert (cand.number, cand.refusal_rate, cand.refusal_score) == (4, 0.25, 0.4)
    plain = Candidate.from_record(replace(record, confirmed=None))
    assert (plain.refusal_rate, plain.refusal_score, plain.kl) == (0.125, 0.2, 0.0625)


def test_export_takes_the_runs_own_choice_unless_told_otherwise():
    from abliterate.cli.export import pick_record

    base = replace(_record(), confirmed=None)
    records = {
        n: replace(base, number=n, metrics=replace(base.metrics, refusal_rate=r, kl=kl))
        for n, r, kl in ((0, 0.02, 0.15), (1, 0.1, 0.1), (2, 0.3, 0.01))
    }
    # the run chose trial 1 (with re-measured figures); the default policy alone would take 0
    assert pick_record(records, None, None, chosen=1).number == 1
    assert pick_record(records, None, None).number == 0
    assert pick_record(records, 2, None, chosen=1).number == 2
    assert pick_record(records, None, "min-kl-under:0.5", chosen=1).number == 2
    assert pick_record(records, None, None, chosen=7).number == 0  # a choice not in the records
