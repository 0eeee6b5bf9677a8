"""The figure of `vqtool roundtrip`: each original above its reconstruction, enlarged to a
readable size by whole pixels (no smoothing), its name, PSNR and bits under it.

The picture is laid out in screen pixels: matplotlib draws the text, and the images are then
placed pixel for pixel into what it drew, so that no resampling blurs the codes' blocks (and
matplotlib's image path, which holds several float copies of a photo's figure, is not used).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vqtool.codes.roundtrip import RoundTrip
from vqtool.errors import counted
from vqtool.reports.plots import DPI

CELL = 128  # screen pixels an image's longer side is enlarged to, by a whole factor
MAX_SCALE = 8
COLUMNS = 8
MAX_WIDTH = 1600  # screen pixels: more columns than fit are moved to further rows
LEFT = 84  # room for the row labels
GAP = 16  # between columns
INNER = 4  # between an original and its reconstruction
LINE = 15  # one caption line at FONT points
FONT = 9
TITLE_FONT = 11
HEADING_LINE = 20  # screen pixels per line of the title
CHAR_WIDTH = 0.75  # screen pixels per point of font size, for an average character (a bound)
MIN_WIDTH = 640  # room for the title beside a few small images
BOTTOM = 10
BORDER = 204  # the grey of the line around each image (0.8 of white)


def scale_for(height: int, width: int) -> int:
    """The whole factor that brings an image's longer side near CELL pixels (1 to MAX_SCALE)."""
    return max(1, min(MAX_SCALE, CELL // max(height, width, 1)))


def _fit(text: str, pixels: int) -> str:
    """`text` cut (with ...) to about what fits in `pixels` at FONT points."""
    most = max(4, int(pixels / (FONT * CHAR_WIDTH)))
    return text if len(text) <= most else text[: most - 3] + "..."


def roundtrip_picture(result: RoundTrip, title: str) -> np.ndarray:
    """The first images of `result` over their reconstructions, with a caption per pair and a
    title that gives the whole set's figures: uint8 (height, width, 3), for a PNG."""
    tops, bottoms = result.originals, result.reconstructions
    shown = len(tops)
    cell_h = max(image.shape[0] for image in tops)
    cell_w = max(image.shape[1] for image in tops)
    scale = scale_for(cell_h, cell_w)
    box_h, box_w = cell_h * scale, cell_w * scale
    lines = 3 if result.prior_bits is not None else 2
    columns = max(1, min(COLUMNS, shown, (MAX_WIDTH - LEFT) // (box_w + GAP)))
    rows = math.ceil(shown / columns)
    pitch_x, pitch_y = box_w + GAP, 2 * box_h + INNER + 6 + lines * LINE + GAP
    width = max(MIN_WIDTH, LEFT + columns * pitch_x)
    heading = _heading(result, title, scale, width)
    top_margin = 10 + len(heading) * HEADING_LINE + 10
    height = top_margin + rows * pitch_y + BOTTOM
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)

    def text(x: float, y: float, words: str, **style: Any) -> None:
        """Text at screen pixel (x, y) from the top left."""
        fig.text(x / width, 1 - y / height, words, **{"fontsize": FONT, "va": "top", **style})

    for i in range(shown):
        row, col = divmod(i, columns)
        x, y = LEFT + col * pitch_x, top_margin + row * pitch_y
        middle, caption = x + box_w / 2, y + 2 * box_h + INNER + 6
        text(middle, caption, _fit(result.names[i], box_w + GAP - 4), ha="center")
        text(middle, caption + LINE, f"{result.psnr[i]:.2f} dB", ha="center")
        if result.prior_bits is not None:
            bits = f"{result.prior_bits[i]:,.0f} bits (prior)"
            text(middle, caption + 2 * LINE, bits, ha="center", color="0.3")
    for row in range(rows):
        for k, label in enumerate(("original", "decoded")):
            middle = top_margin + row * pitch_y + k * (box_h + INNER) + box_h / 2
            text(LEFT - 10, middle, label, ha="right", va="center", color="0.35")
    for j, (line, size, colour) in enumerate(heading):
        text(10, 10 + j * HEADING_LINE, line, fontsize=size, color=colour)
    fig.canvas.draw()
    drawn = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    picture = np.array(drawn[..., :3])  # (height, width, 3): the text on white
    for i in range(shown):  # the images lie where no text is
        row, col = divmod(i, columns)
        x, y = LEFT + col * pitch_x, top_margin + row * pitch_y
        for k, image in enumerate((tops[i], bottoms[i])):
            _place(picture, image, y + k * (box_h + INNER), x, scale, box_w)
    return picture


def _heading(result: RoundTrip, title: str, scale: int, width: int) -> list[tuple[str, float, str]]:
    """The title's lines (text, font size, colour), wrapped to `width` screen pixels."""
    n, shown = len(result.names), len(result.originals)
    which = f"the first {shown} of {counted(n, 'image')}" if shown < n else counted(n, "image")
    enlarged = f", enlarged {scale}x" if scale > 1 else ""
    first = (
        f"{title}: {which}, each original above its reconstruction from the codes"
        f"{_of_stages(result)}{enlarged}"
    )
    if result.grid is not None:
        grid = f"{result.grid[0]}x{result.grid[1]} codes (HxW)"
        raw = f"{result.raw_bits[0]:,.0f} bits per image"
    else:  # images of different padded sizes
        grid = "each image's own grid of codes"
        raw = f"{result.raw_bits.mean():,.0f} bits per image on average"
    if result.run_stages > 1:
        grid = f"{counted(result.stages, 'stage')} of {grid}"
    second = (
        f"PSNR under each (mean of all {n:,}: {result.psnr.mean():.2f} dB); raw "
        f"{raw} ({grid} of {result.num_embeddings})"
    )
    if result.prior_bits is not None:
        second += f", prior coding {result.prior_bits.mean():,.1f} on average"
    lines: list[tuple[str, float, str]] = []
    for words, size, colour in ((first, TITLE_FONT, "0"), (second, FONT, "0.25")):
        chars = max(20, int((width - 20) / (size * CHAR_WIDTH)))
        lines += [(line, size, colour) for line in textwrap.wrap(words, chars)]
    return lines


def _of_stages(result: RoundTrip) -> str:
    """Which of a run's residual stages the reconstructions decode ('' without stages)."""
    if result.run_stages == 1:
        return ""
    if result.stages == result.run_stages:
        return f" of all {result.run_stages} stages"
    first = "stage" if result.stages == 1 else f"{result.stages} stages"
    return f" of the first {first} of {result.run_stages}"


def _place(
    picture: np.ndarray, image: np.ndarray, top: int, left: int, scale: int, box_w: int
) -> None:
    """Draw uint8 (h, w, 3) `image` enlarged `scale` times, centred across a box `box_w` wide,
    with a one-pixel grey line around it."""
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1) if scale > 1 else image
    h, w = big.shape[:2]
    left += (box_w - w) // 2
    picture[top - 1 : top + h + 1, left - 1 : left + w + 1] = BORDER
    picture[top : top + h, left : left + w] = big


def roundtrip_rows(result: RoundTrip, count: int) -> tuple[list[str], list[Sequence[object]]]:
    """The table of `vqtool roundtrip`: columns, then a row per image of the first `count`
    and a last row of the means over all images."""
    columns = ["image", "size (HxW)", "PSNR (dB)", "raw bits"]
    if result.prior_bits is not None:
        columns.append("prior bits")
    rows: list[Sequence[object]] = []
    for i in range(min(count, len(result.names))):
        row: list[object] = [
            result.names[i],
            f"{result.sizes[i, 0]}x{result.sizes[i, 1]}",
            float(result.psnr[i]),
            float(result.raw_bits[i]),
        ]
        if result.prior_bits is not None:
            row.append(float(result.prior_bits[i]))
        rows.append(row)
    mean: list[object] = [
        f"mean of all {len(result.names):,}",
        "",
        float(result.psnr.mean()),
        float(result.raw_bits.mean()),
    ]
    if result.prior_bits is not None:
        mean.append(float(result.prior_bits.mean()))
    rows.append(mean)
    return columns, rows
