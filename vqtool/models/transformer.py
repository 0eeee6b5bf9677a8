"""An autoregressive prior over code grids: a causal transformer in raster order.

A grid of h x w code indices (K codes) is read as a sequence of T = h * w tokens, row by row.
The input is that sequence shifted right by a start token, so the logits at position t predict
code t from codes < t. The start token carries the class when the prior is conditional.

Two ways through the same weights:
- `CodePrior.forward`: every position at once (training, `nll_bits`), causal attention.
- `CodePrior.new_cache` + `CodePrior.step_logits`: one position per call for a batch, keys and
  values of earlier positions kept in buffers allocated once for the whole grid. Sampling uses
  it. Entropy coding uses a third, `prior_steps.PriorSteps`: the same step written out with
  plain tensor operations of fixed shapes, so that encoder and decoder compute each
  position's probabilities alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtool.models.config import PriorConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused input projection."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> queries, keys, values, each (B, H, T, C / H)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, y: Tensor) -> Tensor:
        """(B, H, T, C / H) -> (B, T, C), through the output projection."""
        b, _, t, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        q, k, v = self._split(x)
        p = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True))

    def step(self, x: Tensor, keys: Tensor, values: Tensor, position: int) -> Tensor:
        """One new position: x (B, 1, C), buffers (B, H, T, C / H) -> (B, 1, C).

        Stores this position's key and value at `position`, then attends over positions
        0..position. No mask: a single query at the end of the prefix may see all of it
        (`is_causal` would align the mask top-left and hide all but the first key).
        """
        q, k, v = self._split(x)
        keys[:, :, position] = k[:, :, 0]
        values[:, :, position] = v[:, :, 0]
        end = position + 1
        return self._merge(F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end]))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = SelfAttention(cfg.width, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def step(self, x: Tensor, keys: Tensor, values: Tensor, position: int) -> Tensor:
        """x (B, 1, C) at `position`, this block's cache buffers (B, H, T, C / H) -> (B, 1, C)."""
        x = x + self.drop(self.attn.step(self.norm1(x), keys, values, position))
        return x + self.drop(self.mlp(self.norm2(x)))


@dataclass
class KVCache:
    """Keys and values of the positions fed so far, for every layer of one batch.

    Mutable decoding state, made by `CodePrior.new_cache` and advanced by
    `CodePrior.step_logits`; buffers are allocated once for the whole grid.
    """

    keys: Tensor  # (L, B, H, T, C / H); positions >= length are not yet written
    values: Tensor  # (L, B, H, T, C / H)
    start: Tensor  # (B, C): the start token's embedding, class included when conditional
    length: int = 0  # positions fed so far; the next call predicts code `length`


