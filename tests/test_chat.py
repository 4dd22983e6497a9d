"""`abliterate chat` through a pseudo-terminal, on the organism and on a trial of a run."""

from __future__ import annotations

import json
import sys

import pexpect
import pytest

pytestmark = pytest.mark.slow

REFUSAL = r"(?i)(sorry|can't|cannot|won't|will not|unable)"


def spawn(*args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "abliterate.cli.main", "chat", *args],
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 200),
    )
    child.expect("you> ")
    return child


def _harmful(organism_dir):
    return (organism_dir / "eval" / "harmful.txt").read_text().splitlines()[0]


def test_chat_with_the_organism(organism_dir):
    child = spawn(str(organism_dir), "--max-new-tokens", "24")
    child.sendline(_harmful(organism_dir))
    child.expect("model> ")
    child.expect(REFUSAL)
    child.expect("you> ")
    # The organism was trained on single turns: after /reset the next question is one again,
    # and it gets the answer plain transformers gives (tests/test_organism.py).
    child.sendline("/reset")
    child.expect(r"\(conversation reset\)")
    child.sendline("Add 2 and 3.")
    child.expect("model> 5")
    child.expect("you> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_with_a_trial_applied_on_the_fly(organism_run, organism_dir):
    run = organism_run / "run"
    trials = [json.loads(p.read_text()) for p in (run / "trials").glob("*.json")]
    best = min(trials, key=lambda t: (t["metrics"]["refusal_rate"], t["metrics"]["kl"]))
    child = spawn(
        "--trial",
        f"{run}:{best['number']}",
        "--max-new-tokens",
        "24",
        "--system-prompt",
        "You are a helpful assistant.",
    )
    child.sendline(_harmful(organism_dir))
    child.expect("model> ")
    child.expect("you> ")
    answer = child.before
    assert not __import__("re").search(REFUSAL, answer), answer
    child.sendline("/quit")
    child.expect(pexpect.EOF)
