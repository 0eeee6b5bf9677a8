"""A prior's test figures: bits per code and per image, against the unigram and uniform bounds."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from vqtool.codes.vqc import check_codes_for_model, read_codes
from vqtool.events import Progress
from vqtool.models.quantizer import code_counts, entropy_bits_from_counts
from vqtool.models.transformer import CodePrior, nll_bits
from vqtool.prior.data import PriorData, centre_windows, labels_from_names, prior_tokens
from vqtool.prior.load import load_prior
from vqtool.runs import RunDir
from vqtool.schedule import EVAL_BATCH


@torch.no_grad()
def evaluate_codes(
    model: CodePrior, data: PriorData, conditional: bool, on_progress: Progress | None = None
) -> dict[str, Any]:
    """Bits the prior needs for a set of code grids (base-2 NLL), beside simpler models."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = model.num_embeddings  # tokens: K codes of each of the prior's stages
    n = data.codes.shape[0]
    total = 0.0
    counts = torch.zeros(k, dtype=torch.float64)
    start = time.perf_counter()
    for begin in range(0, n, EVAL_BATCH):
        codes = data.codes[begin : begin + EVAL_BATCH].to(device)
        labels = None
        if conditional and data.labels is not None:
            labels = data.labels[begin : begin + EVAL_BATCH].to(device)
        total += float(nll_bits(model, codes, labels).double().sum())
        counts += code_counts(codes, k).double().cpu()
        if on_progress is not None:
            on_progress(min(begin + EVAL_BATCH, n), n)
    seconds = time.perf_counter() - start
    model.train(was_training)
    length = model.length
    bits_per_image = total / n
    # Each stage has a codebook of its own: the unigram bound is each stage's entropy.
    per_stage = counts.view(model.stages, -1)
    unigram = sum(float(entropy_bits_from_counts(c)) for c in per_stage) * length / model.stages
    return {
        "bits_per_code": bits_per_image / length,
        "bits_per_image": bits_per_image,
        "unigram_bits_per_image": unigram,
        "uniform_bits_per_image": length * math.log2(k // model.stages),
        "ratio_to_unigram": bits_per_image / unigram if unigram > 0 else None,
        "images": n,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def evaluate_prior(
    path: Path, device: str | torch.device = "cpu", on_progress: Progress | None = None
) -> dict[str, Any]:
    """The prior of run `path` on its test codes: eval-test.json's contents."""
    loaded = load_prior(path, device)
    files = RunDir.with_checkpoint(path)
    code_file = read_codes(files.codes_file("test"))
    vq = loaded.vq
    check_codes_for_model(
        code_file,
        vq.fingerprint,
        vq.num_embeddings,
        vq.embedding_dim,
        files.codes_file("test"),
        vq.downsample,
    )
    tokens = prior_tokens(code_file, files.codes_file("test"))
    data = PriorData(tokens, labels_from_names(code_file, vq.class_names))
    window = loaded.profile.prior.window
    if window not in ((0, 0), vq.grid):  # a windowed prior's figures are its windows'
        data = centre_windows(data, vq.stages, window)
    metrics = evaluate_codes(loaded.model, data, loaded.profile.prior.conditional, on_progress)
    return {"split": "test", **metrics, "checkpoint": loaded.fingerprint, "step": loaded.step}
