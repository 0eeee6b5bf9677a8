"""What padding costs: the first N CIFAR-10 test images cropped to sides that are not multiples
of a run's model.downsample, padded bottom/right by reflection, edge copies (vqtool's) or
mid-grey, encoded and decoded; the PSNR over the real pixels, beside the same pixels encoded
with their real surroundings (the uncropped 32x32 image).

    python benchmarks/bench_padding.py --data-dir D --run R [--run R2 ...] [--images 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from vqtool.data.cifar10 import load_cifar10
from vqtool.images.pixels import padded_size
from vqtool.vq.load import load_model

PADDINGS = {
    "reflection": {"mode": "reflect"},
    "edge": {"mode": "replicate"},
    "grey": {"value": 128},
}


def psnr(decoded: torch.Tensor, original: torch.Tensor) -> float:
    """Mean over images of each one's PSNR (uint8 pixels)."""
    mse = ((decoded.float() - original.float()) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def round_trip(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.codes_to_images(model.images_to_codes(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    images = load_cifar10(args.data_dir, "test")[: args.images]
    for run in args.run:
        model = load_model(run, "cpu").model.folded()
        factor = model.config.downsample
        whole = round_trip(model, images)
        for side in sorted({32 - factor // 2 - 1, 29, 31} - {32}):
            crop = images[:, :, :side, :side]
            height, width = padded_size((side, side), factor)
            pads = (0, width - side, 0, height - side)
            measured = []
            for name, how in PADDINGS.items():
                padded = F.pad(crop.float(), pads, **how).to(torch.uint8)  # type: ignore[arg-type]
                decoded = round_trip(model, padded)[:, :, :side, :side]
                measured.append(f"{name} {psnr(decoded, crop):.2f} dB")
            real = psnr(whole[:, :, :side, :side], crop)
            print(
                f"{run} (downsample {factor}), {side}x{side} padded to {height}x{width}: "
                f"{', '.join(measured)}; with its real surroundings {real:.2f} dB"
            )


if __name__ == "__main__":
    main()
