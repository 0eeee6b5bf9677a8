"""CIFAR-10: download, verify, extract atomically, validate and load the python batches.

The dataset lives in `<data_dir>/cifar-10-batches-py/` in the official python layout
(https://www.cs.toronto.edu/~kriz/cifar.html): `data_batch_1..5` and `test_batch` are pickled
dicts holding `data` (uint8, N x 3072, channel-major R, G, B rows of 32 x 32) and `labels`.
Everything temporary (the partial download, the extraction folder, the old folder being
replaced) lives inside `data_dir`, so nothing is written anywhere else and a failure at any
step leaves the data folder as it was.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import io
import os
import pickle
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from vqtool.errors import UsageError, WorkError, os_reason
from vqtool.events import ByteProgress
from vqtool.files import make_folder

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SPLITS = {"train": TRAIN_FILES, "test": TEST_FILES}

DOWNLOAD_TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20
IMAGE_SHAPE = (3, 32, 32)
# Label -> class name, as batches.meta lists them (the names are fixed by the dataset).
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
ROW_BYTES = 3 * 32 * 32

_URL_SCHEMES = {"http", "https", "ftp", "file"}
_TMP_PREFIX = ".vqtool-"
_REDOWNLOAD = "re-download it with vqtool download --force"


class DownloadResult(NamedTuple):
    """Where the dataset is, and whether it was already there (nothing was downloaded)."""

    folder: Path
    already_present: bool


def resolve_data_dir(given: Path | None) -> tuple[Path, str]:
    """The data folder (`given`, else `$VQTOOL_DATA_DIR`, else `./data`) and, for messages,
    which of the three chose it."""
    if given is not None:
        return Path(given), "given with --data-dir"
    env = os.environ.get("VQTOOL_DATA_DIR")
    if env:
        return Path(env), "from $VQTOOL_DATA_DIR"
    return Path("data"), "the default: neither --data-dir nor $VQTOOL_DATA_DIR is set"


def default_data_dir() -> Path:
    """The data folder when none is given: `$VQTOOL_DATA_DIR`, else `./data`."""
    return resolve_data_dir(None)[0]


def cifar10_present(data_dir: Path) -> bool:
    """True when `data_dir/cifar-10-batches-py/` holds all six batch files (not validated)."""
    folder = Path(data_dir) / BATCHES_DIR
    return folder.is_dir() and all((folder / n).is_file() for n in TRAIN_FILES + TEST_FILES)


def _numpy_attr(submodule: str, name: str) -> Any:
    # numpy >= 2 pickles name numpy._core; older pickles (and the official archive) numpy.core.
    # Prefer numpy._core: importing numpy.core under numpy 2 warns.
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar")):
        obj = _numpy_attr(submodule, name)
        for base in ("numpy.core", "numpy._core"):
            allowed[(f"{base}.{submodule}", name)] = obj
    # Protocol >= 5 pickles of arrays rebuild them with numeric._frombuffer.
    frombuffer = _numpy_attr("numeric", "_frombuffer")
    for base in ("numpy.core", "numpy._core"):
        allowed[(f"{base}.numeric", "_frombuffer")] = frombuffer
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Only the encodings that Python's own pickler emits; never an arbitrary codec lookup.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only the numpy types a CIFAR-10 batch holds.

    Anything else (`os.system`, `builtins.eval`, ...) raises WorkError instead of being looked
    up, so a doctored batch cannot run code while it is read.
    """

    def __init__(self, file: IO[bytes], path: Path) -> None:
        # latin1 turns Python 2 str (keys and the raw array bytes) into str that numpy accepts.
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WorkError(
                f"refusing to unpickle {module}.{name}",
                self._path,
                f"the file is not a CIFAR-10 batch; {_REDOWNLOAD}",
            ) from None


