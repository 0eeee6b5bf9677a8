"""`vqtool plot R1 R2 --rd`: several runs' rate-distortion points on one figure with their
lower hull and its BD-rates, through the CLI, on tiny real runs measured by
`vqtool evaluate --rate-distortion`; and every way it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import KindRuns, one_error_line
from PIL import Image
from typer.testing import CliRunner

from vqtool.cli import app

runner = CliRunner()


def invoke(*args: str | Path) -> Any:  # click's Result
    return runner.invoke(app, [str(a) for a in args])


def refused(code: int, *args: str | Path) -> str:
    """Run a command that must fail with one error line and exit `code`; the line."""
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return one_error_line(result.stderr)


@pytest.fixture(scope="module")
def measured(kind_runs: KindRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the rvq (3 stages, with its prior), ds8 and ema runs, measured by
    evaluate --rate-distortion: rvq and ds8 on the first 6 test images, ema on 4; and fsq,
    not measured."""
    root = tmp_path_factory.mktemp("rd-runs")
    for kind in ("rvq", "ds8", "ema", "fsq"):
        shutil.copytree(kind_runs[kind], root / kind)
    for kind, images, extra in (("rvq", 6, ["--prior", root / "rvq" / "prior"]),
                                ("ds8", 6, []), ("ema", 4, [])):  # fmt: skip
        result = invoke("evaluate", root / kind, "--data-dir", kind_runs.data, "--rate-distortion",
                        "--rd-images", str(images), *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
    return root


def assert_figure(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert 600 <= image.size[0] <= 2000 and 400 <= image.size[1] <= 1500, image.size


def test_two_runs_on_one_figure_with_their_hull(measured: Path, tmp_path: Path) -> None:
    result = invoke("plot", measured / "rvq", measured / "ds8", "--rd", "-o", "figs/both.png",
                    "--json", "rd-runs.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_figure(tmp_path / "figs" / "both.png")
    assert "lower hull of 2 runs (whole files), 6 images" in result.stdout
    assert "no BD-rates" in result.stderr  # tiny runs: below every codec's PSNR
    combined = json.loads((tmp_path / "rd-runs.json").read_text())
    assert [run["run"] for run in combined["runs"]] == ["rvq", "ds8"]
    assert combined["images"] == 6 and combined["data"] == "cifar10"
    # rvq: 3 codings x 3 stage counts; ds8: 2 codings (no prior) x 1
    assert len(combined["vqtool"]) == 9 + 2
    for kind, key in (("file", "bpp_file"), ("payload", "bpp_payload")):
        hull = combined["hull"][kind]
        assert hull and all(p in combined["vqtool"] for p in hull)
        # no point of either run has fewer bits and more PSNR than a hull point
        for p in hull:
            assert not any(q[key] <= p[key] and q["psnr"] > p["psnr"] for q in combined["vqtool"])
        assert [p[key] for p in hull] == sorted(p[key] for p in hull)
    assert combined["bd_rate"]["vqtool"] == "lower hull"
    assert set(combined["bd_rate"]) == {"vqtool", "jpeg", "webp", "avif"}
    # the codec sweeps are those each run measured on the same images
    rvq = json.loads((measured / "rvq" / "rd-test.json").read_text())
    assert combined["codecs"] == rvq["codecs"]


def test_one_run_alone_and_the_default_file(measured: Path, tmp_path: Path) -> None:
    result = invoke("plot", measured / "rvq", "--rd")
    assert result.exit_code == 0, result.output
    assert_figure(tmp_path / "rd.png")
    assert not (measured / "rvq" / "loss.png").exists()  # --rd draws the rd figure alone


def test_a_folder_gets_rd_png_and_json_to_stdout_writes_no_figure(
    measured: Path, tmp_path: Path
) -> None:
    (tmp_path / "figs").mkdir()
    assert invoke("plot", measured / "rvq", measured / "ds8", "--rd", "-o", "figs").exit_code == 0
    assert_figure(tmp_path / "figs" / "rd.png")
    result = invoke("plot", measured / "rvq", measured / "ds8", "--rd", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bd_rate"]["vqtool"] == "lower hull"
    assert not (tmp_path / "rd.png").exists()


def test_a_run_without_rd_points_names_the_command(measured: Path, tmp_path: Path) -> None:
    line = refused(2, "plot", measured / "rvq", measured / "fsq", "--rd", "-o", "rd.png")
    assert str(measured / "fsq") in line
    assert f"vqtool evaluate {measured / 'fsq'} --rate-distortion" in line
    assert not (tmp_path / "rd.png").exists()


def test_runs_measured_on_different_images_are_refused(measured: Path, tmp_path: Path) -> None:
    line = refused(2, "plot", measured / "rvq", measured / "ema", "--rd", "--json", "out.json")
    assert "different images" in line and "6 test images" in line and "4 test images" in line
    assert "--rd-images N" in line
    assert not (tmp_path / "rd.png").exists() and not (tmp_path / "out.json").exists()


def test_bad_paths_and_options(measured: Path, tmp_path: Path) -> None:
    assert "no such run folder" in refused(2, "plot", measured / "rvq", tmp_path / "nope", "--rd")
    (tmp_path / "empty").mkdir()
    assert "not a run folder" in refused(2, "plot", tmp_path / "empty", "--rd")
    assert "prior run" in refused(2, "plot", measured / "rvq" / "prior", "--rd")
    assert "twice" in refused(2, "plot", measured / "rvq", measured / "rvq" / ".", "--rd")
    assert "PNG file" in refused(2, "plot", measured / "rvq", "--rd", "-o", "figure.pdf")
    assert "--rd" in refused(2, "plot", measured / "rvq", measured / "ds8")
    assert "--rd" in refused(2, "plot", measured / "rvq", "--json", "x.json")
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "x.json").exists()


def test_an_unreadable_rd_file_is_one_error_line(measured: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(measured / "ds8", tmp_path / "torn"))
    text = (run / "rd-test.json").read_text()
    (run / "rd-test.json").write_text(text[: len(text) // 2])
    line = refused(1, "plot", measured / "rvq", run, "--rd")
    assert "rd-test.json" in line and "--rate-distortion again" in line
    assert not (tmp_path / "rd.png").exists()


def test_other_codec_sweeps_on_the_same_images_are_a_warning(
    measured: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(measured / "ds8", tmp_path / "other-pillow"))
    rd = json.loads((run / "rd-test.json").read_text())
    rd["codecs"]["jpeg"][0]["psnr"] += 0.5
    rd["pillow"] = "0.0"
    (run / "rd-test.json").write_text(json.dumps(rd))
    result = invoke("plot", measured / "rvq", run, "--rd", "--json", "-")
    assert result.exit_code == 0, result.output
    assert "warning: the codec sweeps of other-pillow differ from those of rvq" in result.stderr
    combined = json.loads(result.stdout)
    assert (
        combined["codecs"] == json.loads((measured / "rvq" / "rd-test.json").read_text())["codecs"]
    )


def test_an_rd_file_written_before_data_was_kept_is_read(measured: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(measured / "ds8", tmp_path / "older"))
    rd = json.loads((run / "rd-test.json").read_text())
    del rd["data"]
    (run / "rd-test.json").write_text(json.dumps(rd))
    result = invoke("plot", run, measured / "rvq", "--rd", "--json", "-")
    assert result.exit_code == 0, result.output
    assert [r["run"] for r in json.loads(result.stdout)["runs"]] == ["older", "rvq"]
    rd["images"] = 5  # and a count that differs is still refused
    (run / "rd-test.json").write_text(json.dumps(rd))
    line = refused(2, "plot", run, measured / "rvq", "--rd")
    assert "5 test images of cifar10" in line
