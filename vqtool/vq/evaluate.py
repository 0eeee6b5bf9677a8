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
from vqtool.errors import UsageError, counted
from vqtool.models.quantizer import code_counts, entropy_bits_from_counts, perplexity_from_counts
from vqtool.models.vqvae import VQVAE
from vqtool.runs import RunDir
from vqtool.schedule import EVAL_BATCH
from vqtool.vq.load import load_model


def check_stages(model: VQVAE, stages: int | None) -> None:
    """UsageError unless `stages` (--stages) is None or 1..S for a model of S stages."""
    if stages is not None and not 1 <= stages <= model.stages:
        raise UsageError(
            f"--stages {stages}: this run has {counted(model.stages, 'stage')}",
            "--stages",
            f"give 1 to {model.stages}" if model.stages > 1 else "leave --stages out",
        )


@torch.no_grad()
def evaluate_images(
    model: VQVAE,
    images: Tensor,
    train_variance: float,
    batch_size: int = EVAL_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
    stages: int | None = None,
) -> dict[str, Any]:
    """Every metric of eval-<split>.json over uint8 images (N, 3, H, W); the model is left as
    it was.

    A model of S residual stages is measured decoding its first n stages for every n (or for
    `stages` alone): the top-level figures are those of the most stages measured (its
    codebook figures the first stage's), and `by_stages` holds one row per n, each with the
    codebook figures of stage n itself.
    """
    check_stages(model, stages)
    was_training = model.training
    model.eval()
    device = model.device
    k = model.config.num_embeddings
    prefixes = [stages] if stages is not None else list(range(1, model.stages + 1))
    # Histograms of the stages that any measured prefix decodes: (S', K).
    counts = torch.zeros(max(prefixes), k, device=device)
    squared_errors = [0.0] * len(prefixes)
    start = time.perf_counter()
    n = images.shape[0]
    for begin in range(0, n, batch_size):
        batch = images[begin : begin + batch_size]
        target = batch.to(device).float().div_(255.0)
        if model.stages == 1:
            indices, recon = model.reconstruct(batch)
            squared_errors[0] += float((recon - target).double().pow(2).sum())
            counts[0] += code_counts(indices, k)
        else:
            indices = model.images_to_codes(batch)  # (B, S, h, w)
            for i, prefix in enumerate(prefixes):
                recon = model.codes_to_unit(indices, prefix)
                squared_errors[i] += float((recon - target).double().pow(2).sum())
            for s in range(counts.shape[0]):
                counts[s] += code_counts(indices[:, s], k)
        if on_progress is not None:
            on_progress(min(begin + batch_size, n), n)
    seconds = time.perf_counter() - start
    model.train(was_training)
    factor = model.config.downsample
    h, w = images.shape[2] // factor, images.shape[3] // factor
    stage_bits = [float(entropy_bits_from_counts(c)) * h * w for c in counts]
    rows = [
        {
            "stages": prefix,
            **_distortion(squared_errors[i] / images[:1].numel() / n, train_variance),
            **_codebook(counts[prefix - 1], k),
            "bits_per_image": prefix * h * w * math.log2(k),
            "entropy_bits_per_image": sum(stage_bits[:prefix]),
        }
        for i, prefix in enumerate(prefixes)
    ]
    top = rows[-1]
    metrics = {
        **_distortion(top["mse"], train_variance),
        **_codebook(counts[0], k),
        "bits_per_image": top["bits_per_image"],
        "entropy_bits_per_image": top["entropy_bits_per_image"],
        "images": n,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
    }
    if model.stages > 1:
        metrics["stages"] = top["stages"]
        if stages is None:
            metrics["by_stages"] = rows
    return metrics


def _distortion(mse: float, train_variance: float) -> dict[str, float]:
    return {
        "nmse": mse / train_variance,
        "mse": mse,
        "psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
    }


def _codebook(counts: Tensor, k: int) -> dict[str, Any]:
    """Figures of one stage's code histogram (K,)."""
    used = int((counts > 0).sum())
    return {
        "perplexity": float(perplexity_from_counts(counts)),
        "codebook_usage": used / k,
        "dead_codes": k - used,
    }


def evaluate_checkpoint(
    path: Path,
    split: str,
    data_dir: Path,
    device: str | torch.device = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    on_decode: Callable[[int, int], None] | None = None,
    stages: int | None = None,
) -> dict[str, Any]:
    """Load a run (or checkpoint), evaluate it on a split of its dataset, return the metrics.

    `on_decode` follows the decoding of an image folder whose cache is missing or stale;
    `stages` measures the first n of a run's residual stages only (see evaluate_images)."""
    loaded = load_model(path, device)
    check_stages(loaded.model, stages)
    images = load_images(loaded.profile.data, data_dir, split, on_decode)
    metrics = evaluate_images(
        loaded.model, images, loaded.train_variance, on_progress=on_progress, stages=stages
    )
    return {"split": split, **metrics, "checkpoint": loaded.fingerprint, "step": loaded.step}


def write_eval(path: Path, metrics: dict[str, Any]) -> Path:
    """Write `eval-<split>.json` in the run of `path` (a run folder or checkpoint)."""
    return RunDir.with_checkpoint(path).write_eval(metrics)
