"""Where the exact decoder's time goes, and what the coding model's size does to it.

    python benchmarks/bench_exact_decoder.py --prior R/prior-coding [--images 4096]
        [--sizes 2x64x2x4 1x64x2x4 1x32x1x2]

Three measurements over the prior run's own test codes (codes-test.vqc):
1. One thread, one chunk of grids (entropy.EXACT_CHUNK) decoded position by position
   (ExactSteps, as the decoder runs it): the CPU per grid of each part of a step (each part
   timed where it is called, so a part holds the parts it calls: a layer holds its norm).
2. The whole range decode (`decode_with_prior`, two threads) at chunks of 64 to 1,024 grids.
3. Priors of other sizes (layers x width x heads x mlp_ratio, random weights: the speed does not
   depend on the weights) derived to exact models, encoded and decoded on two threads.
Prints microseconds per grid; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqtool.codes import entropy
from vqtool.codes.tokens import codes_to_tokens
from vqtool.codes.vqc import read_codes
from vqtool.models import exact_prior
from vqtool.models.config import PriorConfig
from vqtool.models.exact_prior import ExactPrior, ExactSteps
from vqtool.models.transformer import CodePrior
from vqtool.prior.load import load_coding_prior

ROWS = entropy.EXACT_CHUNK  # the chunk the decoder runs
PARTS = {  # the methods timed, by the class that holds them
    exact_prior._Arithmetic: (
        "_norm",
        "_qkv",
        "_weights",
        "_mix",
        "_feed_forward",
        "_logits",
        "frequencies",
    ),
    ExactSteps: ("_block",),
}


def parts_per_grid(model: ExactPrior, tokens: torch.Tensor, rounds: int = 3) -> dict[str, float]:
    """Microseconds of one thread per grid in each part of ExactSteps, the best round."""
    spent: dict[str, float] = defaultdict(float)
    originals: list[tuple[type, str, Callable[..., Any]]] = []

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = method(*args, **kwargs)
            spent[name] += time.perf_counter() - start
            return result

        return run

    for owner, names in PARTS.items():
        for name in names:
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, timed(name, getattr(owner, name)))
    best: dict[str, float] = {}
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                spent.clear()
                steps = ExactSteps(model, len(tokens), entropy.PRECISION)
                start = time.perf_counter()
                previous = None
                for t in range(model.length):
                    steps.next(previous)
                    previous = tokens[:, t]
                spent["in all"] = time.perf_counter() - start
                if not best or spent["in all"] < best["in all"]:
                    best = dict(spent)
    finally:
        for owner, name, method in originals:
            setattr(owner, name, method)
    return {name: seconds * 1e6 / len(tokens) for name, seconds in best.items()}


def round_trip(
    codes: np.ndarray, model: ExactPrior, chunk: int | None = None
) -> tuple[float, float]:
    """(encode, decode) microseconds per grid on two threads, the second of two rounds."""
    torch.set_num_threads(2)
    for _ in range(2):
        start = time.perf_counter()
        coded = entropy.encode_with_prior(codes, model, chunk_size=chunk, count_bits=False)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        decoded = entropy.decode_with_prior(
            coded.words, coded.chunk_words, model, codes.shape, chunk_size=chunk
        )
        decode = time.perf_counter() - start
    assert np.array_equal(decoded, codes)
    return encode * 1e6 / len(codes), decode * 1e6 / len(codes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", type=Path, required=True, help="a prior run with test codes")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument(
        "--sizes", nargs="*", default=["2x64x2x4", "1x64x2x4", "2x32x2x4", "1x32x1x2"]
    )
    args = parser.parse_args(argv)
    prior = load_coding_prior(args.prior)
    if prior.exact is None:
        raise SystemExit(f"{args.prior} has no exact coding model")
    model = prior.exact
    codes = np.ascontiguousarray(read_codes(args.prior / "codes-test.vqc").codes[: args.images])
    k = model.per_stage
    tokens = torch.from_numpy(codes_to_tokens(codes[:ROWS], k).reshape(ROWS, -1).astype(np.int64))

    torch.set_num_threads(1)
    print(f"1. one thread, a chunk of {ROWS} grids, us of CPU per grid:")
    for name, micros in parts_per_grid(model, tokens).items():
        print(f"   {name:>16}: {micros:7.0f}")
    print(f"2. encode / decode on two threads, {len(codes):,} grids, us per grid, by chunk:")
    for chunk in (64, 128, 256, 1024):
        encode, decode = round_trip(codes, model, chunk)
        print(f"   {chunk:>5} grids: {encode:5.0f} / {decode:5.0f}")
    print("3. priors of other sizes (random weights), layers x width x heads x mlp_ratio:")
    calibration = torch.from_numpy(
        codes_to_tokens(codes[:512], k).reshape(min(512, len(codes)), -1).astype(np.int64)
    )
    for size in args.sizes:
        layers, width, heads, ratio = (int(part) for part in size.split("x"))
        torch.manual_seed(0)
        config = PriorConfig(layers=layers, width=width, heads=heads, mlp_ratio=ratio)
        own = prior.model
        float_prior = CodePrior(config, own.num_embeddings, own.grid, own.stages).eval()
        encode, decode = round_trip(codes, exact_prior.derive(float_prior, calibration))
        print(f"   {size:>10}: encode {encode:5.0f}, decode {decode:5.0f} us per grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
