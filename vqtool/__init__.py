"""vqtool: a VQ-VAE for CIFAR-10 that turns images into discrete codes and back.

The library behind the CLI, for notebooks::

    from vqtool import load_profile, run_training, load_model, evaluate_checkpoint
    profile = load_profile("smoke", ["train.steps=100"])
    run_training(profile, Path("runs/nb"), Path("data"))
    loaded = load_model(Path("runs/nb"))
    indices = loaded.model.encode(images)      # (B, 3, H, W) in [-0.5, 0.5] -> (B, H/4, W/4)
    recon = loaded.model.decode(indices)       # -> (B, 3, H, W)
    codes = loaded.model.images_to_codes(uint8_images)   # the model's pixel convention
    pixels = loaded.model.codes_to_images(codes)         # uint8, as vqtool decode writes

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
    "download_cifar10": "vqtool.data",
    "load_cifar10": "vqtool.data",
    "build_model": "vqtool.model",
    "VQVAE": "vqtool.model",
    "run_training": "vqtool.train",
    "resolve_run": "vqtool.train",
    "load_model": "vqtool.checkpoint",
    "load_checkpoint": "vqtool.checkpoint",
    "evaluate_images": "vqtool.evaluate",
    "evaluate_checkpoint": "vqtool.evaluate",
    "VqtoolError": "vqtool.errors",
    "CodeFile": "vqtool.codes",
    "read_codes": "vqtool.codes",
    "write_codes": "vqtool.codes",
    "encode_images": "vqtool.codec",
    "decode_indices": "vqtool.codec",
    "encode_inputs": "vqtool.codec",
    "decode_file": "vqtool.codec",
    "RunDir": "vqtool.runs",
    "load_prior_profile": "vqtool.profiles",
    "train_prior": "vqtool.prior",
    "load_prior": "vqtool.prior",
    "evaluate_prior": "vqtool.prior",
    "sample_codes": "vqtool.prior",
    "load_run": "vqtool.runs",
    "summarise_run": "vqtool.summary",
    "run_arrays": "vqtool.report",
    "write_run_plots": "vqtool.plots",
    "compare_figure": "vqtool.plots",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vqtool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
