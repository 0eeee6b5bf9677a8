"""vqtool.codes.bdrate: BD-rates of known curves, against the bjontegaard package's figures; the
BD-rates of an rd JSON and the figure that draws them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vqtool.codes.bdrate import _curve, bd_rate
from vqtool.codes.ratedistortion import bd_rates
from vqtool.reports.plots import rate_distortion_figure, save_png

ANCHOR = [(0.5, 25.0), (1.0, 28.0), (2.0, 31.0), (4.0, 34.0)]


def test_a_curve_against_itself_is_zero() -> None:
    result = bd_rate(ANCHOR, ANCHOR)
    assert result is not None and abs(result.percent) < 1e-9
    assert (result.psnr_low, result.psnr_high) == (25.0, 34.0)


@pytest.mark.parametrize("factor", [0.3, 0.7, 1.5])
def test_a_curve_scaled_in_rate_differs_by_the_factor(factor: float) -> None:
    test = [(b * factor, p) for b, p in ANCHOR]
    result = bd_rate(ANCHOR, test)
    assert result is not None and result.percent == pytest.approx((factor - 1) * 100, abs=1e-9)


def test_only_the_shared_range_counts() -> None:
    # a test curve over 28-31 dB at half the rate: -50% there, whatever the anchor does elsewhere
    test = [(0.5, 28.0), (0.75, 29.5), (1.0, 31.0)]
    result = bd_rate(ANCHOR, test)
    assert result is not None
    assert (result.psnr_low, result.psnr_high) == (28.0, 31.0)
    # the package's own figure for the same points
    import bjontegaard

    expected = bjontegaard.bd_rate(
        np.array([0.5, 1.0, 2.0, 4.0]), np.array([25.0, 28.0, 31.0, 34.0]),
        np.array([0.5, 0.75, 1.0]), np.array([28.0, 29.5, 31.0]),
        method="pchip", require_matching_points=False, min_overlap=0,
    )  # fmt: skip
    assert result.percent == pytest.approx(expected)
    assert -60 < result.percent < -40


def test_too_few_points_or_no_overlap_give_none() -> None:
    assert bd_rate(ANCHOR, [(1.0, 28.0)]) is None
    assert bd_rate(ANCHOR, [(1.0, 40.0), (2.0, 42.0)]) is None


def test_points_that_buy_nothing_are_dropped() -> None:
    # (3.0, 30.0) costs more than (2.0, 31.0) for less PSNR: no user would pick it
    rates, psnrs = _curve([(0.5, 25.0), (3.0, 30.0), (2.0, 31.0), (2.5, 31.0), (0.0, 10.0)])
    assert rates.tolist() == [0.5, 2.0] and psnrs.tolist() == [25.0, 31.0]
    assert not any(math.isnan(v) for v in rates)


def fake_rd(stage_counts: int) -> dict:
    """An rd JSON as `evaluate --rate-distortion` writes it: codecs' sweeps and vqtool's points
    (one per coding and stage count), on made-up curves."""
    codecs = {
        codec: [
            {"quality": q, "bpp_file": scale * 2 ** (q / 30),
             "bpp_payload": scale * 0.6 * 2 ** (q / 30),
             "psnr": 20 + q / 5}
            for q in (0, 10, 30, 50, 70, 90)
        ]
        for codec, scale in (("jpeg", 2.0), ("webp", 0.8), ("avif", 1.5))
    }  # fmt: skip
    vqtool = [
        {"label": label, "stages": n, "bpp_file": cost * n * 0.15, "bpp_payload": cost * n * 0.14,
         "psnr": 23 + 1.3 * (n - 1)}
        for label, cost in (("raw", 4.0), ("unigram", 1.4), ("prior", 1.0))
        for n in range(1, stage_counts + 1)
    ]  # fmt: skip
    rd = {"images": 10, "image_size": [32, 32], "codecs": codecs, "vqtool": vqtool}
    rd["bd_rate"] = bd_rates(rd)
    return rd


def test_bd_rates_of_a_multi_stage_run_use_its_most_compact_curve() -> None:
    rd = fake_rd(4)
    found = rd["bd_rate"]
    assert found["vqtool"] == "prior"
    for codec in ("jpeg", "webp", "avif"):
        assert found[codec]["file"]["percent"] < 0 and found[codec]["payload"] is not None
        assert found[codec]["file"]["psnr_low"] == 23.0
    # the file curve of WebP is the cheapest codec here, so vqtool's gain against it is smallest
    assert found["webp"]["file"]["percent"] > found["jpeg"]["file"]["percent"]


def test_a_single_stage_run_has_no_curve_to_compare() -> None:
    found = fake_rd(1)["bd_rate"]
    assert found["jpeg"] == {"file": None, "payload": None}


@pytest.mark.parametrize("stages", [1, 4])
def test_the_figure_draws_curves_and_the_bd_rates(stages: int, tmp_path: Path) -> None:
    rd = fake_rd(stages)
    fig = rate_distortion_figure(rd)
    ax = fig.axes[0]
    vqtool_lines = [line for line in ax.get_lines() if line.get_label().startswith("vqtool")]
    assert [len(line.get_xdata()) for line in vqtool_lines] == [stages] * 3
    texts = [t.get_text() for t in ax.texts]
    assert any("vs WEBP" in t for t in texts) == (stages > 1)
    save_png(fig, tmp_path / "rd.png")
    assert (tmp_path / "rd.png").stat().st_size > 10_000


def test_the_bd_rate_table_has_a_row_per_codec_for_a_curve_only() -> None:
    from vqtool.codes.bdrate import bd_rate_rows

    rows = bd_rate_rows(fake_rd(4))
    assert [row[0] for row in rows] == ["jpeg", "webp", "avif"]
    assert all(row[1] < 0 and row[3].startswith("23.00 to") for row in rows)
    assert bd_rate_rows(fake_rd(1)) == []