def _read_batch(path: Path) -> dict[str, Any]:
    """Unpickle one batch safely and return it with str keys."""
    try:
        with open(path, "rb") as f:
            raw = SafeUnpickler(f, path).load()
    except WorkError:
        raise
    except FileNotFoundError:
        raise WorkError("missing batch file", path, _REDOWNLOAD) from None
    except OSError as e:
        raise WorkError(f"cannot read batch file: {os_reason(e)}", path, _REDOWNLOAD) from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, ValueError, ...
        raise WorkError(f"corrupt batch file: {e}", path, _REDOWNLOAD) from None
    if not isinstance(raw, dict):
        raise WorkError(f"batch is a {type(raw).__name__}, not a dict", path, _REDOWNLOAD)
    # Official batches read with encoding="bytes" (or re-pickled that way) have bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _check_batch(batch: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The batch's (data (N, 3072) uint8, labels (N,) int64), or WorkError naming the file."""
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise WorkError("batch has no uint8 'data' array", path, _REDOWNLOAD)
    if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] != ROW_BYTES:
        raise WorkError(
            f"batch 'data' has shape {tuple(data.shape)}, expected (N, {ROW_BYTES})",
            path,
            _REDOWNLOAD,
        )
    try:
        labels = np.asarray(batch.get("labels"), dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise WorkError("batch 'labels' are not integers", path, _REDOWNLOAD) from None
    if labels.shape != (data.shape[0],):
        raise WorkError(
            f"batch has {labels.size} labels for {data.shape[0]} images", path, _REDOWNLOAD
        )
    return data, labels


def validate_cifar10(folder: Path) -> None:
    """Check that `folder` (a cifar-10-batches-py folder) holds six readable batches.

    Raises WorkError naming the first bad file. Reading uses the safe unpickler only.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkError("not a CIFAR-10 folder", folder, "run vqtool download")
    for name in TRAIN_FILES + TEST_FILES:
        path = folder / name
        _check_batch(_read_batch(path), path)


def _load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", "cifar10", "use 'train' or 'test'")
    folder = Path(data_dir) / BATCHES_DIR
    if not folder.is_dir():
        raise WorkError(
            "CIFAR-10 not found",
            folder,
            "run vqtool download (offline: vqtool download --source FILE)",
        )
    parts = [_check_batch(_read_batch(folder / n), folder / n) for n in SPLITS[split]]
    return np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts])


def load_cifar10(data_dir: Path, split: str) -> torch.Tensor:
    """Images of one split ("train" or "test") as a uint8 tensor (N, 3, 32, 32), file order."""
    data, _ = _load_split(data_dir, split)
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, *IMAGE_SHAPE)))


def load_cifar10_labelled(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split at once (each of the two loaders above reads the batches
    on its own): uint8 (N, 3, 32, 32) and int64 (N,)."""
    data, labels = _load_split(data_dir, split)
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, *IMAGE_SHAPE)))
    return images, torch.from_numpy(labels)


def load_cifar10_labels(data_dir: Path, split: str) -> torch.Tensor:
    """Class labels (0..9) of one split as an int64 tensor (N,), in the order of load_cifar10."""
    _, labels = _load_split(data_dir, split)
    return torch.from_numpy(labels)


def _is_url(source: str) -> bool:
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    return scheme in _URL_SCHEMES


def _one_line(reason: object) -> str:
    """An exception or reason as one line (the CLI prints exactly one line per error)."""
    return " ".join(str(reason).split()) or type(reason).__name__


def _fetch_error(source: str, reason: object) -> WorkError:
    return WorkError(
        "could not download CIFAR-10",
        source,
        f"{reason}; check the network, or fetch the archive elsewhere and run "
        "vqtool download --source FILE",
    )


