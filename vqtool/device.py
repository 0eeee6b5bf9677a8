"""Where work runs: the device a name means, its training precision, this process's place.

Every command that takes `--device` asks here; nothing else resolves device names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqtool import distributed
from vqtool.errors import UsageError
from vqtool.profiles import DEVICE_CHOICES, DEVICE_NAMES


@dataclass(frozen=True)
class Placement:
    """Where training runs: the device, its precision and this process's share of the batch."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    rank: int = 0
    world_size: int = 1


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; refuses a device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_NAMES.fullmatch(name):
        raise UsageError(f"unknown device {name!r}", "--device", f"use {DEVICE_CHOICES}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available", f"device {name}", "use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("MPS is not available", f"device {name}", "use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """'auto' is bf16 autocast on CUDA and fp32 elsewhere (deterministic on the CPU)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_placement(device_name: str, precision: str, world: distributed.World) -> Placement:
    """Device, precision and rank; under torchrun each process takes its own GPU."""
    device = resolve_device(device_name)
    if device.type == "cuda" and world.size > 1 and device.index is None:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return Placement(device, resolve_precision(precision, device), world.rank, world.size)


def describe_device(placement: Placement) -> str:
    """'cpu (2 threads)', or the GPU's name."""
    device = placement.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def describe_precision(placement: Placement) -> str:
    return "bf16 autocast (fp32 quantizer)" if placement.autocast_dtype else "fp32"
