"""What changes with the step in any training loop: the data order and the learning rate.

Both are functions of the step (and seed) alone, so a resumed run sees the same batches and
rates as one that never stopped.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor


class Schedule(Protocol):
    """The [train] keys a learning-rate schedule reads."""

    @property
    def learning_rate(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def lr_schedule(self) -> str: ...
    @property
    def steps(self) -> int: ...


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> Tensor:
    """The visiting order of epoch `epoch`: drawn from (seed, epoch) alone, or file order."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def scheduled_rate(cfg: Schedule, step: int) -> float:
    """Base rate x linear warm-up x optional cosine decay to zero at the last step."""
    lr = cfg.learning_rate
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        progress = min(1.0, step / max(1, cfg.steps))
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr
