"""The graphs of `vqtool export` give vqtool's codes and pixels: the check behind figures.md's
"ONNX export", through the command line as a user runs it.

    python benchmarks/check_onnx.py --data-dir data --run R [--images 10000] [--big]
        [--work-dir /tmp/vqtool-onnx]

For each stage count s of the run (1 for a single quantizer): `vqtool export R --stages s`,
`vqtool encode R cifar10:test:N` and `vqtool decode` (`--stages s`); then onnxruntime (one
thread) encodes the same images in batches of 256 and decodes vqtool's codes. Prints the codes
that differ from vqtool's (with the run's float64 distances of the first few, to tell a tie
from a fault) and the decoded pixel values that differ from vqtool's PNGs. --big also puts one
4000x3000 image (a mosaic of test images, enlarged 4x) through the graphs of all stages, each
graph in a process of its own, and prints their peak memory (with onnxruntime's memory arena
and without) beside vqtool encode's and decode's, and the graphs' peak for a batch of 256 test
images. Exit 1 when more than 0.01% of the codes differ or a pixel differs by more than 1.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from vqtool.codes.vqc import read_codes
from vqtool.data.cifar10 import load_cifar10
from vqtool.models.fsq import FiniteScalarQuantizer, bound
from vqtool.vq.load import load_model

BATCH = 256


# Runs argv[1:] and prints its peak memory in MiB. A process's peak counts the memory of the
# process it was forked from (exec keeps the old peak), so the command is started from this
# small process, never from the benchmark, which holds the images and a model.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss // 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child_run(command: list[str]) -> int:
    """Run `command` in a process of its own; its peak memory in MiB."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)[:200]} failed: {done.stderr.strip()}")
    return int(done.stdout.split()[-1])


def vqtool(*args: str | Path) -> int:
    """`vqtool ARGS` in a process of its own; its peak memory in MiB."""
    return child_run([sys.executable, "-m", "vqtool", *map(str, args)])


# One graph run in a process of its own, for its peak memory: argv = graph, input, output .npy,
# and "arena" or "no-arena" (onnxruntime's memory arena keeps what it freed for reuse).
GRAPH_RUN = """
import sys, numpy as np, onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.enable_cpu_mem_arena = sys.argv[4] == "arena"
session = onnxruntime.InferenceSession(sys.argv[1], options)
name = session.get_inputs()[0].name
np.save(sys.argv[3], session.run(None, {name: np.load(sys.argv[2])})[0])
"""


def graph_run(graph: Path, given: np.ndarray, out: Path) -> tuple[np.ndarray, str]:
    """The graph's output for `given`, from a process of its own, and that process's peak
    memory in MiB, with onnxruntime's memory arena and without."""
    np.save(out.with_suffix(".in.npy"), given)
    peaks = [child_run([sys.executable, "-c", GRAPH_RUN, str(graph),
                        str(out.with_suffix(".in.npy")), str(out), arena])
             for arena in ("no-arena", "arena")]  # fmt: skip
    return np.load(out), f"{peaks[1]:,} MiB ({peaks[0]:,} without its arena)"


def session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options)


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)  # (3, H, W)


