"""The whole training step as one CUDA graph (`train.cuda_graphs`).

A small network at small batches spends most of an eager step launching kernels: forward,
backward, the fused optimizer, the EMA codebook update and the dead-code restart are a few
hundred launches whose work takes microseconds each. Recorded once as a CUDA graph, a step is
one launch. What makes the step recordable lives elsewhere: the quantizer never reads a value
back to the host, and the learning rate is a device tensor that the trainer fills before each
replay (see `set_learning_rate`).

The first steps run eagerly on a side stream (cuDNN picks its kernels, the optimizer creates
its state); the next is recorded and every later one replays the recording with the batch
copied into the recorded input. Anything that replaces the optimizer's tensors (the collapse
guard loading a saved state) calls `reset`, and the step is recorded again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vqtool.errors import first_line

WARMUP_STEPS = 3


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's rate: filled in place when it is a tensor a graph reads."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            lr.fill_(value)
        else:
            group["lr"] = value


def learning_rates_as_floats(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict with plain-number rates, loadable on any device."""
    for group in state["param_groups"]:
        if isinstance(group["lr"], Tensor):
            group["lr"] = float(group["lr"])
    return state


class GraphedStep:
    """Runs `body(x) -> Tensor` eagerly for a few steps, then as a recorded CUDA graph."""

    def __init__(self, body: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.body = body
        self.optimizer = optimizer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps = 0
        self.side_stream = torch.cuda.Stream()
        self.static_input = torch.empty(0)
        self.static_output = torch.empty(0)
        # Why recording failed, once it has: the steps then stay eager.
        self.failure: str | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.failure is not None:
            return self.body(x)
        if self.graph is not None:
            self.static_input.copy_(x)
            self.graph.replay()
            return self.static_output
        if self.warm_steps < WARMUP_STEPS:
            self.warm_steps += 1
            return self._eager(x)
        return self._record(x)

    def reset(self) -> None:
        """Forget the recording (the optimizer's tensors were replaced): record again after
        one eager step."""
        self.graph = None
        self.warm_steps = WARMUP_STEPS - 1

    def _eager(self, x: Tensor) -> Tensor:
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream), warnings.catch_warnings():
            # The optimizer is capturable once recorded; its warning about eager steps is moot.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            out = self.body(x)
        torch.cuda.current_stream().wait_stream(self.side_stream)
        return out

    def _record(self, x: Tensor) -> Tensor:
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            if not isinstance(group["lr"], Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=x.device)
        self.static_input = x.clone()
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                self.static_output = self.body(self.static_input)
        except Exception as exc:
            # Recording runs nothing, so this step has not happened yet: run it eagerly, and
            # every later one too. A failed capture can leave its stream current: put ours
            # back. Its own message is often generic; the cause is the error it followed.
            torch.cuda.set_stream(stream)
            cause = exc.__context__ or exc
            self.failure = first_line(cause)
            for group in self.optimizer.param_groups:
                group["capturable"] = False
            self.optimizer.zero_grad(set_to_none=True)
            return self.body(x)
        self.graph = graph
        # Recording runs nothing: this step's work is the first replay.
        graph.replay()
        return self.static_output
