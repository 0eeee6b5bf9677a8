"""What the benchmarks share: the codec ones' arguments, the machine they ran on, --json files."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def add_codec_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir, --run and --images: the data, the run folder and how many test images."""
    parser.add_argument("--data-dir", type=Path, required=True, help="holds cifar-10-batches-py/")
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--images", type=int, default=10_000, help="first N test images")


def machine_facts() -> dict[str, Any]:
    """The machine and its load when the figures were taken (they move with the load)."""
    return {
        "load_average": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    """The figures as indented JSON at `path` (the --json option), when one was given."""
    if path is not None:
        path.write_text(json.dumps(figures, indent=2) + "\n")
