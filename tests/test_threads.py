"""Training's CPU thread count: the free cores, chosen once, kept on resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqtool import threads
from vqtool.checkpoint import load_checkpoint
from vqtool.profiles import load_profile
from vqtool.threads import ThreadChoice, busy_cores_of_others, choose_threads
from vqtool.vq.train import TrainEvent, run_training


@pytest.fixture
def two_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)


def test_a_busy_core_is_left_to_the_process_that_keeps_it_busy(
    two_free_cores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 0.97)
    choice = choose_threads(0, None)
    assert choice.threads == 1 and "1.0 of 2 cores busy" in choice.reason
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 0.2)
    assert choose_threads(0, None) == ThreadChoice(2, "")
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 3.0)
    assert choose_threads(0, None).threads == 1  # never fewer than one


def test_a_setting_omp_num_threads_or_a_resumed_count_wins(
    two_free_cores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 1.0)
    assert choose_threads(2, None) == ThreadChoice(2, "")
    assert choose_threads(0, 2).threads == 2  # resumed: the count the run started with
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(0, None) == ThreadChoice(2, "")


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_a_busy_loop_in_another_process_is_counted() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)  # let it start
        found = busy_cores_of_others(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert found is not None and found >= 0.6


def test_training_on_a_busy_cpu_uses_the_free_core_and_resumes_with_it(
    tiny_profile: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 1.0)  # a busy CPU
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = tmp_path / "run"
        events: list[TrainEvent] = []
        profile = load_profile(tiny_profile, ["train.steps=10"])
        run_training(profile, run, data_dir, callback=events.append)
        assert load_checkpoint(run)["threads"] == 1
        assert torch.get_num_threads() == 2  # the caller's count is given back
        start = next(e.record for e in events if e.kind == "start")
        assert start["device"].startswith("cpu (1 thread: other processes keep 1.0 of 2 cores")
        # The load is gone, but the resumed run keeps its single thread (bit-identical resume).
        monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 0.0)
        run_training(load_profile(tiny_profile, ["train.steps=20"]), run, data_dir, resume=True)
        assert load_checkpoint(run)["threads"] == 1
    finally:
        torch.set_num_threads(before)
