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

    The quantizer's dead-code restart reads a count back to the host, which splits the graph
    there; everything else (convolutions, weight norm, EMA updates) compiles as one piece.
    """
    return cast(nn.Module, torch.compile(module, dynamic=False))
