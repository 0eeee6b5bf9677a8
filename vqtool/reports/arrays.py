"""The one place the figures meet a model: test images, their reconstructions, code usage.

`run_arrays` loads a checkpoint and its dataset's test split once and returns plain numpy
arrays; `vqtool.reports.plots` turns them into figures without ever touching the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vqtool.data.datasets import load_images
from vqtool.errors import VqtoolError
from vqtool.models.quantizer import code_counts
from vqtool.schedule import EVAL_BATCH
from vqtool.vq.load import load_model

SAMPLES = 32


class RunArrays(NamedTuple):
    originals: np.ndarray  # uint8 (N, 3, H, W), the first N test images
    reconstructions: np.ndarray  # float32 (N, 3, H, W) in [0, 1], decoded from the codes
    counts: np.ndarray  # int64 (K,), how often each code was chosen over `images` test images
    codebook: np.ndarray  # float32 (K, D), the code vectors (of the first of several stages)
    images: int  # test images behind `counts`
    step: int  # the checkpoint's training step
    stages: int = 1  # residual stages the reconstructions decode (all the model has)


@torch.no_grad()
def run_arrays(
    run: Path,
    data_dir: Path,
    device: str | torch.device = "cpu",
    samples: int = SAMPLES,
    max_images: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_decode: Callable[[int, int], None] | None = None,
) -> RunArrays:
    """Reconstructions of the first `samples` test images and code usage over the test split.

    `max_images` limits the usage count to the first images of the split (default: all of it,
    so the dead codes match what `vqtool evaluate` reports). `on_decode` follows the decoding
    of an image folder whose cache is missing or stale.
    """
    loaded = load_model(run, device)
    model = loaded.model
    images = load_images(loaded.profile.data, data_dir, "test", on_decode)
    if max_images is not None:
        images = images[:max_images]
    originals = images[:samples]
    _, recon = model.reconstruct(originals)
    k = model.config.num_embeddings
    counts = torch.zeros(k, dtype=torch.float64)
    n = images.shape[0]
    for begin in range(0, n, EVAL_BATCH):
        # Encoding alone is enough to count codes; decoding would double the time.
        indices = model.images_to_codes(images[begin : begin + EVAL_BATCH])
        if indices.dim() == 4:  # residual stages: the first stage's codes, as `codebook` is
            indices = indices[:, 0]
        counts += code_counts(indices, k).double().cpu()
        if on_progress is not None:
            on_progress(min(begin + EVAL_BATCH, n), n)
    return RunArrays(
        originals.numpy().copy(),
        recon.float().cpu().numpy(),
        counts.round().long().numpy(),
        model.quantizer.codebook().float().cpu().numpy(),
        n,
        loaded.step,
        model.stages,
    )


def prior_samples(
    prior_run: Path, device: str | torch.device = "cpu", n: int = 64, seed: int = 0
) -> tuple[np.ndarray, str]:
    """n samples of a prior decoded by its VQ run: (uint8 (n, 3, H, W), where R was found).

    R is the checkpoint the prior recorded, else the folder above the prior (its default
    place); either must have the fingerprint the prior was trained on.
    """
    from vqtool.codes.pipeline import decode_indices
    from vqtool.errors import UsageError
    from vqtool.prior.load import load_prior
    from vqtool.prior.sample import sample_codes
    from vqtool.runs import RunDir

    loaded = load_prior(prior_run, device)
    candidates = [Path(loaded.vq.checkpoint), RunDir.with_checkpoint(prior_run).path.parent]
    for candidate in candidates:
        try:
            vq = load_model(candidate, device)
        except VqtoolError:
            continue
        if vq.fingerprint == loaded.vq.fingerprint:
            break
    else:
        raise UsageError(
            "the VQ run this prior was trained on is not where it was",
            loaded.vq.checkpoint,
            "decode samples yourself: vqtool sample P -o s.vqc && vqtool decode R s.vqc -o DIR",
        )
    codes = sample_codes(loaded, n, seed=seed)
    indices = torch.from_numpy(codes.one_grid().astype(np.int64))  # samples share one grid
    return decode_indices(vq.model.folded(), indices).numpy(), str(vq.path)
