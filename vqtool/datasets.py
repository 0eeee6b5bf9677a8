"""The training data a profile names (`[data] dataset`), split by split, as uint8 tensors.

Training, evaluation, plots and the prior ask here for "the images (and labels) of this run's
dataset", whatever the dataset is; only this module knows how each kind is found and read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from vqtool.data import (
    CLASS_NAMES,
    cifar10_present,
    default_data_dir,
    download_cifar10,
    load_cifar10,
    load_cifar10_labels,
)
from vqtool.errors import WorkError
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
    origin: str = "",
) -> None:
    """Make the dataset available: CIFAR-10 is downloaded from the official URL when missing.

    A failure names the folder it looked in and `origin`, how that folder was chosen.
    """
    if cifar10_present(data_dir):
        return
    try:
        download_cifar10(data_dir, on_progress=on_download)
    except WorkError as exc:
        chosen = f" ({origin})" if origin else ""
        # `vqtool download` fills the default folder unless it is told this one.
        same = Path(data_dir) == default_data_dir()
        fix = exc.fix if same else f"{exc.fix} (with --data-dir {data_dir})"
        raise WorkError(f"no CIFAR-10 in {data_dir}{chosen}; {exc.what}", exc.where, fix) from exc


def load_images(data: DataConfig, data_dir: Path, split: str) -> Tensor:
    """The images of one split, uint8 (N, 3, H, W), in the dataset's fixed order."""
    return load_cifar10(data_dir, split)


def dataset_classes(data: DataConfig) -> tuple[str, ...]:
    """The class names a dataset's labels index; empty for a dataset without labels."""
    return CLASS_NAMES


def load_split(data: DataConfig, data_dir: Path, split: str) -> Split:
    """Images and labels of one split."""
    return Split(load_cifar10(data_dir, split), load_cifar10_labels(data_dir, split), CLASS_NAMES)
