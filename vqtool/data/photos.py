"""Photos at their own size (`[data] resize = "native-crop"`): images of different sizes kept
in one flat uint8 store, and the H x W windows that training, evaluation and a prior take of
them.

The store (`Photos`) holds every image's (3, h, w) pixels one after another, C order, and each
image's (h, w); an image folder's cache keeps it on disk and memory-maps it
(vqtool.data.folders), so a window reads only its own rows of a photo. Training takes a random
window of each photo per epoch (`NativeCrops`, drawn from the seed and the epoch like
`vqtool.data.datasets.RandomCrops`), evaluation the centre window of each (`centre_windows`),
and a prior the whole windows that tile each photo (`tiles`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vqtool.images.fit import centre_offsets

# Crop corners come from their own random stream (`crop_generator`), apart from the epoch
# orders' seeds.
CROP_STREAM = 1 << 40
# The most bytes of tiles a prior's split is cut into at once (256 MiB: 21,845 windows of
# 64 x 64, 5,461 of 128 x 128); a split with more takes an evenly spaced subset of them.
MAX_TILE_BYTES = 1 << 28


def crop_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of the crop corners of `epoch`: apart from the epoch orders'."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + CROP_STREAM)


class Photos(NamedTuple):
    """Images of different sizes in one flat store."""

    pixels: Tensor  # uint8 (P,): each image's (3, h, w) pixels, one image after another
    sizes: Tensor  # int64 (N, 2): each image's (h, w)

    @property
    def starts(self) -> Tensor:
        """int64 (N,): where each image's pixels begin in `pixels`."""
        lengths = 3 * self.sizes[:, 0] * self.sizes[:, 1]
        return torch.cumsum(lengths, 0) - lengths

    @property
    def store(self) -> Store:
        return Store(self.pixels, self.sizes, self.starts)

    def image(self, i: int) -> Tensor:
        """Image i as a uint8 (3, h, w) view of the store."""
        return self.store.image(i)


class Store(NamedTuple):
    """A store's tensors as windows read them, all on one device (`starts` computed once)."""

    pixels: Tensor
    sizes: Tensor
    starts: Tensor

    def image(self, i: int) -> Tensor:
        """Image i as a uint8 (3, h, w) view of the pixels."""
        h, w = int(self.sizes[i, 0]), int(self.sizes[i, 1])
        start = int(self.starts[i])
        return self.pixels[start : start + 3 * h * w].view(3, h, w)


def windows(
    store: Store,
    indices: Tensor,
    corners: Tensor,
    size: tuple[int, int],
    gather: bool | None = None,
) -> Tensor:
    """(B, 3, H, W) windows of the images `indices` of a store at top-left `corners` (B, 2):
    slice copies on a CPU, one gather elsewhere (one kernel, no reads back to the host);
    `gather` chooses for tests."""
    h, w = size
    if not (store.pixels.device.type != "cpu" if gather is None else gather):
        pairs = zip(indices.tolist(), corners.tolist(), strict=True)
        return torch.stack([store.image(i)[:, y : y + h, x : x + w] for i, (y, x) in pairs])
    device = store.pixels.device
    width = store.sizes[indices, 1]  # (B,)
    plane = store.sizes[indices, 0] * width  # (B,): pixels of one channel
    rows = corners[:, :1] + torch.arange(h, device=device)  # (B, H)
    cols = corners[:, 1:] + torch.arange(w, device=device)  # (B, W)
    channel = torch.arange(3, device=device)
    flat = (
        store.starts[indices, None, None, None]
        + channel[None, :, None, None] * plane[:, None, None, None]
        + rows[:, None, :, None] * width[:, None, None, None]
        + cols[:, None, None, :]
    )  # (B, 3, H, W) positions in the store
    return store.pixels[flat]


def centre_windows(photos: Photos, size: tuple[int, int]) -> Tensor:
    """uint8 (N, 3, H, W): the centre `size` window of every image, the one evaluation takes."""
    corners = torch.tensor(
        [centre_offsets((int(h), int(w)), size) for h, w in photos.sizes.tolist()],
        dtype=torch.long,
    ).reshape(-1, 2)
    every = torch.arange(len(photos.sizes))
    return windows(photos.store, every, corners, size)


def tile_corners(photos: Photos, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(image index (T,), top-left corner (T, 2)) of every whole `size` window that tiles an
    image from its top-left corner, image by image, row by row."""
    h, w = size
    images, corners = [], []
    for i, (side_h, side_w) in enumerate(photos.sizes.tolist()):
        for y in range(0, side_h - h + 1, h):
            for x in range(0, side_w - w + 1, w):
                images.append(i)
                corners.append((y, x))
    return torch.tensor(images, dtype=torch.long), torch.tensor(corners, dtype=torch.long)


def tiles(photos: Photos, size: tuple[int, int], max_bytes: int = MAX_TILE_BYTES) -> Tensor:
    """uint8 (T, 3, H, W): the whole `size` windows that tile every image (`tile_corners`),
    at most `max_bytes` of them: past that, evenly spaced ones, the first always kept.

    Every image covers `size` (vqtool.images.fit.native_size), so each gives at least one."""
    images, corners = tile_corners(photos, size)
    most = max(1, max_bytes // (3 * size[0] * size[1]))
    if len(images) > most:
        keep = torch.linspace(0, len(images) - 1, most).round().long()
        images, corners = images[keep], corners[keep]
    return windows(photos.store, images, corners, size)


class NativeCrops:
    """Training windows of (H, W) from photos of their own sizes: one per photo and epoch,
    drawn from (seed, epoch) alone, so a resumed run (or any process count) crops exactly
    alike. Called with the store's pixels, wherever the training loop put them."""

    def __init__(self, size: tuple[int, int], sizes: Tensor, seed: int) -> None:
        self.size = size
        self.sizes = sizes  # int64 (N, 2)
        self.count = int(sizes.shape[0])
        self.seed = seed
        self._epoch = -1
        self._offsets = torch.empty(0, 2, dtype=torch.long)
        self._placed: Store | None = None  # the store's sizes and starts on the device

    def offsets(self, epoch: int) -> Tensor:
        """(count, 2) top-left corners of every photo's window in `epoch`."""
        generator = crop_generator(self.seed, epoch)
        room = self.sizes - torch.tensor(self.size) + 1  # (N, 2), each >= 1
        return (torch.rand(self.count, 2, generator=generator, dtype=torch.float64) * room).long()

    def __call__(self, images: Tensor, indices: Tensor, epoch: int) -> Tensor:
        """The windows of the photos `indices` of the store whose pixels are `images` (P,):
        uint8 (B, 3, H, W)."""
        if self._placed is None or self._placed.sizes.device != images.device:
            starts = Photos(images, self.sizes).starts
            self._placed = Store(images, self.sizes.to(images.device), starts.to(images.device))
        if epoch != self._epoch:
            self._offsets = self.offsets(epoch).to(images.device)
            self._epoch = epoch
        store = self._placed._replace(pixels=images)
        return windows(store, indices, self._offsets[indices], self.size)
