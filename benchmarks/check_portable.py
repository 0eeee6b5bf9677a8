"""Prior-coded files decode on any machine: the check behind README's "what a compressed file
guarantees", through the command line as a user runs it.

    python benchmarks/check_portable.py --data-dir data --run R --prior R/prior-coding
        [--images 2000] [--work-dir /dev/shm/portable]

For each stage count s of the run (1 for a single quantizer):
- here (default settings): `vqtool encode R cifar10:test:N --stages s` raw, decoded to PNGs, and
  the same images encoded `--prior P`;
- on every emulated machine (a process started with ATEN_CPU_CAPABILITY=default or avx2,
  ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=SSE4_2, or one thread): the prior-coded file
  decoded there must give the raw file's PNGs byte for byte, and the images encoded there with
  the prior must give this process's file byte for byte (the reverse direction, which decodes
  here to the same PNGs);
- the bits: the exact coding model's against the float prior's on the same codes.
Prints one line per stage count and machine, then the verdict; exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

from vqtool.codes import entropy
from vqtool.codes.vqc import read_codes
from vqtool.models.exact_prior import OTHER_MACHINES
from vqtool.prior.load import load_coding_prior


def vqtool(env: dict[str, str], *args: str | Path) -> None:
    """`vqtool ARGS` in a process started with `env` set before torch is imported."""
    done = subprocess.run(
        [sys.executable, "-m", "vqtool", *map(str, args)],
        env=os.environ | env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"vqtool {' '.join(map(str, args))} failed: {done.stderr.strip()}")


def same_pngs(a: Path, b: Path) -> bool:
    """Both folders hold the same files (CIFAR-10's in a folder per class), byte for byte."""

    def files(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    names = files(a)
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return bool(names) and names == files(b) and not (mismatch or errors)


def check(args: argparse.Namespace) -> bool:
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    stages = read_stages(args)
    images = f"cifar10:test:{args.images}"
    common = ["--data-dir", args.data_dir]
    prior = load_coding_prior(args.prior)
    assert prior.exact is not None
    ok = True
    for s in range(1, stages + 1):
        raw, coded = work / f"raw-{s}.vqc", work / f"prior-{s}.vqc"
        picked = ["--stages", str(s)] if stages > 1 else []
        vqtool({}, "encode", args.run, images, "-o", raw, *picked, *common)
        vqtool({}, "decode", args.run, raw, "-o", work / f"raw-{s}")
        vqtool({}, "encode", args.run, images, "-o", coded, *picked, "--prior", args.prior, *common)
        vqtool({}, "decode", args.run, coded, "-o", work / f"here-{s}", "--prior", args.prior)
        here = same_pngs(work / f"raw-{s}", work / f"here-{s}")
        ok = ok and here
        codes = read_codes(raw).codes
        exact = entropy.encode_with_prior(codes, prior.exact).bits.sum()
        float_bits = entropy.encode_with_prior(codes, prior.model).bits.sum()
        print(
            f"{s} stage{'s' if s > 1 else ''}: {exact / len(codes):,.1f} bits per image exact, "
            f"{float_bits / len(codes):,.1f} float ({exact / float_bits:.5f}x); "
            f"decoded here = raw PNGs: {here}"
        )
        for name, env in OTHER_MACHINES.items():
            there = work / f"there-{s}"
            vqtool(env, "decode", args.run, coded, "-o", there, "--prior", args.prior)
            decoded = same_pngs(work / f"raw-{s}", there)
            again = work / f"again-{s}.vqc"
            vqtool(env, "encode", args.run, images, "-o", again, *picked, "--prior", args.prior,
                   *common)  # fmt: skip
            encoded = again.read_bytes() == coded.read_bytes()
            print(
                f"  {name:<18} decoded there = raw PNGs: {decoded}; "
                f"encoded there = this file: {encoded}"
            )
            ok = ok and decoded and encoded
            shutil.rmtree(there)
            again.unlink()
    print("every file decoded identically everywhere" if ok else "MISMATCH")
    return ok


def read_stages(args: argparse.Namespace) -> int:
    """The run's stage count, from a one-image raw file."""
    probe = args.work_dir / "probe.vqc"
    vqtool({}, "encode", args.run, "cifar10:test:1", "-o", probe, "--data-dir", args.data_dir)
    codes = read_codes(probe).codes
    return int(codes.shape[1]) if codes.ndim == 4 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds cifar-10-batches-py/")
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--prior", type=Path, required=True, help="a prior run over its codes")
    parser.add_argument("--images", type=int, default=2_000, help="first N test images")
    parser.add_argument("--work-dir", type=Path, default=Path("/dev/shm/vqtool-portable"))
    args = parser.parse_args()
    sys.exit(0 if check(args) else 1)


if __name__ == "__main__":
    main()
