"""Training speed: images/s (vqtool against the seed's recipe) and time to test NMSE 0.056.

    python benchmarks/bench_train.py [--data-dir D] [--device auto|cpu|cuda] [--steps N]
        [--rounds R] [--batch-sizes 32,256] [--compile] [--no-seed] [--no-ttq] [--json FILE]
        [--variant bf16=train.precision=bf16]...
    python benchmarks/bench_train.py --summarize RUN/metrics.jsonl   # time to quality of a run

What it prints, with the device it ran on:
1. The seed's recipe (benchmarks/seed_baseline.py) and vqtool's `ema-kaiming` at batch 32,
   measured in turns in the same process on the same images (R rounds of N steps each), and
   their ratio. vqtool is measured through `vqtool.vq.train.run_training`, its own loop. On the
   CPU the turns also train the bare network of benchmarks/cpu_ceiling.py in fp32 and bf16,
   and vqtool's figures are given as a share of the better of the two: the CPU's own limit.
   On the CPU, vqtool and the bare network each run in a fresh Python process per figure, as
   a user's `vqtool train` does (in this process, after the seed's turn, vqtool measured about
   10% slower than in a process of its own).
2. vqtool's images/s at each of `--batch-sizes` (ema-kaiming with data.batch_size changed).
3. On CUDA only: time to quality, i.e. seconds of training until the test NMSE, evaluated
   every `train.eval_every` steps of the `fast` profile, is at most 0.056. Evaluation time is
   excluded (and printed); so is nothing else: the first steps' start-up, including
   torch.compile, counts and is printed on its own.

The data folder holds `cifar-10-batches-py` (default $VQTOOL_BENCH_DATA, else ./data).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_json  # noqa: E402  (this folder)

from vqtool.data.cifar10 import load_cifar10  # noqa: E402
from vqtool.device import resolve_device  # noqa: E402
from vqtool.profiles import load_profile  # noqa: E402
from vqtool.vq.train import TrainEvent, run_training  # noqa: E402

TARGET_NMSE = 0.056
WARMUP_STEPS = 25


def default_data_dir() -> Path:
    return Path(os.environ.get("VQTOOL_BENCH_DATA", "data"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class _Reached(Exception):
    """Raised from the callback to end a time-to-quality run once the target is met."""


def vqtool_images_per_s(
    data_dir: Path, device: str, batch_size: int, steps: int, extra: list[str]
) -> dict[str, float]:
    """vqtool's own training loop: images/s over `steps` steps after WARMUP_STEPS steps.

    The first window (start-up, codebook init, torch.compile) is reported as warmup_s.
    """
    overrides = [
        f"data.batch_size={batch_size}",
        f"train.steps={WARMUP_STEPS + steps}",
        f"train.log_every={WARMUP_STEPS}",
        f"train.checkpoint_every={WARMUP_STEPS + steps}",
        "train.eval_every=0",
        f"train.device={device}",
        *extra,
    ]
    profile = load_profile("ema-kaiming", overrides)
    records: list[dict[str, Any]] = []
    start: dict[str, Any] = {}

    def collect(event: TrainEvent) -> None:
        if event.kind == "log":
            records.append(event.record)
        elif event.kind == "start":
            start.update(event.record)

    with tempfile.TemporaryDirectory(prefix="vqtool-bench-") as tmp:
        run_training(profile, Path(tmp) / "run", data_dir, callback=collect)
    first = records[0]
    last = records[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    return {
        "images_per_s": (last["step"] - first["step"]) * batch_size / seconds,
        "warmup_s": first["elapsed_s"],
        "device": start.get("device", ""),  # on the CPU: the threads it chose, and why
        "precision": start.get("precision", ""),
    }


def in_fresh_process(args: list[str]) -> dict[str, Any]:
    """Run this script (or cpu_ceiling.py) with `args` in a new Python process and read the
    JSON line it prints last: a figure measured in a process of its own, as a user's
    `vqtool train` runs, whatever this process has loaded and allocated before."""
    done = subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True, env=os.environ
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def vqtool_figure(
    data_dir: Path, device: str, batch_size: int, steps: int, extra: list[str]
) -> dict[str, Any]:
    """vqtool_images_per_s, on the CPU in a fresh process (see in_fresh_process)."""
    if device != "cpu":
        return vqtool_images_per_s(data_dir, device, batch_size, steps, extra)
    args = [str(Path(__file__)), "--measure-once", "--data-dir", str(data_dir)]
    args += ["--device", device, "--batch-sizes", str(batch_size), "--steps", str(steps)]
    for override in extra:
        args += ["--set", override]
    return in_fresh_process(args)


def bare_figure(bf16: bool, steps: int) -> float:
    """The bare network's images/s (cpu_ceiling.py) in a fresh process."""
    ceiling = str(Path(__file__).resolve().parent / "cpu_ceiling.py")
    args = [ceiling, "--bare", "bf16" if bf16 else "fp32", "--steps", str(steps)]
    return float(in_fresh_process(args)["images_per_s"])


