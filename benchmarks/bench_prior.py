"""Sampling speed of the code prior with and without the KV cache.

    python benchmarks/bench_prior.py --threads 1

Draws N grids of h x w codes (K codes) from an untrained prior (speed does not depend on the
weights) with `sample` (one new token per sequence and step, keys and values kept) and with
`sample(..., use_cache=False)` (the whole prefix recomputed at every step), both from the same seed,
and prints images/s for each, the speed-up and whether the two drew the same grids. The target
is a speed-up of at least 5. `run(...)` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vqtool.models.config import PriorConfig
from vqtool.models.transformer import CodePrior, sample

TARGET_SPEEDUP = 5.0

Sampler = Callable[..., Tensor]


def best_seconds(sampler: Sampler, model: CodePrior, n: int, repeats: int) -> tuple[float, Tensor]:
    """Fastest of `repeats` timed calls, after one warm-up; and the grids drawn (seed 0)."""
    sampler(model, n, generator=torch.Generator().manual_seed(0))
    times = []
    grids = torch.empty(0)
    for _ in range(repeats):
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        grids = sampler(model, n, generator=generator)
        times.append(time.perf_counter() - start)
    return min(times), grids


def run(
    n: int = 64,
    grid: tuple[int, int] = (8, 8),
    codes: int = 512,
    layers: int = 4,
    width: int = 192,
    heads: int = 4,
    repeats: int = 3,
) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = PriorConfig(layers=layers, width=width, heads=heads)
    model = CodePrior(cfg, codes, grid).eval()
    cached_s, cached = best_seconds(sample, model, n, repeats)
    uncached_s, uncached = best_seconds(
        functools.partial(sample, use_cache=False), model, n, repeats
    )
    return {
        "n": n,
        "grid": list(grid),
        "codes": codes,
        "layers": layers,
        "width": width,
        "heads": heads,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cached_images_per_s": n / cached_s,
        "uncached_images_per_s": n / uncached_s,
        "speedup": uncached_s / cached_s,
        "target_speedup": TARGET_SPEEDUP,
        "same_samples": bool(torch.equal(cached, uncached)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=64, help="grids per sampling call")
    parser.add_argument("--height", type=int, default=8, help="grid rows")
    parser.add_argument("--width-codes", type=int, default=8, help="grid columns")
    parser.add_argument("--codes", type=int, default=512, help="K, the codebook size")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures = run(
        args.n,
        (args.height, args.width_codes),
        args.codes,
        args.layers,
        args.width,
        args.heads,
        args.repeats,
    )
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"prior {figures['layers']} layers, width {figures['width']}, K={figures['codes']}, "
        f"{figures['n']} grids of {args.height}x{args.width_codes}, "
        f"{figures['threads']} thread(s), torch {figures['torch']}"
    )
    print(f"with KV cache:    {figures['cached_images_per_s']:9.1f} images/s")
    print(f"without KV cache: {figures['uncached_images_per_s']:9.1f} images/s")
    print(f"speed-up:         {figures['speedup']:9.2f}x (target {TARGET_SPEEDUP:.0f}x)")
    print(f"same samples:     {figures['same_samples']}")


if __name__ == "__main__":
    main()
