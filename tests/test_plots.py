"""plot and compare: run files -> figures, tables and JSON (vqtool.runs, .plots, .report, CLI)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line
from PIL import Image
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.errors import UsageError, WorkError
from vqtool.reports.arrays import run_arrays
from vqtool.reports.plots import (
    codebook_figure,
    compare_figure,
    loss_figure,
    pca_2d,
    reconstructions_figure,
    save_png,
    smooth,
    write_run_plots,
)
from vqtool.reports.summary import run_labels, summarise_run
from vqtool.runs import Run, load_run, read_metrics

RUN_PNGS = ("loss.png", "reconstructions.png", "codebook.png")


def assert_png(path: Path, width: tuple[int, int] = (400, 2500), height=(250, 2000)) -> None:
    """A readable PNG whose size lies within the given (min, max) ranges, in pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        w, h = image.size
    assert width[0] <= w <= width[1], (path, image.size)
    assert height[0] <= h <= height[1], (path, image.size)


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, code: int) -> None:
    assert result.exit_code == code, result.output
    one_error_line(result.stderr)
    assert "Traceback" not in result.output


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A modifiable copy of the session's trained run."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def evaluated_run(trained_run: Path, trained_data_dir: Path, tmp_path_factory) -> Path:
    """A copy of the trained run with eval-test.json written by vqtool evaluate."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("evaluated") / "evaluated"))
    result = invoke("evaluate", run, "--data-dir", trained_data_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run


def test_read_metrics_skips_a_torn_last_line_and_says_so(run_copy: Path) -> None:
    path = run_copy / "metrics.jsonl"
    whole = records(run_copy)
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 40, "nmse": 0.8')  # killed mid-write
    log = read_metrics(path)
    assert [r["step"] for r in log.train] == [r["step"] for r in whole]
    assert len(log.warnings) == 1 and "torn last line" in log.warnings[0]


def test_read_metrics_reports_unreadable_lines_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "train", "step": 1, "nmse": 1.0}\nnot json\n[1, 2]\n'
        '{"kind": "eval", "step": 1, "split": "test", "nmse": 0.9}\n'
        '{"kind": "train", "step": 2, "nmse": 0.5}\n'
    )
    log = read_metrics(path)
    assert [r["step"] for r in log.train] == [1, 2]
    assert [r["nmse"] for r in log.evals] == [0.9]
    assert log.warnings == [f"skipped 2 unreadable lines of {path}: line 2, 3"]


@pytest.mark.parametrize("text", ["", "\n", '{"kind": "eval", "step": 5, "nmse": 1}\n'])
def test_read_metrics_without_training_records_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    with pytest.raises(WorkError, match="no training records"):
        read_metrics(path)


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(UsageError, match="not a run folder"):
        load_run(tmp_path / "photos")
    with pytest.raises(UsageError, match="no such run folder"):
        load_run(tmp_path / "missing")


def test_load_run_accepts_a_file_inside_the_run(evaluated_run: Path) -> None:
    run = load_run(evaluated_run / "checkpoint.pt")
    assert run.path == evaluated_run
    assert run.profile == "tiny" and run.num_embeddings == 32
    assert run.eval_files["test"]["step"] == run.train[-1]["step"]
    assert run.warnings == []


def test_summary_holds_the_values_of_the_run_files(evaluated_run: Path) -> None:
    summary = summarise_run(load_run(evaluated_run))
    train = [r for r in records(evaluated_run) if r["kind"] == "train"]
    test = json.loads((evaluated_run / "eval-test.json").read_text())
    assert summary["run"] == "evaluated" and summary["profile"] == "tiny"
    assert summary["steps"] == train[-1]["step"] == 30
    assert summary["train_nmse"] == train[-1]["nmse"]
    assert summary["wall_s"] == train[-1]["elapsed_s"]
    assert summary["images_per_s"] == pytest.approx(np.mean([r["images_per_s"] for r in train]))
    for key in ("nmse", "psnr", "perplexity", "codebook_usage", "dead_codes"):
        assert summary["test_nmse" if key == "nmse" else key] == test[key]


def test_a_stale_eval_file_is_flagged(evaluated_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(evaluated_run, tmp_path / "extended"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 40, "nmse": 0.5}) + "\n")
    assert any("rerun vqtool evaluate" in w for w in load_run(run).warnings)


def test_run_labels_add_parents_only_where_names_clash() -> None:
    assert run_labels([Path("/a/x/run"), Path("/a/y/run")]) == ["x/run", "y/run"]
    assert run_labels([Path("/a/ema"), Path("/a/original")]) == ["ema", "original"]


def test_smooth_keeps_length_and_constants() -> None:
    assert np.array_equal(smooth([3.0, 1.0]), [3.0, 1.0])
    flat = smooth(np.full(100, 2.0))
    assert flat.shape == (100,) and np.allclose(flat, 2.0)
    noisy = np.linspace(1, 0, 200) + np.random.default_rng(0).normal(0, 0.1, 200)
    assert np.std(np.diff(smooth(noisy))) < np.std(np.diff(noisy)) / 3


def test_pca_2d_finds_the_main_axes() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, (64, 1)) * np.array([[10.0, 0, 0, 0]]) + rng.normal(0, 0.1, (64, 4))
    points, explained = pca_2d(vectors)
    assert points.shape == (64, 2) and explained[0] > 0.95
    points, explained = pca_2d(rng.normal(0, 1, (5, 1)))  # one-dimensional codes
    assert points.shape == (5, 2) and explained[1] == 0
    # Axes fitted on a subset (the used codes), every vector projected on them.
    points, explained = pca_2d(vectors, fit=vectors[:10])
    assert points.shape == (64, 2) and explained[0] > 0.9


def test_run_arrays_match_what_evaluate_measures(evaluated_run: Path, trained_data_dir) -> None:
    test = json.loads((evaluated_run / "eval-test.json").read_text())
    arrays = run_arrays(evaluated_run, trained_data_dir, samples=40)  # the whole tiny test split
    assert arrays.originals.dtype == np.uint8 and arrays.originals.shape == (40, 3, 32, 32)
    assert arrays.reconstructions.shape == (40, 3, 32, 32)
    assert arrays.reconstructions.min() >= 0.0 and arrays.reconstructions.max() <= 1.0
    # Same scale as evaluate: reconstructions in [0, 1] against the originals in [0, 1].
    mse = np.mean((arrays.reconstructions - arrays.originals / 255.0) ** 2)
    assert mse == pytest.approx(test["mse"], rel=1e-4)
    assert arrays.images == 40 and arrays.counts.sum() == 40 * 8 * 8
    assert int((arrays.counts == 0).sum()) == test["dead_codes"]
    assert arrays.codebook.shape == (32, 8) and arrays.step == 30


def test_figures_from_arrays_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    save_png(reconstructions_figure(originals, originals / 255.0, "identity"), tmp_path / "r.png")
    assert_png(tmp_path / "r.png")
    counts = np.zeros(512, dtype=np.int64)  # a collapsed codebook: 3 codes used
    counts[[4, 9, 100]] = [1000, 10, 1]
    save_png(codebook_figure(counts, rng.normal(0, 1, (512, 64))), tmp_path / "c.png")
    assert_png(tmp_path / "c.png")
    save_png(codebook_figure(np.zeros(8), rng.normal(0, 1, (8, 2))), tmp_path / "none.png")
    assert_png(tmp_path / "none.png")


def test_write_run_plots_without_a_model_writes_the_loss_curves(evaluated_run, tmp_path) -> None:
    written = write_run_plots(load_run(evaluated_run), tmp_path / "out", None)
    assert written == [tmp_path / "out" / "loss.png"]
    assert_png(written[0])


def test_plot_writes_three_pngs_into_the_run(run_copy: Path, trained_data_dir: Path) -> None:
    result = invoke("plot", run_copy, "--data-dir", trained_data_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    for name in RUN_PNGS:
        assert_png(run_copy / name)
    assert "warning" not in result.stderr
    assert not list(run_copy.glob(".*.tmp"))


def test_plot_out_dir(evaluated_run: Path, trained_data_dir: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in evaluated_run.iterdir())
    result = invoke("plot", evaluated_run, "-o", tmp_path / "figs", "--data-dir", trained_data_dir)
    assert result.exit_code == 0, result.output
    for name in RUN_PNGS:
        assert_png(tmp_path / "figs" / name)
    assert sorted(p.name for p in evaluated_run.iterdir()) == before


def test_plot_a_run_killed_mid_write(run_copy: Path, trained_data_dir: Path) -> None:
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 40, "nm')
    result = invoke("plot", run_copy, "--data-dir", trained_data_dir)
    assert result.exit_code == 0, result.output
    assert "warning: skipped the torn last line" in result.stderr
    for name in RUN_PNGS:
        assert_png(run_copy / name)


def test_plot_a_run_with_a_single_point(run_copy: Path, trained_data_dir: Path) -> None:
    first = (run_copy / "metrics.jsonl").read_text().splitlines()[0]
    (run_copy / "metrics.jsonl").write_text(first + "\n")
    result = invoke("plot", run_copy, "--data-dir", trained_data_dir)
    assert result.exit_code == 0, result.output
    assert_png(run_copy / "loss.png")


def test_plot_a_run_without_checkpoint_draws_the_curves(run_copy: Path) -> None:
    (run_copy / "checkpoint.pt").unlink()
    result = invoke("plot", run_copy)
    assert result.exit_code == 0, result.output
    assert "no checkpoint" in result.stderr
    assert_png(run_copy / "loss.png")
    assert not (run_copy / "reconstructions.png").exists()


def test_plot_an_empty_metrics_file_is_one_error_line(run_copy: Path) -> None:
    (run_copy / "metrics.jsonl").write_text("")
    assert_one_error_line(invoke("plot", run_copy), 1)
    assert not (run_copy / "loss.png").exists()


def test_plot_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "holiday").mkdir()
    (tmp_path / "holiday" / "beach.png").write_bytes(b"")
    assert_one_error_line(invoke("plot", tmp_path / "holiday"), 2)
    assert_one_error_line(invoke("plot", tmp_path / "nowhere"), 2)


def test_plot_without_the_data_is_one_error_line(run_copy: Path, tmp_path: Path) -> None:
    result = invoke("plot", run_copy, "--data-dir", tmp_path / "nodata")
    assert result.exit_code in (1, 2)
    assert_one_error_line(result, result.exit_code)
    assert not (run_copy / "loss.png").exists()


@pytest.fixture
def three_runs(evaluated_run: Path, trained_run: Path, tmp_path: Path) -> list[Path]:
    """An evaluated run, a run without eval json, and a shorter run with eval records."""
    full = Path(shutil.copytree(evaluated_run, tmp_path / "runs" / "full"))
    bare = Path(shutil.copytree(trained_run, tmp_path / "runs" / "no-eval"))
    short = Path(shutil.copytree(trained_run, tmp_path / "runs" / "short"))
    first = records(short)[0]
    evaluation = {"kind": "eval", "step": 10, "split": "test", "nmse": 0.95, "psnr": 11.0}
    (short / "metrics.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(evaluation) + "\n")
    return [full, bare, short]


def test_compare_runs_of_different_lengths(three_runs: list[Path], tmp_path: Path) -> None:
    result = invoke("compare", *three_runs, "--json", tmp_path / "runs.json")
    assert result.exit_code == 0, result.output
    assert_png(Path("compare.png"))  # the default, in the current folder
    for name in ("full", "no-eval", "short", "train NMSE", "test NMSE", "perplexity"):
        assert name in result.stdout
    rows = json.loads((tmp_path / "runs.json").read_text())
    assert [row["run"] for row in rows] == ["full", "no-eval", "short"]
    assert [row["steps"] for row in rows] == [30, 30, 10]
    test = json.loads((three_runs[0] / "eval-test.json").read_text())
    assert rows[0]["test_nmse"] == test["nmse"] and rows[0]["psnr"] == test["psnr"]
    assert rows[0]["perplexity"] == test["perplexity"]
    assert rows[0]["codebook_usage"] == test["codebook_usage"]
    for row in rows[1:]:
        assert row["test_nmse"] is None and row["perplexity"] is None
    for row, run in zip(rows, three_runs, strict=True):
        train = [r for r in records(run) if r["kind"] == "train"]
        assert row["train_nmse"] == train[-1]["nmse"]
        assert row["wall_s"] == train[-1]["elapsed_s"]
        assert row["images_per_s"] == pytest.approx(np.mean([r["images_per_s"] for r in train]))
        assert row["profile"] == "tiny"


def test_compare_json_to_stdout_and_png_elsewhere(three_runs: list[Path], tmp_path) -> None:
    result = invoke("compare", *three_runs[:2], "-o", tmp_path / "c.png", "--json", "-")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and rows[1]["test_nmse"] is None
    assert_png(tmp_path / "c.png")
    assert not Path("compare.png").exists()


def test_compare_warns_about_a_torn_line_and_refuses_a_non_run(three_runs, tmp_path) -> None:
    with open(three_runs[1] / "metrics.jsonl", "a") as f:
        f.write('{"kind": "tr')
    result = invoke("compare", *three_runs[:2])
    assert result.exit_code == 0, result.output
    assert "warning: no-eval: skipped the torn last line" in result.stderr
    Path("compare.png").unlink()
    (tmp_path / "empty").mkdir()
    assert_one_error_line(invoke("compare", three_runs[0], tmp_path / "empty"), 2)
    assert not Path("compare.png").exists()


def test_compare_json_to_stdout_writes_no_png_unless_asked(three_runs: list[Path]) -> None:
    # Issue 11, item 7: `compare --json -` wrote compare.png into the working folder.
    result = invoke("compare", *three_runs[:2], "--json", "-")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    assert not Path("compare.png").exists() and "compare.png" not in result.stderr
    result = invoke("compare", *three_runs[:2], "--json", "-", "-o", "compare.png")
    assert result.exit_code == 0 and Path("compare.png").exists()


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_an_output_that_cannot_be_written_is_named_as_given(
    command: str, evaluated_run: Path, trained_data_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Issue 11, item 7: a read-only folder named the hidden temp file, not the path given.
    import tempfile

    shared, real = tmp_path / "shared", tempfile.mkstemp

    def read_only(prefix: str = "", suffix: str = "", dir: Path | None = None) -> tuple[int, str]:
        if dir != shared:
            return real(prefix=prefix, suffix=suffix, dir=dir)
        raise OSError(30, "Read-only file system", os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = shared / ("c.png" if command == "compare" else "m.json")
    run = shutil.copytree(evaluated_run, tmp_path / "run")
    if command == "compare":
        result = invoke("compare", run, "-o", target)
    else:
        result = invoke("evaluate", run, "--json", target, "--data-dir", trained_data_dir)
    assert result.exit_code == 1
    line = result.stderr.splitlines()[-1]  # evaluate says first that it saved the run's copy
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    assert f"({target})" in line and "Read-only file system" in line and "x1y2z3" not in line


# Issue 11, item 8: what the figures say.


def a_run(name: str, k: int | None, nmse: list[float], perplexity: list[float]) -> Run:
    records = [
        {"kind": "train", "step": 10 * (i + 1), "nmse": a, "perplexity": b}
        for i, (a, b) in enumerate(zip(nmse, perplexity, strict=True))
    ]
    return Run(Path("runs") / name, name, k, records, [], {}, [])


def test_reconstructions_say_which_images_and_show_each_psnr() -> None:
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    noise = rng.normal(0, 0.05, originals.shape) * np.arange(1, 6)[:, None, None, None]
    recon = np.clip(originals / 255.0 + noise, 0, 1)
    fig = reconstructions_figure(originals, recon, "run", "the first 5 test images")
    (ax,) = fig.axes
    mse = ((originals / 255.0 - recon) ** 2).reshape(5, -1).mean(axis=1)
    assert [t.get_text() for t in ax.texts] == [f"{10 * np.log10(1 / m):.1f}" for m in mse]
    title = ax.get_title()
    assert title.startswith("the first 5 test images") and "PSNR (dB) under each" in title
    assert f"of these 5 together {10 * np.log10(1 / mse.mean()):.2f} dB" in title
    assert "whole split" in title


def test_compare_puts_codebooks_of_any_size_on_one_scale() -> None:
    runs = [
        a_run("small", 128, [0.5, 0.3, 0.2], [40.0, 60.0, 64.0]),
        a_run("large", 512, [0.4, 0.2, 0.1], [100.0, 200.0, 256.0]),
        a_run("bare", None, [0.6, 0.5, 0.4], [10.0, 10.0, 10.0]),
    ]
    fig = compare_figure(runs, ["runs/a", "runs/b", "runs/c"])
    _, ax_ppl = fig.axes
    curves = {line.get_label(): line.get_ydata() for line in ax_ppl.get_lines()}
    assert set(curves) == {"runs/a (small, K = 128)", "runs/b (large, K = 512)"}
    assert np.allclose(curves["runs/a (small, K = 128)"], np.array([40, 60, 64]) / 128)
    assert np.allclose(curves["runs/b (large, K = 512)"], np.array([100, 200, 256]) / 512)
    assert "perplexity / K" in ax_ppl.get_ylabel() and "runs/c" in ax_ppl.get_title()


def test_log_axes_read_plain_numbers() -> None:
    run = a_run("r", 32, list(np.linspace(0.9, 0.25, 20)), [5.0] * 20)
    for fig in (loss_figure(run), compare_figure([run], ["r"])):
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
        shown = [label for label in labels if label]
        assert "0.4" in shown and "0.3" in shown, shown
        assert not any("$" in label or "10^" in label for label in shown), shown


def test_a_run_of_stages_says_its_training_error_is_under_stage_dropout(tmp_path: Path) -> None:
    # Its training steps decode through 1 to n stages, its test through n: without saying so
    # the gap between the curve and the stars reads as overfitting.
    for stages, dropout, expected in ((4, "true", 4), (4, "false", 0), (1, "true", 0)):
        folder = tmp_path / f"run-{stages}-{dropout}"
        folder.mkdir()
        (folder / "profile.toml").write_text(
            f'name = "r"\n[model]\nnum_embeddings = 8\nstages = {stages}\n'
            f"stage_dropout = {dropout}\n"
        )
        records = [{"kind": "train", "step": s, "nmse": 0.5, "perplexity": 4.0} for s in (1, 2)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (folder / "eval-test.json").write_text(json.dumps({"step": 2, "nmse": 0.3}))
        run = load_run(folder)
        assert run.dropout_stages == expected
        labels = [line.get_label() for line in loss_figure(run).axes[0].get_lines()]
        said = [label for label in labels if "stage dropout" in label or "all 4 stages" in label]
        assert len(said) == (2 if expected else 0), labels
