"""Image folders as a dataset (`[data] dataset = "folder"`): found, split, decoded once into
a uint8 cache that later runs memory-map.

The images are the files below `path` with an image extension Pillow knows (recursive; hidden
files and folders skipped; symbolic links followed, each folder walked once, so a link loop
ends). The held-out split is `path/test/` when that folder exists (everything else trains),
else each file by a hash of its path below `path` (`test_fraction`): adding files never moves an
old file between splits.

Each image becomes `image_size` (H, W) as `resize` says (vqtool.images.fit): "centre-crop"
scales its short side to fit and keeps the centre; "stretch" resizes it to H x W;
"random-crop" stores it like "centre-crop" at 9/8 of H x W (`stored_size`), so that training
can take a different H x W window each epoch (`vqtool.data.datasets.RandomCrops`) and
evaluation the centre one; "native-crop" stores each image at its own size times `scale`
(scaled up only to cover H x W: vqtool.images.fit.native_size), all of them in one flat array
(vqtool.data.photos), from which training takes windows at the photo's own pixels. A file is
left out (and named in a note) only when it cannot be read: its header or pixel data is
damaged, or it declares too many pixels.

The cache, `<data_dir>/folder-cache/<folder>-<H>x<W>-<resize>-<hash>/`, one per folder and
settings (the hash covers the folder's real path, image_size, resize, test_fraction and, for
"native-crop", scale):
- `train.npy`, `test.npy`: uint8 (N, 3, Hs, Ws), the images of each split in the sorted order
  of their paths, read with `numpy.load(..., allow_pickle=False, mmap_mode="c")`; for
  "native-crop", uint8 (P,): each image's (3, h, w) pixels one after another, with
  `train-sizes.npy`, `test-sizes.npy`: int64 (N, 2), each image's (h, w);
- `manifest.json`: `{"format": "vqtool-folder-cache", "version": 1, "settings": {...},
  "stored_size": [Hs, Ws], "train": [[path, bytes, mtime_ns], ...], "test": [...],
  "skipped": [[path, bytes, mtime_ns, reason], ...]}`.
A cache is used only when its manifest lists exactly the files found now (path, size, mtime)
and its arrays have the shapes it names; otherwise it is rebuilt. It is built in a hidden
folder beside it and renamed into place once complete, under a lock, so a killed build leaves
nothing that a later run would trust.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from vqtool.errors import UsageError, VqtoolError, WorkError, counted, first_line, os_reason
from vqtool.events import Progress
from vqtool.files import fsync_dir, make_folder, write_text
from vqtool.images import fit
from vqtool.images.read import declared_size, open_image, read_resized, to_rgb
from vqtool.profiles import DataConfig

CACHE_FORMAT = "vqtool-folder-cache"
CACHE_VERSION = 1
CACHE_DIR = "folder-cache"
SPLITS = ("train", "test")
TEST_FOLDER = "test"
# Threads decode in parallel where that pays: Pillow releases the GIL while it decodes and
# resizes, where a photo's time goes, but a thumbnail's time is mostly Python's own per-file
# work, for which threads only contend (benchmarks/bench_folder.py measures both). So the
# first task is decoded alone and timed: slower than THREADS_FROM_S per image, the rest goes
# to DECODE_THREADS threads, in tasks of at most DECODE_CHUNK files (at least 4 per thread).
DECODE_CHUNK = 64
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
THREADS_FROM_S = 0.5e-3
NAMED_SKIPS = 3  # skipped files named in a note; the rest are counted
# The most bytes a "native-crop" cache may decode photos into (8 GiB: 238 photos of 12
# megapixels at their own size, four times as many at data.scale 0.5). Training reads its
# windows from the memory-mapped cache, at the speed of memory while the cache fits in the
# page cache and of the disk beyond; a folder that needs more is refused before decoding.
MAX_PHOTO_BYTES = 1 << 33


class FileEntry(NamedTuple):
    rel: str  # path below the folder, with '/' separators
    size: int  # bytes; -1 when the file could not be looked at (a broken link)
    mtime_ns: int


class Scan(NamedTuple):
    files: list[FileEntry]  # image files, sorted by path
    not_images: list[str]  # other files, left out
    unlisted: list[tuple[str, str]]  # subfolders that could not be listed: (path, reason)


class FolderSettings(NamedTuple):
    """Everything that shapes a cache's contents."""

    root: Path  # the folder's real path
    image_size: tuple[int, int]  # (H, W) the model sees
    resize: str  # "centre-crop", "random-crop", "native-crop" or "stretch"
    test_fraction: float
    scale: float = 1.0  # "native-crop": the factor of each image's own size it is kept at

    @classmethod
    def from_config(cls, data: DataConfig) -> FolderSettings:
        return cls(
            Path(os.path.realpath(data.path)),
            data.image_size,
            data.resize,
            data.test_fraction,
            data.scale,
        )

    @property
    def native(self) -> bool:
        """Each image kept at its own size, all in one flat array (vqtool.data.photos)."""
        return self.resize == fit.NATIVE_CROP

    @property
    def stored_size(self) -> tuple[int, int]:
        """(Hs, Ws) as cached: image_size, plus an eighth for random crops to move in (not
        used for "native-crop", where each image has its own: `native_size`)."""
        return fit.stored_size(self.image_size, self.resize)

    def native_size(self, declared: tuple[int, int]) -> tuple[int, int]:
        """(h, w) a "native-crop" image of `declared` (h, w) is cached at."""
        return fit.native_size(declared, self.image_size, self.scale)

    def as_json(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "folder": str(self.root),
            "image_size": list(self.image_size),
            "resize": self.resize,
            "test_fraction": self.test_fraction,
        }
        if self.native:  # the other modes' caches keep the names they had before the key
            settings["scale"] = self.scale
        return settings

    @property
    def key(self) -> str:
        """The cache folder's name: readable, and unique to these settings."""
        digest = hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()
        h, w = self.image_size
        return f"{self.root.name or 'root'}-{h}x{w}-{self.resize}-{digest[:12]}"


