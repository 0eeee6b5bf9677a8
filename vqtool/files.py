"""Every file vqtool writes goes through here, so that a crash never leaves a torn one:
temp file beside the target, (fsync,) rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vqtool.errors import UsageError, WorkError, os_reason

DISK_FIX = "check that the folder is writable and the disk has room"
FOLDER_GONE = "its folder is gone (removed while vqtool was writing to it?)"
GONE_FIX = "what the folder held is gone with it; start again in a folder that stays"


def atomic_write(path: Path, write: Callable[[BinaryIO], object], make_folder: bool = True) -> None:
    """Write through `write(file)` to a temp file beside `path`, fsync, rename over it.

    The folder is made when missing, unless `make_folder` is False (a run folder removed under
    a running training must stay an error, not be made again without its other files).
    An OSError names `path`, the file asked for, rather than the hidden temp file.
    """
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        exc.filename = str(path)
        raise
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            exc.filename, exc.filename2 = str(path), None
        raise
    fsync_dir(path.parent)


def make_folder(path: Path, what: str, fix: str) -> None:
    """mkdir -p, with a failure (permissions, a file in the way) as one WorkError line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkError(f"cannot make {what}: {os_reason(exc)}", path, fix) from exc


def write_text(path: Path, text: str) -> None:
    """`atomic_write` of UTF-8 text."""
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of bytes already in memory."""
    atomic_write(path, lambda f: f.write(data))


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
    path: Path,
    write: Callable[[BinaryIO], object],
    what: str,
    fix: str = DISK_FIX,
    make_folder: bool = True,
) -> None:
    """`atomic_write`, with a failure (disk full, no permission) as one WorkError line."""
    try:
        atomic_write(path, write, make_folder)
    except OSError as exc:
        if not make_folder and not path.parent.is_dir():
            raise WorkError(f"could not write {what}: {FOLDER_GONE}", path, GONE_FIX) from exc
        raise WorkError(f"could not write {what}: {os_reason(exc)}", path, fix) from exc


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


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temp file beside `path`, then rename over it: never a torn file at `path`.

    Unlike files.atomic_write this does not fsync each file (about 1 ms apiece, 10 s for
    the 10,000 PNGs of the test split); callers fsync the folders once at the end. Plain
    os calls: a file object and mkstemp's random names cost more than the write itself here.
    The temp name holds the process and thread ids, so concurrent writers never share one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        # Left by a killed process that had this pid and thread id: no live writer uses it.
        tmp.unlink()
        fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_folder(out_dir: Path, fix: str) -> None:
    """Refuse an output folder that is a file, or below one (UsageError)."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise UsageError("the output is not a folder", out_dir, fix)
    check_no_file_above(out_dir, fix)


@contextlib.contextmanager
def staged_folder(out_dir: Path, fix: str) -> Iterator[Path]:
    """A hidden folder to write a set of files into, beside `out_dir` when it is new (then
    renamed to it when the block ends without an error), else inside it (then each file
    renamed over the one it replaces, on the same file system); on an error (or Ctrl-C) the
    hidden folder is removed, and so are the folders above `out_dir` made for it. Every write
    and check happens before the first rename, so a failure leaves `out_dir` as it was. `fix`
    says what to do when `out_dir` cannot be used.
    """
    check_output_folder(out_dir, fix)
    made = [f for f in out_dir.parents if not os.path.lexists(f)]  # deepest first
    staging = None
    try:
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            where = out_dir if out_dir.is_dir() else out_dir.parent
            # A short fixed prefix: a name of its own could push a long name past NAME_MAX.
            staging = Path(tempfile.mkdtemp(prefix=".vqtool-", suffix=".partial", dir=where))
            # mkdtemp's 0o700 -> what mkdir would give, keeping a setgid bit from the parent.
            os.chmod(staging, (os.stat(staging).st_mode & 0o7000) | (0o777 & ~current_umask()))
        except OSError as exc:
            what = f"could not make the folder: {os_reason(exc)}"
            raise WorkError(what, out_dir, DISK_FIX) from exc
        yield staging
        _move_in(staging, out_dir)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    # Files moved one by one leave the hidden folder empty; a renamed one is gone already.
    shutil.rmtree(staging, ignore_errors=True)


def _move_in(staging: Path, out_dir: Path) -> None:
    """The staged files made durable, then moved into `out_dir` (in name order)."""
    try:
        for path in staging.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if staging.parent != out_dir:
            if os.path.lexists(out_dir):
                # rename(2) would silently replace an empty folder that appeared meanwhile.
                raise FileExistsError(17, "the folder appeared while vqtool was writing")
            os.rename(staging, out_dir)
        else:
            for path in sorted(staging.iterdir()):
                os.replace(path, out_dir / path.name)
    except OSError as exc:
        raise WorkError(f"could not move the files into place: {os_reason(exc)}", out_dir,
                        DISK_FIX) from exc  # fmt: skip
    fsync_dir(out_dir)
    fsync_dir(out_dir.parent)