def first_differences(differ: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(image, stage, row, column) of each code position that differs, at its first differing
    stage (a different code there makes the later stages' residuals differ too)."""
    staged = differ if differ.ndim == 4 else differ[:, None]
    first = staged.argmax(1)
    return [(int(i), int(first[i, r, c]), int(r), int(c)) for i, r, c in np.argwhere(staged.any(1))]


def margins(
    run: Path, images: np.ndarray, where: list[tuple[int, int, int, int]],
    expected: np.ndarray, ours: np.ndarray,
) -> str:  # fmt: skip
    """How near a tie each of the first differences is, in float64 from the run's own latents:
    vq, the graph's code's distance ||e||^2 - 2 z.e minus vqtool's code's (negative: the
    graph's is the nearer); fsq, how far the nearest channel lies from a rounding boundary."""
    model = load_model(run).model.folded()
    quantizer = model.quantizer
    staged = expected.ndim == 4
    told = []
    for i, s, r, c in where[:4]:
        with torch.no_grad():
            z = model.latents(model.to_input(torch.from_numpy(images[i : i + 1]), "cpu"))
        if isinstance(quantizer, FiniteScalarQuantizer):
            if s > 0:
                continue
            with torch.no_grad():
                bounded = bound(quantizer.project_in(z).double(), quantizer.levels.double())
            frac = (bounded[0, :, r, c] - bounded[0, :, r, c].round()).abs()
            told.append(f"{float((0.5 - frac).min()):.1e} from a boundary")
            continue
        books = [layer.codebook().double() for layer in getattr(quantizer, "layers", [quantizer])]
        row = z[0, :, r, c].detach().double()
        for t in range(s):
            row = row - books[t][int(expected[i, t, r, c])]
        distances = books[s].pow(2).sum(1) - 2 * books[s] @ row
        key = (i, s, r, c) if staged else (i, r, c)
        gap = float(distances[int(ours[key])] - distances[int(expected[key])])
        told.append(f"{gap:+.1e} (|z|^2 {float(row.pow(2).sum()):.2g})")
    return ", ".join(told)


def check_stages(args: argparse.Namespace, stages: int, held: int) -> bool:
    work, run = args.work_dir, args.run
    picked = ["--stages", str(stages)] if held > 1 else []
    graphs, codes_file, pngs = work / f"onnx-{stages}", work / f"codes-{stages}.vqc", work / "pngs"
    shutil.rmtree(pngs, ignore_errors=True)
    vqtool("export", run, "-o", graphs, *picked)
    vqtool("encode", run, f"cifar10:test:{args.images}", "-o", codes_file, *picked,
           "--data-dir", args.data_dir)  # fmt: skip
    vqtool("decode", run, codes_file, "-o", pngs)
    code_file = read_codes(codes_file)
    expected = code_file.codes.astype(np.int64)
    images = load_cifar10(args.data_dir, "test")[: args.images].numpy()
    encoder, decoder = session(graphs / "encoder.onnx"), session(graphs / "decoder.onnx")
    ours = np.concatenate([encoder.run(None, {"images": images[i : i + BATCH]})[0]
                           for i in range(0, len(images), BATCH)])  # fmt: skip
    differ = ours != expected
    pixels, worst = 0, 0
    for start in range(0, len(images), BATCH):
        decoded = decoder.run(None, {"codes": expected[start : start + BATCH]})[0]
        names = code_file.names[start : start + BATCH]
        theirs = np.stack([png(pngs / f"{name}.png") for name in names])
        difference = np.abs(decoded.astype(np.int16) - theirs)
        pixels, worst = pixels + int((difference > 0).sum()), max(worst, int(difference.max()))
    where = first_differences(differ)
    told = ""
    if where:
        by_stage = np.bincount([w[1] for w in where], minlength=stages).tolist()
        positions = f"{len(where)} position{'s' if len(where) > 1 else ''}"
        told = (f" at {positions} (first differing stage: {by_stage}; the first: "
                f"{margins(run, images, where, expected, ours)})")  # fmt: skip
    print(
        f"{stages} stage{'s' if stages > 1 else ''}: {int(differ.sum()):,} of {differ.size:,} "
        f"codes differ{told}; {pixels:,} of {expected.shape[0] * images[0].size:,} decoded pixel "
        f"values differ, by at most {worst}"
    )
    return differ.sum() <= 1e-4 * differ.size and worst <= 1


def big_image(path: Path, data_dir: Path) -> None:
    """A 4000x3000 mosaic of test images, each enlarged 4x (bicubic)."""
    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        pixels = pickle.load(f, encoding="latin1")["data"].reshape(-1, 3, 32, 32)
    tiles = [Image.fromarray(t.transpose(1, 2, 0)).resize((128, 128), Image.BICUBIC)
             for t in pixels[: 32 * 24]]  # fmt: skip
    rows = [np.concatenate([np.asarray(t) for t in tiles[r * 32 : (r + 1) * 32]], 1)
            for r in range(24)]  # fmt: skip
    Image.fromarray(np.concatenate(rows, 0)[:3000, :4000]).save(path)


def check_big(args: argparse.Namespace, held: int) -> bool:
    work, run = args.work_dir, args.run
    image, codes_file, decoded = work / "big.png", work / "big.vqc", work / "big-decoded"
    big_image(image, args.data_dir)
    shutil.rmtree(decoded, ignore_errors=True)
    graphs = work / f"onnx-{held}"
    encode_peak = vqtool("encode", run, image, "-o", codes_file, "--device", "cpu")
    decode_peak = vqtool("decode", run, codes_file, "-o", decoded, "--device", "cpu")
    expected = read_codes(codes_file).codes.astype(np.int64)
    ours, ours_peak = graph_run(graphs / "encoder.onnx", png(image)[None], work / "big-codes.npy")
    pixels, pixels_peak = graph_run(graphs / "decoder.onnx", expected, work / "big-pixels.npy")
    difference = np.abs(pixels[0].astype(np.int16) - png(decoded / "big.png"))
    differ = int((ours != expected).sum())
    batch = load_cifar10(args.data_dir, "test")[:BATCH].numpy()
    codes, batch_encoder = graph_run(graphs / "encoder.onnx", batch, work / "batch-codes.npy")
    _, batch_decoder = graph_run(graphs / "decoder.onnx", codes, work / "batch-pixels.npy")
    print(f"a batch of {BATCH} test images: peak memory: onnxruntime encoder {batch_encoder}, "
          f"decoder {batch_decoder}")  # fmt: skip
    print(
        f"4000x3000: {differ:,} of {expected.size:,} codes differ; "
        f"{int((difference > 0).sum()):,} of {difference.size:,} pixel values, by at most "
        f"{int(difference.max())}; peak memory: onnxruntime encoder {ours_peak}, decoder "
        f"{pixels_peak}; vqtool encode {encode_peak:,} MiB, decode {decode_peak:,} MiB"
    )
    return differ <= 1e-4 * expected.size and int(difference.max()) <= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds cifar-10-batches-py/")
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--images", type=int, default=10_000, help="first N test images")
    parser.add_argument("--big", action="store_true", help="also a 4000x3000 image")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/vqtool-onnx"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    held = load_model(args.run).model.stages
    print(json.dumps({"run": str(args.run), "onnxruntime": onnxruntime.__version__}))
    ok = all([check_stages(args, s, held) for s in range(1, held + 1)])
    if args.big:
        ok = check_big(args, held) and ok
    print("the graphs give vqtool's codes and pixels" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
