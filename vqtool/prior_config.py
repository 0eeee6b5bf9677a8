"""The prior's sizes: a frozen dataclass, free of torch so profiles can load it cheaply.

Values are checked where profiles are validated; `CodePrior` checks only that heads divide width.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PriorConfig:
    """A causal transformer over the raster order of a grid of code indices."""

    layers: int = 4  # pre-norm transformer blocks
    width: int = 192  # size of every token's vector (embeddings, attention, residual stream)
    heads: int = 4  # attention heads; each has width // heads channels
    mlp_ratio: int = 4  # hidden size of each block's MLP, as a multiple of width
    dropout: float = 0.0  # on embeddings, attention weights and residual branches, training only
    conditional: bool = False  # add a learned class embedding to the start token
    num_classes: int = 10  # labels a conditional prior knows (CIFAR-10's ten)
