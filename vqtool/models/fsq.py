"""Finite scalar quantization (Mentzer et al., 2023, section 3) and its residual stages.

The latents are projected to d = len(levels) channels; channel i is bounded to an open
interval around L_i integer levels and rounded with a straight-through gradient, so the codes
form a fixed grid of K = prod(levels) points: no codebook, no codebook loss, no dead codes to
restart. A code's index is the mixed-radix number of its channels' levels (channel 0 the least
significant digit). The math is pure functions over channel dim 1, so that (N, d) rows and
(B, d, h, w) grids go through the same code; `FiniteScalarQuantizer` holds the projections.

Residual stages (Zeghidour et al. 2021, algorithm 1, over this grid): stage s quantizes what the
stages before it left, scaled up by (L - 1)^s per channel, since each stage's error is at most
half a level and shrinks by about L - 1 per stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtool.models.quantizer import QuantizerOutput, code_counts, perplexity_from_counts

# The bound reaches this fraction beyond the outer levels, so that rounding can reach them.
BOUND_EPSILON = 1e-3


def per_channel(values: Tensor, like: Tensor) -> Tensor:
    """(d,) values shaped to broadcast over channel dim 1 of `like`: (N, d) or (B, d, h, w)."""
    return values.view(-1, *([1] * (like.dim() - 2)))


def bound(z: Tensor, levels: Tensor) -> Tensor:
    """Squash each channel into the interval that rounds onto its L levels: (N, d, ...).

    Odd L: levels -(L-1)/2 .. (L-1)/2. Even L: the same interval shifted down by a half, so
    that its L levels are the integers -L/2 .. L/2 - 1; the shift inside tanh keeps z = 0 at 0.
    """
    lv = per_channel(levels, z)
    half = (lv - 1) * (1 + BOUND_EPSILON) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half)
    return torch.tanh(z + shift) * half - offset


def round_straight_through(x: Tensor) -> Tensor:
    """round(x) forward, identity backward."""
    return x + (x.round() - x).detach()


def half_widths(levels: Tensor) -> Tensor:
    """L // 2 per channel: dividing the rounded levels by it puts the codes in [-1, 1]."""
    return torch.div(levels, 2, rounding_mode="floor")


def quantize_scalars(z: Tensor, levels: Tensor) -> Tensor:
    """Latents to grid codes in [-1, 1], straight-through: (N, d, ...) -> (N, d, ...)."""
    return round_straight_through(bound(z, levels)) / per_channel(half_widths(levels), z)


def codes_to_indices(codes: Tensor, levels: Tensor) -> Tensor:
    """Grid codes (N, d, ...) -> int64 indices (N, ...): the levels as mixed-radix digits."""
    hw = per_channel(half_widths(levels), codes)
    digits = (codes * hw + hw).round().long()
    return (digits * per_channel(radix_basis(levels), codes)).sum(1)


def indices_to_codes(indices: Tensor, levels: Tensor) -> Tensor:
    """int64 indices (N, ...) -> grid codes (N, d, ...) in [-1, 1]."""
    lv = levels.long()
    digits = indices.unsqueeze(1) // per_channel(radix_basis(levels), indices.unsqueeze(1))
    digits = digits % per_channel(lv, digits)
    hw = per_channel(half_widths(levels), digits)
    return (digits.float() - hw) / hw


def radix_basis(levels: Tensor) -> Tensor:
    """The place value of each channel's digit: 1, L0, L0*L1, ... (d,) int64."""
    lv = levels.long()
    return torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0)


def stage_scales(levels: Tensor, stages: int) -> Tensor:
    """(S, d): stage s quantizes its residual divided by (L - 1)^-s."""
    powers = torch.arange(stages, dtype=levels.dtype, device=levels.device).unsqueeze(1)
    return (levels - 1).pow(-powers)


class FiniteScalarQuantizer(nn.Module):
    """Project D -> len(levels), quantize each channel on its grid, project back to D.

    `stages` > 1 quantizes the residual again, each stage on the same grid at a smaller scale;
    codes then carry a stage axis: (B, S, h, w). One stage keeps (B, h, w).
    """

    levels: Tensor
    scales: Tensor

    def __init__(self, embedding_dim: int, levels: tuple[int, ...], stages: int = 1) -> None:
        super().__init__()
        self.num_embeddings = math.prod(levels)
        self.stages = stages
        d = len(levels)
        self.project_in = nn.Conv2d(embedding_dim, d, 1)
        self.project_out = nn.Conv2d(d, embedding_dim, 1)
        # Derived from the config: not part of the state dict.
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.register_buffer("scales", stage_scales(self.levels, stages), persistent=False)

    def needs_init(self) -> bool:
        return False

    def init_from_data(self, z: Tensor) -> None:
        """Nothing to initialise: the grid is fixed."""

    def codebook(self) -> Tensor:
        """Every code of the first stage's grid as the decoder sees it: (K, D), detached."""
        grid = indices_to_codes(torch.arange(self.num_embeddings, device=self.levels.device),
                                self.levels)  # fmt: skip
        return F.linear(grid, self.project_out.weight[:, :, 0, 0], self.project_out.bias).detach()

    def forward(self, z: Tensor, stages: int | None = None) -> QuantizerOutput:
        # fp32 whatever autocast does around it: bf16 cannot hold the levels' boundaries.
        with torch.autocast(z.device.type, enabled=False):
            return self._forward_fp32(z.float(), self.stages if stages is None else stages)

    def _forward_fp32(self, z: Tensor, stages: int) -> QuantizerOutput:
        residual = self.project_in(z)  # (B, d, h, w)
        total = torch.zeros_like(residual)
        indices = []
        for s in range(stages):
            scale = per_channel(self.scales[s], residual)
            unit = quantize_scalars(residual / scale, self.levels)  # on the grid, in [-1, 1]
            indices.append(codes_to_indices(unit.detach(), self.levels))
            codes = unit * scale
            residual = residual - codes.detach()
            # The decoder's gradient reaches z through the first stage's bound alone: the
            # later stages' bounds would each add their own push on the same latents.
            total = total + (codes if s == 0 else codes.detach())
        counts = code_counts(indices[0], self.num_embeddings)
        stacked = indices[0] if self.stages == 1 else torch.stack(indices, 1)
        zero = z.new_zeros(())
        return QuantizerOutput(
            self.project_out(total), zero, perplexity_from_counts(counts), stacked, zero
        )

    @torch.no_grad()
    def quantize(self, z: Tensor, stages: int | None = None) -> Tensor:
        """Latents to indices: (B, D, h, w) -> (B, h, w), or (B, S, h, w) with stages; or the
        first `stages` stages' (B, n, h, w), the later ones not computed."""
        with torch.autocast(z.device.type, enabled=False):
            return self._forward_fp32(z.float(), self.stages if stages is None else stages).indices

    def lookup(self, indices: Tensor) -> Tensor:
        """Indices (B, h, w), or the first n stages (B, n, h, w) -> (B, D, h, w)."""
        planes = indices.unsqueeze(1) if indices.dim() == 3 else indices
        total = None
        for s in range(planes.shape[1]):
            codes = indices_to_codes(planes[:, s], self.levels)
            codes = codes * per_channel(self.scales[s], codes)
            total = codes if total is None else total + codes
        assert total is not None
        return self.project_out(total)
