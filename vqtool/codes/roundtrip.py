"""Your own images through the codes and back (`vqtool roundtrip`): each image's PSNR and bits,
and the first few images with their reconstructions, for a figure.

The images are read and encoded exactly as `vqtool encode` reads them (files, folders,
CIFAR-10 splits; --size; damaged images in folders skipped) and decoded as `vqtool decode`
writes them (8-bit pixels, cropped to each image's size), so each PSNR is that of the PNG a
decode would give. Bits per image: raw, h * w * log2 K (every code one of K, the uniform
bound); with a prior, what the prior's range coding spends on each image: the image's
information content under the coder's integer tables, as entropy.encode_with_prior counts it
(the range coder's stream comes within a fraction of a percent of it; a code file adds its
names, sizes and header). A run of residual stages is measured decoding all its stages, or
the first n (`stages`): bits then count n grids of codes per image. Images of different sizes
each have their own grid, and so their own raw bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vqtool.codes.entropy import CodingPrior, check_prior, encode_with_prior
from vqtool.codes.pipeline import (
    DEFAULT_BATCH,
    CodeStore,
    CodingModel,
    Encoding,
    decode_indices,
    stages_to_keep,
)
from vqtool.codes.ratedistortion import psnr_per_image
from vqtool.codes.vqc import Codes, grid_groups, grids_of
from vqtool.events import Progress, progress_parts
from vqtool.models.exact_prior import ExactPrior
from vqtool.models.transformer import CodePrior

SHOWN = 32  # images kept with their pixels, for the figure


class RoundTrip(NamedTuple):
    names: tuple[str, ...]  # N
    sizes: np.ndarray  # int32 (N, 2): each image's (height, width) as encoded, before padding
    psnr: np.ndarray  # float64 (N,): dB, each image at its own size, pixels in [0, 1]
    raw_bits: np.ndarray  # float64 (N,): each image's stages * h * w * log2 K
    prior_bits: np.ndarray | None  # float64 (N,): the prior coding's bits per image
    originals: list[np.ndarray]  # uint8 (height, width, 3) of the first images, as encoded
    reconstructions: list[np.ndarray]  # uint8 (height, width, 3): what decode writes for them
    grid: tuple[int, int] | None  # codes per image (h, w), of each stage; None when they differ
    num_embeddings: int  # K
    checkpoint: str  # the VQ checkpoint's fingerprint
    prior: str | None  # the prior checkpoint's fingerprint
    stages: int = 1  # residual stages decoded (1 for a run without stages)
    run_stages: int = 1  # residual stages the run has

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data: the whole set's figures, then one record per image."""
        n = len(self.names)
        prior = self.prior_bits
        grid = self.grid
        return {
            "checkpoint": self.checkpoint,
            "prior": self.prior,
            "images": n,
            "codes_per_image": None if grid is None else {"height": grid[0], "width": grid[1]},
            "num_embeddings": self.num_embeddings,
            "stages": self.stages,
            "mean_psnr": float(self.psnr.mean()),
            "raw_bits_per_image": float(self.raw_bits.mean()),
            "prior_bits_per_image": None if prior is None else float(prior.mean()),
            "per_image": [
                {
                    "name": self.names[i],
                    "height": int(self.sizes[i, 0]),
                    "width": int(self.sizes[i, 1]),
                    "psnr": float(self.psnr[i]),
                    "raw_bits": float(self.raw_bits[i]),
                    "prior_bits": None if prior is None else float(prior[i]),
                }
                for i in range(n)
            ],
        }


def round_trip(
    loaded: CodingModel,
    inputs: Sequence[str],
    data_dir: Path,
    size: tuple[int, int] | None = None,
    prior: CodingPrior | None = None,
    shown: int = SHOWN,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
    strict: bool = False,
    on_prior: Progress | None = None,
    stages: int | None = None,
    resize_mode: str = "stretch",
) -> RoundTrip:
    """Encode and decode the inputs (as `encode_inputs` reads them, `size` fitted by
    `resize_mode`; without it each image at its own size), measuring each image; keep the
    pixels of the first `shown`. A run of residual stages decodes all of them, or the first
    `stages`. A stage count outside the run's, or a prior that cannot code these images'
    grids, is refused (UsageError) before any image is read; `on_prior` follows the prior's
    coding, a grid size at a time as a code file's."""
    kept_stages = stages_to_keep(loaded.model, stages)
    factor = loaded.model.config.downsample
    encoding = Encoding(inputs, data_dir, size, strict, resize_mode, factor)
    config = loaded.model.config
    if prior is not None:
        for grid in encoding.grids():
            check_prior(prior, loaded.fingerprint, config.num_embeddings, grid, kept_stages)
    n = len(encoding.items)
    store = CodeStore(encoding, loaded.model, kept_stages)
    psnr = np.empty(n)
    # The pixels of the first `shown` images kept, by position: batches come a size at a
    # time, not in file order.
    held: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    model = loaded.model.folded()
    for batch in encoding.batches(model, batch_size, on_progress, kept_stages):
        store.add(batch)
        decoded = decode_indices(model, batch.codes).permute(0, 2, 3, 1).numpy()
        images = batch.images.permute(0, 2, 3, 1).numpy()
        for j, i in enumerate(batch.indices):
            h, w = encoding.size_of(i)
            original, back = images[j, :h, :w], decoded[j, :h, :w]
            psnr[i] = psnr_per_image(original[None], back[None])[0]
            if shown > 0 and (len(held) < shown or i < max(held)):
                held[i] = (original.copy(), back.copy())
                if len(held) > shown:
                    del held[max(held)]
    encoding.finish(on_note)
    kept = encoding.kept
    codes, image_size = store.kept()
    sizes = encoding.sizes()
    grids = grids_of(sizes, factor)
    prior_bits = None
    if prior is not None:
        coder = prior.model if prior.exact is None else prior.exact
        prior_bits = _prior_bits(codes, grids, coder, on_prior)
    return RoundTrip(
        names=encoding.names(),
        sizes=sizes,
        psnr=psnr[kept],
        raw_bits=kept_stages * grids.prod(1) * math.log2(config.num_embeddings),
        prior_bits=prior_bits,
        originals=[held[i][0] for i in sorted(held)],
        reconstructions=[held[i][1] for i in sorted(held)],
        grid=None if image_size is None else (image_size[0] // factor, image_size[1] // factor),
        num_embeddings=config.num_embeddings,
        stages=kept_stages,
        run_stages=loaded.model.stages,
        checkpoint=loaded.fingerprint,
        prior=None if prior is None else prior.fingerprint,
    )


def _prior_bits(
    codes: Codes, grids: np.ndarray, coder: CodePrior | ExactPrior, on_prior: Progress | None
) -> np.ndarray:
    """Each image's bits under the prior's coding: its codes coded with the others of its
    grid size, as a code file codes them (all together for images of one size; tables
    adapted on grids of another size than the prior's)."""
    if isinstance(codes, np.ndarray):
        return encode_with_prior(codes, coder, on_prior, adapt=True).bits
    bits = np.empty(len(codes))
    groups = grid_groups(grids)
    counts = [len(indices) * codes[int(indices[0])].size for _, indices in groups]
    progress = progress_parts(counts, on_prior)  # in codes, as the coding counts them
    for (_, indices), callback in zip(groups, progress, strict=True):
        group = np.stack([codes[i] for i in indices.tolist()])
        bits[indices] = encode_with_prior(group, coder, callback, adapt=True).bits
    return bits
