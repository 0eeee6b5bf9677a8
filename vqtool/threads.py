"""How many CPU threads training uses: all free cores, and no more.

PyTorch splits each operation evenly over its threads and waits for the slowest. When another
process keeps one of two cores busy, the thread that shares its core runs in time slices of
milliseconds while the operations last tens of microseconds, and training falls to a fifth of
its idle speed, where one thread on the free core keeps most of it (README). So a
run counts the cores that other processes keep busy, once before its first step, and leaves
them alone. Once only: the thread count changes the last bits of the results, and a run must
stay reproducible and resume bit for bit (a resumed run keeps the count it started with).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

SAMPLE_S = 0.2


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # empty when training takes every core it was given


def _cpu_jiffies(cpus: set[int]) -> int | None:
    """Busy jiffies (all but idle and iowait) of these CPUs since boot, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy, seen = 0, set()
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]
        busy += sum(values) - values[3] - values[4]
        seen.add(int(name[3:]))
    return busy if seen == cpus else None


def _own_jiffies() -> int | None:
    """This process's user + system jiffies, all its threads, from /proc/self/stat."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def busy_cores_of_others(sample_s: float = SAMPLE_S) -> float | None:
    """Cores of this process's CPU set that other processes kept busy over `sample_s` seconds;
    None where the kernel does not say (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = set(os.sched_getaffinity(0))
    hz = os.sysconf("SC_CLK_TCK")
    start, own_start, t0 = _cpu_jiffies(cpus), _own_jiffies(), time.monotonic()
    time.sleep(sample_s)
    end, own_end, t1 = _cpu_jiffies(cpus), _own_jiffies(), time.monotonic()
    if None in (start, end, own_start, own_end):
        return None
    others = (end - start) - (own_end - own_start)  # type: ignore[operator]
    return max(0.0, others / hz / (t1 - t0))


def choose_threads(setting: int, saved: int | None) -> ThreadChoice:
    """The thread count for a training run on the CPU.

    `setting` is train.threads (0 = auto); `saved` the count a resumed run started with.
    Auto keeps OMP_NUM_THREADS when it is set (torchrun sets 1), else the saved count, else
    torch's count less the cores other processes keep busy (at least one).
    """
    given = torch.get_num_threads()
    if setting > 0:
        return ThreadChoice(setting, "")
    if "OMP_NUM_THREADS" in os.environ:
        return ThreadChoice(given, "")
    if saved is not None:
        return ThreadChoice(saved, "" if saved == given else "the count this run started with")
    busy = busy_cores_of_others()
    if busy is None:
        return ThreadChoice(given, "")
    cores = len(os.sched_getaffinity(0))
    free = max(1, min(given, cores - round(busy)))
    if free == given:
        return ThreadChoice(given, "")
    why = f"other processes keep {busy:.1f} of {cores} cores busy; train.threads overrides"
    return ThreadChoice(free, why)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on `count` threads for the duration; the caller's count comes back at the end."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def training_threads(device: torch.device, setting: int, saved: int | None) -> Iterator[str]:
    """Train on `choose_threads` threads on the CPU (no change elsewhere); yields the reason
    (empty when every core is used) and gives the caller's thread count back at the end."""
    if device.type != "cpu":
        yield ""
        return
    choice = choose_threads(setting, saved)
    with torch_threads(choice.threads):
        yield choice.reason


def saved_threads(device: torch.device) -> int | None:
    """What a checkpoint records: the thread count on the CPU, None elsewhere."""
    return torch.get_num_threads() if device.type == "cpu" else None
