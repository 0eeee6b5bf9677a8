"""A reader that goes away never costs work: commands whose stdout or stderr is a closed pipe
(`vqtool train ... 2>&1 | head`) finish their work and write whole files; a run stopped
before its first checkpoint is said to start fresh on --resume and is marked by compare."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import source_env, write_slow_profile
from PIL import Image
from typer.testing import CliRunner

from vqtool.checkpoint import PRIOR_FORMAT, load_checkpoint
from vqtool.cli import app, progress
from vqtool.codes.vqc import read_codes

runner = CliRunner()
TIMEOUT = 300

# A very small prior, quick on a CPU.
PRIOR_PROFILE = """\
extends = "prior-small"
name = "tiny-prior"

[prior]
layers = 1
width = 32
heads = 2

[train]
steps = 8
batch_size = 16
warmup_steps = 2
log_every = 2
checkpoint_every = 4
"""


def closed(stream: str, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Run `vqtool ARGS` with `stream` ("stdout" or "stderr") a pipe whose reader has gone
    before the first write (every write fails with EPIPE); the other stream is captured."""
    read, write = os.pipe()
    os.close(read)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: write}
    try:
        return subprocess.run(
            [sys.executable, "-m", "vqtool", *map(str, args)],
            env=source_env(),
            timeout=TIMEOUT,
            **pipes,  # type: ignore[call-overload]
        )
    finally:
        os.close(write)


def shown(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout or b"").decode() + (result.stderr or b"").decode()


STREAMS = ["stdout", "stderr"]


def test_train_through_head_ends_with_its_last_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    # "What a newcomer tripped on, second round", item 2: `vqtool train ... 2>&1 | head` died
    # at the first line it wrote after head had gone, with no checkpoint.
    profile = write_slow_profile(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vqtool", "train", "--profile", str(profile), "--data-dir",
         str(data_dir), "--run-dir", str(tmp_path / "run")],
        env=source_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    assert len(proc.stdout.read(1)) == 1  # `| head -c 1`
    proc.stdout.close()
    assert proc.wait(timeout=TIMEOUT) == 0
    assert load_checkpoint(tmp_path / "run")["step"] == 200
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps[-1] == 200


@pytest.mark.parametrize("stream", STREAMS)
def test_train_with_a_closed_stream_trains_to_the_end(
    stream: str, data_dir: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = closed(stream, "train", "--profile", tiny_profile, "--data-dir", data_dir,
                    "--run-dir", run)  # fmt: skip
    assert result.returncode == 0, shown(result)
    assert load_checkpoint(run)["step"] == 30
    if stream == "stdout":  # the other stream still tells the story
        assert "done: step 30" in shown(result)
    else:
        assert shown(result).strip() == str(run)


@pytest.mark.parametrize("stream", STREAMS)
def test_prior_with_a_closed_stream_trains_to_the_end(
    stream: str, trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "tiny-prior.toml").write_text(PRIOR_PROFILE)
    prior = tmp_path / "prior"
    result = closed(stream, "prior", trained_run, "--profile", tmp_path / "tiny-prior.toml",
                    "--run-dir", prior, "--data-dir", trained_data_dir)  # fmt: skip
    assert result.returncode == 0, shown(result)
    assert load_checkpoint(prior, fmt=PRIOR_FORMAT)["step"] == 8
    assert read_codes(prior / "codes-test.vqc").codes.shape[0] == 40


@pytest.mark.parametrize("stream", STREAMS)
def test_encode_and_decode_with_a_closed_stream_write_whole_files(
    stream: str, trained_run: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (20 + i, 24), (40 * i, 90, 200)).save(photos / f"{i}.png")
    (photos / "notes.txt").write_text("a note goes to stderr")
    result = closed(stream, "encode", trained_run, photos, "-o", tmp_path / "c.vqc",
                    "--size", "32x32")  # fmt: skip
    assert result.returncode == 0, shown(result)
    codes = read_codes(tmp_path / "c.vqc")
    assert codes.names == ("0", "1", "2") and codes.codes.shape == (3, 8, 8)
    result = closed(stream, "decode", trained_run, tmp_path / "c.vqc", "-o", tmp_path / "out",
                    "--grid", tmp_path / "grid.png")  # fmt: skip
    assert result.returncode == 0, shown(result)
    for name in ("0", "1", "2"):
        with Image.open(tmp_path / "out" / f"{name}.png") as image:
            image.load()
            assert image.size == (32, 32)
    with Image.open(tmp_path / "grid.png") as grid:
        grid.load()


def test_json_to_a_closed_stdout_is_dropped_and_the_eval_file_kept(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    result = closed("stdout", "evaluate", run, "--data-dir", trained_data_dir, "--json", "-")
    assert result.returncode == 0, shown(result)
    assert json.loads((run / "eval-test.json").read_text())["images"] == 40


def test_a_failed_write_stops_that_stream_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class Gone:
        encoding = "utf-8"
        writes = 0

        def write(self, text: str) -> int:
            Gone.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self) -> bool:
            return False

    class Kept(Gone):
        lines: list[str] = []

        def write(self, text: str) -> int:
            Kept.lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Gone())
    monkeypatch.setattr(sys, "stdout", Kept())
    for i in range(3):
        progress.info(f"line {i}")
    progress.emit_json({"a": 1}, "-")
    assert Gone.writes == 1  # the first write failed; nothing more was tried
    assert Kept.lines == ['{\n  "a": 1\n}\n']


def write_unsaved_run(run: Path, steps: int) -> None:
    """A run stopped before its first checkpoint: its profile and metrics, no checkpoint."""
    run.mkdir()
    result = runner.invoke(app, ["profiles", str(run.parent / "tiny.toml")])
    assert result.exit_code == 0, result.output
    (run / "profile.toml").write_text(result.stdout)
    records = [{"kind": "train", "step": s, "nmse": 0.9, "elapsed_s": 0.1 * s}
               for s in range(10, steps + 1, 10)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_resume_without_a_checkpoint_says_it_starts_fresh(data_dir: Path, tmp_path: Path) -> None:
    write_slow_profile(tmp_path)
    run = tmp_path / "run"
    write_unsaved_run(run, 150)
    args = ["train", "--resume", "--run-dir", str(run), "--data-dir", str(data_dir),
            "--set", "train.steps=20"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    note = f"no checkpoint in {run}: starting a new run from step 0, replacing the metrics it"
    assert note + " logged" in result.stderr
    assert load_checkpoint(run)["step"] == 20
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == [10, 20]
    result = runner.invoke(app, args)  # now it holds one: resumed, no such note
    assert "no checkpoint" not in result.output and "already at step 20" in result.stderr


def test_compare_marks_a_run_without_a_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    write_slow_profile(tmp_path)
    saved = Path(shutil.copytree(trained_run, tmp_path / "saved"))
    write_unsaved_run(tmp_path / "lost", 150)
    result = runner.invoke(app, ["compare", str(saved), str(tmp_path / "lost"), "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["steps"], r["checkpoint"]) for r in rows] == [(30, True), (150, False)]
    result = runner.invoke(app, ["compare", str(saved), str(tmp_path / "lost")])
    assert result.exit_code == 0, result.output
    assert "150 (no checkpoint)" in result.stdout and "30 (no checkpoint)" not in result.stdout
