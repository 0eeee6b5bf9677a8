"""What `vqtool encode` reads: image files, folders (recursive, sorted) and CIFAR-10 splits,
found and named before any pixel is decoded."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from torch import Tensor

from vqtool.codes.names import clean_name, unique_names
from vqtool.errors import UsageError, WorkError, os_reason
from vqtool.images.pixels import resize
from vqtool.images.read import DamagedImage, probe_size, read_image, read_resized

CIFAR10_INPUT = re.compile(r"cifar10:(test|train)(?::(\d+))?")


CIFAR10_FORMS = "cifar10:test, cifar10:train, cifar10:test:N or cifar10:train:N"


class ImageItem(NamedTuple):
    """One image to encode: its name in the code file, its size, and where its pixels are."""

    name: str
    size: tuple[int, int]  # (height, width) as stored in the file or the dataset
    path: Path | None  # the image file, or None for an image held in `pixels`
    pixels: Tensor | None  # uint8 (3, H, W) for dataset images
    in_folder: bool = False  # found in a folder given as input (not named on its own)


class FoundImages(NamedTuple):
    items: list[ImageItem]
    skipped: list[Path]  # files in folders that are not images
    damaged: list[DamagedImage]  # images in folders whose header cannot be read


def _walk(folder: Path) -> Iterator[Path]:
    """Files below `folder`, sorted by name at every level; hidden files and folders skipped.

    Symbolic links to folders are not followed (no loops); links to files are read.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise WorkError(
            f"cannot list the folder: {os_reason(exc)}", folder, "check its permissions"
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
    from vqtool.data.cifar10 import CLASS_NAMES, load_cifar10_labelled
    from vqtool.data.datasets import image_names

    match = CIFAR10_INPUT.fullmatch(spec)
    if match is None:
        raise UsageError(f"unknown dataset input {spec!r}", spec, f"use {CIFAR10_FORMS}")
    split, count = match[1], match[2]
    images, labels = load_cifar10_labelled(data_dir, split)
    if count is not None:
        n = int(count)
        if not 1 <= n <= len(images):
            raise UsageError(
                f"asks for {n:,} images but the {split} split has {len(images):,}",
                spec,
                f"use N from 1 to {len(images):,}",
            )
        images, labels = images[:n], labels[:n]
    size = (images.shape[2], images.shape[3])
    names = image_names(split, len(images), labels, CLASS_NAMES)
    return [ImageItem(name, size, None, image) for name, image in zip(names, images, strict=True)]


def find_images(
    inputs: Sequence[str],
    data_dir: Path,
    size: tuple[int, int] | None = None,
    strict: bool = False,
    resize_mode: str = "stretch",
) -> FoundImages:
    """Inputs -> named images with their sizes (read from headers; no pixels decoded yet).

    An input is an image file (named by its stem), a folder (its images, recursive and sorted,
    named by their path below it without the extension: 'cat/0001'), or a CIFAR-10 split
    ('cifar10:test', 'cifar10:train', 'cifar10:test:N' for the first N; named by class, split
    and index, 'cat/test-00042', as datasets.image_names says). Repeated names get
    -2, -3. Files in folders that are not images are skipped and listed in `skipped`, images
    in folders whose header is damaged in `damaged`; `strict` makes either an error. A file
    named on its own must be a readable image. `size` is the size images will be shrunk to
    (--size) as `resize_mode` says (--resize), which lets larger images in.
    """
    named: list[tuple[str, Path | None, Tensor | None, tuple[int, int] | None, bool]] = []
    skipped: list[Path] = []
    damaged: list[DamagedImage] = []
    for spec in inputs:
        if spec.startswith("cifar10:"):
            named += [
                (i.name, None, i.pixels, i.size, False) for i in _cifar10_items(spec, data_dir)
            ]
            continue
        path = Path(spec)
        if path.is_dir():
            found = 0
            for file in _walk(path):
                if not _looks_like_image(file):
                    if strict:
                        raise WorkError(
                            "not an image", file, "remove it, or leave out --strict to skip it"
                        )
                    skipped.append(file)
                    continue
                found += 1
                try:
                    file_size = probe_size(file, size, resize_mode)
                except DamagedImage as exc:
                    if strict:
                        raise
                    damaged.append(exc)
                    continue
                name = file.relative_to(path).with_suffix("").as_posix()
                named.append((name, file, None, file_size, True))
            if found == 0:
                raise UsageError("no images in this folder", path, "give a folder with images")
        elif path.is_file():
            named.append((path.stem, path, None, None, False))
        else:
            raise UsageError(
                "no such image file or folder",
                spec,
                f"give image files, folders, or {CIFAR10_FORMS}",
            )
    if not named and damaged:
        raise WorkError(
            f"every image is damaged: {len(damaged)} could not be read",
            damaged[0].where,
            "check the files (the first one is named here)",
        )
    if not named:
        raise UsageError(
            "no images to encode", "INPUT", "give image files, folders or cifar10:test"
        )
    names = unique_names([clean_name(n) for n, _, _, _, _ in named])
    items = []
    for name, (_, source, pixels, item_size, in_folder) in zip(names, named, strict=True):
        if item_size is None:
            assert source is not None
            item_size = probe_size(source, size, resize_mode)
        items.append(ImageItem(name, item_size, source, pixels, in_folder))
    return FoundImages(items, skipped, damaged)


def load_item(
    item: ImageItem, size: tuple[int, int] | None = None, resize_mode: str = "stretch"
) -> Tensor:
    """An item's pixels as uint8 (3, H, W), fitted to `size` (H, W) as `resize_mode` says when
    given (vqtool.images.fit; an image file is shrunk while it is decoded)."""
    if item.pixels is not None:
        return resize(item.pixels, size, resize_mode) if size is not None else item.pixels
    assert item.path is not None
    return read_image(item.path) if size is None else read_resized(item.path, size, resize_mode)
