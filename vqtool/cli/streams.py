"""`-` as a code file: standard input for decode and inspect, standard output for encode -o -.

Standard output that carries a code file carries nothing else: every message goes to stderr
(as always), and `--json -` is refused beside `-o -`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from vqtool.errors import UsageError, WorkError, os_reason

if TYPE_CHECKING:
    from vqtool.codes.entropy import CodingPrior
    from vqtool.codes.vqc import CodeFile, CodeSummary, Source

STREAM = Path("-")


def is_stream(path: Path | str | None) -> bool:
    """Whether a code file argument is `-` (a stream, not a file named '-')."""
    return path is not None and str(path) == str(STREAM)


def code_source(path: Path) -> Source:
    """The code file a command reads: `path`, or for `-` standard input read whole (a raw
    code file is a zip archive, read from its end; a compressed one is checked whole by its
    CRC-32)."""
    from vqtool.codes.vqc import CodeBytes

    if not is_stream(path):
        return path
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        raise UsageError(
            "no code file on standard input (it is a terminal)",
            "-",
            "pipe one in (cat codes.vqc | vqtool decode R - -o out), or give the file's name",
        )
    try:
        data = stdin.buffer.read()
    except OSError as exc:
        raise WorkError(f"cannot read standard input: {os_reason(exc)}", "-", "") from exc
    return CodeBytes(data)


def check_code_output(output: Path, json_out: str | None) -> None:
    """Refuse, before any work, `-o -` to a terminal and `-o -` beside `--json -`."""
    if not is_stream(output):
        return
    if json_out == "-":
        raise UsageError(
            "-o - and --json - would both write to standard output",
            "--json",
            "give --json a file name (--json summary.json) while the code file takes stdout",
        )
    if sys.stdout is None or sys.stdout.isatty():
        raise UsageError(
            "the code file would go to a terminal",
            "-o -",
            "redirect standard output (-o - > codes.vqc) or pipe it (-o - | ...)",
        )


def write_code_bytes(data: bytes) -> None:
    """The code file to standard output, whole; a reader that went away (a broken pipe) or a
    full disk behind a redirect is one WorkError line."""
    sys.stdout.flush()
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except (OSError, ValueError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "it is closed"
        raise WorkError(
            f"could not write the code file to standard output: {reason}",
            "-o -",
            "check what reads it (a pipe that closed early, a full disk)",
        ) from exc


def check_outputs(output: Path, json_out: str | None) -> None:
    """encode's -o and --json, refused before any work when they cannot be written."""
    from vqtool.codes.vqc import check_output
    from vqtool.files import check_output_file

    check_code_output(output, json_out)
    if not is_stream(output):
        check_output(output)
    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json summary.json")


class Written(NamedTuple):
    """A code file encode wrote: to a file, or to standard output (kept in memory)."""

    source: Source
    name: str  # for the wrote line
    bytes: int

    def summary(self) -> CodeSummary:
        from vqtool.codes.vqc import describe_codes

        return describe_codes(self.source)


def write_code_file(
    output: Path,
    codes: CodeFile,
    compress: bool,
    prior: CodingPrior | None,
    on_progress: Callable[[int, int], None],
) -> Written:
    """Write encode's code file to `output`, or to standard output for `-`."""
    from vqtool.codes.vqc import CodeBytes, code_file_bytes, write_codes

    if not is_stream(output):
        write_codes(output, codes, compress, prior, on_progress)
        return Written(output, str(output), output.stat().st_size)
    data = code_file_bytes(codes, compress, prior, on_progress)
    write_code_bytes(data)
    return Written(
        CodeBytes(data, "standard output"), "the code file to standard output", len(data)
    )
