"""vqtool: a VQ-VAE for CIFAR-10 that turns images into discrete codes and back.

The library behind the CLI, for notebooks::

    from vqtool import load_profile, run_training, load_model, evaluate_checkpoint
    profile = load_profile("smoke", ["train.steps=100"])
    run_training(profile, Path("runs/nb"), Path("data"))
    loaded = load_model(Path("runs/nb"))
    indices = loaded.model.encode(images)      # (B, 3, H, W) in [-0.5, 0.5] -> (B, H/4, W/4)
    recon = loaded.model.decode(indices)       # -> (B, 3, H, W)

Names are imported lazily so that `vqtool --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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
    "load_run": "vqtool.runs",
    "summarise_run": "vqtool.runs",
    "run_arrays": "vqtool.report",
    "write_run_plots": "vqtool.plots",
    "compare_figure": "vqtool.plots",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vqtool' has no attribute {name!r}")
    source = "train" if name == "run_training" else name
    return getattr(importlib.import_module(module), source)
