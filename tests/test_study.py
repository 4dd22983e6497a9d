"""The study layer: exact trial counts, recovery of trials whose worker died, reproducibility."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from functools import partial

import pytest

from abliterate.search import study as st
from abliterate.search.space import SpaceConfig, suggest, warm_starts

SPACE = SpaceConfig(n_layers=8, components=("attn_out", "mlp_down"))


def _study(tmp_path, name="s"):
    storage = st.open_storage(None, tmp_path / "study.journal")
    return st.open_study(storage, name), partial(st.study_lock, None, tmp_path / "lock", name)


def _finish(study, trial):
    params = suggest(trial, SPACE)
    study.tell(trial, [params.kernels["attn_out"].max_weight, 0.1])
    return params


def test_claims_stop_at_n_trials(tmp_path):
    study, lock = _study(tmp_path)
    seen = []
    while (trial := st.claim(study, 5, seed=0, n_startup=2, lock=lock)) is not None:
        _finish(study, trial)
        seen.append(trial.number)
    assert seen == [0, 1, 2, 3, 4]
    assert st.counts(study)["complete"] == 5
    assert st.claim(study, 5, 0, 2, lock) is None


def test_running_trials_count_towards_the_budget(tmp_path):
    study, lock = _study(tmp_path)
    first = st.claim(study, 2, 0, 1, lock)
    second = st.claim(study, 2, 0, 1, lock)
    assert first is not None and second is not None
    assert st.claim(study, 2, 0, 1, lock) is None  # two running, budget 2


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_trial_of_a_dead_worker_is_failed_and_its_parameters_requeued(tmp_path):
    study, lock = _study(tmp_path)
    trial = st.claim(study, 3, 0, 1, lock)
    params = suggest(trial, SPACE)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": _dead_pid()})
    assert st.recover_stale(study) == [trial.number]
    states = [t.state for t in study.get_trials()]
    assert states == [st.TrialState.FAIL, st.TrialState.WAITING]
    retry = st.claim(study, 3, 0, 1, lock)
    assert suggest(retry, SPACE) == params
    assert retry.number == 1


def test_heartbeat_staleness_for_other_hosts(tmp_path):
    study, lock = _study(tmp_path)
    trial = st.claim(study, 3, 0, 1, lock)
    trial.set_user_attr("worker", {"host": "elsewhere", "pid": 1})
    trial.set_user_attr("heartbeat", time.time())
    assert st.recover_stale(study) == []
    trial.set_user_attr("heartbeat", time.time() - 10 * st.GRACE_SECONDS)
    assert st.recover_stale(study) == [trial.number]


def test_own_running_trial_is_never_stale(tmp_path):
    study, lock = _study(tmp_path)
    trial = st.claim(study, 3, 0, 1, lock)
    trial.set_user_attr("heartbeat", 0.0)
    assert st.recover_stale(study) == []


def test_heartbeat_thread_refreshes(tmp_path):
    study, lock = _study(tmp_path)
    trial = st.claim(study, 1, 0, 1, lock)
    start = study.get_trials()[0].user_attrs["heartbeat"]
    with st.heartbeat(trial, interval=0.05):
        time.sleep(0.3)
    assert study.get_trials()[0].user_attrs["heartbeat"] > start


def test_abandoned_trial_is_requeued(tmp_path):
    study, lock = _study(tmp_path)
    trial = st.claim(study, 2, 0, 1, lock)
    params = suggest(trial, SPACE)
    st.abandon(study, trial)
    retry = st.claim(study, 2, 0, 1, lock)
    assert suggest(retry, SPACE) == params


@pytest.mark.parametrize("n", [3, 7])
def test_same_seed_same_history_same_parameters(tmp_path, n):
    def run(path):
        study, lock = _study(path)
        out = []
        while (trial := st.claim(study, n, seed=5, n_startup=2, lock=lock)) is not None:
            out.append(_finish(study, trial))
        return out

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert run(tmp_path / "a") == run(tmp_path / "b")


def test_warm_starts_are_the_first_trials_and_edit_every_layer_with_strength_one(tmp_path):
    from abliterate.edit.plan import strength_table

    study, lock = _study(tmp_path)
    starts = warm_starts(SPACE, (0.5, 0.8))
    assert st.enqueue_once(study, starts, 10, lock) == 2
    assert st.enqueue_once(study, starts, 10, lock) == 0  # a second worker queues nothing
    got = []
    for _ in range(3):
        trial = st.claim(study, 10, 0, 2, lock)
        got.append(_finish(study, trial))
    for params, fraction in zip(got[:2], (0.5, 0.8), strict=True):
        assert params.scope == "global"
        assert params.direction_index == pytest.approx(fraction * 7)
        table = strength_table(8, params)
        assert table == {c: [1.0] * 8 for c in ("attn_out", "mlp_down")}
    assert strength_table(8, got[2]) != {c: [1.0] * 8 for c in ("attn_out", "mlp_down")}


def test_warm_starts_respect_a_narrowed_space_and_a_small_budget(tmp_path):
    narrow = SpaceConfig(
        n_layers=8,
        components=("mlp_down",),
        direction_scope="per_layer",
        max_weight_range=(1.2, 2.0),
    )
    starts = warm_starts(narrow, (0.3, 0.6))
    assert len(starts) == 1  # per-layer directions: the depth fraction does not matter
    assert starts[0]["mlp_down.max_weight"] == 1.2 and "attn_out.peak" not in starts[0]
    study, lock = _study(tmp_path)
    assert st.enqueue_once(study, warm_starts(SPACE, (0.2, 0.5, 0.8)), 2, lock) == 2
    assert st.counts(study)["waiting"] == 2
