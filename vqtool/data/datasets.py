"""The training data a profile names (`[data] dataset`), split by split, as uint8 tensors.

Training, evaluation, plots and the prior ask here for "the images (and labels) of this run's
dataset", whatever the dataset is; only this module knows how each kind is found and read:
"cifar10" (the python batches, `vqtool.data.cifar10`) or "folder" (an image folder decoded once
into a memory-mapped cache, `vqtool.data.folders`; with `resize = "native-crop"`, photos at
their own sizes, `vqtool.data.photos`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from vqtool.data.cifar10 import (
    CLASS_NAMES,
    cifar10_present,
    default_data_dir,
    download_cifar10,
    load_cifar10,
    load_cifar10_labelled,
)
from vqtool.data.folders import ensure_cache
from vqtool.data.photos import NativeCrops, Photos, centre_windows, crop_generator, tiles
from vqtool.errors import WorkError
from vqtool.events import Progress
from vqtool.images.fit import NATIVE_CROP, centre_offsets
from vqtool.profiles import DataConfig

SPLITS = ("train", "test")


class Split(NamedTuple):
    images: Tensor  # uint8 (N, 3, H, W)
    labels: Tensor | None  # int64 (N,), or None for a dataset without labels
    class_names: tuple[str, ...]  # label -> name; empty without labels


def ensure_dataset(
    data: DataConfig,
    data_dir: Path,
    on_download: Callable[[int, int | None], None] | None = None,
    on_decode: Progress | None = None,
    origin: str = "",
    need: Sequence[str] = ("train",),
) -> list[str]:
    """Make the dataset available: CIFAR-10 is downloaded from the official URL when missing;
    an image folder is decoded into its cache unless a valid one is there (`on_decode` gets
    images done and total), once it is known that each split in `need` gets images. Returns
    notes for the user: files left out and why.

    A failed download names the folder it looked in and `origin`, how that folder was chosen.
    """
    if data.dataset == "folder":
        return ensure_cache(data, data_dir, on_decode, need).notes
    if cifar10_present(data_dir):
        return []
    try:
        download_cifar10(data_dir, on_progress=on_download)
    except WorkError as exc:
        chosen = f" ({origin})" if origin else ""
        # `vqtool download` fills the default folder unless it is told this one.
        same = Path(data_dir) == default_data_dir()
        fix = exc.fix if same else f"{exc.fix} (with --data-dir {data_dir})"
        raise WorkError(f"no CIFAR-10 in {data_dir}{chosen}; {exc.what}", exc.where, fix) from exc
    return []


def _folder_split(
    data: DataConfig, data_dir: Path, split: str, on_decode: Progress | None
) -> Tensor:
    """One split of an image folder as stored in its cache: uint8 (N, 3, Hs, Ws), mapped."""
    array = ensure_cache(data, data_dir, on_decode, need=(split,)).arrays[split]
    # mmap_mode "c" maps the file copy-on-write: writable for torch, never written back.
    return torch.from_numpy(array)


def _photo_split(
    data: DataConfig, data_dir: Path, split: str, on_decode: Progress | None
) -> Photos:
    """One split of a "native-crop" image folder as stored in its cache, mapped."""
    cache = ensure_cache(data, data_dir, on_decode, need=(split,))
    return Photos(torch.from_numpy(cache.arrays[split]), torch.from_numpy(cache.sizes[split]))


def native(data: DataConfig) -> bool:
    """An image folder kept at its photos' own sizes (vqtool.data.photos)."""
    return data.dataset == "folder" and data.resize == NATIVE_CROP


def load_images(
    data: DataConfig, data_dir: Path, split: str, on_decode: Progress | None = None
) -> Tensor:
    """The images of one split, uint8 (N, 3, H, W), in the dataset's fixed order; an image
    folder's at its image_size (the centre crop when random crops are trained on)."""
    if native(data):
        return centre_windows(_photo_split(data, data_dir, split, on_decode), data.image_size)
    if data.dataset == "folder":
        return centre_crop(_folder_split(data, data_dir, split, on_decode), data.image_size)
    return load_cifar10(data_dir, split)


def dataset_source(data: DataConfig) -> str:
    """Which images a split holds, in words: results measured on images of the same source,
    split and count were measured on the same images (`vqtool plot --rd` checks it)."""
    if data.dataset != "folder":
        return data.dataset
    h, w = data.image_size
    return f"folder {data.path} ({h}x{w}, {data.resize}, test share {data.test_fraction:g})"


def dataset_classes(data: DataConfig) -> tuple[str, ...]:
    """The class names a dataset's labels index; empty for a dataset without labels."""
    return () if data.dataset == "folder" else CLASS_NAMES


