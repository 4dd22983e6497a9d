"""Several workers on one study through a real PostgreSQL server (started by .ci/run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import optuna
import pytest

from abliterate.cli.main import main
from abliterate.search import study as st
from abliterate.search.choice import candidates
from abliterate.search.select import select
from conftest import organism_command, wait_for

pytestmark = pytest.mark.slow
POLICY = "min-kl-under:0.1"


@pytest.fixture
def pg_url():
    url = os.environ.get("ABLITERATE_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must start PostgreSQL and set ABLITERATE_TEST_POSTGRES (.ci/run)")
        pytest.skip("set ABLITERATE_TEST_POSTGRES=postgresql://user:pw@host/db to run")
    return url


def worker(organism_dir, url, study, run_dir, n):
    cmd = organism_command(
        organism_dir, run_dir, n, "--storage", url, "--study-name", study, "--select", POLICY
    )
    # One thread each: two workers share the two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_two_workers_fill_one_study_exactly(pg_url, organism_dir, tmp_path):
    name, n = f"two-workers-{uuid.uuid4().hex[:8]}", 8
    procs = [worker(organism_dir, pg_url, name, tmp_path / w, n) for w in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]
    study = optuna.load_study(storage=pg_url, study_name=name)
    trials = study.get_trials()
    assert len(trials) == n and all(t.state == st.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(n))  # numbers never collide
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both worked
    # Every worker chose what one worker would choose from the same trials.
    expected = select(candidates(study), POLICY).number
    for w in ("a", "b"):
        assert json.loads((tmp_path / w / "chosen.json").read_text())["trial"] == expected
        assert len(list((tmp_path / w / "trials").glob("*.json"))) == n
    # Any machine can export from the shared study alone.
    out = tmp_path / "export"
    assert (
        main(
            [
                "export",
                "--storage",
                pg_url,
                "--study-name",
                name,
                "--trial",
                str(expected),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "trial.json").read_text())["number"] == expected


def test_a_killed_worker_leaves_its_trial_failed_and_the_study_goes_on(
    pg_url, organism_dir, tmp_path
):
    name, n = f"killed-worker-{uuid.uuid4().hex[:8]}", 6
    a = worker(organism_dir, pg_url, name, tmp_path / "a", n)
    wait_for(tmp_path / "a" / "trials" / "0.json", a)
    a.send_signal(signal.SIGKILL)
    a.wait()
    b = worker(organism_dir, pg_url, name, tmp_path / "b", n)
    assert b.wait(timeout=900) == 0, b.stderr.read()[-3000:]
    study = optuna.load_study(storage=pg_url, study_name=name)
    counts = st.counts(study)
    assert counts["complete"] == n and counts["running"] == 0
    failed = [t for t in study.get_trials() if t.state == st.TrialState.FAIL]
    retried = [t for t in study.get_trials() if "retry_of" in t.user_attrs]
    if failed:  # the kill landed inside a trial: its parameters ran again
        # A kill during sampling leaves only the parameters drawn so far; the retry keeps
        # those and draws the rest.
        assert retried and failed[0].params.items() <= retried[0].params.items()
        assert retried[0].user_attrs["retry_of"] == failed[0].number


def test_exports_from_a_password_storage_hold_no_credentials(pg_url, organism_dir, tmp_path):
    """`run --storage URL --output` and `export --storage URL` on a real server: no exported
    file holds the URL's password or user:password pair (issue: secrets never leave)."""
    from urllib.parse import urlsplit

    url = urlsplit(pg_url)
    assert url.password, "the test URL must carry a password"
    secrets = [f"{url.username}:{url.password}@".encode(), pg_url.encode()]
    name = f"secret-{uuid.uuid4().hex[:8]}"
    run = organism_command(
        organism_dir, tmp_path / "run", 2, "--storage", pg_url, "--study-name", name,
        "--select", POLICY, "--output", str(tmp_path / "run-out"), "--export", "both",
    )  # fmt: skip
    proc = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["export", "--storage", pg_url, "--study-name", name, "--select", POLICY,
                 "--output", str(tmp_path / "export-out")]) == 0  # fmt: skip
    files = [p for d in ("run-out", "export-out") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert any(p.name == "abliterate.toml" for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(s in data for s in secrets), path
