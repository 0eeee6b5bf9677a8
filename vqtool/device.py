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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); torch < 2.8 cannot
    say, and is answered no."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    found = capabilities()
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def resolve_precision(
    precision: str, device: torch.device, cpu_bf16: bool = True
) -> torch.dtype | None:
    """'auto' is bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere.

    `cpu_bf16=False` keeps 'auto' at fp32 on every CPU (the prior: measured there in fp32).

    On a CPU without native bf16, autocast emulates it and trains slower than fp32; with it,
    the network trains faster at about the same test NMSE (figures in the README).
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (
        device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16())
    ):
        return torch.bfloat16
    return None


def resolve_placement(
    device_name: str, precision: str, world: distributed.World, cpu_bf16: bool = True
) -> Placement:
    """Device, precision and rank; under torchrun each process takes its own GPU."""
    device = resolve_device(device_name)
    if device.type == "cuda" and world.size > 1 and device.index is None:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return Placement(device, resolve_precision(precision, device, cpu_bf16), world.rank, world.size)


def describe_device(placement: Placement, threads_reason: str = "") -> str:
    """'cpu (2 threads)', 'cpu (1 thread: why)', or the GPU's name."""
    device = placement.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        threads = torch.get_num_threads()
        why = f": {threads_reason}" if threads_reason else ""
        return f"cpu ({threads} thread{'s' if threads > 1 else ''}{why})"
    return device.type


def describe_precision(placement: Placement) -> str:
    return "bf16 autocast (fp32 quantizer)" if placement.autocast_dtype else "fp32"
