"""vqtool's prior-coded curve beside a learned codec trained here on the same budget, and beside
the published CIFAR-10 curves of the learned codecs and BPG.

    python benchmarks/bench_learned_codec.py --data-dir D [--run R] [--steps 2000]
        [--batch-size 32] [--lambdas 0.0067,0.025,0.0932,0.18] [--test-images 2000] [--json F]

Trains CompressAI's `ScaleHyperprior` (Balle et al. 2018, N=128, M=192) once per lambda on the
CIFAR-10 training images, `--batch-size` images a step for `--steps` steps (by default the
`rvq` profile's recipe shortened to 2,000 steps: 32 images a step), Adam at 3e-4 with a cosine
decay to zero, its auxiliary loss on its own Adam at 1e-3, the loss lambda 255^2 MSE + bpp.
The hyperprior's latents are 16 times and its side information 64 times smaller per side than
the image, so the 32x32 images are tiled 2x2 into 64x64 mosaics (4 images a mosaic, the batch
a multiple of 4), in training and in testing.

Each trained model codes the first `--test-images` test images (consecutive fours as mosaics)
with real bitstreams: `update()`, `compress`, `decompress`; bits per pixel from the bytes of
both streams over the images' pixels, PSNR per 32x32 image on the decoded uint8 pixels (as
`vqtool evaluate --rate-distortion` measures), averaged.

With `--run R`, vqtool's curve is R's rd-test.json (`vqtool evaluate R --rate-distortion
--prior P`): its prior-coded points (else its most compact coding), whole .vqc files. The
BD-rate (vqtool.codes.bdrate, the `bjontegaard` package, PCHIP) of that curve against the
hyperprior's and against each published curve is printed, or that their PSNR ranges do not
overlap; and, over the bits per pixel both curves reach, how far vqtool's PSNR is above the
hyperprior's. The published curves are on the official CIFAR-10 images; vqtool's and the
hyperprior's here are on the JPEG-derived copy vqtool trains on.

Needs CompressAI: pip install 'vqtool[bench]'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_facts, write_json  # noqa: E402

from vqtool.codes.bdrate import CODING_ORDER, bd_rate, vqtool_curves  # noqa: E402
from vqtool.codes.ratedistortion import psnr_per_image  # noqa: E402
from vqtool.data.cifar10 import load_cifar10  # noqa: E402
from vqtool.runs import RunDir  # noqa: E402

# (bits per pixel, PSNR dB) on the CIFAR-10 test images: the learned codecs as the COIN++
# repository's results/cifar10 gives them (CompressAI models), and BPG 4:4:4.
PUBLISHED = {
    "bmshj2018-hyperprior": [(0.746, 26.83), (1.112, 29.50), (1.631, 32.13), (2.113, 34.12)],
    "cheng2020-anchor": [(0.391, 22.63), (0.554, 24.53), (1.32, 31.82), (1.73, 34.86)],
    "BPG 4:4:4": [(1.0, 27.11), (1.25, 28.74), (1.875, 31.97), (2.5, 34.53)],
}
# CompressAI's own MSE lambdas for its qualities 3, 5, 7 and 8: CIFAR-10's rates at these
# budgets lie high, so the upper half of its range.
LAMBDAS = (0.0067, 0.025, 0.0932, 0.18)
N, M = 128, 192
TILE = 2  # mosaics of TILE x TILE images
CODING_BATCH = 50  # mosaics compressed at a time


def mosaics(images: Tensor) -> Tensor:
    """uint8 (4 n, 3, 32, 32) -> float (n, 3, 64, 64) in [0, 1]: each four consecutive images
    tiled 2x2, row by row."""
    n, c, h, w = images.shape
    tiled = images.reshape(n // TILE**2, TILE, TILE, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return tiled.reshape(n // TILE**2, c, TILE * h, TILE * w).float().div_(255.0)


def untiled(pixels: Tensor) -> Tensor:
    """(n, 3, 64, 64) -> (4 n, 3, 32, 32): `mosaics` undone."""
    n, c, hh, ww = pixels.shape
    h, w = hh // TILE, ww // TILE
    parts = pixels.reshape(n, c, TILE, h, TILE, w).permute(0, 2, 4, 1, 3, 5)
    return parts.reshape(n * TILE**2, c, h, w)


def train_hyperprior(
    train: Tensor, lmbda: float, steps: int, batch: int, lr: float, seed: int
) -> torch.nn.Module:
    """A ScaleHyperprior trained on uint8 (N, 3, 32, 32) images, `batch` of them a step."""
    from compressai.models import ScaleHyperprior

    torch.manual_seed(seed)
    model = ScaleHyperprior(N, M)
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main, lr=lr)
    aux_optimizer = torch.optim.Adam(aux, lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)
    at = 0
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if at + batch > len(order):  # a new epoch: a new order
            order, at = torch.randperm(len(train), generator=generator), 0
        x = mosaics(train[order[at : at + batch]])
        at += batch
        out = model(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()) / pixels
        mse = F.mse_loss(out["x_hat"], x)
        loss = lmbda * 255**2 * mse + bpp
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
        schedule.step()
        if step % max(1, steps // 4) == 0 or step == steps:
            psnr = 10 * math.log10(1 / max(mse.item(), 1e-12))
            print(
                f"   lambda {lmbda:g}: step {step}/{steps}, bpp {bpp.item():.3f}, "
                f"PSNR {psnr:.2f} dB (training batch), {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    return model


@torch.no_grad()
def code_test_images(model: Any, test: Tensor) -> dict[str, Any]:
    """Real bitstreams of uint8 test images (4 n, 3, 32, 32) in 2x2 mosaics: mean bits per
    pixel over the images' pixels, mean PSNR per image, and the bytes."""
    model.eval()
    model.update(force=True)
    total_bytes, psnrs = 0, []
    for start in range(0, len(test), CODING_BATCH * TILE**2):
        images = test[start : start + CODING_BATCH * TILE**2]
        coded = model.compress(mosaics(images))
        total_bytes += sum(len(s) for strings in coded["strings"] for s in strings)
        decoded = model.decompress(coded["strings"], coded["shape"])["x_hat"]
        pixels = untiled(decoded.clamp(0, 1).mul(255).round().to(torch.uint8))
        psnrs.append(psnr_per_image(images.numpy(), pixels.numpy()))
    n, _, h, w = test.shape
    return {
        "bpp": total_bytes * 8 / (n * h * w),
        "psnr": float(np.concatenate(psnrs).mean()),
        "bytes": total_bytes,
    }


