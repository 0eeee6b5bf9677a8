"""The errors vqtool reports to a user: one line, what went wrong, where, what to do."""

from __future__ import annotations

import os


class VqtoolError(Exception):
    """A failure the CLI prints as `error: <what> (<where>): <what to do>`.

    `exit_code` is 1 when the work failed on a well-formed request
    (network, disk, checksum, corrupt or tampered file), 2 when the request itself is wrong.
    """

    exit_code = 1

    def __init__(self, what: str, where: str | object = "", fix: str = "") -> None:
        self.what = what
        self.where = str(where)
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        text = f"error: {self.what}"
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f": {self.fix}"
        return text


class WorkError(VqtoolError):
    """The request was fine but the work failed: network, disk, checksum, corrupt file."""

    exit_code = 1


class UsageError(VqtoolError):
    """The request is wrong: a bad option, a profile error, mismatched files."""

    exit_code = 2


class Interrupted(Exception):
    """Training stopped by a signal after its checkpoint was saved."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        self.signal_name = signal_name
        self.exit_code = exit_code
        super().__init__(f"stopped by {signal_name}")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training: unwinds like Ctrl-C, so every cleanup runs (exit 143)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message as one line of at most `limit` characters (its type if empty)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 image', '2 images', '10,000 images'; `plural` for a noun that takes more than an s
    ('1 process', '2 processes')."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def os_reason(exc: OSError) -> str:
    """The system's words for an OSError ('No space left on device'), else its message."""
    return exc.strerror or str(exc)


def debug_enabled() -> bool:
    """VQTOOL_DEBUG=1: let errors escape with their traceback instead of one line."""
    return bool(os.environ.get("VQTOOL_DEBUG"))