class FolderCache(NamedTuple):
    """A valid cache, its arrays memory-mapped."""

    folder: Path
    # split -> uint8 (N, 3, Hs, Ws); "native-crop": uint8 (P,), every image's (3, h, w) pixels
    arrays: dict[str, np.ndarray]
    sizes: dict[str, np.ndarray]  # split -> int64 (N, 2): each image's (h, w) as cached
    files: dict[str, list[FileEntry]]  # split -> the files behind each row
    skipped: list[tuple[str, str]]  # (path, reason): image files that could not be read
    notes: list[str]  # what a user should hear about: files left out and why
    built_s: float | None  # seconds spent building it now; None when it was reused


def image_extensions() -> frozenset[str]:
    return frozenset(Image.registered_extensions())


def scan_folder(root: Path) -> Scan:
    """The image files below `root` with their sizes and mtimes, sorted by path."""
    extensions = image_extensions()
    files: list[FileEntry] = []
    not_images: list[str] = []
    unlisted: list[tuple[str, str]] = []
    top = os.stat(root)
    seen = {(top.st_dev, top.st_ino)}
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(root / rel_dir) as listing:
                entries = list(listing)
        except OSError as exc:
            if not rel_dir:
                raise WorkError(
                    f"cannot list the image folder: {os_reason(exc)}", root, "check its permissions"
                ) from exc
            unlisted.append((rel_dir, os_reason(exc)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_image = os.path.splitext(entry.name)[1].lower() in extensions
            try:
                info = entry.stat()  # follows links
            except OSError:
                # A broken link or a link loop: an image that cannot be read, else nothing.
                if is_image:
                    files.append(FileEntry(rel, -1, 0))
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) not in seen:  # a link back up is walked once
                    seen.add((info.st_dev, info.st_ino))
                    pending.append(rel)
            elif stat.S_ISREG(info.st_mode):
                if is_image:
                    files.append(FileEntry(rel, info.st_size, info.st_mtime_ns))
                else:
                    not_images.append(rel)
    files.sort()
    return Scan(files, sorted(not_images), sorted(unlisted))


def split_of(rel: str, test_fraction: float, has_test_folder: bool) -> str:
    """ "test" or "train" for a file at `rel` below the folder.

    Without a test/ folder, the first 8 bytes of sha256(rel) as a fraction of 2**64 decide:
    a file's split depends on its own path alone.
    """
    if has_test_folder:
        return "test" if rel.startswith(TEST_FOLDER + "/") else "train"
    digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).digest()
    return "test" if int.from_bytes(digest[:8], "big") < test_fraction * 2.0**64 else "train"


