"""Priors over grids of other sizes: bits per code of priors trained on different grids, each
coding the same code grids with its exact coding model (window by window where a grid is not
its own, vqtool.models.windows).

The grids: the run's codes of the first N CIFAR-10 test images (the run's own grid), and the
codes of square crops of photos at their own scale (`--photo`, `--crop` pixels a side), which
give larger grids. Prints one Markdown row per prior and grid size: bits per code, and each
prior's ratio to the first prior's.

    python benchmarks/bench_prior_grids.py --data-dir D --run R --prior R/p8 --prior R/p16 \
        --images 2000 --photo a.png --photo b.png --crop 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqtool.codes.entropy import encode_with_prior
from vqtool.codes.pipeline import encode_images
from vqtool.data.cifar10 import load_cifar10
from vqtool.prior.load import load_coding_prior
from vqtool.vq.load import load_model


def photo_crops(paths: list[Path], side: int) -> torch.Tensor:
    """Every whole side x side crop of each photo, on a grid of steps of one side: uint8
    (N, 3, side, side)."""
    crops = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        for top in range(0, pixels.shape[0] - side + 1, side):
            for left in range(0, pixels.shape[1] - side + 1, side):
                crops.append(pixels[top : top + side, left : left + side])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def codes_of(run: Path, images: torch.Tensor) -> np.ndarray:
    model = load_model(run).model.folded()
    parts = [encode_images(model, images[i : i + 64]).numpy() for i in range(0, len(images), 64)]
    return np.concatenate(parts).astype(np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--prior", type=Path, action="append", required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--photo", type=Path, action="append", default=[])
    parser.add_argument("--crop", type=int, default=128)
    args = parser.parse_args()
    sets = {"CIFAR-10 test": codes_of(args.run, load_cifar10(args.data_dir, "test")[: args.images])}
    if args.photo:
        sets["photo crops"] = codes_of(args.run, photo_crops(args.photo, args.crop))
    priors = [load_coding_prior(path) for path in args.prior]
    print("| codes | grid (HxW) | grids | prior | trained on | bits per code | against the first |")
    print("|---|---|---|---|---|---|---|")
    for name, codes in sets.items():
        first = None
        for path, prior in zip(args.prior, priors, strict=True):
            assert prior.exact is not None and prior.exact.grid is not None
            bits = encode_with_prior(codes, prior.exact).bits
            per_code = float(bits.mean()) / codes[0].size
            first = per_code if first is None else first
            h, w = codes.shape[-2:]
            trained = "x".join(map(str, prior.exact.grid))
            cells = [name, f"{h}x{w}", f"{len(codes):,}", path, trained]
            cells += [f"{per_code:.4f}", f"{per_code / first:.3f}x"]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
