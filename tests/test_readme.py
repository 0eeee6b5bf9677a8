"""The README's tour runs as written: every ```sh block of "A tour in five minutes", in order,
in an empty folder where `vqtool download` already found the data (a tiny CIFAR-10 made here:
the official archive cannot be fetched in tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, make_cifar_folder, source_env

TOUR = "## A tour in five minutes"


def tour_blocks(readme: str) -> list[str]:
    section = readme.split(TOUR, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def test_the_tour_has_blocks() -> None:
    blocks = tour_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 3
    assert all(
        line.startswith(("vqtool ", "mkdir ", "  --")) for b in blocks for line in b.splitlines()
    )


# The whole tour (training, a prior, sampling, coding) is the suite's longest test: it gets
# more than the default per-test limit, which a loaded machine can reach.
@pytest.mark.timeout(900)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path / "data", per_batch=60, n_test=300)
    env = source_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    blocks = tour_blocks((REPO / "README.md").read_text())
    for command in ["vqtool download", *blocks]:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    expected = [
        "runs/demo/checkpoint.pt", "grid.png", "figures/demo/reconstructions.png", "photos.vqc",
        "roundtrip.png", "runs/photos/checkpoint.pt", "runs/demo/prior/checkpoint.pt",
        "samples.png", "test.vqc",
    ]  # fmt: skip
    for made in expected:
        assert (tmp_path / made).is_file(), made
    assert len(list((tmp_path / "test-decoded").glob("*/test-00255.png"))) == 1  # by class
    assert len(list((tmp_path / "photos-decoded").rglob("*.png"))) == 64
    assert len(list((tmp_path / "large").glob("sample-*.png"))) == 4
