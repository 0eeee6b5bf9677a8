"""The prior's tables adapted to the image being coded, in integers: the same on every machine.

A prior trained on CIFAR-10's 8x8 grids codes a photo's large grid window by window, but a
photo uses some of the codes over and over, in proportions no 32x32 image has. So
each table is multiplied by a weight that grows with how often each code has already appeared
in this image's grid at this stage (a product of experts with the image's own statistics):
weight(c) = floor(((2c + 1) * 2^32) ^ (1/4)), (2c + 1)^(1/4) scaled by 2^8, then the product
shifted right by 8 bits. Exact integer arithmetic (integer square roots, products and
shifts in int64), so the encoder and the decoder compute the same tables anywhere.

The encoder and decoder update the counts with the code of each position after coding it,
stage by stage (each stage's counts start at zero): a position's table depends on the codes
before it alone.
"""

from __future__ import annotations

import functools

import numpy as np

SCHEME = 1  # the header's "adapt": which rule made the tables (this module's, the only one)
SHIFT = 8  # weight(0) = 2^SHIFT: a code never seen keeps its table's value


@functools.lru_cache(maxsize=4)
def weights(most: int) -> np.ndarray:
    """weight(c) for c = 0..most, int64, read-only: the float fourth root, then corrected in
    integers until w^4 <= (2c + 1) 2^32 < (w + 1)^4 (exact; int64 holds (w + 1)^4 for every
    count a grid of at most 2^24 positions a stage can reach)."""
    x = (2 * np.arange(most + 1, dtype=np.int64) + 1) << 32
    w = np.floor(np.power(x.astype(np.float64), 0.25)).astype(np.int64)
    for _ in range(3):  # the float root is off by at most one here
        w -= w**4 > x
        w += (w + 1) ** 4 <= x
    w.flags.writeable = False
    return w


class Adapter:
    """Counts of the codes seen in each of `rows` grids at the current stage, and the tables
    they adapt: `positions` positions a stage, `codes` K_s codes a stage."""

    def __init__(self, rows: int, codes: int, positions: int) -> None:
        self.counts = np.zeros((rows, codes), np.int64)
        self.weighted = np.full((rows, codes), 1 << SHIFT, np.int64)  # weight(counts), kept
        self.positions = positions
        self.weight = weights(positions)
        self.rows = np.arange(rows)

    def tables(self, t: int, tables: np.ndarray) -> np.ndarray:
        """Position t's tables (rows, K_s) of integers (float64), adapted to the counts."""
        if t % self.positions == 0:
            self.counts[:] = 0
            self.weighted[:] = 1 << SHIFT
        product = tables.astype(np.int64) * self.weighted
        return (product >> SHIFT).astype(np.float64)

    def saw(self, codes: np.ndarray) -> None:
        """Count each grid's code at the position just coded."""
        self.counts[self.rows, codes] += 1
        self.weighted[self.rows, codes] = self.weight[self.counts[self.rows, codes]]
