"""The exported graphs' speed in onnxruntime (CPU) beside vqtool's own encoder and decoder.

    python benchmarks/bench_onnx.py --data-dir data --run R [--images 10000] [--stages N]
        [--rounds 3] [--json F]

`vqtool export R` into a temporary folder, then for the first N CIFAR-10 test images, in
batches of 256, on the CPU: vqtool's `encode_images` and `decode_indices` (what `vqtool
encode` and `decode` run between reading and writing files), and onnxruntime's encoder.onnx and
decoder.onnx on the same images and codes; the best of `--rounds` rounds of each, images/s.
Both use every core torch would (onnxruntime's intra-op threads set to torch's thread count).
Also prints whether onnxruntime's codes equal vqtool's (the count that differ).
`run(...)` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_codec_arguments, machine_facts, write_json  # noqa: E402

from vqtool.codes.pipeline import decode_indices, encode_images  # noqa: E402
from vqtool.data.cifar10 import load_cifar10  # noqa: E402
from vqtool.vq.export import export_run  # noqa: E402
from vqtool.vq.load import load_model  # noqa: E402

BATCH = 256


def best_rate(work: Callable[[], object], n: int, rounds: int) -> float:
    """Images per second of the fastest of `rounds` calls of `work` over n images."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return n / best


def batches(array: Any) -> list[Any]:
    return [array[i : i + BATCH] for i in range(0, len(array), BATCH)]


def run(data_dir: Path, run_dir: Path, images: int, stages: int | None, rounds: int) -> dict:
    loaded = load_model(run_dir)
    model = loaded.model
    pixels = load_cifar10(data_dir, "test")[:images]  # uint8 (N, 3, 32, 32)
    threads = torch.get_num_threads()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="vqtool-onnx-") as tmp:
        export_run(run_dir, Path(tmp), stages)
        encoder = onnxruntime.InferenceSession(str(Path(tmp) / "encoder.onnx"), options)
        decoder = onnxruntime.InferenceSession(str(Path(tmp) / "decoder.onnx"), options)

    def keep(codes: torch.Tensor) -> torch.Tensor:
        # the first `stages` of a run of stages, as the exported graphs take them
        return codes[:, :stages] if stages is not None and codes.dim() == 4 else codes

    with torch.inference_mode():
        codes = torch.cat([keep(encode_images(model, b)) for b in batches(pixels)])
        vq_encode = best_rate(lambda: [encode_images(model, b) for b in batches(pixels)],
                              images, rounds)  # fmt: skip
        vq_decode = best_rate(lambda: [decode_indices(model, b) for b in batches(codes)],
                              images, rounds)  # fmt: skip
    as_numpy = pixels.numpy()
    ort_codes = np.concatenate([encoder.run(None, {"images": b})[0] for b in batches(as_numpy)])
    ort_encode = best_rate(lambda: [encoder.run(None, {"images": b}) for b in batches(as_numpy)],
                           images, rounds)  # fmt: skip
    code_array = codes.numpy()
    ort_decode = best_rate(lambda: [decoder.run(None, {"codes": b}) for b in batches(code_array)],
                           images, rounds)  # fmt: skip
    return {
        "run": str(run_dir),
        "stages": stages,
        "images": images,
        "vqtool_encode_images_per_s": vq_encode,
        "vqtool_decode_images_per_s": vq_decode,
        "onnxruntime_encode_images_per_s": ort_encode,
        "onnxruntime_decode_images_per_s": ort_decode,
        "codes_that_differ": int((ort_codes != code_array).sum()),
        "codes": int(code_array.size),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        **machine_facts(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_codec_arguments(parser)
    parser.add_argument("--stages", type=int, default=None, help="export the first N stages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    figures = run(args.data_dir, args.run, args.images, args.stages, args.rounds)
    for key, value in figures.items():
        print(f"{key:34} {value:,.1f}" if isinstance(value, float) else f"{key:34} {value}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