def vqtool_curve(run: Path, images: int) -> tuple[str, list[tuple[float, float]], list[str]]:
    """The run's most compact coding in its rd-test.json: (coding, [(bpp_file, psnr)], notes)."""
    path = RunDir.at(run).rd_file("test")
    if not path.is_file():
        sys.exit(
            f"error: {path} not found: run vqtool evaluate {run} --rate-distortion "
            f"--prior P --rd-images {images} first"
        )
    rd = json.loads(path.read_text(encoding="utf-8"))
    curves = vqtool_curves(rd["vqtool"])
    coding = next(label for label in CODING_ORDER if label in curves)
    notes = []
    if rd.get("images") != images or rd.get("split") != "test":
        notes.append(
            f"{path.name} measured {rd.get('images')} {rd.get('split')} images, the "
            f"hyperprior {images} test images"
        )
    if coding != "prior":
        notes.append(f"{path.name} has no prior-coded points: its {coding} coding instead")
    return coding, [(p["bpp_file"], p["psnr"]) for p in curves[coding]], notes


def psnr_above(
    test: Sequence[tuple[float, float]], anchor: Sequence[tuple[float, float]]
) -> tuple[float, float, float, float] | None:
    """How far `test`'s PSNR lies above `anchor`'s over the bits per pixel both reach, each
    interpolated linearly in log bpp: (least dB, most dB, bpp from, bpp to); None if they
    share no bits per pixel."""
    a, t = sorted(anchor), sorted(test)
    low, high = max(a[0][0], t[0][0]), min(a[-1][0], t[-1][0])
    if high <= low:
        return None
    grid = np.exp(np.linspace(math.log(low), math.log(high), 65))

    def at(curve: Sequence[tuple[float, float]]) -> np.ndarray:
        return np.interp(np.log(grid), np.log([b for b, _ in curve]), [p for _, p in curve])

    gap = at(t) - at(a)
    return float(gap.min()), float(gap.max()), low, high


def bd_line(
    name: str, anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]
) -> tuple[str, dict[str, float] | None]:
    found = bd_rate(anchor, test)
    if found is None:
        return f"   against {name:22} the PSNR ranges do not overlap: no BD-rate", None
    line = (
        f"   against {name:22} {found.percent:+.1f}% over {found.psnr_low:.2f} to "
        f"{found.psnr_high:.2f} dB"
    )
    return line, found._asdict()


