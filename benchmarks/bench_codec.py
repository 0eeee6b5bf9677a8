"""Encode and decode speed against the seed model's bare forward pass.

    python benchmarks/bench_codec.py --data-dir data --run /tmp/bench-run

Times `vqtool encode R cifar10:test -o X.vqc` and `vqtool decode R X.vqc -o DIR` (10,000 PNGs),
each as a whole process (interpreter start, imports, checkpoint, data, files included), and
compares their images/s with the forward pass of the seed's model (seed_baseline.py:
swasun/VQ-VAE-Images as published, residual stacks that repeat one
module object so the layers share weights, Kaiming init with weight norm, a quantizer that
builds a dense one-hot matrix, multiplies it with the codebook and computes its loss and
perplexity) on the same images, batch 256, in this process. The run should have the seed's
sizes (e.g. `vqtool train --profile ema-kaiming --set train.steps=50`): speed is architecture.
The target is 1.25x the baseline for each command. `run(...)` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from common import add_codec_arguments, machine_facts, write_json  # this folder
from seed_baseline import SeedAutoEncoder  # this folder; the seed model, defects included
from torch import Tensor

TARGET_RATIO = 1.25


def baseline_images_per_s(images: Tensor, batch_size: int = 256) -> float:
    """The seed model's forward pass (eval, no grad) over `images`, in images/s."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the seed's deprecated weight_norm
        model = SeedAutoEncoder(torch.device("cpu")).eval()
    inputs = images.float().div(255.0).sub(0.5)
    with torch.no_grad():
        model(inputs[:batch_size])  # warm-up: allocator, kernels
        start = time.perf_counter()
        for begin in range(0, len(inputs), batch_size):
            model(inputs[begin : begin + batch_size])
        seconds = time.perf_counter() - start
    return len(inputs) / seconds


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr}")
    return seconds


def run(
    data_dir: Path,
    run_dir: Path,
    images: int = 10_000,
    batch_size: int = 256,
    repeat: int = 2,
    work_root: Path | None = None,
) -> dict[str, Any]:
    """Best of `repeat` interleaved rounds of (baseline, encode, decode), plus a last baseline.

    On a shared machine the load changes during a run; the best time of each is the one
    least disturbed, and a baseline on both sides of the commands keeps the target honest.
    """
    from vqtool.data.cifar10 import load_cifar10
    from vqtool.vq.load import load_model

    test = load_cifar10(data_dir, "test")[:images]
    n = len(test)
    config = load_model(run_dir).profile.model
    seed_sizes = (128, 32, 2, 64, 512)  # SeedAutoEncoder's, the seed's defaults
    sizes = (config.num_hiddens, config.num_residual_hiddens, config.num_residual_layers,
             config.embedding_dim, config.num_embeddings)  # fmt: skip
    if sizes != seed_sizes:
        print(f"warning: the run's model {sizes} is not the seed's {seed_sizes}", file=sys.stderr)
    spec = "cifar10:test" if n == 10_000 else f"cifar10:test:{n}"
    vqtool = [sys.executable, "-m", "vqtool"]
    # Where the 10,000 PNGs go: file creation speed differs between file systems (here /tmp
    # creates files about 4x slower than /work), so the folder is a choice, and is printed.
    work = Path(tempfile.mkdtemp(prefix="bench-codec-", dir=work_root))
    baselines: list[float] = []
    encode_runs: list[float] = []
    decode_runs: list[float] = []
    try:
        codes = work / "test.vqc"
        for _ in range(repeat):
            baselines.append(baseline_images_per_s(test))
            encode_runs.append(timed(
                vqtool + ["encode", str(run_dir), spec, "-o", str(codes), "--data-dir",
                          str(data_dir), "--device", "cpu", "--batch-size", str(batch_size)]
            ))  # fmt: skip
            shutil.rmtree(work / "png", ignore_errors=True)
            decode_runs.append(timed(
                vqtool + ["decode", str(run_dir), str(codes), "-o", str(work / "png"),
                          "--device", "cpu", "--batch-size", str(batch_size)]
            ))  # fmt: skip
            written = sum(1 for _ in (work / "png").glob("*.png"))
            if written != n:
                raise SystemExit(f"decode wrote {written} PNGs, expected {n}")
        baselines.append(baseline_images_per_s(test))
        vqc_bytes = codes.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = max(baselines)
    encode_s, decode_s = min(encode_runs), min(decode_runs)
    figures = {
        "images": n,
        "baseline_forward_images_per_s": baseline,
        "encode_images_per_s": n / encode_s,
        "decode_images_per_s": n / decode_s,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "baseline_runs_images_per_s": baselines,
        "encode_runs_s": encode_runs,
        "decode_runs_s": decode_runs,
        "vqc_bytes": vqc_bytes,
        "work_dir": str(work),
        **machine_facts(),
    }
    figures["encode_ratio"] = figures["encode_images_per_s"] / baseline
    figures["decode_ratio"] = figures["decode_images_per_s"] / baseline
    figures["meets_target"] = min(figures["encode_ratio"], figures["decode_ratio"]) >= TARGET_RATIO
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_codec_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best of each is kept")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="folder for the outputs (default: the temp dir)"
    )
    args = parser.parse_args(argv)
    figures = run(args.data_dir, args.run, args.images, args.batch_size, args.repeat, args.work_dir)
    base = figures["baseline_forward_images_per_s"]
    print(f"codec benchmark: {figures['images']:,} CIFAR-10 test images, "
          f"{figures['cpus']} CPUs, {figures['torch_threads']} torch threads")  # fmt: skip
    runs = ", ".join(f"{b:,.0f}" for b in figures["baseline_runs_images_per_s"])
    print(f"  seed model forward (batch 256):   {base:8,.0f} images/s  (best of {runs})")
    for step in ("encode", "decode"):
        rate, ratio = figures[f"{step}_images_per_s"], figures[f"{step}_ratio"]
        print(
            f"  vqtool {step} (whole process):    {rate:8,.0f} images/s  "
            f"(best {figures[f'{step}_s']:.2f} s of "
            f"{', '.join(f'{t:.2f}' for t in figures[f'{step}_runs_s'])}; "
            f"{ratio:.2f}x baseline, target {TARGET_RATIO}x)"
        )
    print(f"  outputs written under {figures['work_dir']}")
    print(f"  .vqc size: {figures['vqc_bytes']:,} bytes; 1-min load average at the end: "
          f"{figures['load_average']:.1f}")  # fmt: skip
    print("  target met" if figures["meets_target"] else "  TARGET NOT MET")
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