def load_split(data: DataConfig, data_dir: Path, split: str) -> Split:
    """Images and labels of one split (an image folder has no labels), as a prior learns
    from them: `load_images`' images, but for photos at their own sizes the whole image_size
    windows that tile each photo (vqtool.data.photos.tiles), since one centre window per
    photo would leave a prior little to learn from."""
    if native(data):
        return Split(tiles(_photo_split(data, data_dir, split, None), data.image_size), None, ())
    if data.dataset == "folder":
        return Split(load_images(data, data_dir, split), None, ())
    return Split(*load_cifar10_labelled(data_dir, split), CLASS_NAMES)


def image_names(
    split: str, count: int, labels: Tensor | None, class_names: Sequence[str]
) -> list[str]:
    """What a dataset's `count` images are called wherever they are encoded (encode's code
    files and a prior's): 'dog/train-00042', class then split and index, so that the name
    carries the label (and decode writes each class to a folder of its own); 'train-00042'
    without labels."""
    if labels is not None and class_names:
        return [f"{class_names[y]}/{split}-{i:05d}" for i, y in enumerate(labels.tolist())]
    return [f"{split}-{i:05d}" for i in range(count)]


def centre_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """The centred (H, W) window of (N, 3, Hs, Ws) images, as a view."""
    h, w = size
    top, left = centre_offsets((images.shape[2], images.shape[3]), size)
    return images[:, :, top : top + h, left : left + w]


class Crops(Protocol):
    """How the training loop cuts its images from the stored ones (RandomCrops, NativeCrops)."""

    count: int  # the images an epoch visits

    def __call__(self, images: Tensor, indices: Tensor, epoch: int) -> Tensor:
        """uint8 (B, 3, H, W): the windows of the images `indices` in `epoch`."""
        ...


class RandomCrops:
    """Training windows of (H, W) from larger stored images: one per image and epoch, drawn
    from (seed, epoch) alone, like the epoch's order, so a resumed run (or any process count)
    crops exactly alike."""

    def __init__(self, size: tuple[int, int], count: int, seed: int) -> None:
        self.size = size
        self.count = count
        self.seed = seed
        self._epoch = -1
        self._offsets = torch.empty(0, 2, dtype=torch.long)

    def offsets(self, epoch: int, stored: tuple[int, int]) -> Tensor:
        """(count, 2) top-left corners of every image's window in `epoch`."""
        generator = crop_generator(self.seed, epoch)
        room = torch.tensor([stored[0] - self.size[0] + 1, stored[1] - self.size[1] + 1])
        return (torch.rand(self.count, 2, generator=generator) * room).long()

    def __call__(self, images: Tensor, indices: Tensor, epoch: int) -> Tensor:
        """The windows of `images[indices]`: uint8 (B, 3, H, W)."""
        if epoch != self._epoch:
            self._offsets = self.offsets(epoch, (images.shape[2], images.shape[3]))
            self._offsets = self._offsets.to(images.device)
            self._epoch = epoch
        corner = self._offsets[indices]  # (B, 2)
        if images.device.type == "cpu":
            return windows_by_slices(images, indices, corner, self.size)
        return windows_by_gather(images, indices, corner, self.size)


def windows_by_slices(
    images: Tensor, indices: Tensor, corner: Tensor, size: tuple[int, int]
) -> Tensor:
    """(B, 3, H, W) windows of images[indices] at corners (B, 2), one slice copy per image: on
    a CPU several times faster than one gather."""
    h, w = size
    pairs = zip(indices.tolist(), corner.tolist(), strict=True)
    return torch.stack([images[i, :, y : y + h, x : x + w] for i, (y, x) in pairs])


def windows_by_gather(
    images: Tensor, indices: Tensor, corner: Tensor, size: tuple[int, int]
) -> Tensor:
    """The same windows as one gather (one kernel on a GPU, no reads back to the host)."""
    rows = corner[:, :1] + torch.arange(size[0], device=images.device)  # (B, H)
    cols = corner[:, 1:] + torch.arange(size[1], device=images.device)  # (B, W)
    # Advanced indices around a slice put their dims first: (B, H, W, 3).
    windows = images[indices[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return windows.permute(0, 3, 1, 2)


class TrainingImages(NamedTuple):
    # uint8 (N, 3, Hs, Ws) as stored; "native-crop": uint8 (P,), every photo's pixels
    images: Tensor
    crops: Crops | None  # None: the stored images are the training images


def load_training_images(data: DataConfig, data_dir: Path, seed: int) -> TrainingImages:
    """The training split as the training loop gathers it: stored images, plus the crops that
    cut image_size windows from them when `resize` is "random-crop" or "native-crop"."""
    if native(data):
        photos = _photo_split(data, data_dir, "train", None)
        return TrainingImages(photos.pixels, NativeCrops(data.image_size, photos.sizes, seed))
    if data.dataset == "folder" and data.resize == "random-crop":
        images = _folder_split(data, data_dir, "train", None)
        return TrainingImages(images, RandomCrops(data.image_size, images.shape[0], seed))
    return TrainingImages(load_images(data, data_dir, "train"), None)
