"""Opt-in speed for the training step: `train.compile` (torch.compile).

Only the forward pass that the training step calls is compiled; the trainer keeps the plain
module beside it, so checkpoints, evaluation and the codebook initialisation use the
uncompiled model (and `checkpoint.model_state` unwraps `_orig_mod` should a compiled module
reach it). Compilation happens on the first training step: that step takes tens of seconds
(more on a small CPU), which the run's `elapsed_s` includes.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


def compile_for_training(module: nn.Module) -> nn.Module:
    """The module compiled with inductor for a fixed batch shape (the last batch is dropped).

    Nothing in the step reads a value back to the host (the dead-code restart included), so
    the forward pass compiles as one piece: convolutions, weight norm, EMA updates.
    """
    return cast(nn.Module, torch.compile(module, dynamic=False))
