"""Vector quantization (van den Oord et al., 2017, eq. 3; EMA variant of appendix A.1).

The math lives in small pure functions; `VectorQuantizer` only holds the codebook state and
calls them. Nothing here builds a dense one-hot matrix: codes are looked up by index and the
EMA statistics are gathered with `bincount` / `index_add_`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtool.distributed import (
    all_gather_rows,
    all_reduce_sum,
    broadcast_from_rank0,
    rank_and_size,
)

# Laplace smoothing of the EMA cluster sizes (Sonnet's epsilon): keeps every divisor positive.
EMA_EPSILON = 1e-5


class QuantizerOutput(NamedTuple):
    quantized: Tensor  # (B, D, H, W), straight-through: forward value of the codes, gradient of z
    loss: Tensor  # scalar: codebook + commitment terms (commitment only with EMA)
    perplexity: Tensor  # scalar: exp(entropy) of the batch's code histogram (first stage's)
    indices: Tensor  # (B, H, W) int64; (B, n, H, W) from n residual stages
    restarted: Tensor  # scalar: dead codes re-seeded in this step


class Assignment(NamedTuple):
    codes: Tensor  # (N, D): the chosen code vectors (carrying the codebook's gradient)
    indices: Tensor  # (N,) int64
    counts: Tensor  # (K,) float32: this process's histogram of `indices`
    restarted: Tensor  # scalar: dead codes re-seeded in this step


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """||z - e||^2 for every pair: (N, D), (K, D) -> (N, K), without forming N x K x D."""
    return torch.addmm(
        z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0
    )


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the closest code for each row: (N, D), (K, D) -> (N,) int64.

    ||z||^2 is the same for every code of a row, so only ||e||^2 - 2 z.e is compared; and
    `min(1).indices` keeps argmin's first-minimum rule at a third of its cost on the CPU.
    """
    return torch.addmm(codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0).min(1).indices


def rotate_to(src: Tensor, tgt: Tensor) -> Tensor:
    """The rotation trick (Fifty et al. 2024): the rows of `tgt` (N, D) in value,
    with a gradient to `src` (N, D) that is the output's gradient rotated by the rotation
    taking src's direction to tgt's, and scaled by |tgt| / |src| (both treated as constants).

    A straight-through gradient gives every row of a code's cell the same push; this one
    depends on where the row lies in the cell. R = I - 2 w w^T + 2 q u^T with u, q the unit
    directions of src and tgt and w that of u + q maps u to q without forming a D x D matrix.
    """
    src_norm = src.norm(dim=1, keepdim=True).clamp_min(1e-12)
    tgt_norm = tgt.norm(dim=1, keepdim=True)
    u = (src / src_norm).detach()
    q = tgt / tgt_norm.clamp_min(1e-12)
    w = u + q
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rotated = src - 2 * (src * w).sum(1, keepdim=True) * w + 2 * (src * u).sum(1, keepdim=True) * q
    return rotated * (tgt_norm / src_norm).detach()


