"""The thread count follows the machine's load: a real busy neighbour process takes a core away
from torch, and gives it back when it ends; explicit counts are kept."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from abliterate import threads
from abliterate.cli.main import lift_global_options, main


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("ABLITERATE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    threads.reset()
    torch.set_num_threads(before)


def busy_neighbour() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # let it start spinning before anything is sampled
    return proc


def test_count_leaves_the_busy_cores_to_their_owners():
    assert threads.busy_elsewhere([100.0, 100.0], [0, 1], own_percent=100.0) == 1.0
    assert threads.busy_elsewhere([50.0, 90.0, 100.0], [0, 1], own_percent=160.0) == 0.0
    assert threads.thread_count(2, busy=0.9) == 1
    assert threads.thread_count(2, busy=0.3) == 2
    assert threads.thread_count(2, busy=5.0) == 1  # never fewer than one
    assert threads.thread_count(16, busy=2.6) == 13


def test_explicit_counts_are_kept_and_never_followed(monkeypatch):
    assert threads.configure(1) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.configure() == 3
    assert torch.get_num_threads() == 3
    monkeypatch.setattr(threads, "RECHECK_EVERY_S", 0.0)
    threads.recheck()
    assert torch.get_num_threads() == 3


@pytest.mark.skipif(len(threads.usable_cores()) < 2, reason="needs two cores to share")
def test_a_busy_neighbour_takes_a_core_and_gives_it_back(monkeypatch):
    cores = len(threads.usable_cores())
    said: list[str] = []
    neighbour = busy_neighbour()
    try:
        crowded = threads.configure(say=said.append)
        assert crowded <= cores - 1
        assert torch.get_num_threads() == crowded
        assert said and "busy" in said[0]
    finally:
        neighbour.kill()
        neighbour.wait()
    monkeypatch.setattr(threads, "RECHECK_EVERY_S", 0.0)
    threads.recheck()  # starts a window without the neighbour
    time.sleep(1.0)
    threads.recheck()
    assert torch.get_num_threads() > crowded
    assert "->" in said[-1]


def test_global_options_go_anywhere_on_the_line():
    line = ["run", "m", "--threads", "2", "--debug", "--threads=3"]
    assert lift_global_options(line) == ["--threads", "2", "--debug", "--threads=3", "run", "m"]


def test_a_negative_count_is_a_one_line_error(capsys):
    assert main(["report", "nowhere", "--threads", "-1"]) == 2
    assert "--threads must be 1 or more" in capsys.readouterr().err
