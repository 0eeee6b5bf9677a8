"""Runs of residual stages and of FSQ: training, resume, torchrun and evaluation per stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import (
    closed_port,
    make_cifar_folder,
    one_error_line,
    train_as_rank,
    write_tiny_profile,
)
from typer.testing import CliRunner

from vqtool.checkpoint import load_checkpoint, model_state
from vqtool.cli import app
from vqtool.profiles import load_profile
from vqtool.vq.load import load_model
from vqtool.vq.train import resolve_run, run_training

runner = CliRunner()

# Three stages of 32 codes, restarts after 3 idle steps: every random draw of a step in play.
STAGES = "\n[model]\nstages = 3\ndead_code_steps = 3\n"


def stages_profile(folder: Path, extra: str = "") -> Path:
    write_tiny_profile(folder / "tiny.toml")
    path = folder / "stages.toml"
    path.write_text('extends = "tiny.toml"\n' + STAGES + extra)
    return path


@pytest.fixture(scope="module")
def stages_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, data folder) of 30 steps of the tiny model with 3 stages."""
    root = tmp_path_factory.mktemp("stages")
    data = make_cifar_folder(root / "data")
    run_training(load_profile(stages_profile(root)), root / "run", data)
    return root / "run", data


def evaluate_json(*args: str) -> dict:
    result = runner.invoke(app, ["evaluate", *args, "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_run_of_stages_trains_with_stage_dropout(stages_run: tuple[Path, Path]) -> None:
    run, _ = stages_run
    loaded = load_model(run)
    assert loaded.model.stages == 3 and loaded.profile.model.stage_dropout
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    assert all(r["perplexity"] > 1 for r in records)
    assert records[-1]["nmse"] < records[0]["nmse"]


def test_evaluate_reports_every_stage_count(stages_run: tuple[Path, Path]) -> None:
    run, data = stages_run
    metrics = evaluate_json(str(run), "--data-dir", str(data))
    rows = metrics["by_stages"]
    assert [r["stages"] for r in rows] == [1, 2, 3] and metrics["stages"] == 3
    assert [r["bits_per_image"] for r in rows] == [320.0, 640.0, 960.0]  # 8x8 codes of 5 bits
    for key in ("nmse", "psnr", "mse", "bits_per_image", "entropy_bits_per_image"):
        assert metrics[key] == rows[-1][key], key
    assert rows[0]["entropy_bits_per_image"] < rows[2]["entropy_bits_per_image"]
    assert rows[2]["nmse"] < rows[0]["nmse"]  # more stages, a closer reconstruction
    # Top-level codebook figures are the first stage's.
    assert metrics["perplexity"] == rows[0]["perplexity"]
    saved = json.loads((run / "eval-test.json").read_text())
    assert saved["by_stages"] == rows

    one = evaluate_json(str(run), "--data-dir", str(data), "--stages", "2")
    assert one["stages"] == 2 and "by_stages" not in one
    assert one["nmse"] == pytest.approx(rows[1]["nmse"], rel=1e-9)
    assert one["bits_per_image"] == 640.0
    # One count has a file of its own; the every-count file is kept.
    assert json.loads((run / "eval-test-stages2.json").read_text()) == one
    assert json.loads((run / "eval-test.json").read_text())["by_stages"] == rows

    table = runner.invoke(app, ["evaluate", str(run), "--data-dir", str(data)])
    assert table.exit_code == 0 and "decoding the first n stages" in table.output


@pytest.mark.parametrize("stages", ["0", "4", "-1"])
def test_evaluate_refuses_a_stage_count_the_run_lacks(
    stages_run: tuple[Path, Path], stages: str
) -> None:
    run, data = stages_run
    result = runner.invoke(app, ["evaluate", str(run), "--data-dir", str(data), "--stages", stages])
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert f"--stages {stages}: this run has 3 stages" in line and "give 1 to 3" in line


def test_evaluate_stages_of_a_one_stage_run(trained_run: Path, trained_data_dir: Path) -> None:
    plain = evaluate_json(str(trained_run), "--data-dir", str(trained_data_dir))
    assert "stages" not in plain and "by_stages" not in plain  # as before stages existed
    one = evaluate_json(str(trained_run), "--data-dir", str(trained_data_dir), "--stages", "1")
    assert one["nmse"] == plain["nmse"]
    result = runner.invoke(
        app, ["evaluate", str(trained_run), "--data-dir", str(trained_data_dir), "--stages", "2"]
    )
    assert result.exit_code == 2
    assert "this run has 1 stage" in one_error_line(result.output)


def test_resume_of_a_run_of_stages_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    """20 steps, then --resume to 30, equals 30 straight: the stage draws, restarts and EMA
    of every stage continue where they stopped."""
    profile = stages_profile(tmp_path)
    run_training(load_profile(profile), tmp_path / "straight", data_dir)
    run_training(load_profile(profile, ["train.steps=20"]), tmp_path / "split", data_dir)
    longer, run = resolve_run(None, ["train.steps=30"], tmp_path / "split", resume=True)
    run_training(longer, run, data_dir, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["fingerprint"] == b["fingerprint"]
    assert any(k.startswith("quantizer.layers.2.") for k in a["model"])


def test_an_fsq_run_trains_and_uses_its_grid(data_dir: Path, tmp_path: Path) -> None:
    profile = load_profile(
        write_tiny_profile(tmp_path / "tiny.toml"), ["model.quantizer=fsq", "model.levels=[4,4]"]
    )
    run_training(profile, tmp_path / "run", data_dir)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
               if x]  # fmt: skip
    assert all(r["vq_loss"] == 0.0 and "restarted_codes" not in r for r in records)
    assert records[-1]["nmse"] < records[0]["nmse"]
    metrics = evaluate_json(str(tmp_path / "run"), "--data-dir", str(data_dir))
    assert metrics["bits_per_image"] == 64 * 4.0  # K = 16 codes, 4 bits each
    assert metrics["dead_codes"] + round(metrics["codebook_usage"] * 16) == 16


@pytest.mark.parametrize("decay", ["0.99", "0.0"])
def test_two_processes_of_stages_agree_and_match_one(
    data_dir: Path, tmp_path: Path, decay: str
) -> None:
    # decay 0: codebooks learnt by their loss, so a stage a step leaves out has no gradient.
    short = stages_profile(
        tmp_path, f"decay = {decay}\n[train]\nsteps = 6\nlog_every = 3\ncheckpoint_every = 3\n"
    )
    args = (2, closed_port(), short, data_dir, tmp_path / "two")
    mp.start_processes(train_as_rank, args=args, nprocs=2, start_method="spawn")
    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    for key in rank0:  # every stage's codebook, EMA statistics and the weights
        assert torch.equal(rank0[key], rank1[key]), key
    torch.set_num_threads(1)
    one = model_state(run_training(load_profile(short), tmp_path / "one" / "run", data_dir).model)
    for key in one:
        assert torch.allclose(one[key].float(), rank0[key].float(), rtol=1e-3, atol=1e-4), key
