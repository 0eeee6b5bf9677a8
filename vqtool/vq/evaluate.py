"""Metrics over a whole split, from the reconstruction decoded from the codes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqtool.data.datasets import load_images
from vqtool.models.config import DOWNSAMPLE
from vqtool.models.quantizer import code_counts, entropy_bits_from_counts, perplexity_from_counts
from vqtool.models.vqvae import VQVAE
from vqtool.runs import RunDir
from vqtool.schedule import EVAL_BATCH
from vqtool.vq.load import load_model


@torch.no_grad()
def evaluate_images(
    model: VQVAE,
    images: Tensor,
    train_variance: float,
    batch_size: int = EVAL_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Every metric of eval-<split>.json over uint8 images (N, 3, H, W); the model is left as
    it was."""
    was_training = model.training
    model.eval()
    device = model.device
    k = model.config.num_embeddings
    counts = torch.zeros(k, device=device)
    squared_error = 0.0
    start = time.perf_counter()
    n = images.shape[0]
    for begin in range(0, n, batch_size):
        batch = images[begin : begin + batch_size]
        indices, recon = model.reconstruct(batch)
        target = batch.to(device).float().div_(255.0)
        squared_error += float((recon - target).double().pow(2).sum())
        counts += code_counts(indices, k)
        if on_progress is not None:
            on_progress(min(begin + batch_size, n), n)
    seconds = time.perf_counter() - start
    model.train(was_training)
    mse = squared_error / images[:1].numel() / n
    entropy_bits = float(entropy_bits_from_counts(counts))
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
    on_decode: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Load a run (or checkpoint), evaluate it on a split of its dataset, return the metrics.

    `on_decode` follows the decoding of an image folder whose cache is missing or stale."""
    loaded = load_model(path, device)
    images = load_images(loaded.profile.data, data_dir, split, on_decode)
    metrics = evaluate_images(loaded.model, images, loaded.train_variance, on_progress=on_progress)
    return {"split": split, **metrics, "checkpoint": loaded.fingerprint, "step": loaded.step}


def write_eval(path: Path, metrics: dict[str, Any]) -> Path:
    """Write `eval-<split>.json` in the run of `path` (a run folder or checkpoint)."""
    return RunDir.with_checkpoint(path).write_eval(metrics)
