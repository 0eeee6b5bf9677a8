"""vqtool.codes.ratedistortion: payload parsers, PSNR, interpolation, and the points through
`vqtool evaluate --rate-distortion` and `vqtool plot`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line
from test_entropy import random_prior
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes import entropy
from vqtool.codes.ratedistortion import (
    CODECS,
    PSNR_CAP,
    bpp_at,
    compress_image,
    decompress_image,
    payload_bytes,
    psnr_per_image,
    rate_distortion,
    rate_distortion_rows,
)
from vqtool.data.datasets import load_images
from vqtool.vq.load import load_model

runner = CliRunner()


def photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1) + rng.normal(0, 10, (32, 32, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec", CODECS)
def test_payload_is_the_coded_data_without_headers(codec: str) -> None:
    data = compress_image(codec, photo(), 50)
    payload = payload_bytes(codec, data)
    assert 0 < payload < len(data)
    if codec == "webp":  # RIFF header, chunk header and the VP8 frame header
        assert payload == len(data) - 12 - 8 - 10
    decoded = decompress_image(data)
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert 20 < psnr_per_image(photo()[None], decoded[None])[0] < PSNR_CAP
    with pytest.raises(ValueError):
        payload_bytes(codec, b"not an image at all")


def test_psnr_per_image() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255  # MSE 1 on [0, 1] pixels: 0 dB
    assert psnr_per_image(a, b).tolist() == [PSNR_CAP, 0.0]


def test_bpp_at_interpolates_in_log_rate() -> None:
    curve = [{"psnr": 20.0, "bpp": 1.0}, {"psnr": 30.0, "bpp": 4.0}, {"psnr": 25.0, "bpp": 2.0}]
    assert bpp_at(curve, 25.0, "bpp") == pytest.approx(2.0)
    assert bpp_at(curve, 27.5, "bpp") == pytest.approx(np.sqrt(8.0))
    assert bpp_at(curve, 19.0, "bpp") is None and bpp_at(curve, 31.0, "bpp") is None


def test_rate_distortion_points(trained_run: Path, trained_data_dir: Path) -> None:
    loaded = load_model(trained_run)
    images = load_images(loaded.profile.data, trained_data_dir, "test")[:12]
    prior = random_prior(loaded.model.config.num_embeddings, (8, 8), seed=2,
                         vq_fingerprint=loaded.fingerprint)  # fmt: skip
    stages: list[str] = []

    def stage(name: str) -> entropy.Progress:
        stages.append(name)
        return lambda done, total: None

    rd = rate_distortion(loaded, images, prior, qualities=(0, 50, 90), stages=stage)
    json.dumps(rd)  # plain data
    assert rd["images"] == 12 and rd["image_size"] == [32, 32]
    labels = [p["label"] for p in rd["vqtool"]]
    assert labels == ["raw", "unigram", "prior"]
    raw, unigram, _ = rd["vqtool"]
    assert raw["bpp_payload"] == 16 * 64 / 1024  # uint16 per code, one code per 4x4 pixels
    assert unigram["bpp_file"] < raw["bpp_file"]
    assert len({p["psnr"] for p in rd["vqtool"]}) == 1  # every coding decodes to the same pixels
    assert sorted(rd["codecs"]) == sorted(CODECS)
    for points in rd["codecs"].values():
        assert [p["quality"] for p in points] == [0, 50, 90]
        assert all(p["bpp_payload"] < p["bpp_file"] for p in points)
    assert rd["at_vqtool_psnr"]["psnr"] == raw["psnr"]
    assert "jpeg" in stages and stages[0].startswith("vqtool")
    assert len(rate_distortion_rows(rd)) == 3 + len(CODECS)


def test_evaluate_rate_distortion_then_plot(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["evaluate", str(run), "--data-dir", str(trained_data_dir),
                                 "--rate-distortion", "--rd-images", "6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rate-distortion, 6 test images" in result.output
    rd = json.loads((run / "rd-test.json").read_text())
    assert rd["split"] == "test" and rd["images"] == 6 and rd["prior"] is None
    result = runner.invoke(app, ["plot", str(run), "-o", "figures", "--data-dir",
                                 str(trained_data_dir)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "rd.png").stat().st_size > 10_000


def test_prior_without_rate_distortion_is_a_usage_error(trained_run: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(trained_run), "--prior", "P"])
    assert result.exit_code == 2
    assert "--rate-distortion" in one_error_line(result.output)
