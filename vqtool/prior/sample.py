"""Sampling code grids from a prior, into a code file for R's checkpoint."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from vqtool.codes.tokens import tokens_to_codes
from vqtool.codes.vqc import CodeFile
from vqtool.errors import UsageError
from vqtool.events import Progress
from vqtool.models.transformer import CodePrior, draw, sample
from vqtool.models.windows import (
    same_grid,
    target_index,
    window_at,
    window_positions,
    window_tokens,
)
from vqtool.prior.load import LoadedPrior

SAMPLE_BATCH = 256  # grids per sampling call: fixed, so a seed gives the same grids for any n


def sample_codes(
    loaded: LoadedPrior,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    label: str | None = None,
    size: tuple[int, int] | None = None,
    on_progress: Progress | None = None,
) -> CodeFile:
    """n code grids drawn from the prior, as a code file for R's checkpoint: grids of R's
    images, or of images of `size` (H, W), multiples of R's factor (window by window,
    vqtool.models.windows).

    A conditional prior draws `label`'s class, or without one the classes in turn in equal
    blocks (the first n/C grids of class 0, ...). The same seed gives the same file.
    """
    vq = loaded.vq
    size = vq.image_size if size is None else size
    factor = vq.downsample
    if size[0] % factor or size[1] % factor:
        raise UsageError(
            f"{size[0]}x{size[1]} is not a multiple of the run's factor {factor} on each side",
            "--size",
            f"give sides that are multiples of {factor}",
        )
    grid = (size[0] // factor, size[1] // factor)
    k = vq.num_embeddings
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}", "-n", "ask for 1 or more samples")
    if not temperature > 0 or not math.isfinite(temperature):
        raise UsageError(
            f"the temperature must be > 0, got {temperature}", "--temperature", "use e.g. 1.0"
        )
    if top_k is not None and not 1 <= top_k <= k:
        raise UsageError(f"--top-k must be 1 to {k}, got {top_k}", "--top-k", f"use 1 to {k}")
    labels = _sample_labels(loaded, n, label)
    device = next(loaded.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    model = loaded.model
    own = same_grid(grid, (model.grid[0] // model.stages, model.grid[1]))
    tokens = np.empty((n, grid[0] * vq.stages, grid[1]), np.int64)
    for start in range(0, n, SAMPLE_BATCH):
        stop = min(start + SAMPLE_BATCH, n)
        chunk = labels[start:stop].to(device) if labels is not None else None
        if own:
            drawn = sample(
                model,
                stop - start,
                temperature=temperature,
                top_k=top_k,
                labels=chunk,
                generator=generator,
            )
        else:
            drawn = _sample_windows(model, stop - start, grid, temperature, top_k, chunk, generator)
        tokens[start:stop] = drawn.reshape(stop - start, *tokens.shape[1:]).cpu().numpy()
        if on_progress is not None:
            on_progress(stop, n)
    return CodeFile(
        codes=tokens_to_codes(tokens, k, vq.stages),
        names=tuple(f"sample-{i + 1:05d}" for i in range(n)),
        sizes=np.tile(np.array([size], np.int32), (n, 1)),
        checkpoint=vq.fingerprint,
        num_embeddings=k,
        embedding_dim=vq.embedding_dim,
        downsample=vq.downsample,
        image_size=size,
    )


@torch.no_grad()
def _sample_windows(
    model: CodePrior,
    n: int,
    grid: tuple[int, int],
    temperature: float,
    top_k: int | None,
    labels: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """n grids (H, W) of every stage drawn code by code, each from its window's prediction:
    -> tokens (n, S, H, W). Each code reruns its window's sequence (no cache)."""
    stages = model.stages
    prior_grid = (model.grid[0] // stages, model.grid[1])
    device = model.positions.device
    tokens = torch.zeros(n, stages, *grid, dtype=torch.long, device=device)
    for stage in range(stages):
        for i in range(grid[0]):
            for j in range(grid[1]):
                window = window_at(i, j, grid, prior_grid)
                end = target_index(stage, i, j, window) + 1
                sequence = window_tokens(tokens, window, stage + 1)[:, :end]
                positions = window_positions(window, prior_grid, stage + 1)[:end].to(device)
                logits = model.window_logits(sequence, positions, labels)[:, -1]
                tokens[:, stage, i, j] = draw(logits, temperature, top_k, generator)
    return tokens


def _sample_labels(loaded: LoadedPrior, n: int, label: str | None) -> Tensor | None:
    names = loaded.vq.class_names
    if not loaded.profile.prior.conditional:
        if label is not None:
            raise UsageError("this prior is not class-conditional", "--label", "leave --label out")
        return None
    if label is None:
        return torch.arange(n, dtype=torch.long) * len(names) // n
    if label not in names:
        raise UsageError(f"unknown label {label!r}", "--label", f"use one of {', '.join(names)}")
    return torch.full((n,), names.index(label), dtype=torch.long)
