"""Training from an image folder against the CIFAR-10 route: decode, start-up and images/s.

    python benchmarks/bench_folder.py --jpeg-dir J --data-dir D [--steps N] [--rounds R]
        [--torch-threads T] [--json FILE]

J is the CIFAR-10 JPEG tree (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg), D holds
`cifar-10-batches-py` with the same pixels (rebuilt from those JPEGs), so both routes train on
the same images at 32x32 (`resize = "centre-crop"` keeps a 32x32 JPEG's pixels as they are).

What it prints, in one run:
1. The first decode of the folder into a fresh cache (in a temporary data folder): seconds and
   images/s, with the decoding threads used.
2. A second run's data start-up with the cache reused (find the files, check them against the
   manifest, map the arrays), beside the CIFAR-10 route's (unpickling the python batches).
3. Training images/s at batch 32 (`ema` profile, CPU), the CIFAR-10 route and the folder route
   in one process, taking turns every N steps (R turns each, after a warm-up): each turn's
   figures and ratio, the medians and the median ratio.
4. Decoding one image at a time, one thread: Pillow (what vqtool uses; JPEGs shrunk while
   decoding) and torchvision.io (its header read by Pillow first, for the size limit; resized by
   torch), on the first 2,000 training files at 32x32 and on 40 made-up 1600x1200 JPEGs brought
   to 72x72: the reason for the choice.
5. Whether decoding on threads pays: a cache of those photos (64x64 random crops) and of the
   5,000 JPEGs of train/airplane, built on one thread, on DECODE_THREADS threads, and as vqtool
   chooses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_json  # noqa: E402  (this folder)

from vqtool.data import folders  # noqa: E402
from vqtool.data.cifar10 import load_cifar10  # noqa: E402
from vqtool.data.datasets import load_images, load_training_images  # noqa: E402
from vqtool.data.folders import DECODE_THREADS, decode_image, ensure_cache, scan_folder  # noqa: E402
from vqtool.device import Placement  # noqa: E402
from vqtool.images.read import open_image  # noqa: E402
from vqtool.profiles import load_profile  # noqa: E402
from vqtool.vq.train import Trainer  # noqa: E402

WARMUP_STEPS = 25


def folder_sets(jpeg_dir: Path) -> list[str]:
    return ["data.dataset=folder", f"data.path={jpeg_dir.resolve()}"]


def paired_images_per_s(
    data_dir: Path, cache_dir: Path, jpeg_dir: Path, steps: int, rounds: int
) -> dict[str, Any]:
    """Training images/s of `ema` at batch 32 on the CPU, the CIFAR-10 route and the folder
    route in the same process, taking turns every `steps` steps (`rounds` turns each, after a
    warm-up), so that a machine shared with other work slows both alike. Each turn is the
    training loop's own step: gather the batch by index, forward, backward, update."""
    trainers = {}
    for name, sets, where in (
        ("cifar10", [], data_dir),
        ("folder", folder_sets(jpeg_dir), cache_dir),
    ):
        profile = load_profile("ema", ["train.device=cpu", *sets])
        train = load_training_images(profile.data, where, profile.train.seed)
        placement = Placement(torch.device("cpu"), None)
        trainers[name] = Trainer(
            profile, cache_dir / name, train.images, placement, lambda e: None, None, train.crops
        )

    def run(trainer: Trainer, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            x = trainer.next_batch(trainer.step)
            if trainer.step == 0:
                trainer.init_codebook(x)
            trainer.train_step(x)
            trainer.step += 1
        return count * 32 / (time.perf_counter() - start)

    for trainer in trainers.values():
        trainer.model.train()
        run(trainer, WARMUP_STEPS)
    figures: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(rounds):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for name in order:
            figures[name].append(run(trainers[name], steps))
    ratios = [f / c for f, c in zip(figures["folder"], figures["cifar10"], strict=True)]
    return {
        "rounds": figures,
        "median": {name: statistics.median(values) for name, values in figures.items()},
        "ratio_per_round": ratios,
        "median_ratio": statistics.median(ratios),
    }


def decode_rates(paths: list[Path], size: tuple[int, int]) -> dict[str, float]:
    """Images/s of one-at-a-time decoding to `size`, one thread: Pillow as vqtool does it, and
    torchvision.io with torch's antialiased bicubic resize."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    def pillow(path: Path) -> object:
        return decode_image(path, size, "stretch")

    def torchvision(path: Path) -> object:
        with open_image(path):  # the size limit, from the header
            pass
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        image = tv_decode(data, mode=ImageReadMode.RGB)
        if tuple(image.shape[1:]) == size:
            return image
        return F.interpolate(image[None].float(), size, mode="bicubic", antialias=True)

    rates: dict[str, float] = {}
    for name, decode in (("pillow", pillow), ("torchvision.io", torchvision)) * 2:
        start = time.perf_counter()
        for path in paths:
            decode(path)
        rates[name] = max(rates.get(name, 0.0), len(paths) / (time.perf_counter() - start))
    return rates


def thread_rates(folder: Path, sets: list[str]) -> dict[str, float]:
    """Images/s of building a fresh cache of `folder`: on one thread, on DECODE_THREADS threads,
    and as vqtool chooses (threads only when the first files decode slowly)."""
    data = load_profile("ema", [*folder_sets(folder), "data.test_fraction=0", *sets]).data
    ways = {
        "1 thread": (1, folders.THREADS_FROM_S),
        f"{DECODE_THREADS} threads": (DECODE_THREADS, 0.0),
        "vqtool's choice": (DECODE_THREADS, folders.THREADS_FROM_S),
    }
    rates: dict[str, float] = {}
    for way, (threads, threshold) in [*ways.items()] * 2:
        folders.DECODE_THREADS, folders.THREADS_FROM_S = threads, threshold
        with tempfile.TemporaryDirectory(prefix="vqtool-bench-threads-") as tmp:
            start = time.perf_counter()
            cache = ensure_cache(data, Path(tmp))
            rate = len(cache.files["train"]) / (time.perf_counter() - start)
            del cache
        rates[way] = max(rates.get(way, 0.0), rate)
    folders.DECODE_THREADS, folders.THREADS_FROM_S = ways["vqtool's choice"]
    return rates


def made_up_photos(folder: Path, count: int) -> list[Path]:
    """`count` 1600x1200 JPEGs of gradients and noise (quality 90)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1200, 0:1600]
    paths = []
    for i in range(count):
        base = np.stack([(xx / 6 + 40 * i) % 256, (yy / 5) % 256, ((xx + yy) / 7) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:03d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jpeg-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=10, help="turns of each route")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    result: dict[str, Any] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    print(f"cpu, {torch.get_num_threads()} torch threads; torch {torch.__version__}")

    with tempfile.TemporaryDirectory(prefix="vqtool-bench-folder-") as tmp:
        cache_dir = Path(tmp)
        data = load_profile("ema", folder_sets(args.jpeg_dir)).data
        start = time.perf_counter()
        cache = ensure_cache(data, cache_dir)
        seconds = time.perf_counter() - start
        count = sum(len(files) for files in cache.files.values())
        result["first_decode"] = {"images": count, "s": seconds, "threads": DECODE_THREADS}
        print(
            f"first decode: {count:,} images in {seconds:.1f} s ({count / seconds:,.0f} "
            f"images/s, on up to {DECODE_THREADS} threads, both splits, cache written)"
        )
        del cache

        start = time.perf_counter()
        load_training_images(data, cache_dir, 0)
        load_images(data, cache_dir, "test")
        folder_s = time.perf_counter() - start
        start = time.perf_counter()
        load_cifar10(args.data_dir, "train")
        load_cifar10(args.data_dir, "test")
        cifar_s = time.perf_counter() - start
        result["data_startup_s"] = {"folder_cache_reused": folder_s, "cifar10": cifar_s}
        print(
            f"data start-up of a second run: folder with its cache {folder_s:.2f} s "
            f"(CIFAR-10 batches: {cifar_s:.2f} s)"
        )

        print(
            f"training images/s, ema, batch 32, CPU: CIFAR-10 and folder routes in turns of "
            f"{args.steps} steps, {args.rounds} turns each:"
        )
        paired = paired_images_per_s(
            args.data_dir, cache_dir, args.jpeg_dir, args.steps, args.rounds
        )
        result["train_images_per_s"] = paired
        for r, (c, f) in enumerate(zip(*paired["rounds"].values(), strict=True)):
            print(f"  turn {r + 1}: cifar10 {c:,.0f}, folder {f:,.0f} (ratio {f / c:.3f})")
        medians = paired["median"]
        print(
            f"  median: cifar10 {medians['cifar10']:,.0f}, folder {medians['folder']:,.0f} "
            f"img/s; median ratio folder / cifar10 = {paired['median_ratio']:.3f}"
        )

    print("decoding one image at a time, one thread, images/s (best of 2):")
    cifar = [args.jpeg_dir / entry.rel for entry in scan_folder(args.jpeg_dir).files[:2000]]
    with tempfile.TemporaryDirectory(prefix="vqtool-bench-photos-") as tmp:
        photos = made_up_photos(Path(tmp), 40)
        result["decode_images_per_s_one_thread"] = rates = {
            "cifar10 jpeg 32x32": decode_rates(cifar, (32, 32)),
            "photo 1600x1200 to 72x72": decode_rates(photos, (72, 72)),
        }
        for what, figures in rates.items():
            shown = ", ".join(f"{name} {rate:,.0f}" for name, rate in figures.items())
            print(f"  {what}: {shown}")
        print("building a cache, images/s (best of 2):")
        result["cache_build_images_per_s"] = builds = {
            "photos 1600x1200, 64x64 random-crop": thread_rates(
                Path(tmp), ["data.image_size=[64,64]", "data.resize=random-crop"]
            ),
            "cifar10 train/airplane, 32x32": thread_rates(args.jpeg_dir / "train" / "airplane", []),
        }
    for what, figures in builds.items():
        shown = ", ".join(f"{way} {rate:,.0f}" for way, rate in figures.items())
        print(f"  {what}: {shown}")

    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