def code_counts(indices: Tensor, num_embeddings: int) -> Tensor:
    """Histogram of code indices: (...) -> (K,) float32."""
    flat = indices.reshape(-1)
    if flat.is_cuda:
        # CUDA bincount reads the largest index back to the host, a sync every step; adding
        # ones is exact in fp32 (below 2^24 per code), whatever order the atomics take.
        ones = torch.ones(flat.shape, device=flat.device)
        return torch.zeros(num_embeddings, device=flat.device).index_add_(0, flat, ones)
    return torch.bincount(flat, minlength=num_embeddings).float()


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp(H(p)) of a code histogram; 1 = one code used, K = all used equally."""
    probs = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(probs * torch.log(probs + 1e-10)).sum())


def entropy_bits_from_counts(counts: Tensor) -> Tensor:
    """Entropy of a code histogram in bits per code: log2 of its perplexity, without smoothing."""
    probs = counts[counts > 0] / counts.sum()
    return -(probs * probs.log2()).sum()


def code_sums(z: Tensor, indices: Tensor, num_embeddings: int) -> Tensor:
    """Sum of the vectors assigned to each code: (N, D), (N,) -> (K, D)."""
    return torch.zeros(num_embeddings, z.shape[1], device=z.device, dtype=z.dtype).index_add_(
        0, indices, z
    )


def ema_update_(average: Tensor, value: Tensor, decay: float) -> None:
    """In place: average <- decay * average + (1 - decay) * value."""
    average.lerp_(value, 1.0 - decay)


def codebook_from_ema(cluster_size: Tensor, embed_sum: Tensor) -> Tensor:
    """Codebook = EMA sums / Laplace-smoothed EMA counts: (K,), (K, D) -> (K, D)."""
    n = cluster_size.sum()
    k = cluster_size.shape[0]
    smoothed = (cluster_size + EMA_EPSILON) / (n + k * EMA_EPSILON) * n
    return embed_sum / smoothed.unsqueeze(1)


def kmeans_plus_plus(vectors: Tensor, k: int, iterations: int = 10) -> Tensor:
    """k-means++ seeding and a few Lloyd iterations: (N, D) -> (k, D).

    Uses the global torch RNG so that runs are repeatable from the seed.
    """
    n = vectors.shape[0]
    centers = vectors[torch.randint(n, (1,), device=vectors.device)]
    closest = squared_distances(vectors, centers).squeeze(1)
    for _ in range(1, k):
        weights = closest.clamp_min(0) + 1e-12
        pick = torch.multinomial(weights, 1)
        centers = torch.cat([centers, vectors[pick]])
        closest = torch.minimum(closest, squared_distances(vectors, vectors[pick]).squeeze(1))
    for _ in range(iterations):
        assign = nearest_codes(vectors, centers)
        counts = code_counts(assign, k)
        sums = code_sums(vectors, assign, k)
        # Empty clusters keep their centre rather than collapsing to zero.
        centers = torch.where(
            counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1), centers
        )
    return centers


def sample_rows(vectors: Tensor, k: int) -> Tensor:
    """k rows drawn from (N, D), without replacement when N >= k; tiny noise breaks ties."""
    n = vectors.shape[0]
    if n >= k:
        picks = torch.randperm(n, device=vectors.device)[:k]
    else:
        picks = torch.randint(n, (k,), device=vectors.device)
    rows = vectors[picks]
    return rows + 1e-4 * rows.std().clamp_min(1e-6) * torch.randn_like(rows)


class VectorQuantizer(nn.Module):
    """Codebook of K vectors of size D; decay 0 learns it by gradient, decay > 0 by EMA.

    The EMA state starts as cluster_size = 1 and embed_sum = codebook, so a code unused in a
    step keeps its vector (the seed's zero cluster sizes sent such codes to norms of ~1e5).
    """

    # Set in __init__ (buffers, or a Parameter for `embedding`); declared so they type as tensors.
    embedding: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    initialized: Tensor
    unused_steps: Tensor

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float,
        decay: float,
        codebook_init: str = "encoder",
        dead_code_steps: int = 0,
        gradient: str = "straight-through",
    ) -> None:
        super().__init__()
        self.gradient = gradient  # how the decoder's gradient reaches z: see `pass_gradient`
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.decay = decay
        self.codebook_init = codebook_init
        self.dead_code_steps = dead_code_steps
        codebook = torch.empty(num_embeddings, embedding_dim)
        if decay > 0:
            codebook.normal_()
            self.register_buffer("embedding", codebook)
            self.register_buffer("cluster_size", torch.ones(num_embeddings))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            codebook.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
            self.embedding = nn.Parameter(codebook)
        # Whether the codebook has been initialised from data (codebook_init encoder/kmeans).
        self.register_buffer("initialized", torch.tensor(codebook_init == "seed"))
        # Training steps since each code was last chosen (dead-code restart).
        self.register_buffer("unused_steps", torch.zeros(num_embeddings, dtype=torch.long))

    @property
    def uses_ema(self) -> bool:
        return self.decay > 0

    def codebook(self) -> Tensor:
        """The (K, D) code vectors, detached: searching them needs no gradient."""
        return self.embedding.detach()

    @torch.no_grad()
    def set_codes(self, which: Tensor, vectors: Tensor) -> None:
        """Replace the codes where `which` (bool (K,)) is set by the rows of `vectors` (K, D) and
        reset their state; selecting with `where`, no index is read back to the host."""
        keep = which.unsqueeze(1)
        self.embedding.data.copy_(torch.where(keep, vectors, self.embedding.data))
        if self.uses_ema:
            self.cluster_size.copy_(torch.where(which, 1.0, self.cluster_size))
            self.embed_sum.copy_(torch.where(keep, vectors, self.embed_sum))
        self.unused_steps.masked_fill_(which, 0)

    @torch.no_grad()
    def init_from_data(self, z: Tensor) -> None:
        """Initialise the codebook from encoder outputs z: (N, D), by sampling or k-means++."""
        # Sample from the global batch, so any process count draws the same codebook.
        z = all_gather_rows(z.float())
        if self.codebook_init == "kmeans":
            vectors = kmeans_plus_plus(z, self.num_embeddings)
        else:
            vectors = sample_rows(z, self.num_embeddings)
        # Under DDP every rank must hold rank 0's draw.
        vectors = broadcast_from_rank0(vectors)
        self.set_codes(torch.ones(self.num_embeddings, dtype=torch.bool, device=z.device), vectors)
        self.initialized.fill_(True)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for indices: (B, H, W) -> (B, D, H, W)."""
        return F.embedding(indices, self.embedding).permute(0, 3, 1, 2)

    def quantize(self, z: Tensor, stages: int | None = None) -> Tensor:
        """Nearest-code indices for latents: (B, D, H, W) -> (B, H, W); `stages` as in
        `forward`."""
        if stages not in (None, 1):
            raise ValueError(f"a single-stage quantizer cannot use {stages} stages")
        b, _, h, w = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.embedding_dim)
        return nearest_codes(flat, self.codebook().float()).view(b, h, w)

    def needs_init(self) -> bool:
        """Whether the codebook still waits for `init_from_data` (read back to the host)."""
        return not bool(self.initialized)

    def forward(self, z: Tensor, stages: int | None = None) -> QuantizerOutput:
        """`stages` is there for the residual quantizers' sake: one stage is all there is."""
        if stages not in (None, 1):
            raise ValueError(f"a single-stage quantizer cannot use {stages} stages")
        # The quantizer always runs in fp32, whatever autocast does around it: bf16 distances
        # pick wrong codes and bf16 EMA sums lose the small updates.
        with torch.autocast(z.device.type, enabled=False):
            return self._forward_fp32(z.float())

    def assign(self, flat: Tensor) -> Assignment:
        """Nearest codes of fp32 rows (N, D), and in training the codebook's update from them
        (EMA, dead-code restarts): the step that a residual stage repeats."""
        indices = nearest_codes(flat, self.codebook())
        codes = F.embedding(indices, self.embedding)  # (N, D)
        counts = code_counts(indices, self.num_embeddings)
        restarted = counts.new_zeros(())
        if self.training and (self.uses_ema or self.dead_code_steps > 0):
            # Codebook updates use every process's counts: reduced once, used by both steps.
            global_counts = all_reduce_sum(counts)
            if self.uses_ema:
                self._ema_step(flat.detach(), indices, global_counts)
            if self.dead_code_steps > 0:
                restarted = self._restart_dead_codes(flat.detach(), global_counts)
        return Assignment(codes, indices, counts, restarted)

    def _forward_fp32(self, z: Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D), N = B * H * W
        quantized_flat, indices, counts, restarted = self.assign(flat)
        quantized = quantized_flat.view(b, h, w, d).permute(0, 3, 1, 2)
        commitment = F.mse_loss(z, quantized.detach())
        if self.uses_ema:
            loss = self.commitment_cost * commitment
        else:
            loss = F.mse_loss(quantized, z.detach()) + self.commitment_cost * commitment
        if self.gradient == "rotation":
            passed = self.pass_gradient(flat, quantized_flat.detach())
            quantized = passed.view(b, h, w, d).permute(0, 3, 1, 2)
        else:
            quantized = z + (quantized - z).detach()
        return QuantizerOutput(
            quantized, loss, perplexity_from_counts(counts), indices.view(b, h, w), restarted
        )

    def pass_gradient(self, z: Tensor, codes: Tensor) -> Tensor:
        """The codes (N, D) in value, with the decoder's gradient passed on to z (N, D):
        straight through, or rotated (`rotate_to`)."""
        if self.gradient == "rotation":
            return rotate_to(z, codes)
        return z + (codes - z).detach()

    @torch.no_grad()
    def _ema_step(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        sums = code_sums(flat, indices, self.num_embeddings)
        sums = all_reduce_sum(sums)
        ema_update_(self.cluster_size, counts, self.decay)
        ema_update_(self.embed_sum, sums, self.decay)
        self.embedding.copy_(codebook_from_ema(self.cluster_size, self.embed_sum))

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor, counts: Tensor) -> Tensor:
        """Re-seed codes unused for `dead_code_steps` steps from this step's encoder outputs.

        Every step draws a candidate row of the global batch for every code (with replacement:
        two codes restarted in one step may draw the same row, told apart by the noise) and
        keeps those of the dead codes: a (K, D) gather and draw per step, plus under torchrun
        two broadcasts and a (K, D) all-reduce. Nothing is read back to the host, so a GPU
        never waits here and the step can be recorded as a CUDA graph. Rank 0's draw is the
        one every process uses, so one process and several give the same codebook, whatever
        each process's generator holds (after a resume they need not agree).
        """
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.dead_code_steps
        rank, size = rank_and_size()
        n, k = flat.shape[0], self.num_embeddings
        picks = broadcast_from_rank0(torch.randint(n * size, (k,), device=flat.device))
        noise = broadcast_from_rank0(torch.randn(k, flat.shape[1], device=flat.device))
        # Each process contributes the picked rows it holds; the sum assembles the draw.
        local = picks - rank * n
        mine = (local >= 0) & (local < n)
        rows = all_reduce_sum(torch.where(mine.unsqueeze(1), flat[local.clamp(0, n - 1)], 0.0))
        self.set_codes(dead, rows + 1e-4 * rows.std().clamp_min(1e-6) * noise)
        return dead.sum().float()
