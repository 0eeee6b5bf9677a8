"""A prior over grids of any size: each code predicted from a window of the prior's own size.

A CodePrior learns sequences of its own grid (h x w per stage, learned positions). A grid of
another size H x W is read in the same order as one of the prior's (stage after stage, rows top
to bottom), and code (s, i, j) is predicted by the prior run over one window of its size cut
from the grid: the window of min(h, H) x min(w, W) codes whose bottom row holds row i (or the
grid's top rows, near the top) and whose columns are centred on column j (clamped to the
grid), with the same window of every earlier stage before it. Every code of the window that
comes before (s, i, j) in the window's order also comes before it in the grid's order (the
rows above are whole, and the row's codes to the left come first), so the prediction needs only
codes already known: an encoder and a decoder see the same window. On a grid of the prior's own
size the window is the whole grid, and the prediction is the prior's usual one.

A window narrower or shorter than the prior's grid takes the positions of its top-left corner.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Window(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def window_at(i: int, j: int, grid: tuple[int, int], prior_grid: tuple[int, int]) -> Window:
    """The window that predicts code (i, j) of a grid (H, W) for a prior of grid (h, w)."""
    height, width = min(prior_grid[0], grid[0]), min(prior_grid[1], grid[1])
    top = max(i - height + 1, 0)
    left = min(max(j - width // 2, 0), grid[1] - width)
    return Window(top, left, height, width)


def window_positions(window: Window, prior_grid: tuple[int, int], stages: int) -> Tensor:
    """The prior's position of each code of the window's first `stages` stages, in order:
    (stages * height * width,) int64 indices into its (S * h) x w positions."""
    h, w = prior_grid
    rows = torch.arange(window.height).view(-1, 1)
    columns = torch.arange(window.width).view(1, -1)
    one = rows * w + columns  # (height, width) in stage 0
    return torch.cat([(one + s * h * w).reshape(-1) for s in range(stages)])


def window_tokens(tokens: Tensor, window: Window, stages: int) -> Tensor:
    """Tokens (B, S, H, W) -> the window's tokens of the first `stages` stages in the prior's
    order: (B, stages * height * width)."""
    t, left = window.top, window.left
    cut = tokens[:, :stages, t : t + window.height, left : left + window.width]
    return cut.reshape(tokens.shape[0], -1)


def target_index(stage: int, i: int, j: int, window: Window) -> int:
    """Where code (stage, i, j) sits in its window's sequence."""
    return (stage * window.height + i - window.top) * window.width + j - window.left


def same_grid(grid: tuple[int, int], prior_grid: tuple[int, int]) -> bool:
    """Whether a grid is the prior's own: one window, the whole grid, predicts every code."""
    return tuple(grid) == tuple(prior_grid)


def windows_in_row(
    i: int, grid: tuple[int, int], prior_grid: tuple[int, int]
) -> list[tuple[Window, list[int]]]:
    """The windows that predict row i's codes, each with the columns it predicts, left to
    right."""
    out: list[tuple[Window, list[int]]] = []
    for j in range(grid[1]):
        window = window_at(i, j, grid, prior_grid)
        if out and out[-1][0] == window:
            out[-1][1].append(j)
        else:
            out.append((window, [j]))
    return out
