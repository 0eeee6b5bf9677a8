"""Exact coding of a grid larger than the prior's own, window by window: CPU time per code.

    python benchmarks/bench_window_coding.py --prior R/prior-coding --grid 20x30 [--stages S]

Codes one grid of random codes (uniform over the prior's codebook: the speed does not depend
on the codes) of H x W per stage with the prior run's exact coding model, on one thread, then
decodes it and checks the codes come back. Prints the process time of each, per code: the
decoder runs each code's window up to the code, the encoder whole windows a row at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vqtool.codes.entropy import decode_with_prior, encode_with_prior
from vqtool.prior.load import load_coding_prior


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", type=Path, required=True, help="a prior run")
    parser.add_argument("--grid", default="20x30", help="H x W codes per stage")
    parser.add_argument("--stages", type=int, default=None, help="default: the prior's")
    args = parser.parse_args(argv)
    prior = load_coding_prior(args.prior)
    if prior.exact is None:
        raise SystemExit(f"{args.prior} has no exact coding model")
    model = prior.exact
    height, width = (int(side) for side in args.grid.lower().split("x"))
    stages = model.stages if args.stages is None else args.stages
    rng = np.random.default_rng(0)
    codes = rng.integers(0, model.per_stage, (1, stages, height, width)).astype(np.uint16)
    torch.set_num_threads(1)
    start = time.process_time()
    encoded = encode_with_prior(codes, model, threads=1)
    encode_s = time.process_time() - start
    start = time.process_time()
    decoded = decode_with_prior(encoded.words, encoded.chunk_words, model, codes.shape, threads=1)
    decode_s = time.process_time() - start
    if not np.array_equal(decoded, codes):
        raise SystemExit("the decoded codes differ from the coded ones")
    n = codes.size
    print(
        f"{height}x{width} codes x {stages} stages with {args.prior} (its grid {model.grid}), "
        f"one thread: encode {encode_s:.2f} s ({1e3 * encode_s / n:.2f} ms a code), decode "
        f"{decode_s:.2f} s ({1e3 * decode_s / n:.2f} ms a code) of process time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