def seed_images_per_s(trainer: Any, steps: int) -> float:
    return float(trainer.images_per_s(steps))


def compare_with_seed(
    data_dir: Path,
    device: torch.device,
    steps: int,
    rounds: int,
    extra: list[str],
    variants: dict[str, list[str]],
) -> dict[str, Any]:
    """Seed and vqtool at batch 32 in turns, R rounds; medians and their ratios.

    `variants` are further vqtool settings measured in the same turns (name -> overrides).
    """
    from seed_baseline import SeedTrainer

    settings = {"vqtool": extra, **{name: [*extra, *sets] for name, sets in variants.items()}}
    figures: dict[str, list[float]] = {"seed": [], **{name: [] for name in settings}}
    # On the CPU, this CPU's own limit in the same turns: the bare network (convolutions and
    # ReLUs, channels_last, fused Adam) in fp32 and bf16.
    bare = {"bare fp32": False, "bare bf16": True} if device.type == "cpu" else {}
    figures.update({name: [] for name in bare})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the seed's hook-based weight_norm is deprecated
        seed = SeedTrainer(load_cifar10(data_dir, "train"), 32, device)
        for r in range(rounds):
            figures["seed"].append(seed_images_per_s(seed, steps))
            for name, bf16 in bare.items():
                figures[name].append(bare_figure(bf16, steps))
            for name, sets in settings.items():
                figure = vqtool_figure(data_dir, device.type, 32, steps, sets)
                figures[name].append(figure["images_per_s"])
                if r == 0:
                    print(f"  {name}: {figure['device']}, {figure['precision']}", flush=True)
            shown = ", ".join(f"{name} {values[-1]:,.0f}" for name, values in figures.items())
            print(f"  round {r + 1} (img/s): {shown}", flush=True)
        del seed
    medians = {name: statistics.median(values) for name, values in figures.items()}
    best_bare = max((medians[name] for name in bare), default=None)
    return {
        "images_per_s": figures,
        "median": medians,
        "ratio_to_seed": {name: medians[name] / medians["seed"] for name in settings},
        "ratio_to_best_bare": (
            {name: medians[name] / best_bare for name in settings} if best_bare else {}
        ),
        "settings": settings,
    }


