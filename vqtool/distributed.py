"""Several training processes under torchrun: who this process is, and the collectives.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything here is the identity
and training runs as one process. The batch size in a profile is the global batch: each
process takes a disjoint, equal slice of it, so a run can resume on any number of processes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

# A lost peer normally fails a collective at once (its sockets close); this only bounds a hang.
COLLECTIVE_TIMEOUT = _dt.timedelta(minutes=10)


class World(NamedTuple):
    rank: int
    local_rank: int
    size: int


def world_from_env() -> World:
    """This process's place among the training processes, from torchrun's variables."""
    return World(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
    )


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the process count of the active group ((0, 1) alone)."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group for the run (gloo on the CPU, nccl on CUDA) and leave it after."""
    if world.size <= 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Any: a **dict of one value type would be checked against every other parameter.
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT, **kwargs
    )
    try:
        yield
        # Leave together: a rank that tears its connections down while another still works
        # in the group (rank 0 writing files) can abort as its process exits.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over training processes (identity on one process): every rank sees the same stats."""
    if active():
        t = t.clone()
        dist.all_reduce(t)
    return t


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Rank 0's tensor on every rank (identity on one process)."""
    if active():
        t = t.contiguous()
        dist.broadcast(t, 0)
    return t


def all_gather_rows(t: Tensor) -> Tensor:
    """Every rank's rows, concatenated in rank order: the global batch's order."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one: all ranks stop at the same step."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if active():
        dist.barrier()