def assign_splits(
    settings: FolderSettings, files: Sequence[FileEntry]
) -> dict[str, list[FileEntry]]:
    has_test = (settings.root / TEST_FOLDER).is_dir()
    splits: dict[str, list[FileEntry]] = {split: [] for split in SPLITS}
    for entry in files:
        splits[split_of(entry.rel, settings.test_fraction, has_test)].append(entry)
    return splits


def decode_image(path: Path, stored: tuple[int, int], resize: str) -> np.ndarray:
    """An image file -> uint8 (3, Hs, Ws) RGB at its `stored` size (FolderSettings.stored_size),
    sized as `resize` says (vqtool.images.fit).

    JPEGs are decoded straight at a reduced scale when they are much larger than needed
    (Pillow's draft mode: DCT scaling), then resized with Pillow's bicubic filter (antialiased).
    Raises VqtoolError for a file that cannot be read or declares too many pixels; anything
    else that fails is not the file's fault, and escapes as it is.
    """
    with open_image(path) as image:
        w, h = image.size
        need = stored if resize == "stretch" else fit.cover_size((h, w), stored)
        if image.format == "JPEG":
            image.draft("RGB", (need[1], need[0]))
        try:
            image.load()
            rgb = to_rgb(image)  # h', w' >= need after draft
        except Exception as exc:  # truncated or corrupt pixel data
            raise WorkError(f"cannot read the image: {first_line(exc)}", path) from exc
        # Resized inside the `with`: for an RGB file `rgb` is `image`, whose close() frees it.
        return np.asarray(fit.resize_to(rgb, stored, resize)).transpose(2, 0, 1)


def decode_native(path: Path, stored: tuple[int, int]) -> np.ndarray:
    """An image file -> uint8 (3, h, w) RGB at `stored` (h, w), its "native-crop" size
    (FolderSettings.native_size): its own pixels when that is its own size, else resized with
    Pillow's bicubic filter (a JPEG shrunk by half or more decoded at a reduced scale first).
    Raises VqtoolError for a file that cannot be read or is too large to decode."""
    return read_resized(path, stored, "stretch").numpy()


def ensure_cache(
    data: DataConfig,
    data_dir: Path,
    on_progress: Progress | None = None,
    need: Sequence[str] = (),
) -> FolderCache:
    """The folder's cache under `data_dir`: reused when it matches the folder, else built.

    Raises UsageError for a missing folder, one without images, or one where a split in `need`
    gets no image (checked before any image is decoded; exit 2), WorkError when no image, or
    none of a needed split, can be read (exit 1).
    """
    settings = FolderSettings.from_config(data)
    root = settings.root
    if not root.is_dir():
        what = "the image folder is a file" if root.exists() else "no such image folder"
        raise UsageError(what, data.path, "set data.path to a folder of images")
    cache_root = Path(data_dir) / CACHE_DIR
    make_folder(cache_root, "the image cache folder", "pass --data-dir a writable folder")
    with _locked(cache_root / f".{settings.key}.lock"):
        scan = scan_folder(root)
        if not scan.files:
            raise UsageError(
                "no images in the image folder"
                + (f" ({len(scan.not_images):,} other files)" if scan.not_images else ""),
                root,
                "put JPEG or PNG files in it (subfolders are searched), or change data.path",
            )
        has_test = (root / TEST_FOLDER).is_dir()
        counts = {split: len(files) for split, files in assign_splits(settings, scan.files).items()}
        for split in need:
            if counts[split] == 0:
                raise _empty_split(split, data, has_test, counts)
        folder = cache_root / settings.key
        built_s = None
        cache = _open_valid(folder, settings, scan.files)
        if cache is None:
            start = time.perf_counter()
            _build(folder, settings, scan.files, on_progress)
            built_s = time.perf_counter() - start
            cache = _open_valid(folder, settings, scan.files)
            if cache is None:  # pragma: no cover - only if the disk changed it under us
                raise WorkError("the image cache just written does not read back", folder)
    for split in need:
        if len(cache.arrays[split]) == 0:
            raise _unreadable_split(split, data, cache.skipped)
    notes = _notes(scan, cache, settings, built_s)
    return cache._replace(notes=notes, built_s=built_s)


