"""`vqtool roundtrip`: your images over their reconstructions (a figure), each image's PSNR and
bits (a table, JSON), exactly what encode and decode give; and decode --grid at the images'
own size, within a screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cifar_names, code_arrays, make_image_folder, one_error_line
from PIL import Image
from test_entropy import Prior, random_prior
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.roundtrip import round_trip
from vqtool.codes.vqc import read_codes
from vqtool.data.cifar10 import load_cifar10
from vqtool.images.png import GRID_SIDE, Grid
from vqtool.prior import load as prior_load
from vqtool.reports.roundtrip_plots import roundtrip_picture, scale_for
from vqtool.vq.load import load_model

runner = CliRunner()


def invoke(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [str(a) for a in args])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2
    return float(10 * np.log10(1 / mse.mean()))


@pytest.fixture
def prior_at_p(monkeypatch: pytest.MonkeyPatch, trained_run: Path) -> Prior:
    """`--prior P` loads a random prior for the session run's 8x8 grids."""
    loaded = load_model(trained_run)
    prior = random_prior(loaded.model.config.num_embeddings, (8, 8), seed=3,
                         vq_fingerprint=loaded.fingerprint)  # fmt: skip
    monkeypatch.setattr(prior_load, "load_coding_prior", lambda path: prior)
    return prior


