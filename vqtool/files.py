"""Writing files so that a crash never leaves a torn one: temp file, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vqtool.errors import UsageError, WorkError

DISK_FIX = "check that the folder is writable and the disk has room"


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(file)` to a temp file beside `path`, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_or_fail(
    path: Path, write: Callable[[BinaryIO], object], what: str, fix: str = DISK_FIX
) -> None:
    """`atomic_write`, with a failure (disk full, no permission) as one WorkError line."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise WorkError(f"could not write {what}: {exc.strerror or exc}", path, fix) from exc


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain open() would give a new file under the current umask."""
    return 0o666 & ~current_umask()


def check_output_file(path: Path, what: str, example: str) -> None:
    """Refuse, before any work, an output file that could not be written where it is asked
    for: a folder in its place, or a file where a parent folder should be (missing folders are
    made when it is written). `example` is the option with a good value, for the fix."""
    if path.is_dir():
        raise UsageError(f"{what} is a folder", path, f"give a file name, e.g. {example}")
    check_no_file_above(path, "remove it or choose another path")


def check_no_file_above(path: Path, fix: str) -> None:
    """Refuse a path whose nearest existing ancestor is a file: no folder can be made there."""
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError("a file is in the way", above, fix)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