@contextmanager
def _open_source(source: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """Open a URL or a local file for streaming; yield (stream, total bytes or None)."""
    if not _is_url(source):
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed below, after the caller streams it
        except OSError as e:
            raise WorkError(
                f"cannot read the archive: {os_reason(e)}",
                source,
                "check the path given to --source",
            ) from None
        with f:
            yield f, os.fstat(f.fileno()).st_size
        return
    request = urllib.request.Request(source, headers={"User-Agent": "vqtool"})
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        raise WorkError(
            f"could not download CIFAR-10: HTTP {e.code} {_one_line(e.reason)}",
            source,
            "check the URL, or fetch the archive elsewhere and run vqtool download --source FILE",
        ) from None
    except urllib.error.URLError as e:
        raise _fetch_error(source, _one_line(e.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _fetch_error(source, _one_line(e)) from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


def _fetch(source: str, out: IO[bytes], out_path: Path, on_progress: ByteProgress | None) -> str:
    """Stream `source` into `out`; return the md5 hex digest of what was written."""
    digest = hashlib.md5(usedforsecurity=False)  # a checksum, not a security measure
    done = 0
    with _open_source(source) as (stream, total):
        if on_progress:
            on_progress(0, total)
        while True:
            try:
                chunk = stream.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise _fetch_error(source, _one_line(e)) from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:
                raise WorkError(
                    f"cannot write the download: {os_reason(e)}",
                    out_path,
                    "free some disk space or choose another --data-dir",
                ) from None
            digest.update(chunk)
            done += len(chunk)
            if on_progress:
                on_progress(done, total)
    if total is not None and done != total:
        raise _fetch_error(source, f"got {done} of {total} bytes")
    return digest.hexdigest()


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why this archive member must not be extracted, or None when it is a plain file/folder."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "a path leaving the folder ('..')"
    if member.issym() or member.islnk():
        return f"a link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "a device, fifo or other special file"
    return None


def _extract(archive: Path, into: Path, source: str) -> Path:
    """Extract the batches folder of `archive` into `into`; return the extracted folder.

    Every member is checked first (absolute paths, `..`, links and special files refuse the
    whole archive); only members under cifar-10-batches-py/ are written.
    """
    fix = "check that --source is the CIFAR-10 python archive (cifar-10-python.tar.gz)"
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()  # reads the whole archive: truncation shows up here
            wanted = []
            for m in members:
                problem = _member_problem(m)
                if problem:
                    raise WorkError(
                        f"refusing archive member {m.name!r}: {problem}",
                        source,
                        "the archive is not a clean CIFAR-10 archive; fetch it again",
                    )
                top = posixpath.normpath(m.name).split("/")[0]
                if top == BATCHES_DIR:
                    wanted.append(m)
            if hasattr(tarfile, "data_filter"):
                # Python >= 3.10.12 / 3.11.4: the standard library's own checks on top of ours.
                tf.extractall(into, members=wanted, filter="data")
            else:  # pragma: no cover - older Pythons; members were checked above
                tf.extractall(into, members=wanted)
    except WorkError:
        raise
    except tarfile.ReadError as e:
        if "could not be opened" in str(e):  # no compression method or tar header fits
            raise WorkError("not a tar archive", source, fix) from None
        raise WorkError(f"damaged archive: {_one_line(e)}", source, fix) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise WorkError(f"damaged archive: {_one_line(e)}", source, fix) from None
    folder = into / BATCHES_DIR
    if not folder.is_dir():
        raise WorkError(f"archive holds no {BATCHES_DIR}/ folder", source, fix)
    return folder


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree if it exists; never follows a link into a tree."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _install(new: Path, folder: Path) -> None:
    """Move `new` to `folder`; an existing `folder` is swapped aside first, then deleted."""
    if not (folder.exists() or folder.is_symlink()):
        os.replace(new, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-", dir=folder.parent))
    aside = old / "previous"
    os.replace(folder, aside)
    try:
        os.replace(new, folder)
    except OSError:
        os.replace(aside, folder)
        raise
    finally:
        _remove(old)


def _make_dirs(data_dir: Path) -> list[Path]:
    """Create `data_dir` and missing parents; return the folders created, deepest first."""
    created = []
    path = data_dir.absolute()
    while not path.exists():
        created.append(path)
        path = path.parent
    make_folder(data_dir, "the data folder", "choose another --data-dir")
    return created


def _check_md5_option(md5: str | None, verify: bool) -> str | None:
    """The md5 the archive must have, or None to skip the check."""
    if md5 is not None and not verify:
        raise UsageError(
            "--md5 and --no-verify contradict each other", "download", "give one of them"
        )
    if md5 is None:
        return CIFAR10_MD5 if verify else None
    if not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise UsageError(
            f"--md5 must be 32 hexadecimal digits, got {md5!r}", "download", "pass --md5 HEX"
        )
    return md5.lower()


def download_cifar10(
    data_dir: Path,
    source: str | None = None,
    md5: str | None = None,
    verify: bool = True,
    force: bool = False,
    on_progress: ByteProgress | None = None,
) -> DownloadResult:
    """Fetch, verify, extract and validate CIFAR-10 into `data_dir/cifar-10-batches-py/`.

    `source` is a URL (http, https, file) or a local archive path; default the official URL.
    The archive must have `md5` (default the official md5, whatever the source) unless
    `verify` is False; giving both `md5` and `verify=False` is a UsageError. A valid folder
    already there is kept (`already_present=True`) unless `force`; one that does not validate
    is a WorkError unless `force`, which replaces it. `on_progress(done, total)` gets byte
    counts (total None when unknown). Failures raise WorkError and leave no temporary file,
    no partial dataset folder and, when this call created `data_dir`, no `data_dir`.
    """
    expected = _check_md5_option(md5, verify)
    source = source or CIFAR10_URL
    data_dir = Path(data_dir)
    folder = data_dir / BATCHES_DIR
    if not force and (folder.exists() or folder.is_symlink()):
        try:
            validate_cifar10(folder)
        except WorkError as e:
            raise WorkError(
                f"the existing data folder does not validate: {e.what}",
                e.where or folder,
                "run vqtool download --force to replace it",
            ) from None
        return DownloadResult(folder, already_present=True)

    created = _make_dirs(data_dir)
    tmp_paths: list[Path] = []
    ok = False
    try:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tar.gz.part", dir=data_dir)
        archive = Path(name)
        tmp_paths.append(archive)
        with io.FileIO(fd, "wb") as out:
            got = _fetch(source, out, archive, on_progress)
        if expected is not None and got != expected:
            raise WorkError(
                f"checksum mismatch: got {got}, expected {expected}",
                source,
                "pass --md5 HEX for another archive, or --no-verify",
            )
        staging = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}extract-", dir=data_dir))
        tmp_paths.append(staging)
        new = _extract(archive, staging, source)
        validate_cifar10(new)
        try:
            _install(new, folder)
        except OSError as e:
            raise WorkError(
                f"cannot move the extracted data into place: {os_reason(e)}",
                folder,
                "check the permissions of the data folder",
            ) from None
        ok = True
    finally:
        for path in tmp_paths:
            _remove(path)
        if not ok:
            for path in created:  # deepest first; stops at the first folder someone filled
                try:
                    path.rmdir()
                except OSError:
                    break
    return DownloadResult(folder, already_present=False)
