"""A CodePrior's predictions position by position, for entropy coding.

`PriorSteps` runs the prior over a fixed batch of sequences one position at a time, with the
same plain tensor operations at every position: layer norm, one matrix product per linear
layer, and attention of the single new query over all T key slots of the batch's buffers with
the slots not yet written masked out. Every shape is fixed by (rows, model), so a position's
arithmetic never depends on how far the sequence has got or on what the other rows hold
(except through their own values), and encoder and decoder, running the same rows, compute
the same numbers. It is the prior's KV-cache step written out for speed: no module calls, no
scaled_dot_product_attention (whose kernel chooses its own blocking), and no reallocation per
position.

Equal to `CodePrior.forward`'s logits up to float rounding (the tests check it), not bit for
bit: coding takes its probabilities from this path alone, on both sides.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtool.models.transformer import Block, CodePrior


class _Layer(NamedTuple):
    """One block's weights, looked up once: (weight, bias) of each norm and linear layer."""

    norm1: tuple[Tensor, Tensor]
    qkv: tuple[Tensor, Tensor]
    proj: tuple[Tensor, Tensor]
    norm2: tuple[Tensor, Tensor]
    fc1: tuple[Tensor, Tensor]
    fc2: tuple[Tensor, Tensor]


def _pair(module: nn.Module) -> tuple[Tensor, Tensor]:
    assert isinstance(module, (nn.Linear, nn.LayerNorm))
    return module.weight, module.bias


def _layer(block: nn.Module) -> _Layer:
    assert isinstance(block, Block)
    attn, mlp = block.attn, block.mlp
    return _Layer(_pair(block.norm1), _pair(attn.qkv), _pair(attn.proj), _pair(block.norm2),
                  _pair(mlp[0]), _pair(mlp[2]))  # fmt: skip


class PriorSteps:
    """The prior's logits for `rows` sequences, one position per `next` call.

    Make one inside `torch.inference_mode()` for the model in eval mode; not thread-safe, one
    per thread.
    """

    def __init__(self, model: CodePrior, rows: int) -> None:
        cfg = model.config
        if cfg.conditional:
            raise ValueError("a conditional prior needs labels; coding has none")
        self.model = model
        self.rows = rows
        self.heads = cfg.heads
        self.head_dim = cfg.width // cfg.heads
        self.width = cfg.width
        self.length = model.length
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.layers = [_layer(block) for block in model.blocks]
        self.final_norm = _pair(model.norm)
        self.head = _pair(model.head)
        dtype = model.positions.dtype
        # (B, H, T, D) per layer; zeros, so that a masked slot weighs exactly 0.
        shape = (rows, cfg.heads, self.length, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in self.layers]
        # Row t: 0 on slots 0..t, -inf after them; (T, 1, T) to add to one query's scores.
        masks = torch.full((self.length, self.length), -math.inf, dtype=dtype).triu_(1)
        self.masks = masks.unsqueeze(1)
        self.position = 0

    def next(self, previous: Tensor | None) -> Tensor:
        """Logits (rows, K) of position `self.position`, fed the code at the position before it
        (rows,), or None at position 0 (the start token)."""
        t = self.position
        if t >= self.length:
            raise ValueError(f"all {self.length} positions are done")
        if (previous is None) != (t == 0):
            raise ValueError("previous must be None exactly at the first position")
        model = self.model
        tokens = model.tokens.weight
        if previous is None:
            x = tokens[model.num_embeddings].expand(self.rows, -1)
        else:
            x = tokens[previous]
        x = x + model.positions[t]  # (B, C)
        for layer, weights in enumerate(self.layers):
            x = self._block(weights, x, layer, t)
        self.position = t + 1
        x = F.layer_norm(x, (self.width,), *self.final_norm)
        logits = F.linear(x, *self.head)
        return model.stage_masked(logits, t)

    def _block(self, weights: _Layer, x: Tensor, layer: int, t: int) -> Tensor:
        """One pre-norm block at position t: (B, C) -> (B, C)."""
        b, h, d, c = self.rows, self.heads, self.head_dim, self.width
        qkv = F.linear(F.layer_norm(x, (c,), *weights.norm1), *weights.qkv).view(b, 3, h, d)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, t] = qkv[:, 1]
        values[:, :, t] = qkv[:, 2]
        # (B * H) products of one query (1, D) with the slots' keys (D, T), plus the mask.
        query = qkv[:, 0].reshape(b * h, 1, d)
        scores = torch.baddbmm(
            self.masks[t], query, keys.view(b * h, -1, d).transpose(1, 2), alpha=self.scale
        )
        mixed = torch.bmm(torch.softmax(scores, dim=-1), values.view(b * h, -1, d))
        x = x + F.linear(mixed.view(b, c), *weights.proj)
        hidden = F.gelu(F.linear(F.layer_norm(x, (c,), *weights.norm2), *weights.fc1))
        return x + F.linear(hidden, *weights.fc2)
