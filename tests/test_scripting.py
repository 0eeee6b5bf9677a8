"""Scripting with code files: `-` as standard output (encode -o -) and input (decode, inspect),
--json summaries of encode and decode, decode --first and --names, plain progress lines when
stderr is not a terminal (vqtool.cli.streams and the encode, decode, inspect commands)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cifar_names, one_error_line, source_env
from typer.testing import CliRunner

from vqtool.cli import app, progress, streams
from vqtool.errors import UsageError

runner = CliRunner()


def invoke(*args: str | Path, input: bytes | None = None):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def eight(trained_run: Path, trained_data_dir: Path, tmp_path: Path) -> Path:
    """A code file of the first 8 test images, written to a file as usual."""
    result = invoke("encode", trained_run, "cifar10:test:8", "-o", tmp_path / "x.vqc",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    return tmp_path / "x.vqc"


def pngs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_encode_to_stdout_writes_the_files_bytes_and_nothing_else(
    trained_run: Path, trained_data_dir: Path, eight: Path
) -> None:
    result = invoke("encode", trained_run, "cifar10:test:8", "-o", "-",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == eight.read_bytes()  # byte for byte what -o FILE writes
    with np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False) as npz:
        assert npz["codes"].shape == (8, 8, 8)
    assert "wrote the code file to standard output: 8 images" in result.stderr
    assert not Path("-").exists()


def test_decode_and_inspect_read_standard_input(
    trained_run: Path, trained_data_dir: Path, eight: Path, tmp_path: Path
) -> None:
    result = invoke("decode", trained_run, "-", "-o", "out", input=eight.read_bytes())
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path / "out") == sorted(
        f"{n}.png" for n in cifar_names(trained_data_dir, "test", 8)
    )
    facts = invoke("inspect", "-", "--json", "-", input=eight.read_bytes())
    assert facts.exit_code == 0, facts.output
    assert json.loads(facts.stdout)["images"] == 8
    table = invoke("inspect", "-", input=eight.read_bytes())
    assert "code file standard input" in table.stdout
    empty = invoke("decode", trained_run, "-", "-o", "none", input=b"")
    assert empty.exit_code == 1
    assert "it is empty (standard input)" in one_error_line(empty.output)
    assert not (tmp_path / "none").exists()


def test_a_terminal_is_refused_as_a_code_file_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(UsageError, match="no code file on standard input"):
        streams.code_source(Path("-"))
    monkeypatch.setattr(sys, "stdout", Terminal())
    with pytest.raises(UsageError, match="would go to a terminal"):
        streams.check_code_output(Path("-"), None)


def test_encode_json_says_what_inspect_says(
    trained_run: Path, trained_data_dir: Path, eight: Path, tmp_path: Path
) -> None:
    result = invoke("encode", trained_run, "cifar10:test:8", "-o", "y.vqc", "--compress",
                    "--json", "-", "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)  # stdout holds the JSON alone
    size = (tmp_path / "y.vqc").stat().st_size
    assert facts["file"] == "y.vqc" and facts["images"] == 8 and facts["stages"] == 1
    assert facts["coding"] == "unigram" and facts["file_bytes"] == size
    assert facts["bits_per_image"] == pytest.approx(size * 8 / 8)
    inspected = json.loads(invoke("inspect", "y.vqc", "--json", "-").stdout)
    assert facts == inspected
    # Beside -o -, the summary goes to a file.
    piped = invoke("encode", trained_run, "cifar10:test:8", "-o", "-", "--json", "facts.json",
                   "--data-dir", trained_data_dir)  # fmt: skip
    assert piped.exit_code == 0, piped.output
    assert piped.stdout_bytes == eight.read_bytes()
    assert json.loads((tmp_path / "facts.json").read_text())["file"] == "-"


def test_stdout_is_taken_once(trained_run: Path, trained_data_dir: Path, tmp_path: Path) -> None:
    result = invoke("encode", trained_run, "cifar10:test:8", "-o", "-", "--json", "-",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 2 and result.stdout_bytes == b""
    assert "-o - and --json - would both write to standard output" in one_error_line(result.output)


def test_decode_json_counts_what_was_written(
    trained_run: Path, eight: Path, tmp_path: Path
) -> None:
    result = invoke("decode", trained_run, eight, "-o", "out", "--first", 3, "--json", "-")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["images"] == 3 and facts["file_images"] == 8 and facts["stages"] == 1
    assert facts["output"] == "out" and facts["code_file"]["images"] == 8
    assert facts["code_file"]["bits_per_image"] == eight.stat().st_size * 8 / 8
    assert "wrote 3 PNGs (of 8) to out" in result.stderr


def test_decode_first_and_names_pick_images(
    trained_run: Path, trained_data_dir: Path, eight: Path, tmp_path: Path
) -> None:
    names = cifar_names(trained_data_dir, "test", 8)
    first = invoke("decode", trained_run, eight, "-o", "first", "--first", 3)
    assert first.exit_code == 0, first.output
    assert pngs(tmp_path / "first") == sorted(f"{n}.png" for n in names[:3])
    label = names[0].split("/")[0]
    picked = invoke("decode", trained_run, eight, "-o", "class", "--names", f"{label}/*")
    assert picked.exit_code == 0, picked.output
    assert pngs(tmp_path / "class") == sorted(f"{n}.png" for n in names if n.startswith(label))
    both = invoke("decode", trained_run, eight, "-o", "both", "--names", "*-0000[2-7]",
                  "--first", 2, "--grid", "grid.png")  # fmt: skip
    assert both.exit_code == 0, both.output
    assert pngs(tmp_path / "both") == sorted(f"{n}.png" for n in names[2:4])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--first", "0"], "Invalid value for '--first'"),
        (["--first", "9"], "--first 9, but the file holds 8 images"),
        (["--names", "zebra/*"], "no image name matches 'zebra/*'"),
        (["--names", "*-00000", "--first", "2"], "--first 2, but '*-00000' matches 1 image"),
    ],
)
def test_bad_picks_exit_2_with_one_line_and_write_nothing(
    trained_run: Path, eight: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = invoke("decode", trained_run, eight, "-o", "out", *args)
    assert result.exit_code == 2
    assert message in one_error_line(result.output)
    assert not (tmp_path / "out").exists()


def test_plain_progress_lines_when_stderr_is_not_a_terminal(
    trained_run: Path, trained_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line at every update
    result = invoke("encode", trained_run, "cifar10:test", "-o", "-", "--batch-size", 16,
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("encoding: 16/40 (40%), ") and lines[0].endswith(" s")
    assert any(line.startswith("encoding: 40/40 (100%)") for line in lines)
    assert b"encoding" not in result.stdout_bytes  # the code file alone
    decoded = invoke("decode", trained_run, "-", "-o", "out", "--batch-size", 16,
                     input=result.stdout_bytes)  # fmt: skip
    assert "decoding: 40/40 (100%)" in decoded.stderr


def test_a_shell_pipeline_of_encode_and_decode(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    vqtool = f"{sys.executable} -m vqtool"
    pipeline = (
        f"{vqtool} encode {trained_run} cifar10:test:8 -o - --data-dir {trained_data_dir} "
        f"| {vqtool} decode {trained_run} - -o out"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        cwd=tmp_path, env=source_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(pngs(tmp_path / "out")) == 8
    assert "wrote 8 PNGs to out" in done.stderr
    # A reader that goes away before the file is written: one line, exit 1.
    closed = subprocess.run(
        ["bash", "-c", f"{vqtool} encode {trained_run} cifar10:test -o - "
                       f"--data-dir {trained_data_dir} | true; exit ${{PIPESTATUS[0]}}"],
        cwd=tmp_path, env=source_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert closed.returncode == 1, closed.stderr
    assert "could not write the code file to standard output: Broken pipe" in one_error_line(
        closed.stderr
    )