def summarize_run(metrics: Path) -> dict[str, Any]:
    """Time to quality from a run's metrics.jsonl: the first evaluation at or below
    TARGET_NMSE, and the seconds of training (`elapsed_s`, which leaves out evaluation and
    checkpoints) at that step. Also the start-up window and the steady images/s."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logs = {r["step"]: r for r in records if r["kind"] == "train"}
    evals = [r for r in records if r["kind"] == "eval"]
    steps = sorted(logs)
    first = logs[steps[0]] if steps else {}
    steady = [logs[s]["images_per_s"] for s in steps[1:]]
    hit = next((e for e in evals if e["nmse"] <= TARGET_NMSE), None)
    summary: dict[str, Any] = {
        "target_nmse": TARGET_NMSE,
        "reached": hit is not None,
        "step": hit["step"] if hit else None,
        "train_s": logs[hit["step"]]["elapsed_s"] if hit and hit["step"] in logs else None,
        "first_window_steps": first.get("step"),
        "first_window_s": first.get("elapsed_s"),
        "steady_images_per_s": statistics.median(steady) if steady else None,
        "eval_s_excluded": sum(e["images"] / e["images_per_s"] for e in evals),
        "evals": [(e["step"], round(e["nmse"], 4), round(e["perplexity"], 1)) for e in evals],
        "guard_restores": [r for r in records if r["kind"] == "guard"],
        "last_train_step": steps[-1] if steps else None,
    }
    if hit and hit["step"] not in logs:
        summary["note"] = "eval_every is not a multiple of log_every: no exact training time"
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    for step, nmse, perplexity in summary["evals"]:
        print(f"  step {step}: test nmse {nmse:.4f}, perplexity {perplexity:.0f}")
    for restore in summary["guard_restores"]:
        print(f"  collapse guard at step {restore['step']}: {restore['reason']}")
    if summary["reached"]:
        print(
            f"  test NMSE <= {TARGET_NMSE} at step {summary['step']}: "
            f"{summary['train_s']:.1f} s of training (evaluation excluded: "
            f"{summary['eval_s_excluded']:.1f} s; the first {summary['first_window_steps']} "
            f"steps, start-up and torch.compile included, took {summary['first_window_s']:.1f} s;"
            f" then {summary['steady_images_per_s']:,.0f} img/s)"
        )
    else:
        print(f"  test NMSE <= {TARGET_NMSE} not reached by step {summary['last_train_step']}")


def time_to_quality(
    data_dir: Path, device: str, extra: list[str], profile_name: str = "fast"
) -> dict[str, Any]:
    """Train `profile_name` until the test NMSE is at most TARGET_NMSE (or the profile ends)."""
    overrides = [f"train.device={device}", *extra]
    if load_profile(profile_name, overrides).train.eval_every == 0:
        overrides.insert(0, "train.eval_every=250")
    profile = load_profile(profile_name, overrides)

    def stop_at_target(event: TrainEvent) -> None:
        if event.kind == "eval" and event.record["nmse"] <= TARGET_NMSE:
            raise _Reached

    with tempfile.TemporaryDirectory(prefix="vqtool-ttq-") as tmp:
        run = Path(tmp) / "run"
        with contextlib.suppress(_Reached):
            run_training(profile, run, data_dir, callback=stop_at_target)
        summary = summarize_run(run / "metrics.jsonl")
    summary.update(
        profile=profile_name,
        batch_size=profile.data.batch_size,
        learning_rate=profile.train.learning_rate,
        compile=profile.train.compile,
    )
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200, help="measured steps per figure")
    parser.add_argument("--rounds", type=int, default=2, help="seed/vqtool turns at batch 32")
    parser.add_argument("--batch-sizes", default=None, help="e.g. 32,128 (default by device)")
    parser.add_argument("--compile", action="store_true", help="vqtool with train.compile=true")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed comparison")
    parser.add_argument("--no-ttq", action="store_true", help="skip time to quality")
    parser.add_argument("--ttq-profile", default="fast")
    parser.add_argument("--set", action="append", default=[], help="extra vqtool overrides")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=key=value[,key=value]: also measure vqtool so, in the seed comparison",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--summarize", type=Path, default=None, help="only summarize RUN/metrics.jsonl"
    )
    parser.add_argument("--measure-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_once:  # one figure for a parent bench_train.py, as a JSON line
        size = int((args.batch_sizes or "32").split(",")[0])
        once = vqtool_images_per_s(args.data_dir, args.device, size, args.steps, args.set)
        print(json.dumps(once))
        return once
    if args.summarize is not None:
        summary = summarize_run(args.summarize)
        print(f"time to test NMSE <= {TARGET_NMSE}, {args.summarize}:")
        print_summary(summary)
        write_json(args.json, summary)
        return summary

    device = resolve_device(args.device)
    extra = [*args.set, *(["train.compile=true"] if args.compile else [])]
    result: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "data_dir": str(args.data_dir),
        "steps_per_figure": args.steps,
        "extra": extra,
    }
    print(f"device: {result['device']}; torch {torch.__version__}; data {args.data_dir}")

    if not args.no_seed:
        print(f"seed recipe vs vqtool ema-kaiming, batch 32, {args.steps} steps per figure:")
        variants = dict(v.split("=", 1) for v in args.variant)
        variants_sets = {name: sets.split(",") for name, sets in variants.items()}
        result["seed_vs_vqtool"] = c = compare_with_seed(
            args.data_dir, device, args.steps, args.rounds, extra, variants_sets
        )
        print(f"  median: seed {c['median']['seed']:,.0f} img/s", end="")
        for name, ratio in c["ratio_to_seed"].items():
            print(f"; {name} {c['median'][name]:,.0f} img/s = {ratio:.2f}x", end="")
        print()
        if c["ratio_to_best_bare"]:
            bare = ", ".join(f"{n} {c['median'][n]:,.0f}" for n in ("bare fp32", "bare bf16"))
            shares = ", ".join(f"{n} {r:.0%}" for n, r in c["ratio_to_best_bare"].items())
            print(f"  median bare network: {bare} img/s; vqtool of the best bare: {shares}")

    sizes = args.batch_sizes or ("32,256,1024,4096" if device.type == "cuda" else "32,128")
    result["batch_sizes"] = {}
    print(f"vqtool ema-kaiming images/s by batch size ({args.steps} steps each):")
    for size in (int(s) for s in sizes.split(",")):
        figure = vqtool_figure(args.data_dir, device.type, size, args.steps, extra)
        result["batch_sizes"][size] = figure
        print(
            f"  batch {size}: {figure['images_per_s']:,.0f} img/s "
            f"(first {WARMUP_STEPS} steps, start-up included: {figure['warmup_s']:.1f} s)",
            flush=True,
        )

    if args.no_ttq:
        pass
    elif device.type != "cuda":
        print("time to quality: skipped (needs CUDA; on the CPU it would take hours)")
        result["time_to_quality"] = "skipped: no CUDA"
    else:
        print(f"time to test NMSE <= {TARGET_NMSE}, profile {args.ttq_profile}:")
        ttq = time_to_quality(args.data_dir, device.type, args.set, args.ttq_profile)
        result["time_to_quality"] = ttq
        print_summary(ttq)

    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
