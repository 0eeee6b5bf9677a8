"""Process plumbing: signals while torch imports, SIGTERM that unwinds, training's stop flag,
and the quick exit at the end of a command."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from vqtool.errors import Interrupted, Terminated


def import_torch() -> None:
    """Import torch with Ctrl-C and SIGTERM held until it is done, then act on them.

    A KeyboardInterrupt raised while torch's extension modules load is swallowed there (the
    command then ran to the end, exit 0) or, rarely, aborts the process; the import takes
    over a second, so a quick Ctrl-C often lands in it. Commands that need torch call this
    before anything else.
    """
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        import torch  # noqa: F401

        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    # A signal the process ignores (SIGINT for a background job of a script) stays ignored.
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, hold) for sig in held}
    try:
        import torch  # noqa: F401
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) while a command runs, so that a killed
    `decode` or `encode` removes what it had started writing, as on Ctrl-C. Training installs
    its own handler inside (StopSignals: checkpoint, then exit 143)."""
    ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    if ignored or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag a training loop checks after each step."""

    CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum)

    def interrupted(self) -> Interrupted:
        # Another training process may have been signalled and not this one: report SIGTERM.
        received = self.received or signal.SIGTERM
        return Interrupted(received.name, self.CODES[received])


def exit_now(code: object) -> None:
    """Flush stdout and stderr, then end the process at once with `code`.

    Tearing down the interpreter after `import torch` takes about half a second on two
    cores, and repeats in every step of a shell pipeline; every file a command wrote is
    closed by the time it returns, so nothing is lost by skipping it.
    """
    if isinstance(code, str):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            print(code, file=sys.stderr)
    if not isinstance(code, int):  # a message (printed above) or anything else: a failure
        code = 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            stream.flush()
    os._exit(code or 0)
