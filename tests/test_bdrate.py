"""vqtool.codes.bdrate: BD-rates of known curves, against the bjontegaard package's figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vqtool.codes.bdrate import _curve, bd_rate

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