def test_roundtrip_help_has_an_example() -> None:
    result = invoke("roundtrip", "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "vqtool roundtrip" in result.output
    assert "HEIGHTxWIDTH" in result.output


def test_roundtrip_is_what_encode_and_decode_give(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    result = invoke("roundtrip", trained_run, "cifar10:test:10", "-o", "rt.png",
                    "--json", "rt.json", "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote rt.png" in result.stderr
    facts = json.loads((tmp_path / "rt.json").read_text())
    assert facts["images"] == 10 and facts["prior"] is None
    assert facts["checkpoint"] == load_model(trained_run).fingerprint
    assert facts["codes_per_image"] == {"height": 8, "width": 8}
    assert facts["raw_bits_per_image"] == 64 * 5  # 8x8 codes, log2(32) bits each
    records = facts["per_image"]
    names = cifar_names(trained_data_dir, "test", 10)
    assert [r["name"] for r in records] == names
    assert all((r["height"], r["width"], r["raw_bits"]) == (32, 32, 320) for r in records)
    # Each PSNR is that of the PNG decode writes, against the original.
    assert invoke("encode", trained_run, "cifar10:test:10", "-o", "c.vqc",
                  "--data-dir", trained_data_dir).exit_code == 0  # fmt: skip
    assert invoke("decode", trained_run, "c.vqc", "-o", "out").exit_code == 0
    originals = load_cifar10(trained_data_dir, "test")[:10].permute(0, 2, 3, 1).numpy()
    for i, record in enumerate(records):
        decoded = np.asarray(Image.open(tmp_path / "out" / f"{record['name']}.png"))
        assert record["psnr"] == pytest.approx(psnr(originals[i], decoded), abs=1e-9)
    assert facts["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in records]))
    with Image.open(tmp_path / "rt.png") as figure:
        width, height = figure.size
    assert width >= 8 * 32 * scale_for(32, 32) and height > 2 * 32 * scale_for(32, 32)
    # The table: one row per image, then the mean.
    assert "size (HxW)" in result.stdout and "PSNR (dB)" in result.stdout
    assert names[9] in result.stdout and "mean of all 10" in result.stdout


def test_the_library_keeps_the_first_images_pixels(
    trained_run: Path, trained_data_dir: Path
) -> None:
    loaded = load_model(trained_run)
    result = round_trip(loaded, ["cifar10:test:6"], trained_data_dir, shown=4)
    assert len(result.originals) == len(result.reconstructions) == 4
    originals = load_cifar10(trained_data_dir, "test")[:4].permute(0, 2, 3, 1).numpy()
    for i in range(4):
        assert np.array_equal(result.originals[i], originals[i])
        assert result.psnr[i] == pytest.approx(psnr(originals[i], result.reconstructions[i]))
    json.dumps(result.as_dict())  # plain data


def test_show_limits_the_figure_and_table_and_json_to_stdout_is_alone(
    trained_run: Path, trained_data_dir: Path
) -> None:
    result = invoke("roundtrip", trained_run, "cifar10:test:10", "-o", "rt.png", "--show", "3",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    names = cifar_names(trained_data_dir, "test", 4)
    assert names[2] in result.stdout and names[3] not in result.stdout
    assert "showed the first 3 of 10 images; --json has all" in result.stderr
    result = invoke("roundtrip", trained_run, "cifar10:test:4", "-o", "rt.png", "--json", "-",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["per_image"]) == 4


def test_your_own_photos_at_their_sizes_and_with_size(trained_run: Path, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "photos", ["cat/a.png", "cat/b.jpg"], size=(30, 30))
    make_image_folder(tmp_path / "photos", ["dog/c.png"], size=(32, 32), seed=1)
    make_image_folder(tmp_path / "wide", ["d.png"], size=(24, 40), seed=2)
    result = invoke("roundtrip", trained_run, "photos", "-o", "rt.png", "--json", "-")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["per_image"]
    assert [(r["name"], r["height"], r["width"]) for r in records] == [
        ("cat/a", 30, 30), ("cat/b", 30, 30), ("dog/c", 32, 32)
    ]  # fmt: skip
    result = invoke("roundtrip", trained_run, "photos", "wide", "-o", "mixed.png", "--json", "-")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["codes_per_image"] is None  # each image has its own grid
    bits = {r["name"]: r["raw_bits"] for r in facts["per_image"]}
    assert bits == {"cat/a": 64 * 5, "cat/b": 64 * 5, "dog/c": 64 * 5, "d": 60 * 5}  # K = 32
    assert facts["raw_bits_per_image"] == (3 * 64 + 60) * 5 / 4
    result = invoke("roundtrip", trained_run, "photos", "wide", "-o", "rt16.png", "--size",
                    "16x24", "--json", "-")  # fmt: skip
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert {(r["height"], r["width"]) for r in facts["per_image"]} == {(16, 24)}
    assert facts["codes_per_image"] == {"height": 4, "width": 6}


def test_prior_bits_are_what_the_prior_coding_spends(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path, prior_at_p: Prior
) -> None:
    result = invoke("roundtrip", trained_run, "cifar10:test:12", "-o", "rt.png", "--json",
                    "rt.json", "--prior", "P", "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "prior bits" in result.stdout
    facts = json.loads((tmp_path / "rt.json").read_text())
    assert facts["prior"] == prior_at_p.fingerprint
    bits = [r["prior_bits"] for r in facts["per_image"]]
    assert all(b > 0 for b in bits)
    assert facts["prior_bits_per_image"] == pytest.approx(np.mean(bits))
    # The same images coded into a file: its stream holds about those bits (the range coder
    # rounds the tables its own way).
    assert invoke("encode", trained_run, "cifar10:test:12", "-o", "p.vqc", "--prior", "P",
                  "--data-dir", trained_data_dir).exit_code == 0  # fmt: skip
    stream_bits = code_arrays(tmp_path / "p.vqc")["stream"].size * 32
    assert stream_bits == pytest.approx(sum(bits), rel=0.01)
    assert read_codes(tmp_path / "p.vqc", prior_at_p).codes.shape == (12, 8, 8)


def test_a_prior_counts_the_bits_of_grids_of_other_sizes(
    trained_run: Path, tmp_path: Path, prior_at_p: Prior
) -> None:
    """The prior learnt 8x8 grids; a 16x16 and a 48x48 image (4x4 and 12x12 codes) are
    coded window by window, and the larger costs more bits."""
    make_image_folder(tmp_path / "small", ["a.png"], size=(16, 16))
    make_image_folder(tmp_path / "large", ["a.png"], size=(48, 48))
    bits = []
    for folder in ("small", "large"):
        result = invoke("roundtrip", trained_run, folder, "-o", f"{folder}.png", "--prior", "P",
                        "--json", "-")  # fmt: skip
        assert result.exit_code == 0, result.output
        bits.append(json.loads(result.stdout)["prior_bits_per_image"])
        assert (tmp_path / f"{folder}.png").is_file()
    assert 0 < bits[0] < bits[1]


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["nowhere"], 2, "no such image file or folder"),
        (["cifar10:test:5", "--size", "big"], 2, "bad size"),
        (["cifar10:test:5", "--show", "0"], 2, "--show"),
        (["cifar10:test:5", "--json", "afolder"], 2, "is a folder"),
        (["cifar10:valid"], 2, "unknown dataset input"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(
    args: list[str], exit_code: int, message: str, trained_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "afolder").mkdir()
    result = invoke("roundtrip", trained_run, *args, "-o", "rt.png")
    assert result.exit_code == exit_code
    assert message in one_error_line(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afolder"]


def test_the_figure_must_be_a_file_and_the_run_must_exist(
    trained_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "figs").mkdir()
    result = invoke("roundtrip", trained_run, "cifar10:test:5", "-o", "figs")
    assert result.exit_code == 2 and "the figure is a folder" in one_error_line(result.output)
    result = invoke("roundtrip", tmp_path / "norun", "cifar10:test:5", "-o", "rt.png")
    assert result.exit_code == 2 and "error:" in one_error_line(result.output)
    result = invoke("roundtrip", trained_run, "cifar10:test:5")
    assert result.exit_code == 2 and "--output" in one_error_line(result.output)


def test_figure_scales_small_images_by_whole_pixels() -> None:
    assert [scale_for(s, s) for s in (4, 16, 32, 64, 100, 300)] == [8, 8, 4, 2, 1, 1]
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = (10, 200, 30)  # colours no text or line of the figure has
    image[:, 16:] = (250, 5, 120)
    from vqtool.codes.roundtrip import RoundTrip

    result = RoundTrip(
        names=("only",), sizes=np.array([[32, 32]], np.int32), psnr=np.array([20.0]),
        raw_bits=np.array([320.0]), prior_bits=None, originals=[image], reconstructions=[image],
        grid=(8, 8), num_embeddings=32, checkpoint="0" * 64, prior=None,
    )  # fmt: skip
    pixels = roundtrip_picture(result, "run")
    # Each half of the image, enlarged 4x twice (original and decoded), pixel for pixel.
    for colour in ((10, 200, 30), (250, 5, 120)):
        assert (pixels == colour).all(-1).sum() == 32 * 16 * 4 * 4 * 2


# decode --grid: cells at the images' own size, the grid within a screen.


def test_decode_grid_enlarges_small_images_by_a_whole_factor(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    result = invoke("encode", trained_run, "cifar10:test:20", "-o", "c.vqc", "--size", "64x64",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke("decode", trained_run, "c.vqc", "-o", "out", "--grid", "grid.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "grid.png") as grid:
        # 20 cells of 64 + 2, 5 columns: 332 pixels wide, so each pixel is drawn 2x2
        assert grid.size == (5 * 130 + 2, 4 * 130 + 2)
        first = np.asarray(grid)[2:130, 2:130]
    name = cifar_names(trained_data_dir, "test", 1)[0]
    decoded = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
    assert np.array_equal(first, decoded.repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.parametrize(
    ("count", "cell", "scale", "width"),
    [
        (16, (32, 32), 4, 4 * (4 * 32 + 2) + 2),  # 16 CIFAR images: 522 pixels, not 138
        (1, (32, 32), 8, 8 * 32 + 4),  # one image: enlarged 8x at most
        (225, (64, 64), 1, 15 * 66 + 2),  # wide enough already
    ],
)
def test_a_small_grid_is_enlarged_by_a_whole_factor_to_about_512_pixels(
    count: int, cell: tuple[int, int], scale: int, width: int
) -> None:
    grid = Grid(count, cell)
    assert (grid.scale, grid.canvas.shape[1]) == (scale, width)


@pytest.mark.parametrize(
    ("count", "cell"),
    [(10_000, (32, 32)), (10_000, (64, 64)), (5, (300, 451)), (9, (2000, 100)), (100, (8, 1000))],
)
def test_grid_sizes(count: int, cell: tuple[int, int]) -> None:
    grid = Grid(count, cell)
    rows = grid.canvas.shape[0] // grid.pitch[0]
    assert grid.columns * rows >= grid.capacity >= 1
    assert grid.canvas.shape[0] <= max(GRID_SIDE, cell[0] + 4)
    assert grid.canvas.shape[1] <= max(GRID_SIDE, cell[1] + 4)
