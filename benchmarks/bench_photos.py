"""Photos at their own size (`resize = "native-crop"`): the cache against decoding each step.

    python benchmarks/bench_photos.py [--photos N] [--size HxW] [--batches B] [--json FILE]

Makes N JPEGs of HxW (default 24 of 1200x1600: structured, so that they compress like photos)
in a temporary folder, then prints, in one run:
1. The first build of their "native-crop" cache: seconds, photos/s and its size.
2. 64x64 training windows per second, batch 16, one thread: cut from the memory-mapped cache
   (what training does), and decoded from the JPEG each time, then cut (what a loader without
   the cache would do, one decode per window).
Figures move with whatever else the machine runs (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine_facts, write_json  # noqa: E402  (this folder)

from vqtool.data.datasets import load_training_images  # noqa: E402
from vqtool.data.folders import ensure_cache  # noqa: E402
from vqtool.images.read import read_image  # noqa: E402
from vqtool.profiles import load_profile  # noqa: E402

WINDOW = 64
BATCH = 16


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` JPEGs of `size` (H, W): smooth colour fields with edges and a little noise."""
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    paths = []
    for i in range(count):
        waves = [np.sin(xx * rng.uniform(5, 40) + yy * rng.uniform(5, 40)) for _ in range(3)]
        image = np.stack(waves, -1) * 0.35 + 0.5 + rng.normal(0, 0.03, (h, w, 3))
        image[(xx > rng.uniform(0.2, 0.8)) & (yy > rng.uniform(0.2, 0.8))] *= 0.5
        path = folder / f"{i:03d}.jpg"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def windows_per_s(cut: object, batches: int) -> float:
    start = time.perf_counter()
    for step in range(batches):
        cut(step)  # type: ignore[operator]
    return batches * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--size", default="1200x1600", help="HxW of each photo")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = tuple(int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="vqtool-bench-photos-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.photos, (size[0], size[1]))
        data = load_profile(
            "photo", [f"data.path={folder}", "data.test_fraction=0", f"data.batch_size={BATCH}"]
        ).data
        cache = ensure_cache(data, Path(tmp) / "data")
        assert cache.built_s is not None
        stored = sum(array.nbytes for array in cache.arrays.values())
        print(
            f"cache: {len(paths)} photos of {args.size} in {cache.built_s:.2f} s "
            f"({len(paths) / cache.built_s:.1f} photos/s), {stored / 1e6:.1f} MB"
        )
        train = load_training_images(data, Path(tmp) / "data", 0)
        crops = train.crops
        assert crops is not None
        generator = torch.Generator().manual_seed(0)

        def from_cache(step: int) -> torch.Tensor:
            indices = torch.randint(0, len(paths), (BATCH,), generator=generator)
            return crops(train.images, indices, step)

        def from_jpegs(step: int) -> torch.Tensor:
            out = []
            for i in torch.randint(0, len(paths), (BATCH,), generator=generator).tolist():
                image = read_image(paths[i])
                y = int(torch.randint(0, image.shape[1] - WINDOW + 1, (1,), generator=generator))
                x = int(torch.randint(0, image.shape[2] - WINDOW + 1, (1,), generator=generator))
                out.append(image[:, y : y + WINDOW, x : x + WINDOW])
            return torch.stack(out)

        from_cache(0)  # the pages in memory, as after a training run's first epochs
        cached = windows_per_s(from_cache, args.batches)
        decoded = windows_per_s(from_jpegs, max(1, args.batches // 10))
        print(
            f"64x64 windows per second, batch {BATCH}, one thread: from the cache {cached:,.0f}, "
            f"decoding each photo {decoded:,.0f} ({cached / decoded:,.0f}x)"
        )
        facts = machine_facts()
        print(f"load average {facts['load_average']:.2f}, {facts['cpus']} cores")
        write_json(
            args.json,
            {
                "photos": len(paths),
                "size": args.size,
                "cache_s": cache.built_s,
                "cache_bytes": stored,
                "windows_per_s_cache": cached,
                "windows_per_s_decoding": decoded,
                **facts,
            },
        )


if __name__ == "__main__":
    main()