def _empty_split(
    split: str, data: DataConfig, has_test: bool, counts: Mapping[str, int]
) -> UsageError:
    """Why a split has no image: how the folder's files were split, and how to change it."""
    head = f"the image folder has no {split} images"
    if has_test:
        if split == "train":
            held = counted(counts["test"], "image")
            why = f"its test/ subfolder holds the held-out images ({held}) and none lies outside it"
            return UsageError(f"{head}: {why}", data.path, "put the training images outside test/")
        return UsageError(
            f"{head}: its test/ subfolder holds none",
            data.path,
            "put images in test/, or remove test/ to hold out data.test_fraction of them",
        )
    why = (
        "without a test/ subfolder, each file goes to train or test by a hash of its path below "
        f"the folder, data.test_fraction = {data.test_fraction:g} of them to test, and that put "
        f"{counted(counts['train'], 'image')} in train and {counts['test']:,} in test"
    )
    fix = (
        "add a test/ subfolder of images, or raise data.test_fraction"
        if split == "test"
        else "add images, lower data.test_fraction (0 trains on all of them), "
        "or put the held-out images in a test/ subfolder"
    )
    return UsageError(f"{head}: {why}", data.path, fix)


def _unreadable_split(
    split: str, data: DataConfig, skipped: Sequence[tuple[str, str]]
) -> WorkError:
    """A split whose every file was left out as unreadable."""
    rel, reason = skipped[0]
    return WorkError(
        f"the image folder has no {split} images: none of its {split} files could be read "
        f"({counted(len(skipped), 'file')} left out in all, the first: {rel}: {reason})",
        data.path,
        "replace the damaged files",
    )


def _notes(
    scan: Scan, cache: FolderCache, settings: FolderSettings, built_s: float | None
) -> list[str]:
    notes = []
    counts = {split: len(files) for split, files in cache.files.items()}
    if built_s is not None:
        native = ""
        if settings.native:
            stored = _bytes_text(sum(array.nbytes for array in cache.arrays.values()))
            native = f" at their own size times {settings.scale:g} ({stored})"
        notes.append(
            f"decoded {counted(counts['train'] + counts['test'], 'image')} of {settings.root}"
            f"{native} in {built_s:.1f} s into {cache.folder} (later runs reuse it)"
        )
    if cache.skipped:
        named = ", ".join(f"{rel} ({reason})" for rel, reason in cache.skipped[:NAMED_SKIPS])
        more = len(cache.skipped) - NAMED_SKIPS
        notes.append(
            f"{len(cache.skipped):,} of {len(scan.files):,} image files could not be read and "
            f"are left out: {named}" + (f" and {more:,} more" if more > 0 else "")
        )
    if scan.unlisted:
        rel, reason = scan.unlisted[0]
        notes.append(
            f"{counted(len(scan.unlisted), 'subfolder')} could not be listed and are left out: "
            f"{rel} ({reason})" + (", ..." if len(scan.unlisted) > 1 else "")
        )
    if scan.not_images:
        named = ", ".join(scan.not_images[:NAMED_SKIPS])
        notes.append(
            f"{counted(len(scan.not_images), 'non-image file')} left out: {named}"
            + (", ..." if len(scan.not_images) > NAMED_SKIPS else "")
        )
    return notes


