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
from vqtool.models.transformer import sample
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
    on_progress: Progress | None = None,
) -> CodeFile:
    """n code grids drawn from the prior, as a code file for R's checkpoint.

    A conditional prior draws `label`'s class, or without one the classes in turn in equal
    blocks (the first n/C grids of class 0, ...). The same seed gives the same file.
    """
    vq = loaded.vq
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
    tokens = np.empty((n, *vq.token_grid), np.int64)
    for start in range(0, n, SAMPLE_BATCH):
        stop = min(start + SAMPLE_BATCH, n)
        chunk = labels[start:stop].to(device) if labels is not None else None
        drawn = sample(
            loaded.model,
            stop - start,
            temperature=temperature,
            top_k=top_k,
            labels=chunk,
            generator=generator,
        )
        tokens[start:stop] = drawn.cpu().numpy()
        if on_progress is not None:
            on_progress(stop, n)
    return CodeFile(
        codes=tokens_to_codes(tokens, k, vq.stages),
        names=tuple(f"sample-{i + 1:05d}" for i in range(n)),
        sizes=np.tile(np.array([vq.image_size], np.int32), (n, 1)),
        checkpoint=vq.fingerprint,
        num_embeddings=k,
        embedding_dim=vq.embedding_dim,
        downsample=vq.downsample,
        image_size=vq.image_size,
    )


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
