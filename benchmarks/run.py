"""All benchmarks (`nox -s bench`): training speed, the CPU's ceiling for it and training
beside a busy process (on the CPU), the codec benchmark when present, then the prior's
sampling with and without its KV cache.

    python benchmarks/run.py [--data-dir D] [--codec-run R] [--codec-images N]
                             [bench_train.py options...]

Each benchmark runs as its own process, one after the other (never two heavy runs at once). The
data folder defaults to $VQTOOL_BENCH_DATA, else ./data (vqtool's own default). The codec benchmark
times a run folder: `--codec-run R`, else a one-step `ema-kaiming` run made here (its speed depends
on the model's sizes, not on how well it is trained).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _data_dir(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data-dir="):
            return arg.split("=", 1)[1]
    return os.environ.get("VQTOOL_BENCH_DATA", "data")


def _pop_option(argv: list[str], name: str) -> str | None:
    """Remove `name VALUE` from argv (in place) and return VALUE."""
    if name in argv:
        i = argv.index(name)
        value = argv[i + 1]
        del argv[i : i + 2]
        return value
    return None


def _codec(data_dir: str, run: str | None, images: str | None, env: dict[str, str]) -> int:
    codec = HERE / "bench_codec.py"
    if not codec.is_file():
        print("== codec: benchmarks/bench_codec.py not present, skipped")
        return 0
    print("== codec (benchmarks/bench_codec.py)", flush=True)
    with tempfile.TemporaryDirectory(prefix="vqtool-bench-") as tmp:
        if run is None:
            run = str(Path(tmp) / "run")
            made = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "vqtool",
                    "train",
                    "--profile",
                    "ema-kaiming",
                    "--set",
                    "train.steps=1",
                    "--device",
                    "cpu",
                    "--run-dir",
                    run,
                    "--data-dir",
                    data_dir,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if made:
                print("   could not make a run folder for the codec benchmark")
                return made
        extra = ["--images", images] if images else []
        return subprocess.call(
            [sys.executable, str(codec), "--data-dir", data_dir, "--run", run, *extra], env=env
        )


def main(argv: list[str]) -> int:
    argv = list(argv)
    codec_run = _pop_option(argv, "--codec-run")
    codec_images = _pop_option(argv, "--codec-images")
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    print("== training speed (benchmarks/bench_train.py)", flush=True)
    with tempfile.TemporaryDirectory(prefix="vqtool-bench-") as tmp:
        figures = Path(tmp) / "train.json"
        train = [sys.executable, str(HERE / "bench_train.py"), *argv]
        given = [a for a in argv if a == "--json" or a.startswith("--json=")]
        if given:  # the caller's file is the one to read back
            i = argv.index(given[0])
            figures = Path(argv[i + 1] if given[0] == "--json" else given[0].split("=", 1)[1])
        else:
            train += ["--json", str(figures)]
        status = subprocess.call(train, env=env)
        status |= _ceiling(figures, env)
        status |= _load(figures, _data_dir(argv), env)
    status |= _codec(_data_dir(argv), codec_run, codec_images, env)
    print("== prior sampling, KV cache against recomputing (benchmarks/bench_prior.py)", flush=True)
    status |= subprocess.call([sys.executable, str(HERE / "bench_prior.py")], env=env)
    return status


def _ceiling(figures: Path, env: dict[str, str]) -> int:
    """On the CPU: what any implementation of the network could reach here (cpu_ceiling.py)."""
    if not figures.is_file():
        return 0
    result = json.loads(figures.read_text())
    if not str(result.get("device", "")).startswith("cpu"):
        return 0
    print("== CPU ceiling (benchmarks/cpu_ceiling.py)", flush=True)
    seed = result.get("seed_vs_vqtool", {}).get("median", {}).get("seed")
    extra = ["--seed-images-per-s", str(seed)] if seed else []
    return subprocess.call([sys.executable, str(HERE / "cpu_ceiling.py"), *extra], env=env)


def _load(figures: Path, data_dir: str, env: dict[str, str]) -> int:
    """On the CPU: training speed idle and beside a busy loop (bench_load.py)."""
    if not figures.is_file() or not json.loads(figures.read_text())["device"].startswith("cpu"):
        return 0
    print("== training beside a busy process (benchmarks/bench_load.py)", flush=True)
    return subprocess.call(
        [sys.executable, str(HERE / "bench_load.py"), "--data-dir", data_dir], env=env
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