def _bytes_text(count: int) -> str:
    """Bytes for people: '2.9 MB', '8.6 GB'."""
    return f"{count / 1e9:,.1f} GB" if count >= 10**8 else f"{count / 1e6:,.1f} MB"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (waiting for it): one process builds or checks a cache at a time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _entries(rows: Any) -> list[FileEntry]:
    return [FileEntry(str(rel), int(size), int(mtime)) for rel, size, mtime, *_ in rows]


def _open_valid(
    folder: Path, settings: FolderSettings, files: Sequence[FileEntry]
) -> FolderCache | None:
    """The cache in `folder` when it was built from exactly `files` with `settings`, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if (
            manifest.get("format") != CACHE_FORMAT
            or manifest.get("version") != CACHE_VERSION
            or manifest.get("settings") != settings.as_json()
        ):
            return None
        split_files = {split: _entries(manifest[split]) for split in SPLITS}
        skipped_rows = manifest["skipped"]
        listed = sorted([*split_files["train"], *split_files["test"], *_entries(skipped_rows)])
        if listed != list(files):
            return None
        arrays, sizes = {}, {}
        for split in SPLITS:
            count = len(split_files[split])
            array = np.load(folder / f"{split}.npy", mmap_mode="c", allow_pickle=False)
            if settings.native:
                stored = np.load(folder / f"{split}-sizes.npy", allow_pickle=False)
                if stored.dtype != np.int64 or stored.shape != (count, 2):
                    return None
                if (stored < np.array(settings.image_size)).any():
                    return None
                shape: tuple[int, ...] = (3 * int((stored[:, 0] * stored[:, 1]).sum()),)
            else:
                stored = np.tile(np.array(settings.stored_size, np.int64), (count, 1))
                shape = (count, 3, *settings.stored_size)
            if array.dtype != np.uint8 or array.shape != shape:
                return None
            arrays[split], sizes[split] = array, stored
        skipped = [(str(row[0]), str(row[3])) for row in skipped_rows]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # missing, torn or foreign: rebuilt
    return FolderCache(folder, arrays, sizes, split_files, skipped, [], None)


def _remove_stale_builds(cache_root: Path, key: str) -> None:
    """Delete the hidden folders of this key left by builds whose process is gone (killed):
    `.<key>.<pid>.tmp` (a build) and `.<key>.<pid>.old` (a replaced cache)."""
    for stale in cache_root.glob(f".{key}.*"):
        pid, _, kind = stale.name.removeprefix(f".{key}.").partition(".")
        if kind not in ("tmp", "old") or not stale.is_dir():
            continue
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build(
    folder: Path,
    settings: FolderSettings,
    files: Sequence[FileEntry],
    on_progress: Progress | None,
) -> None:
    """Decode every file into a new cache folder, then rename it over `folder`."""
    cache_root = folder.parent
    _remove_stale_builds(cache_root, settings.key)
    tmp = cache_root / f".{settings.key}.{os.getpid()}.tmp"
    try:
        tmp.mkdir()
        splits = assign_splits(settings, files)
        decoding = _decode_photos if settings.native else _decode_images
        splits, arrays, sizes, skipped, failed = decoding(tmp, settings, splits, on_progress)
        if len(skipped) + sum(len(bad) for bad in failed.values()) == len(files):
            reasons = [reason for _, reason in skipped]
            first = [*reasons, *(reason for bad in failed.values() for _, reason in bad)][0]
            none = (
                "the one image file could not be read"
                if len(files) == 1
                else f"none of the {len(files):,} image files could be read"
            )
            raise WorkError(
                f"{none} (the first: {first})",
                settings.root,
                "check that the folder holds JPEG or PNG images",
            )
        for split, bad in failed.items():
            skipped += [(splits[split][i], reason) for i, reason in bad]
            if bad:
                keep = np.setdiff1d(np.arange(len(splits[split])), [i for i, _ in bad])
                if settings.native:
                    arrays[split] = _compact_photos(
                        tmp / f"{split}.npy", arrays[split], sizes[split], keep
                    )
                    sizes[split] = sizes[split][keep]
                else:
                    arrays[split] = _compact(tmp / f"{split}.npy", arrays[split], keep)
                bad_rows = {i for i, _ in bad}
                splits[split] = [e for i, e in enumerate(splits[split]) if i not in bad_rows]
        for split, array in arrays.items():
            array.flush()
            with open(tmp / f"{split}.npy", "rb+") as f:
                os.fsync(f.fileno())
        del arrays
        for split, stored in sizes.items():
            np.save(tmp / f"{split}-sizes.npy", stored, allow_pickle=False)
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "settings": settings.as_json(),
            "stored_size": list(settings.stored_size),
            **{split: [list(e) for e in entries] for split, entries in splits.items()},
            "skipped": [[*entry, reason] for entry, reason in sorted(skipped)],
        }
        # The manifest is written last: a folder without one is never trusted.
        write_text(tmp / "manifest.json", json.dumps(manifest) + "\n")
        _publish(tmp, folder)
    except OSError as exc:
        raise WorkError(
            f"could not write the image cache: {os_reason(exc)}",
            cache_root,
            "free some space, or pass --data-dir a writable folder with room",
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Decoded(NamedTuple):
    """A cache's arrays as decoded, before the files that failed are taken out."""

    splits: dict[str, list[FileEntry]]  # the files of each split that were decoded
    arrays: dict[str, np.memmap]  # split -> the cache's array, row i from file i
    sizes: dict[str, np.ndarray]  # "native-crop": split -> int64 (N, 2); else empty
    skipped: list[tuple[FileEntry, str]]  # files left out before decoding, with the reason
    failed: dict[str, list[tuple[int, str]]]  # split -> (row, reason) of the failed decodes


