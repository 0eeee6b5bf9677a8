"""Image files for code files: finding and reading them, RGB, padding, resizing, PNGs, grids.

Images travel as uint8 tensors (3, H, W) or batches (B, 3, H, W), like CIFAR-10's. Reading
checks an image's declared size (from its header, before any pixel is decoded) against
`MAX_IMAGE_PIXELS`, so a file that declares 40000 x 40000 pixels is refused without
allocating gigabytes.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
import unicodedata
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from vqtool.errors import UsageError, WorkError
from vqtool.files import write_all

MULTIPLE = 4  # the model's downsampling: image sides must be multiples of it
# The largest image vqtool reads: 4096 x 4096. Larger ones cost several GB in the model.
MAX_IMAGE_PIXELS = 1 << 24
# Longest part of a stored name, in bytes: room for "-NNN.png" within a 255-byte file name.
MAX_NAME_PART_BYTES = 200
MAX_NAME_CHARS = 1024
CIFAR10_INPUT = re.compile(r"cifar10:(test|train)(?::(\d+))?")
CIFAR10_FORMS = "cifar10:test, cifar10:train, cifar10:test:N or cifar10:train:N"


class ImageItem(NamedTuple):
    """One image to encode: its name in the code file, its size, and where its pixels are."""

    name: str
    size: tuple[int, int]  # (height, width) as stored in the file or the dataset
    path: Path | None  # the image file, or None for an image held in `pixels`
    pixels: Tensor | None  # uint8 (3, H, W) for dataset images


class FoundImages(NamedTuple):
    items: list[ImageItem]
    skipped: list[Path]  # files in folders that are not images


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (e.g. '64x64') -> (H, W); each side >= 1 and within MAX_IMAGE_PIXELS."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise UsageError(f"bad size {text!r}", "--size", "give HEIGHTxWIDTH, e.g. --size 64x64")
    size = (int(match[1]), int(match[2]))
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"size {text} is too large ({size[0] * size[1]:,} pixels)",
            "--size",
            f"use at most {MAX_IMAGE_PIXELS:,} pixels, e.g. 4096x4096",
        )
    return size


def padded_size(size: tuple[int, int], multiple: int = MULTIPLE) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple`."""
    return (math.ceil(size[0] / multiple) * multiple, math.ceil(size[1] / multiple) * multiple)


def pad_index(size: int, padded: int) -> Tensor:
    """Source index of each padded position along one axis: reflection, else edge copies.

    Reflection without repeating the edge (like numpy's 'reflect'): position size + j takes
    size - 2 - j. It needs pad <= size - 1; a side too short for that repeats its last pixel.
    """
    index = torch.arange(padded)
    pad = padded - size
    if pad > 0:
        tail = index[size:]
        index[size:] = 2 * (size - 1) - tail if pad <= size - 1 else size - 1
    return index


def pad_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Pad (..., h, w) at the bottom and right to `size` (H, W) >= (h, w): see pad_index."""
    h, w = image.shape[-2:]
    if (h, w) == size:
        return image
    rows, cols = pad_index(h, size[0]), pad_index(w, size[1])
    return image.index_select(-2, rows.to(image.device)).index_select(-1, cols.to(image.device))


def pad_to_multiple(images: Tensor, multiple: int = MULTIPLE) -> Tensor:
    """Pad (..., H, W) at the bottom and right so H and W are multiples of `multiple`."""
    return pad_to(images, padded_size((images.shape[-2], images.shape[-1]), multiple))


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (3, h, w) -> (3, H, W): Pillow's bicubic (antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == size:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    return from_pil(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC))


def from_pil(image: Image.Image) -> Tensor:
    """A Pillow image of any mode -> uint8 (3, H, W) RGB; grey is repeated, alpha dropped.

    16-bit grey ('I;16', and 'I' or 'F' with values above 255) keeps its top 8 bits; Pillow's
    own conversion would clip it to white.
    """
    wide = image.mode in ("I", "F") and float(np.asarray(image).max(initial=0)) > 255
    if image.mode.startswith("I;16") or wide:
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for; converting P straight warns
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def _too_large(path: Path, pixels: int | str) -> UsageError:
    shown = f"{pixels:,}" if isinstance(pixels, int) else pixels
    return UsageError(
        f"image too large: it declares {shown} pixels, more than vqtool's limit of "
        f"{MAX_IMAGE_PIXELS:,} (4096x4096)",
        path,
        "shrink it first (vqtool's --size resizes only images it can read)",
    )


def _unreadable(path: Path, exc: BaseException) -> WorkError:
    if isinstance(exc, UnidentifiedImageError):
        reason = "empty file" if _is_empty(path) else "not an image format Pillow reads"
    else:
        text = str(exc).strip().splitlines()
        reason = text[0][:200] if text else type(exc).__name__
    return WorkError(
        f"cannot read the image: {reason}", path, "the file is damaged or not an image; remove it"
    )


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _open(path: Path) -> Image.Image:
    """Open an image lazily (header only) and refuse one that declares too many pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between its own limits; ours is lower, so the warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, int(declared[1]) if declared else "too many") from exc
    except FileNotFoundError as exc:
        raise UsageError("no such image file", path, "check the path") from exc
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise _unreadable(path, exc) from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise _too_large(path, width * height)
    if width < 1 or height < 1:
        image.close()
        raise _unreadable(path, ValueError(f"it declares {width}x{height} pixels"))
    return image


