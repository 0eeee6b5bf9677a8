"""What a training loop tells its caller while it runs: events through a callback.

Training code never prints; the CLI renders these (vqtool.progress), a notebook may collect them.
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
