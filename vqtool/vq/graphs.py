"""The whole training step as one CUDA graph (`train.cuda_graphs`).

A small network at small batches spends most of an eager step launching kernels: forward,
backward, the fused optimizer, the EMA codebook update and the dead-code restart are a few
hundred launches whose work takes microseconds each. Recorded once as a CUDA graph, a step is
one launch. What makes the step recordable lives elsewhere: the quantizer never reads a value
back to the host, and the learning rate is a device tensor that the trainer fills before each
replay (see `set_learning_rate`).

The first steps run eagerly on a side stream (cuDNN picks its kernels, the optimizer creates
its state); the next is recorded and every later one replays the recording with the batch
copied into the recorded input. A step's shape of work depends on a small key besides the
batch (the number of residual stages it trains): each key has its eager steps and its own
recording. Anything that replaces the optimizer's tensors (the collapse guard loading a saved
state) calls `reset`, and every key is recorded again.
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
    """Runs `body(x, key) -> Tensor` eagerly for a few steps of each key, then as that key's
    recorded CUDA graph."""

    def __init__(
        self, body: Callable[[Tensor, int], Tensor], optimizer: torch.optim.Optimizer
    ) -> None:
        self.body = body
        self.optimizer = optimizer
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.warm_steps: dict[int, int] = {}
        self.side_stream = torch.cuda.Stream()
        # One input buffer that every recording reads; one output per recording.
        self.static_input = torch.empty(0)
        self.static_outputs: dict[int, Tensor] = {}
        # Why recording failed, once it has: the steps then stay eager.
        self.failure: str | None = None

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """A recording, once there is one (any key)."""
        return next(iter(self.graphs.values()), None)

    def __call__(self, x: Tensor, key: int = 1) -> Tensor:
        if self.failure is not None:
            return self.body(x, key)
        graph = self.graphs.get(key)
        if graph is not None:
            self.static_input.copy_(x)
            graph.replay()
            return self.static_outputs[key]
        if self.warm_steps.get(key, 0) < WARMUP_STEPS:
            self.warm_steps[key] = self.warm_steps.get(key, 0) + 1
            return self._eager(x, key)
        return self._record(x, key)

    def reset(self) -> None:
        """Forget the recordings (the optimizer's tensors were replaced): record each key
        again after one eager step."""
        self.graphs.clear()
        self.static_outputs.clear()
        self.warm_steps = {key: WARMUP_STEPS - 1 for key in self.warm_steps}

    def _eager(self, x: Tensor, key: int) -> Tensor:
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream), warnings.catch_warnings():
            # The optimizer is capturable once recorded; its warning about eager steps is moot.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            out = self.body(x, key)
        torch.cuda.current_stream().wait_stream(self.side_stream)
        return out

    def _record(self, x: Tensor, key: int) -> Tensor:
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            if not isinstance(group["lr"], Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=x.device)
        if self.static_input.shape != x.shape:
            self.static_input = x.clone()
        else:
            self.static_input.copy_(x)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                output = self.body(self.static_input, key)
        except Exception as exc:
            # Recording runs nothing, so this step has not happened yet: run it eagerly, and
            # every later one too. A failed capture can leave its stream current: put ours
            # back. Its own message is often generic; the cause is the error it followed.
            torch.cuda.set_stream(stream)
            cause = exc.__context__ or exc
            self.failure = first_line(cause)
            self.graphs.clear()
            for group in self.optimizer.param_groups:
                group["capturable"] = False
            self.optimizer.zero_grad(set_to_none=True)
            return self.body(x, key)
        self.graphs[key] = graph
        self.static_outputs[key] = output
        # Recording runs nothing: this step's work is the first replay.
        graph.replay()
        return output
