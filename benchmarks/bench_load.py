"""Training speed on a CPU that another process keeps busy: idle and loaded, before and after.

    python benchmarks/bench_load.py [--data-dir D] [--profile ema] [--steps 300] [--rounds 2]
        [--variant NAME=KEY=VALUE[,KEY=VALUE]]... [--json FILE]

Each figure is one `vqtool train` process (the CLI, as a user runs it) on the CPU: images/s
between its first and last log records. "Loaded" runs it while a busy loop
(`python -c "while True: pass"`) keeps one core busy, started a second before the training.
Settings measured, in turns, R rounds each:
- before: train.threads set to every core (what vqtool did before it counted busy cores);
- after: the default (train.threads = 0: the cores no other process keeps busy);
- any --variant, e.g. `--variant passive=env:OMP_WAIT_POLICY=PASSIVE` (env: sets a variable).
Prints the medians and loaded / idle for each. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_json  # noqa: E402  (this folder)

from vqtool.tomlio import loads_toml  # noqa: E402


def default_data_dir() -> Path:
    return Path(os.environ.get("VQTOOL_BENCH_DATA", "data"))


def train_images_per_s(
    data_dir: Path, profile: str, steps: int, sets: list[str], env: dict[str, str]
) -> float:
    with tempfile.TemporaryDirectory(prefix="vqtool-load-") as tmp:
        run = Path(tmp) / "run"
        overrides = [f"train.steps={steps}", "train.log_every=50", "train.device=cpu", *sets]
        command = [sys.executable, "-m", "vqtool", "train", "--profile", profile]
        command += ["--data-dir", str(data_dir), "--run-dir", str(run)]
        for override in overrides:
            command += ["--set", override]
        subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        logs = [r for r in map(json.loads, lines) if r["kind"] == "train"]
        batch = int(loads_toml((run / "profile.toml").read_text())["data"]["batch_size"])
        images = (logs[-1]["step"] - logs[0]["step"]) * batch
        return images / (logs[-1]["elapsed_s"] - logs[0]["elapsed_s"])


def measure(data_dir: Path, profile: str, steps: int, setting: list[str], loaded: bool) -> float:
    sets = [s for s in setting if not s.startswith("env:")]
    env = dict(s[4:].split("=", 1) for s in setting if s.startswith("env:"))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        if busy is not None:
            time.sleep(1.0)
        return train_images_per_s(data_dir, profile, steps, sets, env)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--profile", default="ema")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="NAME=SET[,SET]")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings: dict[str, list[str]] = {"before": [f"train.threads={cores}"], "after": []}
    for variant in args.variant:
        name, sets = variant.split("=", 1)
        settings[name] = sets.split(",")
    figures: dict[str, dict[str, list[float]]] = {
        name: {"idle": [], "loaded": []} for name in settings
    }
    print(f"{args.profile}, {cores} cores, {args.steps} steps per figure, the vqtool CLI:")
    for r in range(args.rounds):
        for name, setting in settings.items():
            for state in ("idle", "loaded"):
                value = measure(args.data_dir, args.profile, args.steps, setting, state == "loaded")
                figures[name][state].append(value)
                print(f"  round {r + 1}, {name}, {state}: {value:,.0f} images/s", flush=True)
    result: dict[str, Any] = {"cores": cores, "profile": args.profile, "figures": figures}
    for name, values in figures.items():
        idle, loaded = statistics.median(values["idle"]), statistics.median(values["loaded"])
        result[name] = {"idle": idle, "loaded": loaded, "loaded_over_idle": loaded / idle}
        print(f"{name}: idle {idle:,.0f}, loaded {loaded:,.0f} images/s ({loaded / idle:.0%})")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