def curve_text(points: Sequence[tuple[float, float]]) -> str:
    return ", ".join(f"({bpp:.3f}, {psnr:.2f})" for bpp, psnr in points)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.batch_size % TILE**2 or args.test_images % TILE**2:
        sys.exit(
            f"error: --batch-size and --test-images must be multiples of {TILE**2} (2x2 mosaics)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    vqtool = None if args.run is None else vqtool_curve(args.run, args.test_images)
    train = load_cifar10(args.data_dir, "train")
    test = load_cifar10(args.data_dir, "test")[: args.test_images]
    figures: dict[str, Any] = {
        "codec": f"compressai ScaleHyperprior N={N} M={M}",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "test_images": len(test),
        "machine": machine_facts(),
    }
    if args.run is not None:
        raw, _ = RunDir.at(args.run).read_profile_dict()
        steps = (raw or {}).get("train", {}).get("steps")
        batch = (raw or {}).get("data", {}).get("batch_size")
        if (steps, batch) != (args.steps, args.batch_size):
            print(
                f"note: {args.run} trained {steps} steps of {batch} images; the hyperprior "
                f"{args.steps} of {args.batch_size} (--steps, --batch-size)"
            )
    print(
        f"== ScaleHyperprior (N={N}, M={M}): {args.steps} steps of {args.batch_size} images "
        f"(2x2 mosaics) per lambda, coding {len(test)} test images",
        flush=True,
    )
    points = []
    for lmbda in args.lambdas:
        start = time.perf_counter()
        model = train_hyperprior(
            train, lmbda, args.steps, args.batch_size, args.learning_rate, args.seed
        )
        coded = code_test_images(model, test)
        coded.update(lmbda=lmbda, seconds=time.perf_counter() - start)
        points.append(coded)
        print(
            f"   lambda {lmbda:g}: {coded['bpp']:.3f} bpp, {coded['psnr']:.2f} dB "
            f"({coded['seconds']:.0f} s)",
            flush=True,
        )
    hyperprior = [(p["bpp"], p["psnr"]) for p in points]
    figures["hyperprior"] = points
    print(f"hyperprior here (bpp, PSNR dB): {curve_text(hyperprior)}")
    print("BD-rate of the hyperprior here:")
    figures["bd_rate_hyperprior"] = {}
    for name, curve in PUBLISHED.items():
        line, found = bd_line(name, curve, hyperprior)
        print(line)
        figures["bd_rate_hyperprior"][name] = found
    if vqtool is None:
        return figures
    coding, vq, notes = vqtool
    for note in notes:
        print(f"note: {note}")
    figures["vqtool"] = {"run": str(args.run), "coding": coding, "points": vq}
    print(f"vqtool {coding}-coded, whole files (bpp, PSNR dB): {curve_text(vq)}")
    print(f"BD-rate of vqtool's {coding}-coded curve (negative: fewer bits for the same PSNR):")
    figures["bd_rate"] = {}
    for name, curve in {"the hyperprior here": hyperprior, **PUBLISHED}.items():
        line, found = bd_line(name, curve, vq)
        print(line)
        figures["bd_rate"][name] = found
    above = psnr_above(vq, hyperprior)
    if above is None:
        print("vqtool and the hyperprior here share no bits per pixel")
    else:
        least, most, low, high = above
        verdict = "above" if least > 0 else "not above"
        print(
            f"vqtool's PSNR minus the hyperprior's over {low:.3f} to {high:.3f} bpp: "
            f"{least:+.2f} to {most:+.2f} dB ({verdict} it at every bpp both reach)"
        )
        figures["psnr_above_hyperprior"] = {"least": least, "most": most, "bpp": [low, high]}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("VQTOOL_DATA_DIR", "data"))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data,
        help="holds cifar-10-batches-py/ ($VQTOOL_DATA_DIR, else ./data)",
    )
    parser.add_argument("--run", type=Path, default=None, help="a vqtool run with rd-test.json")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32, help="images a step (4 a mosaic)")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument(
        "--lambdas",
        type=lambda s: [float(v) for v in s.split(",")],
        default=list(LAMBDAS),
        help="comma-separated",
    )
    parser.add_argument("--test-images", type=int, default=2000, help="the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        import compressai  # noqa: F401
    except ImportError:
        sys.exit("error: this benchmark needs CompressAI: pip install 'vqtool[bench]'")
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