def _decode_images(
    tmp: Path,
    settings: FolderSettings,
    splits: dict[str, list[FileEntry]],
    on_progress: Progress | None,
) -> Decoded:
    """A cache's arrays (N, 3, Hs, Ws) for a fixed stored size: every image decoded into its
    row."""
    shape = (3, *settings.stored_size)
    arrays = {
        split: np.lib.format.open_memmap(
            tmp / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(len(entries), *shape)
        )
        for split, entries in splits.items()
    }

    def decode(split: str, i: int, entry: FileEntry) -> None:
        arrays[split][i] = decode_image(
            settings.root / entry.rel, settings.stored_size, settings.resize
        )

    return Decoded(splits, arrays, {}, [], _decode_all(splits, decode, on_progress))


def _decode_photos(
    tmp: Path,
    settings: FolderSettings,
    splits: dict[str, list[FileEntry]],
    on_progress: Progress | None,
) -> Decoded:
    """A "native-crop" cache's arrays (P,): each file's size read from its header first, so
    that the flat arrays are made at their final size (and a folder too large for the cache
    is refused before any image is decoded), then every image decoded into its place."""
    kept: dict[str, list[FileEntry]] = {}
    sizes: dict[str, np.ndarray] = {}
    skipped: list[tuple[FileEntry, str]] = []
    for split, entries in splits.items():
        kept[split], stored = [], []
        for entry in entries:
            try:
                declared = declared_size(settings.root / entry.rel)
            except VqtoolError as exc:
                skipped.append((entry, exc.what))
                continue
            kept[split].append(entry)
            stored.append(settings.native_size(declared))
        sizes[split] = np.array(stored, np.int64).reshape(-1, 2)
    lengths = {split: 3 * stored[:, 0] * stored[:, 1] for split, stored in sizes.items()}
    total = sum(int(length.sum()) for length in lengths.values())
    if total > MAX_PHOTO_BYTES:
        fits = math.floor(100 * settings.scale * math.sqrt(MAX_PHOTO_BYTES / total)) / 100
        raise UsageError(
            f"the photos take {_bytes_text(total)} decoded at data.scale {settings.scale:g}, "
            f"more than the photo cache holds ({_bytes_text(MAX_PHOTO_BYTES)})",
            settings.root,
            f"set data.scale={fits:g} or lower, or train on fewer photos",
        )
    arrays = {
        split: np.lib.format.open_memmap(
            tmp / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(int(length.sum()),)
        )
        for split, length in lengths.items()
    }
    starts = {split: np.cumsum(length) - length for split, length in lengths.items()}

    def decode(split: str, i: int, entry: FileEntry) -> None:
        h, w = (int(side) for side in sizes[split][i])
        start = int(starts[split][i])
        image = decode_native(settings.root / entry.rel, (h, w))
        arrays[split][start : start + 3 * h * w] = image.reshape(-1)

    return Decoded(kept, arrays, sizes, skipped, _decode_all(kept, decode, on_progress))