def probe_size(path: Path) -> tuple[int, int]:
    """An image file's (height, width) from its header, without decoding its pixels."""
    with _open(path) as image:
        return image.size[1], image.size[0]


def read_image(path: Path) -> Tensor:
    """An image file -> uint8 (3, H, W) RGB (grey repeated, alpha dropped; first frame)."""
    with _open(path) as image:
        try:
            image.load()
            return from_pil(image)
        except Exception as exc:  # truncated or corrupt pixel data: OSError, SyntaxError, ...
            raise _unreadable(path, exc) from exc


def clean_name(name: str) -> str:
    """A name safe to store and to decode into a folder: no empty, '.' or '..' parts, no
    backslashes, control characters or undecodable bytes; parts cut to MAX_NAME_PART_BYTES."""
    parts = []
    for part in name.split("/"):
        part = "".join("_" if _bad_char(c) else c for c in part)
        if part in ("", ".", ".."):
            part = "_"
        while len(part.encode()) > MAX_NAME_PART_BYTES:
            part = part[:-1]
        parts.append(part)
    return "/".join(parts)[:MAX_NAME_CHARS]


def _bad_char(c: str) -> bool:
    # Cc: control characters (NUL included); Cs: lone surrogates from undecodable file names.
    return c == "\\" or unicodedata.category(c) in ("Cc", "Cs")


def name_problem(name: str) -> str | None:
    """Why a stored name is unsafe to decode into a folder, or None when it is fine."""
    if not name:
        return "an empty name"
    if len(name) > MAX_NAME_CHARS:
        return f"a name longer than {MAX_NAME_CHARS} characters"
    if name.startswith("/"):
        return f"an absolute name {name[:60]!r}"
    # Printable ASCII without a backslash is fine as it is: the common case, checked fast.
    plain = name.isascii() and name.isprintable() and "\\" not in name
    if not plain and any(_bad_char(c) for c in name):
        return f"a name with a backslash or control character {name[:60]!r}"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"a name with an empty, '.' or '..' part {name[:60]!r}"
        if len(part.encode()) > MAX_NAME_PART_BYTES:
            return f"a name part longer than {MAX_NAME_PART_BYTES} bytes"
    return None


def unique_names(names: Sequence[str]) -> list[str]:
    """Repeated names get -2, -3, ... in order of appearance."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            k += 1
            candidate = f"{name}-{k}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _walk(folder: Path) -> Iterator[Path]:
    """Files below `folder`, sorted by name at every level; hidden files and folders skipped.

    Symbolic links to folders are not followed (no loops); links to files are read.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise WorkError(
            f"cannot list the folder: {exc.strerror or exc}", folder, "check its permissions"
        ) from exc
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _looks_like_image(path: Path) -> bool:
    """A file in a folder counts as an image if its extension is one Pillow reads, or if
    Pillow recognises it; anything else is skipped (with a note)."""
    if path.suffix.lower() in Image.registered_extensions():
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(path).close()
        return True
    except Image.DecompressionBombError:
        return True  # an image, refused when its size is read
    except Exception:  # not an image (or unreadable): skipped, not an error
        return False


def _cifar10_items(spec: str, data_dir: Path) -> list[ImageItem]:
    from vqtool.data import load_cifar10

    match = CIFAR10_INPUT.fullmatch(spec)
    if match is None:
        raise UsageError(f"unknown dataset input {spec!r}", spec, f"use {CIFAR10_FORMS}")
    split, count = match[1], match[2]
    images = load_cifar10(data_dir, split)
    if count is not None:
        n = int(count)
        if not 1 <= n <= len(images):
            raise UsageError(
                f"asks for {n:,} images but the {split} split has {len(images):,}",
                spec,
                f"use N from 1 to {len(images):,}",
            )
        images = images[:n]
    size = (images.shape[2], images.shape[3])
    return [
        ImageItem(f"cifar10-{split}-{i:05d}", size, None, image) for i, image in enumerate(images)
    ]


