"""Compressed code files: encode and decode speed against the raw route, and their sizes.

    python benchmarks/bench_entropy.py --data-dir data --run runs/demo [--prior P] [--images N]
        [--rounds 3] [--work-dir /dev/shm]

For the first N CIFAR-10 test images (default 10,000), in this process and on the CPU:
- encode: `encode_inputs` (the VQ encoder) then `write_codes` raw, unigram-coded and
  prior-coded (a prior run with --prior, else a prior of the default `PriorConfig` sizes with
  random weights: speed does not depend on the weights, only sizes on them);
- decode: `decode_file` of each file into a fresh folder of PNGs (range decoding included);
  writing and decoding run in rounds, the three routes one after the other, the best of each;
- the range coding alone (entropy.encode_* / decode_*), and each file's bytes per image.
Decoding writes 10,000 PNGs: on a disk whose writes stall now and then, `--work-dir` on a RAM
folder measures vqtool rather than the disk. The goal for decode: at least a third of the raw
route's images/s. Prior coding runs whole chunks of images on threads of their own (torch on
one thread each, for exactness), as many as torch's thread count; the VQ model and the PNG
writers use the machine. The machine's load average is printed: on a shared machine the
figures move with it.
`run(...)` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from common import add_codec_arguments, machine_facts, write_json  # this folder

from vqtool.checkpoint import fingerprint
from vqtool.codes import entropy
from vqtool.codes.pipeline import decode_file, encode_inputs
from vqtool.codes.tokens import codes_to_tokens
from vqtool.codes.vqc import write_codes
from vqtool.models.config import PriorConfig
from vqtool.models.exact_prior import ExactPrior
from vqtool.models.transformer import CodePrior
from vqtool.prior.coding_model import derive_coding_model
from vqtool.prior.load import load_coding_prior
from vqtool.vq.load import load_model

TARGET = 0.5  # prior-coded encode and decode, each, against the raw route's decode images/s
T = TypeVar("T")


class RandomPrior(NamedTuple):
    model: CodePrior
    fingerprint: str
    vq_fingerprint: str
    exact: ExactPrior
    exact_fingerprint: str


def timed(work: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def _warm_up(loaded: Any, data_dir: Path) -> None:
    """One small untimed round trip: imports, allocator and thread pools ready."""
    with tempfile.TemporaryDirectory(prefix="bench-entropy-warm-") as folder:
        path = Path(folder) / "warm.vqc"
        write_codes(path, encode_inputs(loaded, ["cifar10:test:64"], data_dir), compress=True)
        decode_file(loaded, path, Path(folder) / "png")


def run(
    data_dir: Path,
    run_dir: Path,
    images: int = 10_000,
    prior_path: Path | None = None,
    rounds: int = 3,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    loaded = load_model(run_dir, "cpu")
    _warm_up(loaded, data_dir)
    n = images
    spec = "cifar10:test" if n == 10_000 else f"cifar10:test:{n}"
    encode_s, code_file = timed(lambda: encode_inputs(loaded, [spec], data_dir))
    n = len(code_file.names)
    config = loaded.model.config
    grid = (code_file.codes.shape[1], code_file.codes.shape[2])
    if prior_path is not None:
        prior: Any = load_coding_prior(prior_path)
        prior_kind = f"prior run {prior_path}"
    else:
        torch.manual_seed(0)
        model = CodePrior(PriorConfig(), config.num_embeddings, grid).eval()
        prior_fp = fingerprint(model.state_dict())
        tokens = codes_to_tokens(code_file.codes[:512], config.num_embeddings)
        calibration = torch.from_numpy(tokens.reshape(len(tokens), -1))
        coding = derive_coding_model(model, calibration, prior_fp, loaded.fingerprint)
        prior = RandomPrior(model, prior_fp, loaded.fingerprint, coding.model, coding.fingerprint)
        prior_kind = f"random weights, {PriorConfig()}"
    figures: dict[str, Any] = {
        "images": n,
        "grid": list(grid),
        "num_embeddings": config.num_embeddings,
        "prior_model": prior_kind,
        "vq_encode_s": encode_s,
        "rounds": rounds,
        "work_dir": str(work_dir) if work_dir else tempfile.gettempdir(),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-entropy-", dir=work_dir))
    routes = (("raw", False, None), ("unigram", True, None), ("prior", True, prior))
    try:
        # Rounds of all three routes one after the other; each route's best round counts, so a
        # stall of the machine in one round moves no route's figure.
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for label, compress, coding_prior in routes:
                path = work / f"{label}.vqc"
                write_s, _ = timed(lambda: write_codes(path, code_file, compress, coding_prior))  # noqa: B023
                out = work / f"png-{label}"
                decode_s, _ = timed(lambda: decode_file(loaded, path, out, prior=coding_prior))  # noqa: B023
                written = sum(1 for _ in out.rglob("*.png"))
                if written != n:
                    raise SystemExit(f"{label}: decode wrote {written} PNGs, expected {n}")
                shutil.rmtree(out)
                earlier = best.get(label, (write_s, decode_s))
                best[label] = (min(earlier[0], write_s), min(earlier[1], decode_s))
        for label, _, _ in routes:
            path = work / f"{label}.vqc"
            write_s, decode_s = best[label]
            figures[label] = {
                "bytes": path.stat().st_size,
                "bits_per_image": path.stat().st_size * 8 / n,
                "write_s": write_s,
                "encode_images_per_s": n / (encode_s + write_s),
                "decode_s": decode_s,
                "decode_images_per_s": n / decode_s,
            }
        codes = code_file.codes
        frequencies = entropy.code_frequencies(codes, config.num_embeddings)
        seconds, unigram = timed(lambda: entropy.encode_unigram(codes, frequencies))
        figures["unigram"]["range_encode_s"] = seconds
        seconds, decoded = timed(
            lambda: entropy.decode_unigram(unigram.words, frequencies, codes.shape)
        )
        figures["unigram"]["range_decode_s"] = seconds
        assert np.array_equal(decoded, codes)
        seconds, coded = timed(lambda: entropy.encode_with_prior(codes, prior.exact))
        figures["prior"]["range_encode_s"] = seconds
        figures["prior"]["ideal_bits_per_image"] = float(coded.bits.mean())
        figures["prior"]["stream_bits_per_image"] = len(coded.words) * 32 / n
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw_decode = figures["raw"]["decode_images_per_s"]
    for label in ("unigram", "prior"):
        figures[label]["decode_vs_raw"] = figures[label]["decode_images_per_s"] / raw_decode
        figures[label]["encode_vs_raw"] = figures[label]["encode_images_per_s"] / raw_decode
        figures[label]["meets_target"] = (
            min(figures[label]["decode_vs_raw"], figures[label]["encode_vs_raw"]) >= TARGET
        )
    figures.update(machine_facts())
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_codec_arguments(parser)
    parser.add_argument("--prior", type=Path, default=None, help="a prior run (default: random)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per route; the best counts")
    parser.add_argument(
        "--work-dir", type=Path, help="where the files and PNGs go (default: the temp folder)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run(args.data_dir, args.run, args.images, args.prior, args.rounds, args.work_dir)
    n = figures["images"]
    print(
        f"entropy benchmark: {n:,} CIFAR-10 test images, {figures['grid'][0]}x{figures['grid'][1]}"
        f" codes of {figures['num_embeddings']}, {figures['cpus']} CPUs, "
        f"{figures['torch_threads']} torch threads; prior: {figures['prior_model']}; best of "
        f"{figures['rounds']} rounds; files in {figures['work_dir']}"
    )
    print(f"  VQ encoder alone: {n / figures['vq_encode_s']:8,.0f} images/s")
    for label in ("raw", "unigram", "prior"):
        f = figures[label]
        line = (
            f"  {label:8s} {f['bits_per_image']:8.1f} bits/image   encode "
            f"{f['encode_images_per_s']:7,.0f} images/s   decode {f['decode_images_per_s']:7,.0f}"
            " images/s"
        )
        if label != "raw":
            line += (
                f" (encode {f['encode_vs_raw']:.2f}x, decode {f['decode_vs_raw']:.2f}x the raw"
                f" decode; goal {TARGET:.2f}x)"
            )
        print(line)
    for label in ("unigram", "prior"):
        f = figures[label]
        coding = f"range encode {n / f['range_encode_s']:,.0f} images/s"
        if "range_decode_s" in f:
            coding += f", range decode {n / f['range_decode_s']:,.0f} images/s"
        print(f"  {label} coding alone: {coding}")
    prior = figures["prior"]
    overhead = prior["stream_bits_per_image"] / prior["ideal_bits_per_image"] - 1
    print(
        f"  prior stream {prior['stream_bits_per_image']:.1f} bits/image vs its ideal "
        f"{prior['ideal_bits_per_image']:.1f} (+{overhead:.3%})"
    )
    print(f"  1-min load average at the end: {figures['load_average']:.1f}")
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
