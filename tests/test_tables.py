"""What the tables and messages say: evaluate's metrics in words (short fingerprint, %, dB, which
bits), rate-distortion alone with payload ratios, profiles by command, and every size height
first with "HxW" beside it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from helpers import one_error_line
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from vqtool.cli import app, progress
from vqtool.codes.ratedistortion import RD_COLUMNS, rate_distortion_rows
from vqtool.profiles import profiles_by_command

runner = CliRunner()


def invoke(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


def rendered(table: object) -> str:
    console = Console(width=200, file=io.StringIO())
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


# Item 9: evaluate's table.


def test_evaluate_says_units_and_which_bits_and_shortens_the_fingerprint(
    run_copy: Path, trained_data_dir: Path
) -> None:
    result = invoke("evaluate", run_copy, "--data-dir", trained_data_dir)
    assert result.exit_code == 0, result.output
    written = json.loads((run_copy / "eval-test.json").read_text())
    out = result.stdout
    fingerprint = written["checkpoint"]
    assert fingerprint not in out and f"{fingerprint[:12]}..." in out
    assert f"{written['psnr']:.2f} dB" in out
    assert f"{written['codebook_usage']:.1%}" in out
    assert "bits per image (uniform bound: h*w*log2 K)" in out and "320.0" in out
    assert "bits per image (entropy of the codes)" in out
    assert max(len(line) for line in out.splitlines()) < 80  # fits a terminal
    # JSON keeps the keys, the raw values and the whole fingerprint.
    printed = json.loads(invoke("evaluate", run_copy, "--data-dir", trained_data_dir,
                                "--json", "-").stdout)  # fmt: skip
    assert printed["checkpoint"] == fingerprint and len(fingerprint) == 64
    assert 0 < printed["codebook_usage"] <= 1 and printed["bits_per_image"] == 320


def test_a_priors_metrics_read_as_a_priors() -> None:
    metrics = {
        "split": "test", "bits_per_code": 4.1234, "bits_per_image": 263.9,
        "unigram_bits_per_image": 300.12, "uniform_bits_per_image": 320.0,
        "ratio_to_unigram": 0.879, "images": 40, "images_per_s": 900.0,
        "checkpoint": "ab" * 32, "step": 12,
    }  # fmt: skip
    text = rendered(progress.metrics_table("test split", metrics))
    assert "bits per image (the prior's)" in text and "263.9" in text
    assert "bits per image (uniform bound: h*w*log2 K)" in text
    assert "bits per image (entropy of the codes)" in text
    assert "code grids" in text and "abababababab..." in text and "ab" * 32 not in text


def test_an_unknown_metric_keeps_its_key() -> None:
    text = rendered(progress.metrics_table("t", {"something_new": 1.5}))
    assert "something_new" in text and "1.5" in text


@pytest.mark.parametrize(
    ("value", "shown"),
    [(67_650.3, "67,650"), (1_892.3, "1,892"), (999.97, "1,000"), (12.345, "12.35"),
     (0.0123456, "0.01235"), (3, "3"), (12_345, "12,345"), (float("inf"), "inf"), (None, "-")],
)  # fmt: skip
def test_every_table_prints_numbers_one_way(value: object, shown: str) -> None:
    # inspect once printed large floats in e-notation beside other tables' grouped integers
    assert progress.format_value(value) == shown


def test_rate_distortion_shows_its_table_alone_with_payload_ratios(
    run_copy: Path, trained_data_dir: Path
) -> None:
    result = invoke("evaluate", run_copy, "--data-dir", trained_data_dir,
                    "--rate-distortion", "--rd-images", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "rate-distortion, 3 test images" in out
    assert "x vqtool (whole)" in out and "x vqtool (payload)" in out
    assert "codebook usage" not in out and "psnr" not in out  # no metrics table first
    assert (run_copy / "eval-test.json").is_file()  # still measured and written
    rd = json.loads((run_copy / "rd-test.json").read_text())
    at = rd["at_vqtool_psnr"]
    best_payload = min(p["bpp_payload"] for p in rd["vqtool"])
    assert at["vqtool_bpp_payload"] == best_payload
    for codec in rd["codecs"]:
        needed = at[codec]
        if needed["bpp_payload"] is not None:
            assert needed["times_vqtool_payload"] == pytest.approx(
                needed["bpp_payload"] / best_payload
            )
    # --json - keeps stdout for the JSON alone.
    result = invoke("evaluate", run_copy, "--data-dir", trained_data_dir,
                    "--rate-distortion", "--rd-images", "3", "--json", "-")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["split"] == "test"


def test_rate_distortion_rows_put_the_payload_ratio_last() -> None:
    vqtool = [
        {"label": "raw", "bpp_file": 1.5, "bpp_payload": 1.0, "psnr": 22.0},
        {"label": "unigram", "bpp_file": 0.5, "bpp_payload": 0.4, "psnr": 22.0},
    ]
    at = {
        "psnr": 22.0, "vqtool_bpp_file": 0.5, "vqtool_bpp_payload": 0.4,
        "jpeg": {"bpp_file": 2.5, "bpp_payload": 0.36, "at_most": False,
                 "times_vqtool_file": 5.0, "times_vqtool_payload": 0.9},
        "webp": {"bpp_file": 0.8, "bpp_payload": 0.6, "at_most": True,
                 "times_vqtool_file": 1.6, "times_vqtool_payload": 1.5},
    }  # fmt: skip
    rows = rate_distortion_rows({"vqtool": vqtool, "codecs": {"jpeg": [], "webp": []},
                                 "at_vqtool_psnr": at})  # fmt: skip
    assert RD_COLUMNS[-2:] == ("x vqtool (whole)", "x vqtool (payload)")
    assert all(len(row) == len(RD_COLUMNS) for row in rows)
    assert rows[0][-2:] == [None, None]
    assert rows[2][-2:] == [5.0, 0.9]
    assert rows[3][-2:] == ["<= 1.6", "<= 1.5"]
    # An rd file from before the payload ratio: shown without one.
    del at["jpeg"]["times_vqtool_payload"]
    rows = rate_distortion_rows({"vqtool": vqtool, "codecs": {"jpeg": []}, "at_vqtool_psnr": at})
    assert rows[2][-1] is None


# Item 10: profiles by command, the top-level help, sizes height first.


def test_profiles_are_listed_by_the_command_that_takes_them() -> None:
    groups = dict(profiles_by_command())
    assert list(groups) == ["vqtool train --profile NAME", "vqtool prior RUN --profile NAME"]
    train = [name for name, _ in groups["vqtool train --profile NAME"]]
    prior = [name for name, _ in groups["vqtool prior RUN --profile NAME"]]
    assert "smoke" in train and "ema" in train and "folder" in train
    assert prior == ["prior", "prior-coding", "prior-cpu", "prior-small"]
    result = invoke("profiles")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("profiles for vqtool train") < out.index("smoke")
    assert out.index("smoke") < out.index("profiles for vqtool prior") < out.index("prior-coding")


def test_the_top_level_help_names_your_own_folders() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "CIFAR-10 or your own image folders" in " ".join(result.output.split())


def test_sizes_are_height_first_and_say_so(trained_run: Path, tmp_path: Path) -> None:
    Image.new("RGB", (36, 20), (90, 120, 30)).save(tmp_path / "wide.png")  # 36 wide, 20 high
    Image.new("RGB", (20, 36), (30, 120, 90)).save(tmp_path / "tall.png")
    result = invoke("encode", trained_run, "wide.png", "-o", "w.vqc")
    assert result.exit_code == 0, result.output
    assert "wrote w.vqc: 1 image of 20x36 as 5x9 codes of 32; sizes are HxW" in result.output
    result = invoke("encode", trained_run, "wide.png", "tall.png", "-o", "m.vqc")
    assert result.exit_code == 0, result.output
    assert (
        "wrote m.vqc: 2 images of 2 sizes, each padded to a multiple of 4, as codes of 32 in 2 "
        "grids: 5x9 (1 image), 9x5 (1 image); sizes are HxW"
    ) in " ".join(result.output.split())
    result = invoke("encode", trained_run, "wide.png", "-o", "s.vqc", "--size", "big")
    assert result.exit_code == 2 and "HEIGHTxWIDTH (height first)" in one_error_line(result.output)
    result = invoke("encode", trained_run, "wide.png", "tall.png", "-o", "r.vqc", "--size", "8x16")
    assert result.exit_code == 0 and "2 images of 8x16 as 2x4 codes" in result.output
    facts = json.loads(invoke("inspect", "r.vqc", "--json", "-").stdout)
    assert facts["sizes"] == [
        {"height": 8, "width": 16, "images": 2, "codes_per_image": {"height": 2, "width": 4}}
    ]


@pytest.mark.parametrize("command", ["encode", "roundtrip"])
def test_size_help_says_which_side_is_which(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "HEIGHTxWIDTH" in result.output
