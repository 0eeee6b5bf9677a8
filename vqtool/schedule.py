"""What changes with the step in any training loop: the data order and the learning rate.

Both are functions of the step (and seed) alone, so a resumed run sees the same batches and
rates as one that never stopped.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import torch
from torch import Tensor

from vqtool.errors import UsageError, counted

# Images (or code grids) per forward pass when a whole split is evaluated or encoded.
EVAL_BATCH = 500


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
    @property
    def lr_hold_steps(self) -> int: ...


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> Tensor:
    """The visiting order of epoch `epoch`: drawn from (seed, epoch) alone, or file order."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def drawn_stages(seed: int, step: int, stages: int) -> int:
    """How many residual stages step `step` trains, uniform over 1..stages (quantizer
    dropout): drawn from (seed, step) alone, so every process and a resumed run draw alike."""
    # Offset by 2^40 + 1: never the seed of an epoch_order generator of the same run seed.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 2**40 + 1)
    return int(torch.randint(1, stages + 1, (1,), generator=generator))


def scheduled_rate(cfg: Schedule, step: int) -> float:
    """Base rate x linear warm-up x optional cosine decay to zero at the last step, starting
    after `lr_hold_steps` steps at the base rate (warm-up, stable, decay): a run no longer than
    the hold, as a shortened trial of a profile, trains at the full rate throughout."""
    lr = cfg.learning_rate
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        hold = cfg.lr_hold_steps
        progress = min(1.0, max(0.0, (step - hold) / max(1, cfg.steps - hold)))
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


class DataOrder:
    """Which examples each step takes, on each process: the global batch of step s is a slice
    of epoch e's order, and each of the world_size processes takes its own part of it.

    `key` names the batch-size setting in messages ("data.batch_size"), `what` the examples.
    """

    def __init__(
        self,
        count: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        key: str = "data.batch_size",
        what: str = "training image",  # singular: counted() makes the plural
    ) -> None:
        if batch_size % world_size:
            raise UsageError(
                f"{key} {batch_size} does not divide among {world_size} processes",
                f"--set {key}",
                "choose a multiple of the process count (it is the global batch)",
            )
        self.batches_per_epoch = count // batch_size
        if self.batches_per_epoch == 0:
            raise UsageError(
                f"{key} {batch_size} exceeds the {counted(count, what)}",
                f"--set {key}",
                "choose a smaller batch size",
            )
        self.count, self.batch_size, self.seed, self.shuffle = count, batch_size, seed, shuffle
        self.device, self.rank = device, rank
        self.local_batch = batch_size // world_size
        self._epoch = -1
        self._order = torch.empty(0)

    def epoch(self, step: int) -> int:
        return step // self.batches_per_epoch

    def position(self, step: int) -> dict[str, int]:
        """Where step `step` starts, as checkpoints record it."""
        epoch, position = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "position": position}

    def indices(self, step: int) -> Tensor:
        """This process's slice of the global batch of `step`."""
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            order = epoch_order(self.count, epoch, self.seed, self.shuffle)
            self._order = order.to(self.device)
            self._epoch = epoch
        start = position * self.batch_size + self.rank * self.local_batch
        return self._order[start : start + self.local_batch]


class StepClock:
    """A training loop's log windows: when a record is due, and the steps and seconds in it."""

    def __init__(self, log_every: int, steps: int, device: torch.device) -> None:
        self.log_every, self.steps, self.device = log_every, steps, device
        self.spent = 0.0  # seconds of the last step
        self.count = 0  # steps in the open window
        self.window_s = 0.0  # their seconds

    def finish(self, done: int, tick: float) -> bool:
        """After `done` steps, the last begun at perf_counter() `tick`: is a record due? The
        queued GPU work of a window belongs to its time, so CUDA syncs at each record."""
        due = done % self.log_every == 0 or done == self.steps
        if due and self.device.type == "cuda":
            torch.cuda.synchronize()
        self.spent = time.perf_counter() - tick
        self.count += 1
        self.window_s += self.spent
        return due

    def close(self) -> tuple[int, float]:
        """(steps, seconds) of the window just logged; the next window starts empty."""
        window = (self.count, self.window_s)
        self.count, self.window_s = 0, 0.0
        return window