def find_images(inputs: Sequence[str], data_dir: Path) -> FoundImages:
    """Inputs -> named images with their sizes (read from headers; no pixels decoded yet).

    An input is an image file (named by its stem), a folder (its images, recursive and sorted,
    named by their path below it without the extension: 'cat/0001'), or a CIFAR-10 split
    ('cifar10:test', 'cifar10:train', 'cifar10:test:N' for the first N). Repeated names get
    -2, -3. Files in folders that are not images are skipped and listed in `skipped`.
    """
    named: list[tuple[str, Path | None, Tensor | None, tuple[int, int] | None]] = []
    skipped: list[Path] = []
    for spec in inputs:
        if spec.startswith("cifar10:"):
            named += [(i.name, None, i.pixels, i.size) for i in _cifar10_items(spec, data_dir)]
            continue
        path = Path(spec)
        if path.is_dir():
            found = 0
            for file in _walk(path):
                if not _looks_like_image(file):
                    skipped.append(file)
                    continue
                name = file.relative_to(path).with_suffix("").as_posix()
                named.append((name, file, None, None))
                found += 1
            if found == 0:
                raise UsageError("no images in this folder", path, "give a folder with images")
        elif path.is_file():
            named.append((path.stem, path, None, None))
        else:
            raise UsageError(
                "no such image file or folder",
                spec,
                f"give image files, folders, or {CIFAR10_FORMS}",
            )
    if not named:
        raise UsageError(
            "no images to encode", "INPUT", "give image files, folders or cifar10:test"
        )
    names = unique_names([clean_name(n) for n, _, _, _ in named])
    items = []
    for name, (_, source, pixels, size) in zip(names, named, strict=True):
        if size is None:
            assert source is not None
            size = probe_size(source)
        items.append(ImageItem(name, size, source, pixels))
    return FoundImages(items, skipped)


def load_item(item: ImageItem, size: tuple[int, int] | None = None) -> Tensor:
    """An item's pixels as uint8 (3, H, W), resized to `size` (H, W) when given."""
    if item.pixels is not None:
        image = item.pixels
    else:
        assert item.path is not None
        image = read_image(item.path)
    return resize(image, size) if size is not None else image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# Images this small are stored in their PNGs without compression: for a 32x32 image deflate
# takes 58 us of the 68 us a PNG costs and saves 6% of its 3 KB (measured on 10,000 decoded
# CIFAR-10 test images); larger images compress better and their pixels outweigh its set-up.
STORED_PNG_PIXELS = 64 * 64


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (8-bit RGB, every row with the "Up" filter, zlib level 1;
    stored without compression up to STORED_PNG_PIXELS pixels).

    Written directly rather than through Pillow: decoded images are smooth, so one fixed
    filter compresses within 2% of Pillow's adaptive choice at 2.5x the speed, which is most
    of what `vqtool decode` spends per image. Pillow and every PNG reader read it back.
    """
    h, w, _ = image.shape
    level = 0 if h * w <= STORED_PNG_PIXELS else 1
    flat = image.reshape(h, w * 3)
    rows = np.empty((h, w * 3 + 1), np.uint8)  # a filter-type byte, then the row
    rows[:, 0] = 2  # Up: each byte minus the one above (the first row has zeros above)
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps mod 256
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


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


class Grid:
    """A grid of images of one cell size, filled as images arrive (the first `capacity`).

    Cells are `cell` (H, W) plus a 2-pixel black border, like torchvision's make_grid; the
    grid is about square and holds at most MAX_IMAGE_PIXELS pixels.
    """

    PAD = 2

    def __init__(self, count: int, cell: tuple[int, int]) -> None:
        pitch = ((cell[0] + self.PAD), (cell[1] + self.PAD))
        self.capacity = max(1, min(count, MAX_IMAGE_PIXELS // (pitch[0] * pitch[1])))
        self.columns = math.ceil(math.sqrt(self.capacity))
        rows = math.ceil(self.capacity / self.columns)
        self.pitch = pitch
        self.canvas = np.zeros(
            (rows * pitch[0] + self.PAD, self.columns * pitch[1] + self.PAD, 3), np.uint8
        )

    def add(self, index: int, image: np.ndarray) -> None:
        """Place uint8 (h, w, 3) image number `index` (ignored beyond capacity)."""
        if index >= self.capacity:
            return
        row, col = divmod(index, self.columns)
        top, left = row * self.pitch[0] + self.PAD, col * self.pitch[1] + self.PAD
        self.canvas[top : top + image.shape[0], left : left + image.shape[1]] = image

    def png(self) -> bytes:
        return png_bytes(self.canvas)
