"""PNG output: a direct encoder for decoded images, and the grid of `vqtool decode --grid`."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# Images this small are stored in their PNGs without compression: for a 32x32 image deflate
# costs most of the PNG's time and saves little of its size; larger images compress better and
# their pixels outweigh its set-up.
STORED_PNG_PIXELS = 64 * 64


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (8-bit RGB, every row with the "Up" filter, zlib level 1;
    stored without compression up to STORED_PNG_PIXELS pixels).

    Written directly rather than through Pillow: decoded images are smooth, so one fixed
    filter compresses about as well as Pillow's adaptive choice, much faster, which is most
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


# The largest side of a grid, in pixels: it is seen at its own size (a pixel of the image a
# pixel of the screen) on a laptop's screen, so that no viewer shrinks its cells to fit.
GRID_SIDE = 1024
# A grid of small images narrower than this is enlarged by a whole factor (each pixel a square
# of pixels, no smoothing), so that 16 CIFAR images are not a thumbnail of 140 pixels.
GRID_MIN_WIDTH = 512
GRID_MAX_SCALE = 8


class Grid:
    """A grid of images of one cell size, filled as images arrive (the first `capacity`).

    Cells are `cell` (H, W) plus a 2-pixel black border, like torchvision's make_grid; images
    are never shrunk. The grid is about square and at most GRID_SIDE pixels a side, so it
    holds as many of the first images as fit (at least one); a grid narrower than
    GRID_MIN_WIDTH has its images enlarged `scale` times, as far as GRID_SIDE allows.
    """

    PAD = 2

    def __init__(self, count: int, cell: tuple[int, int]) -> None:
        pitch = ((cell[0] + self.PAD), (cell[1] + self.PAD))
        most_rows = max(1, (GRID_SIDE - self.PAD) // pitch[0])
        most_columns = max(1, (GRID_SIDE - self.PAD) // pitch[1])
        self.capacity = max(1, min(count, most_rows * most_columns))
        self.columns = min(math.ceil(math.sqrt(self.capacity)), most_columns)
        rows = math.ceil(self.capacity / self.columns)
        if rows > most_rows:  # cells much taller than wide
            rows = most_rows
            self.columns = math.ceil(self.capacity / rows)
        self.scale = _grid_scale(cell, rows, self.columns, self.PAD)
        self.pitch = (cell[0] * self.scale + self.PAD, cell[1] * self.scale + self.PAD)
        self.canvas = np.zeros(
            (rows * self.pitch[0] + self.PAD, self.columns * self.pitch[1] + self.PAD, 3), np.uint8
        )

    def add(self, index: int, image: np.ndarray) -> None:
        """Place uint8 (h, w, 3) image number `index` (ignored beyond capacity)."""
        if index >= self.capacity:
            return
        row, col = divmod(index, self.columns)
        top, left = row * self.pitch[0] + self.PAD, col * self.pitch[1] + self.PAD
        if self.scale > 1:
            image = np.repeat(np.repeat(image, self.scale, axis=0), self.scale, axis=1)
        self.canvas[top : top + image.shape[0], left : left + image.shape[1]] = image

    def png(self) -> bytes:
        return png_bytes(self.canvas)


def _grid_scale(cell: tuple[int, int], rows: int, columns: int, pad: int) -> int:
    """The smallest whole factor that makes the grid GRID_MIN_WIDTH wide, within GRID_SIDE a
    side and GRID_MAX_SCALE (1 when the grid is wide enough already)."""

    def side(cells: int, size: int, scale: int) -> int:
        return cells * (size * scale + pad) + pad

    scale = 1
    while (
        side(columns, cell[1], scale) < GRID_MIN_WIDTH
        and scale < GRID_MAX_SCALE
        and side(columns, cell[1], scale + 1) <= GRID_SIDE
        and side(rows, cell[0], scale + 1) <= GRID_SIDE
    ):
        scale += 1
    return scale
