"""Checkpoints: a plain dict saved with torch.save, loaded with weights_only=True.

Loading never runs code from the file (weights_only admits tensors and plain containers
only), checks the format name and version, and verifies the model's fingerprint so that a
file whose weights were changed behind its back is refused.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from vqtool.errors import UsageError, WorkError, first_line, os_reason
from vqtool.files import save_or_fail
from vqtool.runs import RunDir

FORMAT = "vqtool-checkpoint"
PRIOR_FORMAT = "vqtool-prior"
VERSION = 1
# format -> what it holds, for messages
KINDS = {FORMAT: "a VQ-VAE run (vqtool train)", PRIOR_FORMAT: "a prior run (vqtool prior)"}
# torch.save writes a zip archive; before torch 1.6 it wrote pickles (protocol 2, which
# opens with this byte), and torch.load still reads those.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_MARK = b"\x80"


def fingerprint(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 over the state dict, key by key in sorted order: name, dtype, shape, bytes (LE)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        # Bytes through a uint8 view: works for bf16 too, which numpy cannot hold.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP (`.module`) and torch.compile (`._orig_mod`)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def model_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """The bare model's state dict, whatever DDP or torch.compile wrapped around it."""
    return {k: v.detach().clone().cpu() for k, v in unwrap_model(model).state_dict().items()}


def rng_states() -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue bit-identically."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Put back what rng_states saved (CUDA states only on as many devices as saved them)."""
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


# What a checkpoint holds only to continue training: nothing that reads the model needs it.
TRAINING_ONLY = ("optimizer", "rng")


def training_state(
    model: torch.nn.Module, optimizer_state: dict[str, Any], step: int, elapsed_s: float
) -> dict[str, Any]:
    """What every training loop's checkpoint holds: weights, optimizer, step, RNGs, clock."""
    return {
        "model": model_state(model),
        "optimizer": optimizer_state,
        "step": step,
        "rng": rng_states(),
        "elapsed_s": elapsed_s,
    }


def weights_only(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's payload without what training_state keeps to continue training (a
    ready-trained run's copy): restore_training refuses it."""
    return {key: value for key, value in payload.items() if key not in TRAINING_ONLY}


def restore_training(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, payload: dict[str, Any]
) -> tuple[int, float]:
    """Put back what training_state saved; returns (step, elapsed_s)."""
    if "optimizer" not in payload:
        raise UsageError(
            "this checkpoint holds weights alone (a ready-trained run's): it cannot be resumed",
            "--resume",
            "train a new run, or evaluate and encode with this one as it is",
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    restore_rng(payload["rng"])
    return int(payload["step"]), float(payload.get("elapsed_s", 0.0))


def save_checkpoint(path: Path, payload: dict[str, Any], fmt: str = FORMAT) -> None:
    """Atomically save a checkpoint dict; adds format, version and the model fingerprint.

    A write that fails (disk full, read-only or removed folder) raises WorkError naming the
    cause, leaves the previous checkpoint as it was and no temp file behind.
    """
    payload = {**payload, "format": fmt, "version": VERSION}
    payload["fingerprint"] = fingerprint(payload["model"])
    room = "make room or make the folder writable"
    if path.exists():
        fix = f"the previous checkpoint is intact; {room}, then continue with --resume"
    else:
        fix = f"{room}, then train again"

    def write(f: BinaryIO) -> None:
        # Serialized in memory first: torch's zip writer reports a failed file write as a
        # RuntimeError about stream positions; a plain write gives the system's reason.
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        f.write(buffer.getbuffer())

    # The run folder exists from the start (its lock); one that vanished is not made again.
    save_or_fail(path, write, "the checkpoint", fix, make_folder=False)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", fmt: str = FORMAT
) -> dict[str, Any]:
    """Load and verify a checkpoint (run folder or file) of format `fmt` (a VQ-VAE's, or a
    prior's); never executes code from it."""
    path = RunDir.with_checkpoint(path).checkpoint
    try:
        with warnings.catch_warnings():
            # torch warns about odd pickle protocols before refusing them; the refusal is enough.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt, truncated or unsafe files
        reason, fix = _load_failure(path, exc)
        raise WorkError(f"cannot read the checkpoint: {reason}", path, fix) from exc
    if not isinstance(payload, dict) or payload.get("format") not in KINDS:
        raise WorkError("not a vqtool checkpoint", path, "give a checkpoint.pt written by vqtool")
    if payload["format"] != fmt:
        raise UsageError(
            f"this is the checkpoint of {KINDS[payload['format']]}, not of {KINDS[fmt]}",
            path,
            f"give {KINDS[fmt]}'s run folder",
        )
    if payload.get("version") != VERSION:
        raise WorkError(
            f"unsupported checkpoint version {payload.get('version')!r} "
            f"(this vqtool reads {VERSION})",
            path,
            "use the vqtool version that wrote it",
        )
    model = payload.get("model")
    if not isinstance(model, dict) or fingerprint(model) != payload.get("fingerprint"):
        raise WorkError(
            "the checkpoint's weights do not match its fingerprint",
            path,
            "the file was changed or damaged; use another checkpoint",
        )
    return payload


def _load_failure(path: Path, exc: Exception) -> tuple[str, str]:
    """Why torch.load failed, and what to do, in a user's words: torch's own messages run to
    a paragraph about its internals."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as err:
        return os_reason(err), "check the file's permissions"
    another = "use another checkpoint, or train the run again"
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL_MARK)):
        return (
            "not a checkpoint (those are torch zip archives or pickles; this file is neither)",
            "give a run folder, or the checkpoint.pt inside one",
        )
    cut = head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path)
    if (
        cut
        or isinstance(exc, EOFError)
        or re.search(r"PytorchStreamReader|unexpected EOF", str(exc))
    ):
        return "the file is truncated or damaged", another
    if "weights_only" in str(exc) or "Unsupported global" in str(exc):
        return (
            "it holds objects other than tensors and plain data (refused, not run)",
            "it is not a vqtool checkpoint; use one that vqtool train wrote",
        )
    return first_line(exc), f"the file is corrupt or not a vqtool checkpoint; {another}"
