"""Ready-trained runs (vqtool.pretrained): `pretrained:NAME` wherever a run folder is read,
never written to; `vqtool pretrained` lists them; and the runs the package ships.

The mechanics run on a tiny run packed as the shipped ones are (scripts/pack_pretrained.py)
into a folder that stands in for the package's; the shipped runs themselves are checked at the
end: present, small, without training state, and working from a command with no training.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from helpers import KindRuns, make_sized_folder, one_error_line
from typer.testing import CliRunner

import vqtool.pretrained
from vqtool.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SHIPPED = ("cifar10-ema", "cifar10-rvq")
# The bound on what the ready-trained runs add to the wheel.
MAX_BYTES = 20 * 2**20


def invoke(*args: str | Path | int) -> Any:  # click's Result
    return runner.invoke(app, [str(a) for a in args])


def pack_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pack", ROOT / "scripts" / "pack_pretrained.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.fixture
def shipped(kind_runs: KindRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package folder holding `tiny-rvq` (the tiny rvq run and its prior, packed)."""
    folder = tmp_path / "package"
    pack_script().pack(kind_runs["rvq"], folder / "tiny-rvq", "A tiny run.", "30 steps")
    monkeypatch.setattr(vqtool.pretrained, "pretrained_dir", lambda: folder)
    return folder


def test_the_list_and_one_run_described(shipped: Path) -> None:
    listed = invoke("pretrained")
    assert listed.exit_code == 0, listed.output
    assert "pretrained:tiny-rvq" in listed.output and "pretrained:tiny-rvq/prior" in listed.output
    described = invoke("pretrained", "tiny-rvq", "--json", "-")
    assert described.exit_code == 0, described.output
    facts = json.loads(described.stdout)
    evaluated = json.loads((shipped / "tiny-rvq" / "eval-test.json").read_text())
    assert facts["psnr"] == [row["psnr"] for row in evaluated["by_stages"]]
    assert facts["description"] == "A tiny run." and facts["trained"] == "30 steps"
    path = invoke("pretrained", "pretrained:tiny-rvq", "--path")
    assert path.exit_code == 0 and Path(path.stdout.strip()) == shipped / "tiny-rvq"


@pytest.mark.parametrize(
    "args",
    [
        ["pretrained", "nope"],
        ["roundtrip", "pretrained:nope", "pics", "-o", "r.png"],
        ["evaluate", "pretrained:nope"],
        ["export", "pretrained:nope", "-o", "out"],
        ["encode", "pretrained:tiny-rvq", "pics", "-o", "c.vqc", "--prior", "pretrained:nope/p"],
        [
            "encode",
            "pretrained:tiny-rvq",
            "pics",
            "-o",
            "c.vqc",
            "--prior",
            "pretrained:tiny-rvq/x",
        ],
    ],
)
def test_an_unknown_name_is_one_line_that_lists_the_known(shipped: Path, args: list[str]) -> None:
    make_sized_folder(Path("pics"), {"a.png": (32, 32)})
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert "pretrained:" in line and ("pretrained:tiny-rvq" in line or "no x" in line), line
    assert not Path("c.vqc").exists() and not Path("out").exists() and not Path("r.png").exists()


def test_every_command_reads_it_and_writes_nothing_into_it(
    shipped: Path, kind_runs: KindRuns
) -> None:
    before = snapshot(shipped)
    make_sized_folder(Path("pics"), {"a.png": (32, 32), "b.png": (24, 40)})
    run, prior = "pretrained:tiny-rvq", "pretrained:tiny-rvq/prior"
    data = ["--data-dir", kind_runs.data]
    commands = [
        ["roundtrip", run, "pics", "-o", "r.png", "--stages", 2],
        ["encode", run, "pics", "-o", "c.vqc", "--prior", prior],
        ["decode", run, "c.vqc", "-o", "decoded"],  # finds the prior that coded it inside
        ["encode", run, "pics", "-o", "raw.vqc"],
        ["decode", run, "raw.vqc", "-o", "raw"],
        ["evaluate", run, *data, "--json", "m.json"],
        ["evaluate", run, *data, "--rate-distortion", "--rd-images", 8, "--json", "rd.json"],
        ["evaluate", prior],
        ["plot", run, *data],
        ["export", run, "-o", "onnx", "--stages", 2],
        ["sample", prior, "-n", 2, "-o", "s.vqc"],
        ["decode", run, "s.vqc", "-o", "samples"],
    ]
    for args in commands:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert snapshot(shipped) == before
    assert snapshot(Path("decoded")) == snapshot(Path("raw"))
    assert json.loads(Path("m.json").read_text())["images"] > 0
    assert {p.name for p in Path("tiny-rvq-plots").iterdir()} >= {"loss.png", "codebook.png"}
    assert {p.name for p in Path("onnx").iterdir()} == {
        "encoder.onnx",
        "decoder.onnx",
        "model.json",
    }


