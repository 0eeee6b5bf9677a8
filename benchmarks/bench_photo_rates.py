"""Photos at their own size: a prior-coded vqtool file against a JPEG of the same PSNR.

For each photo and stage count: `vqtool encode R PHOTO --prior P --stages N` (the whole file's
bytes), `vqtool decode` (PSNR against the photo), and Pillow's JPEG (4:2:0, optimized) swept
over qualities 1 to 95: the JPEG bytes at vqtool's PSNR, interpolated in log(bytes) between
the two qualities around it (below JPEG's lowest PSNR: its smallest file and that file's
PSNR). Prints one Markdown row per photo and stage count.

    python benchmarks/bench_photo_rates.py --run R --prior R/prior-coding \
        --photo a.png --photo b.png --stages 1 --stages 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vqtool.codes.ratedistortion import bpp_at, codec_curve, psnr_per_image

QUALITIES = [1, 2, 3, *range(5, 96, 5)]


def vqtool(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "vqtool", *map(str, args)], check=True)


def measure(
    run: Path, prior: Path, photo: Path, stages: int, work: Path
) -> tuple[int, float, float]:
    """(file bytes, PSNR, seconds to encode and decode) of one photo at `stages` stages."""
    code_file = work / f"{photo.stem}-{stages}.vqc"
    out = work / f"{photo.stem}-{stages}"
    start = time.perf_counter()
    vqtool("encode", run, photo, "-o", code_file, "--prior", prior, "--stages", stages)
    vqtool("decode", run, code_file, "-o", out, "--prior", prior)
    seconds = time.perf_counter() - start
    with Image.open(photo) as original, Image.open(out / f"{photo.stem}.png") as decoded:
        a, b = np.asarray(original.convert("RGB")), np.asarray(decoded.convert("RGB"))
    return code_file.stat().st_size, float(psnr_per_image(a[None], b[None])[0]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--prior", type=Path, required=True)
    parser.add_argument("--photo", type=Path, action="append", required=True)
    parser.add_argument("--stages", type=int, action="append", required=True)
    args = parser.parse_args()
    columns = ["photo", "size (WxH)", "stages", "vqtool file (bytes)", "PSNR"]
    columns += ["JPEG at that PSNR (bytes)", "vqtool / JPEG", "encode + decode (s)"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for photo in args.photo:
            with Image.open(photo) as image:
                pixels = np.asarray(image.convert("RGB"))
            h, w = pixels.shape[:2]
            jpeg = codec_curve("jpeg", pixels[None], QUALITIES)
            for stages in args.stages:
                size, psnr, seconds = measure(args.run, args.prior, photo, stages, work)
                bpp = bpp_at(jpeg, psnr, "bpp_file")
                jpeg_bytes = None if bpp is None else bpp * h * w / 8
                ratio = "n/a" if jpeg_bytes is None else f"{size / jpeg_bytes:.2f}"
                shown = "n/a" if jpeg_bytes is None else f"{jpeg_bytes:,.0f}"
                if jpeg_bytes is None:  # JPEG cannot go down to vqtool's PSNR
                    low = min(jpeg, key=lambda point: point["psnr"])
                    smallest = low["bpp_file"] * h * w / 8
                    shown = f"none that low: smallest {smallest:,.0f} at {low['psnr']:.2f} dB"
                cells = [photo.name, f"{w}x{h}", stages, f"{size:,}", f"{psnr:.2f} dB", shown]
                cells += [ratio, f"{seconds:.0f}"]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
