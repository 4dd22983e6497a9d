"""The search space and the choice of a trial, without a model."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from abliterate.config import load_settings
from abliterate.errors import AbliterateError
from abliterate.search.objective import ObjectiveWeights, kl_score, refusal_score
from abliterate.search.select import (
    Candidate,
    check_policy,
    pareto_front,
    select,
    select_confirmed,
    with_refusal_rate,
)
from abliterate.search.space import SpaceConfig, analysis_depths, read_analysis, suggest


def _params(seed: int, **space):
    cfg = SpaceConfig(
        n_layers=space.pop("n_layers", 32),
        components=space.pop("components", ("attn_out", "mlp_down")),
        **space,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return suggest(trial, cfg), trial


@pytest.mark.parametrize("seed", range(20))
def test_suggestions_stay_in_range(seed):
    params, trial = _params(seed)
    for comp in ("attn_out", "mlp_down"):
        k = params.kernels[comp]
        assert 0.5 <= k.max_weight <= 2.0
        assert 0 <= k.min_weight <= k.max_weight
        assert 0.4 * 31 <= k.peak <= 31
        assert 1.0 <= k.span <= 0.6 * 32
    assert "direction_index" in trial.params  # sampled every time (static space for TPE)
    if params.scope == "global":
        assert 0.3 * 31 <= params.direction_index <= 0.9 * 31
    else:
        assert params.direction_index is None


def test_small_models_keep_span_at_least_one_layer():
    params, _ = _params(0, n_layers=4, span_range=(0.01, 0.02))
    assert all(k.span == 1.0 for k in params.kernels.values())


def test_fixed_scope_and_embedding():
    params, trial = _params(0, direction_scope="global", components=("mlp_down", "embed"))
    assert params.scope == "global" and set(params.kernels) == {"mlp_down"}
    assert "direction_scope" not in trial.params and "embed_weight" in trial.params


def test_objectives():
    w = ObjectiveWeights(
        overrefusal_penalty=2.0,
        harmful_marker_penalty=0.5,
        compliance_gap_penalty=1.0,
        kl_divergence_target=0.01,
    )
    m = {
        "refusal_rate": 0.2,
        "overrefusal_rate": 0.1,
        "harmful_marker_rate": 0.4,
        "compliance_gap": 0.3,
    }
    assert refusal_score(m, 0.8, w) == pytest.approx(0.25 + 0.2 + 0.2 + 0.3)
    assert kl_score(0.001, w) == 0.01 and kl_score(0.5, w) == 0.5


def _c(n, r, k, rate=None):
    return Candidate(n, r, k, r if rate is None else rate, k)


def test_pareto_front_and_policies():
    cands = [_c(0, 1.0, 0.01), _c(1, 0.5, 0.05), _c(2, 0.1, 0.3), _c(3, 0.6, 0.2), _c(4, 0.05, 1.0)]
    assert [c.number for c in pareto_front(cands)] == [4, 2, 1, 0]
    assert select(cands, "min-refusals").number == 4
    assert select(cands, "min-kl-under:0.5").number == 1
    assert select(cands, "min-kl-under:0.01").number == 4  # none qualifies: fewest refusals
    assert select(cands, "trial:3").number == 3
    assert select(cands, "knee").number in (1, 2)
    with pytest.raises(AbliterateError, match="unknown selection policy"):
        select(cands, "best")
    with pytest.raises(AbliterateError, match="no finished trial number 9"):
        select(cands, "trial:9")


def test_kl_ceiling_passes_over_edits_that_buy_refusals_with_kl():
    # The Qwen2.5 0.5B search: the only trial under 0.05 had KL 0.42; the next ones 0.06.
    cands = [_c(2, 0.036, 0.42), _c(12, 0.06, 0.125), _c(10, 0.06, 0.137), _c(5, 0.084, 0.12)]
    assert select(cands, "min-kl-under:0.05").number == 2
    assert select(cands, "min-kl-under:0.05,max-kl:0.2").number == 12  # fewest refusals under it
    assert select(cands, "min-kl-under:0.1,max-kl:0.2").number == 5  # lowest KL under both
    assert select(cands, "min-kl-under:0.05,max-kl:0.01").number == 2  # none under: no ceiling
    for bad in ("min-kl-under:0.05,max-kl:x", "min-kl-under:", "trial:x", "best"):
        with pytest.raises(AbliterateError):
            check_policy(bad)
    for good in ("min-kl-under:0.05,max-kl:0.2", "min-kl-under:0.1", "trial:3", "knee"):
        check_policy(good)
    with pytest.raises(AbliterateError, match="unknown selection policy"):
        load_settings(None, model="m", select="best")  # before anything loads


def _cand(n, rate, kl, base=0.8):
    return Candidate(n, rate / base, kl, rate, kl)


def test_confirmation_moves_the_choice_off_a_trial_that_only_just_passed():
    # Search figures: trial 1 just under the bound and cheapest; trial 2 clearly under it.
    cands = [_cand(0, 0.5, 0.01), _cand(1, 0.09, 0.10), _cand(2, 0.0, 0.14), _cand(3, 0.06, 0.2)]
    longer = {1: 0.19, 2: 0.03, 3: 0.06}  # what longer answers show
    asked = []

    def confirm(c):
        asked.append(c.number)
        return with_refusal_rate(c, longer[c.number], 0.8)

    chosen, confirmed = select_confirmed(cands, "min-kl-under:0.1", confirm, budget=3)
    assert chosen.number == 2 and asked == [1, 2]
    assert confirmed[1].refusal_rate == 0.19
    assert confirmed[1].refusal_score == pytest.approx(0.19 / 0.8)
    # Off, or a named trial: the search figures decide, nothing is re-measured.
    assert select_confirmed(cands, "min-kl-under:0.1", confirm, budget=0)[0].number == 1
    assert select_confirmed(cands, "trial:1", confirm, budget=3) == (cands[1], {})
    assert asked == [1, 2]


def test_confirmation_budget_is_never_exceeded():
    cands = [_cand(n, 0.05, 0.1 + n / 100) for n in range(6)]
    asked = []

    def confirm(c):
        asked.append(c.number)
        return with_refusal_rate(c, 0.5, 0.8)  # every one fails once re-measured

    chosen, confirmed = select_confirmed(cands, "min-kl-under:0.1", confirm, budget=2)
    assert asked == [0, 1] and set(confirmed) == {0, 1}
    # the budget is spent: the choice is among the re-measured trials (none under the bound:
    # the lowest refusal rate, then KL), never the next unmeasured one
    assert chosen.number == 0 and chosen.refusal_rate == 0.5


def test_unmeasured_trials_are_chosen_only_when_every_measured_one_is_damaged():
    cands = [_cand(n, 0.05, 0.1 + n / 100) for n in range(4)]

    def confirm(c):
        return replace(with_refusal_rate(c, 0.05, 0.8), damaged=True)

    chosen, confirmed = select_confirmed(cands, "min-kl-under:0.1", confirm, budget=2)
    assert set(confirmed) == {0, 1} and chosen.number == 2


def test_a_damaged_trial_is_passed_over_and_stays_passed_over():
    # Trial 1 has the fewest refusals but hurts harmless answers once re-measured.
    cands = [_cand(0, 0.5, 0.01), _cand(1, 0.0, 0.2), _cand(2, 0.05, 0.1), _cand(3, 0.1, 0.05)]

    def confirm(c):
        return replace(with_refusal_rate(c, c.refusal_rate, 0.8), damaged=c.number == 1)

    chosen, confirmed = select_confirmed(cands, "min-refusals", confirm, budget=3)
    assert chosen.number == 2 and set(confirmed) == {1, 2}
    assert confirmed[1].damaged and not confirmed[2].damaged
    # a later choice from the recorded figures passes it over too, unless it is named
    pool = [confirmed.get(c.number, c) for c in cands]
    assert select(pool, "min-refusals").number == 2
    assert select(pool, "min-kl-under:0.05").number == 2
    assert select(pool, "trial:1").number == 1
    # when every trial is damaged there is still a choice
    every = [replace(c, damaged=True) for c in cands]
    assert select(every, "min-refusals").number == 1


def test_warm_starts_from_a_directions_analysis(tmp_path):
    import json

    from abliterate.config import load_settings
    from abliterate.search.trials import start_depths

    candidates = [
        {"stream": "post", "layer": 4, "rank": 2},
        {"stream": "post", "layer": 9, "rank": None, "dropped": "KL"},
        {"stream": "pre", "layer": 2, "rank": 1},
        {"stream": "post", "layer": 6, "rank": 1},
        {"stream": "post", "layer": 3, "rank": 3},
        {"stream": "post", "layer": 5, "rank": 4},
    ]
    # ranked candidates of the stream, best first, at most three, as depth fractions
    assert analysis_depths(candidates, "post", 13) == [0.5, 4 / 12, 3 / 12]
    path = tmp_path / "directions.json"
    path.write_text(json.dumps({"candidates": candidates}))
    assert read_analysis(path, "post") == candidates
    settings = load_settings(model="m", warm_start_analysis=str(path), warm_starts=[0.5, 0.8])
    assert start_depths(settings, 13) == [0.5, 4 / 12, 3 / 12, 0.8]  # 0.5 only once
    for text, message in (
        ("not json", "not a directions.json"),
        (json.dumps({"selected": None}), "not a directions.json"),
        (json.dumps({"candidates": candidates[2:3]}), "no ranked candidate in stream 'post'"),
    ):
        path.write_text(text)
        with pytest.raises(AbliterateError, match=message):
            read_analysis(path, "post")


def test_a_trial_over_the_bound_once_re_measured_does_not_stop_the_next_being_measured():
    # Trials 1 and 2 tie on the search's few prompts; the cheaper one, re-measured on many more,
    # lands over the bound but still under the tie's search figure. The other is measured next
    # and chosen when it passes; a trial over the KL ceiling is never measured.
    cands = [_cand(0, 0.5, 0.01), _cand(1, 0.1, 0.17), _cand(2, 0.1, 0.2), _cand(3, 0.0, 0.4)]
    longer = {1: 0.048, 2: 0.02, 3: 0.0}
    asked = []

    def confirm(c):
        asked.append(c.number)
        return with_refusal_rate(c, longer[c.number], 0.8)

    chosen, _ = select_confirmed(cands, "min-kl-under:0.03,max-kl:0.25", confirm, budget=3)
    assert asked == [1, 2] and chosen.number == 2
    # both over the bound once re-measured: the lowest re-measured rate; trial 0 (more refusals
    # by the search's figure than those that failed) and trial 3 are left alone
    longer[2] = 0.04
    asked.clear()
    chosen, _ = select_confirmed(cands, "min-kl-under:0.03,max-kl:0.25", confirm, budget=3)
    assert asked == [1, 2] and chosen.number == 2
    # every trial over the ceiling: the ceiling is dropped and the pick is still re-measured
    high = [_cand(n, 0.1, 0.3 + n / 100) for n in range(2)]
    asked.clear()
    longer[0] = 0.1
    select_confirmed(high, "min-kl-under:0.03,max-kl:0.25", confirm, budget=1)
    assert asked == [0]