def test_a_prior_of_it_is_trained_elsewhere(shipped: Path, kind_runs: KindRuns) -> None:
    before = snapshot(shipped)
    args = [
        "prior",
        "pretrained:tiny-rvq",
        "--profile",
        "prior-small",
        "--data-dir",
        kind_runs.data,
    ]
    tiny = ["--set", "prior.layers=1", "--set", "prior.width=16", "--set", "train.steps=2"]
    result = invoke(*args, *tiny, "--set", "train.eval_every=0", "--set", "train.log_every=1")
    assert result.exit_code == 0, result.output
    (made,) = Path("runs").iterdir()
    assert made.name.startswith("tiny-rvq-prior-") and (made / "checkpoint.pt").is_file()
    assert snapshot(shipped) == before


@pytest.mark.parametrize("command", ["train", "prior"])
def test_training_into_it_is_refused(shipped: Path, kind_runs: KindRuns, command: str) -> None:
    before = snapshot(shipped)
    if command == "train":
        args = ["train", "--run-dir", "pretrained:tiny-rvq", "--resume"]
    else:
        args = [
            "prior",
            "pretrained:tiny-rvq",
            "--run-dir",
            "pretrained:tiny-rvq/prior",
            "--resume",
        ]
    result = invoke(*args, "--data-dir", kind_runs.data)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert "cannot be trained" in line and "cp -r" in line, line
    assert snapshot(shipped) == before


def test_a_copy_keeps_its_weights_but_cannot_be_resumed(shipped: Path, kind_runs: KindRuns) -> None:
    copy = Path(shutil.copytree(shipped / "tiny-rvq", "copy"))
    args = ["train", "--run-dir", copy, "--resume", "--set", "train.steps=40"]
    result = invoke(*args, "--data-dir", kind_runs.data)
    assert result.exit_code == 2, result.output
    assert "weights alone" in one_error_line(result.output)
    kept = {name: data for name, data in snapshot(copy).items() if name != ".lock"}
    assert kept == snapshot(shipped / "tiny-rvq")
    # the same weights: packing keeps the fingerprint, and the codes are the run's own
    make_sized_folder(Path("pics"), {"a.png": (32, 32)})
    encoded = [invoke("encode", run, "pics", "-o", f"{i}.vqc")
               for i, run in enumerate([copy, kind_runs["rvq"]])]  # fmt: skip
    assert all(r.exit_code == 0 for r in encoded)
    assert Path("0.vqc").read_bytes() == Path("1.vqc").read_bytes()


# The runs the package ships.


def test_the_shipped_runs_are_there_small_and_without_training_state() -> None:
    folder = vqtool.pretrained.pretrained_dir()
    assert set(SHIPPED) <= set(vqtool.pretrained.names())
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= MAX_BYTES
    for checkpoint in folder.rglob("checkpoint.pt"):
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert "optimizer" not in payload and "rng" not in payload, checkpoint


def test_the_readme_states_the_shipped_runs_figures() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in SHIPPED:
        evaluated = json.loads(
            (vqtool.pretrained.pretrained_dir() / name / "eval-test.json").read_text()
        )
        for row in evaluated.get("by_stages") or [evaluated]:
            assert f"{row['psnr']:.2f}" in readme, (name, row["psnr"])


def test_a_shipped_run_works_with_no_training() -> None:
    make_sized_folder(Path("pics"), {"a.png": (32, 32), "b.png": (40, 56)})
    result = invoke("roundtrip", "pretrained:cifar10-rvq", "pics", "-o", "r.png")
    assert result.exit_code == 0, result.output
    assert Path("r.png").stat().st_size > 0
