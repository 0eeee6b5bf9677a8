"""What long work tells its caller while it runs: counts of work done, and a training loop's
events, through callbacks.

Library code never prints; the CLI renders these (vqtool.cli.progress), a notebook may collect them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class TrainEvent(NamedTuple):
    # "decode" (a folder's cache), "codes" (a prior's code files), "start", "log", "eval",
    # "checkpoint", "note" or "end"
    kind: str
    step: int
    total_steps: int
    record: dict[str, Any]
    message: str = ""


TrainCallback = Callable[[TrainEvent], None]

# (done, total): items done so far of a known total; every long task reports through one.
Progress = Callable[[int, int], None]
# (bytes done, total bytes or None when the source does not say): a download.
ByteProgress = Callable[[int, "int | None"], None]


def progress_parts(counts: list[int], on_progress: Progress | None) -> list[Progress | None]:
    """A callback for each of several parts of a task, parts of `counts` items done one after
    another, each reporting (done, total) of the whole task through `on_progress`."""
    if on_progress is None:
        return [None] * len(counts)
    report, total = on_progress, sum(counts)

    def part(start: int) -> Progress:
        return lambda done, _: report(start + done, total)

    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [part(start) for start in starts]