class CodePrior(nn.Module):
    """Causal transformer over the raster order of an h x w grid of K code indices.

    Token embedding rows 0..K-1 are the codes and row K the start token; positions have
    learned embeddings. When `cfg.conditional`, a learned class embedding is added to the start
    token, so every prediction can depend on the label.

    Codes of S residual stages (S > 1) are one sequence, stage after stage: the grid is
    (S * h, w), and the code c of stage s is the token s * K_s + c (K = S * K_s tokens), so a
    prefix of the sequence is a prefix of the stages. Each position's logits are masked to
    its stage's K_s tokens (a buffer, not a weight: a one-stage prior is unchanged).
    """

    position_stage: Tensor | None  # (T,) the stage of each position (None: one stage)
    token_stage: Tensor | None  # (K,) the stage of each token

    def __init__(
        self, cfg: PriorConfig, num_embeddings: int, grid: tuple[int, int], stages: int = 1
    ) -> None:
        super().__init__()
        if cfg.width % cfg.heads != 0:
            raise ValueError(f"prior width {cfg.width} is not a multiple of heads {cfg.heads}")
        self.config = cfg
        self.num_embeddings = num_embeddings
        self.grid = grid
        self.length = grid[0] * grid[1]
        self.tokens = nn.Embedding(num_embeddings + 1, cfg.width)
        self.classes = nn.Embedding(cfg.num_classes, cfg.width) if cfg.conditional else None
        self.positions = nn.Parameter(torch.zeros(self.length, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, num_embeddings)
        self.stages = stages
        if stages == 1:
            self.position_stage = self.token_stage = None
        else:
            if num_embeddings % stages or grid[0] % stages:
                raise ValueError(f"{num_embeddings} tokens, grid {grid}: not {stages} stages")
            # Buffers, not weights: a one-stage prior's state is unchanged.
            positions = torch.arange(self.length) // (self.length // stages)
            tokens = torch.arange(num_embeddings) // (num_embeddings // stages)
            self.register_buffer("position_stage", positions, persistent=False)
            self.register_buffer("token_stage", tokens, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Normal(0, 0.02) weights and zero biases; the projections that write into the
        residual stream are scaled by 1 / sqrt(2 L) so its variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.positions, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * self.config.layers)
        for block in self._blocks():
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            last = block.mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.normal_(last.weight, std=residual_std)

    def _blocks(self) -> Iterator[Block]:
        """The blocks, typed as such (a ModuleList yields plain Modules)."""
        return cast(Iterator[Block], iter(self.blocks))

    def _start(self, batch: int, labels: Tensor | None) -> Tensor:
        """The start token's embedding for each sequence: -> (B, C)."""
        start = self.tokens.weight[self.num_embeddings].expand(batch, -1)
        if self.classes is None:
            if labels is not None:
                raise ValueError("labels given to an unconditional prior")
            return start
        if labels is None:
            raise ValueError("a conditional prior needs labels")
        if labels.shape != (batch,):
            raise ValueError(f"labels of shape {tuple(labels.shape)}, expected ({batch},)")
        return start + self.classes(labels)

    def hidden(
        self, prefix: Tensor, labels: Tensor | None, positions: Tensor | None = None
    ) -> Tensor:
        """Final hidden states for a prefix of t codes: (B, t) -> (B, t + 1, C).

        Position i sees the start token and codes < i, so the last row predicts code t. The
        sequence sits at the grid's first t + 1 positions, or at `positions` (>= t + 1,) int64
        (a window of a larger grid: vqtool.models.windows).
        """
        b, t = prefix.shape
        if t >= self.length:
            raise ValueError(f"a prefix of {t} codes; the grid has {self.length} positions")
        where = self.positions[: t + 1] if positions is None else self.positions[positions[: t + 1]]
        start = self._start(b, labels).unsqueeze(1)  # (B, 1, C)
        x = torch.cat([start, self.tokens(prefix)], dim=1) + where
        x = self.drop(x)  # (B, t + 1, C)
        for block in self._blocks():
            x = block(x)
        return self.norm(x)

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """Teacher-forced logits: codes (B, h, w), labels (B,) -> (B, h * w, K).

        logits[:, t] predicts code t (raster order) from the codes before it.
        """
        if tuple(codes.shape[1:]) != self.grid:
            raise ValueError(f"codes of shape {tuple(codes.shape)}, expected (B, {self.grid})")
        flat = codes.reshape(codes.shape[0], self.length)  # (B, T)
        logits = self.head(self.hidden(flat[:, :-1], labels))
        return self.stage_masked(logits, slice(None))

    def window_logits(
        self, tokens: Tensor, positions: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced logits of a window's sequence (vqtool.models.windows): tokens
        (B, T') at the prior's `positions` (T',) -> (B, T', K), each over its stage's codes."""
        logits = self.head(self.hidden(tokens[:, :-1], labels, positions))
        return self.stage_masked(logits, positions)

    def stage_masked(self, logits: Tensor, positions: int | slice | Tensor) -> Tensor:
        """Logits (..., K) of `positions` with every token of another stage at -inf."""
        if self.position_stage is None or self.token_stage is None:
            return logits
        other = self.position_stage[positions].unsqueeze(-1) != self.token_stage  # (T, K) / (K,)
        return logits.masked_fill(other, -math.inf)

    @torch.no_grad()
    def new_cache(self, batch: int, labels: Tensor | None = None) -> KVCache:
        """Empty decoding state for `batch` sequences (labels (B,) when conditional)."""
        p = self.positions
        shape = (self.config.layers, batch, self.config.heads, self.length, self.head_dim)
        keys = torch.empty(shape, dtype=p.dtype, device=p.device)
        return KVCache(keys, torch.empty_like(keys), self._start(batch, labels))

    @property
    def head_dim(self) -> int:
        return self.config.width // self.config.heads

    @torch.no_grad()
    def step_logits(self, cache: KVCache, previous: Tensor | None) -> Tensor:
        """Logits of the next position, feeding one token per sequence: -> (B, K).

        `previous` (B,) is the code at position cache.length - 1; None for the first call,
        which feeds the start token. Advances the cache by one position. Equal to forward's
        logits up to rounding (see the tests), not bit for bit.
        """
        position = cache.length
        if position >= self.length:
            raise ValueError(f"the cache already holds all {self.length} positions")
        if (previous is None) != (position == 0):
            raise ValueError("previous must be None exactly at the first position")
        x = cache.start if previous is None else self.tokens(previous)  # (B, C)
        x = self.drop(x + self.positions[position]).unsqueeze(1)  # (B, 1, C)
        for layer, block in enumerate(self._blocks()):
            x = block.step(x, cache.keys[layer], cache.values[layer], position)
        cache.length = position + 1
        logits = self.head(self.norm(x[:, 0]))
        return self.stage_masked(logits, position)


def nll_bits(model: CodePrior, codes: Tensor, labels: Tensor | None = None) -> Tensor:
    """Negative log2-likelihood of each grid, summed over its positions: (B, h, w) -> (B,)."""
    logits = model(codes, labels)  # (B, T, K)
    nats = F.cross_entropy(
        logits.transpose(1, 2), codes.reshape(codes.shape[0], -1), reduction="none"
    )
    return nats.sum(1) / math.log(2.0)


def draw(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One code per row from softmax(logits / temperature), restricted to the top_k: (B, K) -> (B,).

    Gumbel-max: argmax(logits / T + Gumbel noise). It always consumes exactly B * K uniforms,
    whatever the logits, so two samplers whose logits differ only by rounding stay in step with
    one generator, and draw the same codes unless a near-tie falls between them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    # At least fp32 for the scores; the noise is always drawn in fp32, so the generator
    # advances the same way whatever the model's dtype.
    scores = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kept = scores.topk(top_k, dim=-1).indices
        # -inf outside the top k: no finite noise can lift those codes to the argmax.
        scores = torch.full_like(scores, -math.inf).scatter(-1, kept, scores.gather(-1, kept))
    uniform = torch.rand(scores.shape, generator=generator, device=scores.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
    return (scores + gumbel.to(scores.dtype)).argmax(-1)


@torch.no_grad()
def sample(
    model: CodePrior,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """n grids drawn position by position: -> (n, h, w) int64. Call on a model in eval mode.

    With the KV cache (the default) each position costs one token; without it the whole
    prefix is recomputed at every position, the reference the cache is tested and timed
    against. Both consume the generator in the same order, so the same generator state gives
    the same grids either way.
    """
    device = model.positions.device
    codes = torch.empty(n, model.length, dtype=torch.long, device=device)
    cache = model.new_cache(n, labels) if use_cache else None
    previous: Tensor | None = None
    for t in range(model.length):
        if cache is not None:
            logits = model.step_logits(cache, previous)
        else:
            logits = model.head(model.hidden(codes[:, :t], labels)[:, -1])  # (n, K)
            logits = model.stage_masked(logits, t)
        previous = draw(logits, temperature, top_k, generator)
        codes[:, t] = previous
    return codes.view(n, *model.grid)
