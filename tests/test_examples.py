"""examples/: the scripts run as written (with tiny settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, source_env


def test_seed_experiments_script_trains_evaluates_plots_and_compares(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seed"
    env = source_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    tiny = ["--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "data.batch_size=8"]
    tiny += ["--set", "train.checkpoint_every=2", "--set", "train.log_every=2"]
    script = REPO / "examples" / "seed-experiments.sh"
    done = subprocess.run(
        ["bash", str(script), str(data_dir), str(out), *tiny],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for profile in ("original", "ema", "ema-kaiming"):
        assert (out / profile / "eval-test.json").is_file()
        assert (out / profile / "reconstructions.png").is_file()
    assert (out / "compare.png").is_file() and (out / "compare.json").is_file()
    table = done.stdout.splitlines()[-4:]
    assert table[0].split()[-2:] == ["2", "4"]  # an evaluation every 2 steps
    assert [row.split()[0] for row in table[1:]] == ["original", "ema", "ema-kaiming"]
    assert all(len(row.split()) == 3 and "nan" not in row for row in table[1:])
