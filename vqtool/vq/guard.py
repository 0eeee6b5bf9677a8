"""The collapse guard (`train.collapse_guard`): undo a stretch of training that went wrong.

Large batches with a high learning rate can make a VQ-VAE collapse mid-run: the reconstruction
error jumps and the codebook falls back to a handful of codes (a batch of 1024 at lr 2e-3 on a GPU:
NMSE fell, then jumped several-fold while perplexity fell to a dozen codes). The guard judges each
training log record against the last good one. A jump in NMSE, a crash in perplexity or a non-
finite value means: put back the model and optimizer state of the last good record and halve the
learning rate. Otherwise the current state becomes the new last good one. Records are averages over
a log window (`train.log_every` steps), so one noisy batch does not trigger it.

The snapshot is an in-memory copy on the training device; the reference values travel in the
checkpoint (`state_dict`), and a resumed run takes its snapshot from the checkpoint it loads.
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vqtool.checkpoint import unwrap_model
from vqtool.distributed import active, broadcast_from_rank0
from vqtool.profiles import Profile

# A record whose NMSE exceeds this multiple of the last good record's is a collapse. Normal
# training moves the windowed NMSE by a few per cent between records; a collapse multiplies
# it several-fold.
NMSE_JUMP = 2.0
# A record whose perplexity falls below this fraction of the last good record's, while its
# NMSE is no better, is a collapse (hundreds of codes in use falling to a dozen). Early in
# training perplexity may fall as fast while NMSE improves: that is the encoder settling.
PERPLEXITY_CRASH = 0.25
# Each restore multiplies the learning-rate scale by this.
LR_FACTOR = 0.5


class Verdict(NamedTuple):
    restore: bool  # True: put back the last good state
    reason: str  # why, for the log ("" when ok)


class CollapseGuard:
    """Judges training records and keeps the last good model and optimizer state."""

    def __init__(
        self,
        nmse_jump: float = NMSE_JUMP,
        perplexity_crash: float = PERPLEXITY_CRASH,
        lr_factor: float = LR_FACTOR,
    ) -> None:
        self.nmse_jump = nmse_jump
        self.perplexity_crash = perplexity_crash
        self.lr_factor = lr_factor
        self.good: dict[str, float] | None = None  # nmse, perplexity, step of the last good record
        self.restores = 0
        self._model_state: dict[str, Tensor] | None = None
        self._optimizer_state: dict[str, Any] | None = None

    @classmethod
    def for_profile(cls, profile: Profile) -> CollapseGuard | None:
        """A guard when the profile turns it on (`train.collapse_guard`), else None."""
        return cls() if profile.train.collapse_guard else None

    def observe(self, step: int, record: dict[str, Any]) -> Verdict:
        """Judge a training record ({"nmse", "perplexity", ...}); remembers it when it is good."""
        nmse, perplexity = float(record["nmse"]), float(record["perplexity"])
        reason = ""
        if not (math.isfinite(nmse) and math.isfinite(perplexity)):
            reason = f"non-finite NMSE {nmse} or perplexity {perplexity}"
        elif self.good is not None and nmse > self.nmse_jump * self.good["nmse"]:
            reason = (
                f"NMSE jumped from {self.good['nmse']:.4f} (step {int(self.good['step'])}) "
                f"to {nmse:.4f}"
            )
        elif (
            self.good is not None
            and perplexity < self.perplexity_crash * self.good["perplexity"]
            and nmse > self.good["nmse"]
        ):
            reason = (
                f"perplexity fell from {self.good['perplexity']:.1f} "
                f"(step {int(self.good['step'])}) to {perplexity:.1f}"
            )
        # Nothing to go back to before the first good record: the run simply goes on.
        if reason and self._model_state is not None:
            return Verdict(True, reason)
        self.good = {"nmse": nmse, "perplexity": perplexity, "step": float(step)}
        return Verdict(False, "")

    @torch.no_grad()
    def snapshot(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Keep a copy of the current (good) model and optimizer state, on their device."""
        state = unwrap_model(model).state_dict()
        self._model_state = {k: v.detach().clone() for k, v in state.items()}
        self._optimizer_state = copy.deepcopy(optimizer.state_dict())

    @torch.no_grad()
    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Put back the last snapshot (it stays, should a later record collapse again);
        returns the step it was taken at."""
        assert self._model_state is not None and self._optimizer_state is not None
        unwrap_model(model).load_state_dict(self._model_state)
        optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))
        self.restores += 1
        return int(self.good["step"]) if self.good else 0

    def resume(
        self, state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        """Continue from a checkpoint: its reference record, and its state as the snapshot.

        A checkpoint is written after the step's log record was judged, so its state is the
        last good one whenever checkpoint_every is a multiple of log_every.
        """
        self.load_state_dict(state)
        if self.good is not None:
            self.snapshot(model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the reference record and the restore count (plain values)."""
        return {"good": dict(self.good) if self.good else None, "restores": self.restores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        good = state.get("good")
        self.good = {k: float(v) for k, v in good.items()} if good else None
        self.restores = int(state.get("restores", 0))


def agree(restore: bool, device: torch.device) -> bool:
    """Rank 0's verdict on every process, so that all of them restore or none (DDP)."""
    if not active():
        return restore
    flag = torch.tensor([1.0 if restore else 0.0], device=device)
    return bool(broadcast_from_rank0(flag).item())
