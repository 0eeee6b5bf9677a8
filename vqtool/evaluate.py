"""Metrics over a whole split, from the reconstruction decoded from the codes."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqtool.checkpoint import load_model, resolve_checkpoint
from vqtool.data import load_cifar10
from vqtool.files import atomic_write
from vqtool.model import DOWNSAMPLE, VQVAE
from vqtool.quantizer import code_counts, perplexity_from_counts

EVAL_BATCH = 500


def to_model_input(images: Tensor, device: torch.device | str) -> Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float (B, 3, H, W) in [-0.5, 0.5] on `device`."""
    return images.to(device, non_blocking=True).float().div_(255.0).sub_(0.5)


@torch.no_grad()
def reconstruct_from_codes(model: VQVAE, images: Tensor) -> tuple[Tensor, Tensor]:
    """Codes and their decoded reconstruction in [0, 1]: uint8 (B,3,H,W) -> ((B,h,w), (B,3,H,W)).

    No straight-through term: exactly what decode(encode(x)) gives.
    """
    device = next(model.parameters()).device
    indices = model.encode(to_model_input(images, device))
    return indices, decode_to_unit(model, indices)


def decode_to_unit(model: VQVAE, indices: Tensor) -> Tensor:
    """The images decoded from code indices, in [0, 1]: what evaluate and decode both use."""
    return model.decode(indices).float().add_(0.5).clamp_(0.0, 1.0)


@torch.no_grad()
def evaluate_images(
    model: VQVAE,
    images: Tensor,
    train_variance: float,
    batch_size: int = EVAL_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Every metric of the contract over uint8 images (N, 3, H, W); the model is left as it was."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = model.config.num_embeddings
    counts = torch.zeros(k, device=device)
    squared_error = 0.0
    start = time.perf_counter()
    n = images.shape[0]
    for begin in range(0, n, batch_size):
        batch = images[begin : begin + batch_size]
        indices, recon = reconstruct_from_codes(model, batch)
        target = batch.to(device).float().div_(255.0)
        squared_error += float((recon - target).double().pow(2).sum())
        counts += code_counts(indices, k)
        if on_progress is not None:
            on_progress(min(begin + batch_size, n), n)
    seconds = time.perf_counter() - start
    model.train(was_training)
    mse = squared_error / images[:1].numel() / n
    probs = counts / counts.sum()
    entropy_bits = float(-(probs[probs > 0] * probs[probs > 0].log2()).sum())
    h, w = images.shape[2] // DOWNSAMPLE, images.shape[3] // DOWNSAMPLE
    used = int((counts > 0).sum())
    return {
        "nmse": mse / train_variance,
        "mse": mse,
        "psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
        "perplexity": float(perplexity_from_counts(counts)),
        "codebook_usage": used / k,
        "dead_codes": k - used,
        "bits_per_image": h * w * math.log2(k),
        "entropy_bits_per_image": entropy_bits * h * w,
        "images": n,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def evaluate_checkpoint(
    path: Path,
    split: str,
    data_dir: Path,
    device: str | torch.device = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Load a run (or checkpoint), evaluate it on a CIFAR-10 split, return the metrics dict."""
    loaded = load_model(path, device)
    images = load_cifar10(data_dir, split)
    metrics = evaluate_images(loaded.model, images, loaded.train_variance, on_progress=on_progress)
    return {"split": split, **metrics, "checkpoint": loaded.fingerprint, "step": loaded.step}


def write_eval(path: Path, metrics: dict[str, Any]) -> Path:
    """Write `eval-<split>.json` beside the checkpoint, atomically; returns its path."""
    out = resolve_checkpoint(path).parent / f"eval-{metrics['split']}.json"
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(out, lambda f: f.write(text.encode()))
    return out
