"""vqtool: a VQ-VAE for CIFAR-10 or your own image folders that turns images into discrete
codes and back.

The library behind the CLI, for notebooks::

    from vqtool import load_profile, run_training, load_model, evaluate_checkpoint
    profile = load_profile("smoke", ["train.steps=100"])
    run_training(profile, Path("runs/nb"), Path("data"))
    loaded = load_model(Path("runs/nb"))
    indices = loaded.model.encode(images)      # (B, 3, H, W) in [-0.5, 0.5] -> (B, H/f, W/f)
    recon = loaded.model.decode(indices)       # -> (B, 3, H, W)
    codes = loaded.model.images_to_codes(uint8_images)   # the model's pixel convention
    pixels = loaded.model.codes_to_images(codes)         # uint8, as vqtool decode writes
    # A photo of several megapixels in bounded memory, in bands of code rows, as the CLI does:
    codes = encode_images(loaded.model, uint8_images); pixels = decode_indices(loaded.model, codes)
    # A run of S residual stages (model.stages = S) has codes (B, S, H/f, W/f) and decodes
    # any first n of them: loaded.model.decode(indices, stages=n).
    # The sequence a prior reads of them, stage after stage (stage s's code c as s * K + c):
    tokens = codes_to_tokens(read_codes(path).codes, loaded.model.config.num_embeddings)

Names are imported lazily so that `vqtool --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

try:
    __version__ = importlib.metadata.version("vqtool")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"

# public name -> module that defines it
_API = {
    "Profile": "vqtool.profiles",
    "load_profile": "vqtool.profiles",
    "list_profiles": "vqtool.profiles",
    "profile_to_toml": "vqtool.profiles",
    "download_cifar10": "vqtool.data.cifar10",
    "load_cifar10": "vqtool.data.cifar10",
    "build_model": "vqtool.models.vqvae",
    "VQVAE": "vqtool.models.vqvae",
    "run_training": "vqtool.vq.train",
    "resolve_run": "vqtool.vq.train",
    "load_model": "vqtool.vq.load",
    "load_checkpoint": "vqtool.checkpoint",
    "evaluate_images": "vqtool.vq.evaluate",
    "evaluate_checkpoint": "vqtool.vq.evaluate",
    "VqtoolError": "vqtool.errors",
    "CodeFile": "vqtool.codes.vqc",
    "read_codes": "vqtool.codes.vqc",
    "write_codes": "vqtool.codes.vqc",
    "encode_images": "vqtool.codes.pipeline",
    "decode_indices": "vqtool.codes.pipeline",
    "encode_inputs": "vqtool.codes.pipeline",
    "decode_file": "vqtool.codes.pipeline",
    "export_run": "vqtool.vq.export",
    "codes_to_tokens": "vqtool.codes.tokens",
    "tokens_to_codes": "vqtool.codes.tokens",
    "RunDir": "vqtool.runs",
    "load_prior_profile": "vqtool.profiles",
    "train_prior": "vqtool.prior.train",
    "load_prior": "vqtool.prior.load",
    "evaluate_prior": "vqtool.prior.evaluate",
    "sample_codes": "vqtool.prior.sample",
    "load_run": "vqtool.runs",
    "summarise_run": "vqtool.reports.summary",
    "run_arrays": "vqtool.reports.arrays",
    "write_run_plots": "vqtool.reports.plots",
    "compare_figure": "vqtool.reports.plots",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vqtool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
