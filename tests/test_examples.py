"""examples/: the scripts run as written (with tiny settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, KindRuns, make_image_folder, source_env
from PIL import Image
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.vqc import read_codes

runner = CliRunner()


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


# Runs a script with torch and vqtool unimportable: any import of them raises ImportError.
WITHOUT_TORCH = """
import importlib.abc, runpy, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "vqtool"):
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("kind", ["ema", "rvq"])
def test_the_onnx_example_codes_and_decodes_without_torch(
    kind_runs: KindRuns, tmp_path: Path, kind: str
) -> None:
    run = kind_runs[kind]
    assert runner.invoke(app, ["export", str(run), "-o", "onnx"]).exit_code == 0
    names = ["other", "wide"]  # in the order vqtool encode reads a folder
    make_image_folder(tmp_path / "photos", [f"{n}.png" for n in names], size=(18, 30))
    photos = [str(tmp_path / "photos" / f"{n}.png") for n in names]
    script = REPO / "examples" / "onnx_roundtrip.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(script), "onnx", *photos],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # vqtool reads the example's code file, and it holds vqtool's own codes of the photos
    ours = runner.invoke(app, ["encode", str(run), "photos", "-o", "vqtool.vqc"])
    assert ours.exit_code == 0, ours.output
    theirs, expected = read_codes(Path("codes.vqc")), read_codes(Path("vqtool.vqc"))
    assert np.array_equal(theirs.codes, expected.codes) and theirs.names == expected.names
    assert theirs.sizes.tolist() == [[18, 30]] * 2 and theirs.image_size == (20, 32)
    # ... which vqtool decodes into the pixels the example decoded
    assert runner.invoke(app, ["decode", str(run), "codes.vqc", "-o", "decoded"]).exit_code == 0
    for name in names:
        mine = np.asarray(Image.open(f"{name}-decoded.png"), np.int16)
        assert mine.shape == (18, 30, 3)
        assert np.abs(mine - np.asarray(Image.open(f"decoded/{name}.png"))).max() <= 1


def test_the_commands_page_shows_the_onnx_example_as_it_is() -> None:
    page = (REPO / "docs" / "commands.md").read_text()
    block = page.split("### export", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.splitlines()) >= 10
    assert block in (REPO / "examples" / "onnx_roundtrip.py").read_text()
