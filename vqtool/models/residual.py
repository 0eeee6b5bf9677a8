"""Residual vector quantization (Zeghidour et al. 2021, SoundStream, algorithm 1).

Stage 1 quantizes the latents; stage s quantizes the residual that stages 1..s-1 left, with a
codebook of its own, and the decoder sees the sum of the first n stages' codes. Each stage is
a `VectorQuantizer` (EMA or codebook loss, dead-code restarts, codebook init from data), so a
stage behaves as the single-stage quantizer does, on the rows it is given.

Gradients: straight through, the decoder's gradient reaches the encoder once, through the sum
of the codes; rotated (`gradient = "rotation"`), each stage passes it on to its own residual
by the rotation trick, so the encoder gets the sum of the stages' rotated gradients. Each stage
adds a commitment term pulling the latents towards the reconstruction of the stages up to it,
and without EMA a codebook term pulling its codes towards its residuals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtool.models.quantizer import (
    QuantizerOutput,
    VectorQuantizer,
    nearest_codes,
    perplexity_from_counts,
)


class ResidualVectorQuantizer(nn.Module):
    """`stages` vector quantizers in a chain; codes come as (B, S, h, w)."""

    def __init__(
        self,
        stages: int,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float,
        decay: float,
        codebook_init: str = "encoder",
        dead_code_steps: int = 0,
        gradient: str = "straight-through",
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.gradient = gradient
        self.layers = nn.ModuleList(
            VectorQuantizer(
                num_embeddings,
                embedding_dim,
                commitment_cost,
                decay,
                codebook_init,
                dead_code_steps,
                gradient,
            )
            for _ in range(stages)
        )

    @property
    def stages(self) -> int:
        return len(self.layers)

    def _layer(self, s: int) -> VectorQuantizer:
        layer = self.layers[s]
        assert isinstance(layer, VectorQuantizer)
        return layer

    def needs_init(self) -> bool:
        return self._layer(0).needs_init()

    @torch.no_grad()
    def init_from_data(self, z: Tensor) -> None:
        """Each stage's codebook from the residuals of the stages before it: z (N, D)."""
        residual = z.float()
        for s in range(self.stages):
            layer = self._layer(s)
            layer.init_from_data(residual)
            residual = residual - F.embedding(nearest_codes(residual, layer.codebook()),
                                              layer.codebook())  # fmt: skip

    def codebook(self) -> Tensor:
        """The first stage's (K, D) codes, detached."""
        return self._layer(0).codebook()

    def forward(self, z: Tensor, stages: int | None = None) -> QuantizerOutput:
        # fp32 whatever autocast does around it, as in VectorQuantizer.
        with torch.autocast(z.device.type, enabled=False):
            return self._forward_fp32(z.float(), self.stages if stages is None else stages)

    def _forward_fp32(self, z: Tensor, stages: int) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D), N = B * H * W
        residual = flat.detach()
        prefix = torch.zeros_like(residual)  # the sum of the codes so far
        loss = flat.new_zeros(())
        restarted = flat.new_zeros(())
        rotated = torch.zeros_like(residual)  # the sum of the stages' rotated codes
        indices = []
        first_counts = None
        for s in range(stages):
            layer = self._layer(s)
            codes, chosen, counts, restarts = layer.assign(residual)
            if not layer.uses_ema:
                loss = loss + F.mse_loss(codes, residual)  # the codebook term, eq. 3
            codes = codes.detach()
            if self.gradient == "rotation":
                # This stage's residual, carrying the gradient to z.
                rotated = rotated + layer.pass_gradient(flat - prefix, codes)
            prefix = prefix + codes
            loss = loss + layer.commitment_cost * F.mse_loss(flat, prefix)
            residual = residual - codes
            restarted = restarted + restarts
            indices.append(chosen.view(b, h, w))
            first_counts = counts if first_counts is None else first_counts
        assert first_counts is not None
        passed = rotated if self.gradient == "rotation" else flat + (prefix - flat).detach()
        quantized = passed.view(b, h, w, d).permute(0, 3, 1, 2)
        return QuantizerOutput(
            quantized, loss, perplexity_from_counts(first_counts), torch.stack(indices, 1),
            restarted,
        )  # fmt: skip

    @torch.no_grad()
    def quantize(self, z: Tensor, stages: int | None = None) -> Tensor:
        """Latents to every stage's indices: (B, D, h, w) -> (B, S, h, w); or to the first
        `stages` stages' (B, n, h, w), the later ones not computed."""
        b, d, h, w = z.shape
        residual = z.float().permute(0, 2, 3, 1).reshape(-1, d)
        indices = []
        for s in range(self.stages if stages is None else stages):
            codebook = self._layer(s).codebook().float()
            chosen = nearest_codes(residual, codebook)
            residual = residual - F.embedding(chosen, codebook)
            indices.append(chosen.view(b, h, w))
        return torch.stack(indices, 1)

    def lookup(self, indices: Tensor) -> Tensor:
        """The first n stages' indices (B, n, h, w) -> the sum of their codes (B, D, h, w)."""
        total = None
        for s in range(indices.shape[1]):
            codes = F.embedding(indices[:, s], self._layer(s).embedding)
            total = codes if total is None else total + codes
        assert total is not None
        return total.permute(0, 3, 1, 2)
