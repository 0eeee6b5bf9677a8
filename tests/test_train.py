"""Training: files, resume bit-identical after SIGKILL, signals, locks, resume rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    last_error_line,
    source_env,
    vqtool_limited,
    wait_for,
    write_slow_profile,
    write_tiny_profile,
)

from vqtool.checkpoint import load_checkpoint
from vqtool.errors import UsageError, WorkError
from vqtool.profiles import load_profile
from vqtool.runs import RunDir
from vqtool.schedule import epoch_order
from vqtool.vq.train import (
    pixel_variance,
    resolve_run,
    run_training,
)


def vqtool_process(*args: str) -> subprocess.Popen[bytes]:
    env = source_env()
    return subprocess.Popen(
        [sys.executable, "-m", "vqtool", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_train_writes_run_files(tiny_profile: Path, data_dir: Path, tmp_path: Path) -> None:
    profile = load_profile(tiny_profile)
    events: list[str] = []
    result = run_training(
        profile, tmp_path / "run", data_dir, callback=lambda e: events.append(e.kind)
    )
    run = tmp_path / "run"
    assert result.step == 30
    assert events[0] == "start" and events[-1] == "end" and events.count("log") == 3
    assert load_profile(run / "profile.toml") == profile
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    keys = {
        "kind",
        "step",
        "nmse",
        "vq_loss",
        "perplexity",
        "lr",
        "images_per_s",
        "elapsed_s",
        "world_size",
    }
    assert keys <= set(records[0])
    assert records[-1]["nmse"] < records[0]["nmse"]
    payload = load_checkpoint(run)
    assert payload["step"] == 30 and payload["format"] == "vqtool-checkpoint"
    assert payload["data"] == {"epoch": 3, "position": 0}  # 200 images / batch 20 = 10 per epoch
    assert 0.0 < payload["train_variance"] < 0.25


def test_eval_every_logs_test_metrics(data_dir: Path, tmp_path: Path) -> None:
    profile = load_profile(write_tiny_profile(tmp_path / "p.toml", "eval_every = 15\n"))
    run_training(profile, tmp_path / "run", data_dir)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [15, 30]
    assert all(r["split"] == "test" and r["psnr"] > 0 for r in evals)


def test_pixel_variance_is_exact() -> None:
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    expected = (images.double() / 255).var(unbiased=False)
    assert abs(pixel_variance(images) - float(expected)) < 1e-12


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    assert torch.equal(epoch_order(100, 3, 7, True), epoch_order(100, 3, 7, True))
    assert not torch.equal(epoch_order(100, 3, 7, True), epoch_order(100, 4, 7, True))
    assert torch.equal(epoch_order(10, 2, 7, False), torch.arange(10))


def test_training_is_repeatable(tiny_profile: Path, data_dir: Path, tmp_path: Path) -> None:
    profile = load_profile(tiny_profile)
    run_training(profile, tmp_path / "a", data_dir)
    run_training(profile, tmp_path / "b", data_dir)
    assert (
        load_checkpoint(tmp_path / "a")["fingerprint"]
        == load_checkpoint(tmp_path / "b")["fingerprint"]
    )


@pytest.mark.parametrize("factor", [4, 8])
def test_resume_extends_a_finished_run(
    factor: int, tiny_profile: Path, data_dir: Path, tmp_path: Path
) -> None:
    """20 steps, then --resume --set train.steps=30, equals 30 steps straight (at the default
    model.downsample and at 8)."""
    straight = load_profile(tiny_profile, [f"model.downsample={factor}"])
    run_training(straight, tmp_path / "straight", data_dir)
    short = load_profile(tiny_profile, ["train.steps=20", f"model.downsample={factor}"])
    run_training(short, tmp_path / "split", data_dir)
    longer, run = resolve_run(None, ["train.steps=30"], tmp_path / "split", resume=True)
    run_training(longer, run, data_dir, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["fingerprint"] == b["fingerprint"]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_sigkill_then_resume_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    profile = write_slow_profile(tmp_path)
    common = ["--profile", str(profile), "--data-dir", str(data_dir)]
    straight = vqtool_process("train", *common, "--run-dir", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()

    killed = vqtool_process("train", *common, "--run-dir", str(tmp_path / "killed"))
    wait_for(tmp_path / "killed" / "checkpoint.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert load_checkpoint(tmp_path / "killed")["step"] < 200

    resumed = vqtool_process("train", *common, "--run-dir", str(tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "killed")
    assert b["step"] == 200
    assert a["fingerprint"] == b["fingerprint"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(10, 201, 10))  # each logged step once


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_checkpoint_and_exits(
    sig: signal.Signals, code: int, data_dir: Path, tmp_path: Path
) -> None:
    profile = write_slow_profile(tmp_path)
    run = tmp_path / "run"
    proc = vqtool_process(
        "train", "--profile", str(profile), "--data-dir", str(data_dir), "--run-dir", str(run)
    )
    wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    payload = load_checkpoint(run)  # valid: format and fingerprint verified
    assert 0 < payload["step"] < 200
    assert "checkpoint is saved" in proc.stderr.read().decode()
    assert not list(run.glob(".*.tmp"))


def test_refuses_a_run_folder_with_a_checkpoint(trained_run: Path) -> None:
    with pytest.raises(UsageError, match="--resume"):
        resolve_run("smoke", [], trained_run, resume=False)


def test_resume_refuses_model_change(trained_run: Path) -> None:
    with pytest.raises(UsageError, match="model.num_embeddings"):
        resolve_run(None, ["model.num_embeddings=64"], trained_run, resume=True)


def test_resume_without_checkpoint_starts_fresh(tiny_profile: Path, tmp_path: Path) -> None:
    profile, run = resolve_run(str(tiny_profile), [], tmp_path / "new", resume=True)
    assert run == tmp_path / "new" and profile.name == "tiny"


def test_default_run_dir_is_named_after_profile() -> None:
    _, run = resolve_run("smoke", [], None, resume=False)
    assert run.parent == Path("runs") and run.name.startswith("smoke-")


def test_second_trainer_on_same_folder_is_refused(tmp_path: Path) -> None:
    with (
        RunDir.at(tmp_path / "run").lock(),
        pytest.raises(UsageError, match="another vqtool train"),
        RunDir.at(tmp_path / "run").lock(),
    ):
        pass
    with RunDir.at(tmp_path / "run").lock():  # released again
        pass


def test_truncate_metrics_drops_later_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10}\n{"step": 20}\n{"step": 30}\n{"step": 4')
    RunDir.at(tmp_path).truncate_metrics(20)
    assert path.read_text() == '{"step": 10}\n{"step": 20}\n'


def test_failed_checkpoint_write_keeps_the_previous_one(
    tiny_profile: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full at the second checkpoint: a clear error, and checkpoint 1 is intact."""
    real_save = torch.save
    calls = {"n": 0}

    def save_once(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        real_save(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save_once)
    with pytest.raises(WorkError, match="No space left") as info:
        run_training(load_profile(tiny_profile), tmp_path / "run", data_dir)
    assert "previous checkpoint is intact" in info.value.line()
    assert load_checkpoint(tmp_path / "run")["step"] == 10
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_second_train_on_a_busy_run_folder_refuses(data_dir: Path, tmp_path: Path) -> None:
    profile = write_slow_profile(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--profile", str(profile), "--data-dir", str(data_dir), "--run-dir", str(run)]
    # Long enough that the first is still training when the second has imported torch, even
    # on a loaded machine.
    first = vqtool_process(*args, "--set", "train.steps=2000")
    wait_for(run / "metrics.jsonl", first)
    second = vqtool_process(*args, "--resume")
    assert second.wait(timeout=120) == 2
    assert b"another vqtool train is using this run folder" in second.stderr.read()  # type: ignore[union-attr]
    assert first.wait(timeout=300) == 0  # the first is unharmed
    assert load_checkpoint(run)["step"] == 2000


def test_resume_past_the_steps_trains_nothing_and_keeps_the_profile(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "profile.toml").read_text(), (run / "checkpoint.pt").read_bytes()
    notes: list[str] = []
    fewer, folder = resolve_run(None, ["train.steps=10"], run, resume=True)
    result = run_training(
        fewer, folder, trained_data_dir, resume=True,
        callback=lambda e: notes.append(e.message) if e.kind == "note" else None,
    )  # fmt: skip
    assert result.step == 30 and any("nothing to train" in n for n in notes)
    assert ((run / "profile.toml").read_text(), (run / "checkpoint.pt").read_bytes()) == before


def test_the_library_refuses_to_replace_a_run_unless_resume(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    # Issue 11, item 1: run_training on a folder holding a checkpoint used to replace it and
    # rewrite metrics.jsonl without a word; the CLI refused, the library must too.
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    profile = load_profile(run / "profile.toml", ["train.steps=40"])
    with pytest.raises(UsageError, match="already holds a checkpoint") as info:
        run_training(profile, run, trained_data_dir)
    assert "--resume" in info.value.line()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # resume=True continues it.
    assert run_training(profile, run, trained_data_dir, resume=True).step == 40


def test_a_checkpoint_the_disk_cannot_take_ends_training_with_one_line(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    """The disk fills at the next checkpoint: one line naming the cause, exit 1, the previous
    checkpoint as it was, no temp file left."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "checkpoint.pt").read_bytes()
    result = vqtool_limited(
        len(before) // 2, "train", "--run-dir", run, "--resume",
        "--set", "train.steps=40", "--data-dir", trained_data_dir,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = last_error_line(result.stderr)
    assert line.startswith("error: could not write the checkpoint: File too large"), line
    assert f"({run / 'checkpoint.pt'})" in line and "previous checkpoint is intact" in line
    assert (run / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_run_folder_removed_under_training_ends_it_with_one_line(
    data_dir: Path, tmp_path: Path
) -> None:
    profile = write_slow_profile(tmp_path)
    run = tmp_path / "run"
    proc = vqtool_process(
        "train", "--profile", str(profile), "--data-dir", str(data_dir), "--run-dir", str(run),
        "--set", "train.steps=2000",
    )  # fmt: skip
    wait_for(run / "checkpoint.pt", proc)
    shutil.rmtree(run)
    assert proc.wait(timeout=120) == 1
    line = last_error_line(proc.stderr.read().decode())  # type: ignore[union-attr]
    assert "its folder is gone" in line, line
    assert not run.exists()  # not made again without its other files


def test_a_metrics_line_the_disk_cannot_take_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = RunDir.at(tmp_path)
    files.append_metric({"step": 10})

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vqtool.runs.write_all", half_then_full)
    with pytest.raises(WorkError, match="could not write the metrics: No space left"):
        files.append_metric({"step": 20})
    assert files.metrics.read_text() == '{"step": 10}\n'
