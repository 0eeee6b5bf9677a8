"""The exact coding model's tables for grids of another size than its own: each position's
table from the model run over that position's window (vqtool.models.windows), in exact
arithmetic, so that encoder and decoder compute the same integers on any machine.

The encoder knows every code: it runs each window once per row of a stage, over whole windows,
and takes the row's positions from it. The decoder knows the codes before the position only:
it runs the window's sequence up to the position. Both give the same numbers, because the model
is causal and its arithmetic exact (a masked slot weighs exactly 0, and every sum is exact in
any order and shape): a position's logits depend on the codes before it alone.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from vqtool.models.exact_prior import ExactForced
from vqtool.models.windows import (
    Window,
    target_index,
    window_at,
    window_positions,
    window_tokens,
    windows_in_row,
)


class WindowTables:
    """Tables (rows, K_s) of `rows` grids (S, H, W), position by position in the grid's order
    (stage after stage, row after row), for a model of grid `prior_grid` (h, w) per stage.
    `known`, the encoder's tokens (rows, S * H * W), lets it run whole windows; without it
    (the decoder) the tables cover the first `real` rows alone, the others being padding."""

    def __init__(
        self,
        forced: ExactForced,
        rows: int,
        grid: tuple[int, int],
        prior_grid: tuple[int, int],
        stages: int,
        known: Tensor | None = None,
        real: int | None = None,
    ) -> None:
        self.forced = forced
        self.grid = grid
        self.prior_grid = prior_grid
        self.known = known is not None
        self.real = rows if real is None else real
        if known is None:
            self.tokens = torch.zeros((self.real, stages, *grid), dtype=torch.int64)
        else:  # the real rows only, and the stages coded: the caller reads their tables alone
            self.tokens = known.view(known.shape[0], -1, *grid)
        self.position = 0
        self.row_logits: list[Tensor] = []  # the encoder's: the current row's, column by column

    def next(self, previous: Tensor | None) -> np.ndarray:
        t = self.position
        height, width = self.grid
        stage, rest = divmod(t, height * width)
        i, j = divmod(rest, width)
        if previous is not None and not self.known:
            s, r = divmod(t - 1, height * width)
            self.tokens[:, s, r // width, r % width] = previous[: self.real]
        if self.known:
            if j == 0:
                self.row_logits = self._row(stage, i)
            logits = self.row_logits[j]
        else:
            window = window_at(i, j, self.grid, self.prior_grid)
            end = target_index(stage, i, j, window) + 1
            sequence = window_tokens(self.tokens, window, stage + 1)[:, :end]
            positions = _positions(window, self.prior_grid, stage + 1)[:end]
            logits = self.forced.logits(sequence, positions, slice(end - 1, end))[:, 0]
        self.position = t + 1
        return self.forced.frequencies(logits).numpy()

    def _row(self, stage: int, i: int) -> list[Tensor]:
        """Logits (rows, K_s) of each position of row i of `stage`, from whole windows, all
        of the row's windows in one pass (they have one size, so one set of positions)."""
        windows = windows_in_row(i, self.grid, self.prior_grid)
        first = windows[0][0]  # every window of the row has its top and its size
        sequences = torch.cat([window_tokens(self.tokens, w, stage + 1) for w, _ in windows])
        row = target_index(stage, i, first.left, first)  # the window's row i starts here
        positions = _positions(first, self.prior_grid, stage + 1)
        logits = self.forced.logits(sequences, positions, slice(row, row + first.width))
        rows = self.tokens.shape[0]
        out: list[Tensor] = []
        for n, (window, columns) in enumerate(windows):
            mine = logits[n * rows : (n + 1) * rows]
            out.extend(mine[:, target_index(stage, i, j, window) - row] for j in columns)
        return out


@functools.lru_cache(maxsize=256)
def _positions(window: Window, prior_grid: tuple[int, int], stages: int) -> Tensor:
    return window_positions(window, prior_grid, stages)
