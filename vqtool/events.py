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