def _decode_all(
    splits: dict[str, list[FileEntry]],
    decode: Callable[[str, int, FileEntry], None],
    on_progress: Progress | None,
) -> dict[str, list[tuple[int, str]]]:
    """`decode(split, i, entry)` each split's files, row i from file i, each into its place in
    the split's array; returns the failures."""
    total = sum(len(entries) for entries in splits.values())
    chunk = max(1, min(DECODE_CHUNK, total // (4 * DECODE_THREADS)))
    tasks = [
        (split, start, entries[start : start + chunk])
        for split, entries in splits.items()
        for start in range(0, len(entries), chunk)
    ]

    def run(task: tuple[str, int, list[FileEntry]]) -> tuple[str, list[tuple[int, str]], int]:
        split, start, chunk = task
        bad = []
        for i, entry in enumerate(chunk, start):
            try:
                decode(split, i, entry)
            except VqtoolError as exc:  # every way a file can be bad: skipped and named
                bad.append((i, exc.what))
        return split, bad, len(chunk)

    failed: dict[str, list[tuple[int, str]]] = {split: [] for split in SPLITS}
    done = 0

    def finished(split: str, bad: list[tuple[int, str]], count: int) -> None:
        nonlocal done
        failed[split] += bad
        done += count
        if on_progress is not None:
            on_progress(done, total)

    if on_progress is not None:
        on_progress(0, total)
    if not tasks:  # every file left out before decoding
        return failed
    start = time.perf_counter()
    finished(*run(tasks[0]))
    per_image = (time.perf_counter() - start) / len(tasks[0][2])
    if per_image < THREADS_FROM_S or DECODE_THREADS == 1:
        for task in tasks[1:]:
            finished(*run(task))
    else:
        with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
            futures = [pool.submit(run, task) for task in tasks[1:]]
            try:
                for future in concurrent.futures.as_completed(futures):
                    finished(*future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    for bad in failed.values():
        bad.sort()
    return failed


def _compact(path: Path, array: np.ndarray, keep: np.ndarray) -> np.memmap:
    """Rewrite the array at `path` with only the rows `keep`."""
    part = path.with_suffix(".part.npy")
    out = np.lib.format.open_memmap(
        part, mode="w+", dtype=np.uint8, shape=(len(keep), *array.shape[1:])
    )
    for begin in range(0, len(keep), 4096):
        rows = keep[begin : begin + 4096]
        out[begin : begin + len(rows)] = array[rows]
    out.flush()
    del array
    os.replace(part, path)
    return out


def _compact_photos(
    path: Path, pixels: np.ndarray, sizes: np.ndarray, keep: np.ndarray
) -> np.memmap:
    """Rewrite the flat "native-crop" array at `path` with only the images `keep`."""
    lengths = 3 * sizes[:, 0] * sizes[:, 1]
    starts = np.cumsum(lengths) - lengths
    part = path.with_suffix(".part.npy")
    out = np.lib.format.open_memmap(
        part, mode="w+", dtype=np.uint8, shape=(int(lengths[keep].sum()),)
    )
    at = 0
    for i in keep.tolist():
        out[at : at + lengths[i]] = pixels[starts[i] : starts[i] + lengths[i]]
        at += int(lengths[i])
    out.flush()
    del pixels
    os.replace(part, path)
    return out


def _publish(tmp: Path, folder: Path) -> None:
    """Put the finished cache at `folder`, replacing an old one (renames only)."""
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
