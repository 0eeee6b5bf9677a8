"""The wheel holds the whole package: every module under vqtool/, every shipped profile and every
file of the ready-trained runs, within the 20 MB those may add.

The other tests import the source tree, so a subpackage left out of pyproject.toml would
otherwise go unnoticed until a user installed the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the sources, so that the build's own folders (build/, *.egg-info) stay out of
    # the checkout
    src = out / "src"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", str(out)],
        check=True,
    )
    (built,) = out.glob("vqtool-*.whl")
    return built


def test_the_wheel_holds_every_module_profile_and_ready_trained_run(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vqtool").rglob("*.py")}
    profiles = {f"vqtool/_profiles/{p.name}" for p in (ROOT / "profiles").glob("*.toml")}
    assert len(modules) > 40 and len(profiles) > 5
    assert modules - names == set()
    assert profiles - names == set()
    shipped = [p for p in (ROOT / "pretrained").rglob("*") if p.is_file()]
    runs = {f"vqtool/_pretrained/{p.relative_to(ROOT / 'pretrained').as_posix()}" for p in shipped}
    assert len(runs) > 10 and runs - names == set()
    assert wheel.stat().st_size < 20 * 2**20 + 2 * 2**20  # the runs' bound, and the code's
