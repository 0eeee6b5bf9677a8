"""vqtool export: what model.json says, where the files go, and every bad input as one line
with nothing half-written. That the graphs give vqtool's codes and pixels for every kind of run
is tests/test_kinds.py's; that they run without torch is tests/test_examples.py's."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import KindRuns, one_error_line
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.errors import WorkError

runner = CliRunner()
FILES = ["decoder.onnx", "encoder.onnx", "model.json"]


def invoke(*args: str | Path | int) -> Any:  # click's Result
    return runner.invoke(app, [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    """Hidden staging folders left beside the output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".vqtool-"))


def test_help_names_the_extra() -> None:
    result = invoke("export", "--help")
    assert result.exit_code == 0
    assert "vqtool[export]" in result.output and "--stages" in result.output


def test_model_json_describes_the_graphs(kind_runs: KindRuns, tmp_path: Path) -> None:
    result = invoke("export", kind_runs["rvq"], "-o", "out", "--stages", 2)
    assert result.exit_code == 0, result.output
    assert "codes (N, 2, H/4, W/4) of 32" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == FILES
    facts = json.loads((tmp_path / "out" / "model.json").read_text())
    assert facts["format"] == "vqtool-onnx" and facts["version"] == 1 and facts["opset"] == 17
    assert len(facts["checkpoint"]) == 64 and facts["quantizer"] == "vq"
    assert (facts["stages"], facts["run_stages"], facts["embedding_dim"]) == (2, 3, 8)
    assert facts["encoder"]["output"]["shape"] == ["N", 2, "H/f", "W/f"]
    assert facts["decoder"]["input"]["shape"] == ["N", 2, "H/f", "W/f"]
    assert facts["encoder"]["input"]["type"] == "uint8" and "255" in facts["pixels"]["images"]
    assert leftovers(tmp_path) == []


def test_the_fingerprint_is_the_checkpoints(kind_runs: KindRuns, tmp_path: Path) -> None:
    from vqtool.vq.load import load_model

    assert invoke("export", kind_runs["fsq"], "-o", "out").exit_code == 0
    facts = json.loads((tmp_path / "out" / "model.json").read_text())
    assert facts["checkpoint"] == load_model(kind_runs["fsq"]).fingerprint
    assert facts["stages"] == 1 and facts["encoder"]["output"]["shape"] == ["N", "H/f", "W/f"]


def test_an_existing_folder_keeps_its_other_files(kind_runs: KindRuns, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.json").write_text("old")
    assert invoke("export", kind_runs["ema"], "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [*FILES, "notes.txt"]
    assert json.loads((out / "model.json").read_text())["format"] == "vqtool-onnx"
    assert (out / "notes.txt").read_text() == "mine" and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_one_line(kind_runs: KindRuns, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(kind_runs["ema"], run, ignore=shutil.ignore_patterns("prior"))
    data = (run / "checkpoint.pt").read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncated" else data[:64] + b"\0" * 4096
    (run / "checkpoint.pt").write_bytes(damaged)
    result = invoke("export", run, "-o", "out")
    assert result.exit_code == 1
    assert "checkpoint" in one_error_line(result.output)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(("kind", "stages", "fix"), [("rvq", 4, "from 1 to 3"),
                                                     ("ema", 2, "leave --stages out")])  # fmt: skip
def test_stages_above_the_runs_are_refused(
    kind_runs: KindRuns, tmp_path: Path, kind: str, stages: int, fix: str
) -> None:
    result = invoke("export", kind_runs[kind], "-o", "out", "--stages", stages)
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert "--stages" in line and fix in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["out", "out/inner"])
def test_an_output_that_is_a_file_is_refused(
    kind_runs: KindRuns, tmp_path: Path, where: str
) -> None:
    (tmp_path / "out").write_text("a file")
    result = invoke("export", kind_runs["ema"], "-o", where)
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert "not a folder" in line or "a file is in the way" in line
    assert (tmp_path / "out").read_text() == "a file" and leftovers(tmp_path) == []


def test_a_failure_while_exporting_leaves_the_folder_as_it_was(
    kind_runs: KindRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vqtool.vq import export

    def fail(folder: Path, facts: dict[str, Any], out_dir: Path) -> None:
        assert (folder / "encoder.onnx").is_file()  # written, not yet moved
        raise WorkError("the graphs do not run", folder.name, "report it")

    monkeypatch.setattr(export, "_check_graphs", fail)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.json").write_text("old")
    for out in ("new", "old", "deep/er/new"):
        result = invoke("export", kind_runs["ema"], "-o", out)
        assert result.exit_code == 1 and "do not run" in one_error_line(result.output)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "deep").exists()  # nor the folders made for it
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["model.json"]
    assert (tmp_path / "old" / "model.json").read_text() == "old"


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_without_onnx_it_says_how_to_get_it(
    kind_runs: KindRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` then raises ImportError
    result = invoke("export", kind_runs["ema"], "-o", "out")
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert missing in line and "pip install 'vqtool[export]'" in line
    assert not (tmp_path / "out").exists()
