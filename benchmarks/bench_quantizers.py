"""Training speed in vqtool's loop: `ema` (one stage), `rvq`, `fsq` and `quality`.

    python benchmarks/bench_quantizers.py [--data-dir D] [--device auto|cpu|cuda] [--steps N]
        [--rounds R] [--json FILE]

Each profile trains `--steps` steps at its own batch size (32; `quality` 64) after a warm-up,
in turns (R rounds, each profile once per round, on the CPU each in a fresh process as a
user's `vqtool train` runs); it prints each profile's median images/s and its ratio to
`ema`'s, from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import default_data_dir, vqtool_figure  # noqa: E402  (this folder)
from common import write_json  # noqa: E402

from vqtool.profiles import load_profile, profile_to_dict  # noqa: E402

PROFILES = ("ema", "rvq", "fsq", "quality")


def overrides_of(name: str) -> list[str]:
    """`name`'s [model] keys as --set overrides over bench_train's base profile (ema-kaiming,
    whose only [model] difference from ema is weight norm)."""
    model = profile_to_dict(load_profile(name))["model"]
    sets = []
    for key, value in model.items():
        shown = str(value).lower() if isinstance(value, bool) else value
        if isinstance(value, str):
            shown = f'"{value}"'
        if isinstance(value, (list, tuple)):
            shown = "[" + ",".join(str(v) for v in value) + "]"
        sets.append(f"model.{key}={shown}")
    return sets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {name: [] for name in PROFILES}
    device = ""
    batches = {name: load_profile(name).data.batch_size for name in PROFILES}
    for round_ in range(args.rounds):
        for name in PROFILES:
            once = vqtool_figure(
                args.data_dir, args.device, batches[name], args.steps, overrides_of(name)
            )
            figures[name].append(once["images_per_s"])
            device = once["device"]
            print(f"round {round_ + 1} {name}: {once['images_per_s']:,.0f} images/s", flush=True)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"training on {device}, medians of {args.rounds} rounds:")
    for name, value in medians.items():
        ratio = value / medians["ema"]
        print(f"  {name:7s} batch {batches[name]:3d} {value:8,.0f} images/s  {ratio:.2f}x ema")
    result = {"device": device, "rounds": figures, "medians": medians}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
