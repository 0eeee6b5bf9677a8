"""vqtool.codes.hull: the lower hull of several runs' points and its BD-rates, on made-up
points whose answers are known; the combined JSON and its figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vqtool.codes.bdrate import bd_rate, bd_rate_rows
from vqtool.codes.hull import HULL, hull_rows, lower_hull, runs_rate_distortion
from vqtool.reports.plots import save_png
from vqtool.reports.rd_runs import runs_rate_distortion_figure

ANCHOR = [(0.5, 25.0), (1.0, 28.0), (2.0, 31.0), (4.0, 34.0)]


def point(run: str, bpp: float, psnr: float, label: str = "prior", stages: int = 1) -> dict:
    return {"run": run, "label": label, "stages": stages, "bpp_file": bpp,
            "bpp_payload": bpp * 0.9, "psnr": psnr}  # fmt: skip


def test_a_point_another_run_beats_is_not_on_the_hull() -> None:
    points = [
        point("a", 0.25, 25.0), point("a", 0.5, 28.0), point("a", 1.5, 29.0),
        point("b", 0.6, 26.0), point("b", 1.0, 31.0), point("b", 2.0, 34.0),
    ]  # fmt: skip
    hull = lower_hull(points)
    # b's 0.6 bpp costs more than a's 0.5 for less PSNR; a's 1.5 more than b's 1.0 for less
    assert [(p["run"], p["bpp_file"]) for p in hull] == [
        ("a", 0.25), ("a", 0.5), ("b", 1.0), ("b", 2.0)
    ]  # fmt: skip
    assert all(p2["psnr"] > p1["psnr"] for p1, p2 in zip(hull, hull[1:], strict=False))


def test_ties_keep_one_point_and_unusable_points_are_left_out() -> None:
    points = [
        point("a", 1.0, 30.0), point("b", 1.0, 29.0),  # same bits, less PSNR: dropped
        point("b", 1.2, 30.0),  # same PSNR, more bits: dropped
        point("a", 0.0, 20.0), point("b", 0.8, float("nan")),
    ]  # fmt: skip
    assert [(p["run"], p["bpp_file"]) for p in lower_hull(points)] == [("a", 1.0)]
    assert lower_hull([]) == []


def test_the_hull_in_payload_bits_is_its_own() -> None:
    cheap_payload = {**point("b", 1.0, 29.0), "bpp_payload": 0.1}
    points = [point("a", 0.9, 30.0), cheap_payload]
    assert [p["run"] for p in lower_hull(points, "bpp_file")] == ["a"]
    assert [p["run"] for p in lower_hull(points, "bpp_payload")] == ["b", "a"]


def fake_rd(points: list[tuple[float, float, int]], label: str = "prior") -> dict[str, Any]:
    """An rd JSON of one run: its (bpp, PSNR, stages) points and the codecs' sweep, ANCHOR."""
    codecs = {
        codec: [
            {"quality": q, "bpp_file": b * scale, "bpp_payload": b * scale * 0.9, "psnr": p}
            for q, (b, p) in zip((10, 30, 50, 70), ANCHOR, strict=True)
        ]
        for codec, scale in (("jpeg", 1.0), ("webp", 0.8))
    }  # fmt: skip
    vqtool = [{k: v for k, v in point("", b, p, label, s).items() if k != "run"}
              for b, p, s in points]  # fmt: skip
    return {"split": "test", "data": "cifar10", "images": 10, "image_size": [32, 32],
            "vqtool": vqtool, "codecs": codecs, "checkpoint": "x", "prior": None}  # fmt: skip


def two_runs() -> list[tuple[str, dict[str, Any]]]:
    """Two runs whose hull is ANCHOR at half the rate: each has one point the other beats."""
    low = fake_rd([(0.25, 25.0, 1), (0.5, 28.0, 2), (1.5, 29.0, 3)])
    high = fake_rd([(0.6, 26.0, 1), (1.0, 31.0, 2), (2.0, 34.0, 3)])
    return [("low", low), ("high", high)]


def test_the_bd_rate_of_the_hull_is_that_of_the_best_points() -> None:
    combined = runs_rate_distortion(two_runs())
    json.dumps(combined)  # plain data
    hull = combined["hull"]["file"]
    assert [(p["run"], p["stages"]) for p in hull] == [
        ("low", 1), ("low", 2), ("high", 2), ("high", 3)
    ]  # fmt: skip
    bd = combined["bd_rate"]
    assert bd["vqtool"] == HULL
    # the hull is ANCHOR at half the rate: -50% against JPEG, whose sweep is ANCHOR
    assert bd["jpeg"]["file"]["percent"] == pytest.approx(-50.0, abs=1e-9)
    assert (bd["jpeg"]["file"]["psnr_low"], bd["jpeg"]["file"]["psnr_high"]) == (25.0, 34.0)
    # WebP needs 0.8 x ANCHOR's bits: the hull needs 0.5 / 0.8 of them
    assert bd["webp"]["file"]["percent"] == pytest.approx((0.5 / 0.8 - 1) * 100, abs=1e-9)
    # payloads are 0.9 x both: the same ratios
    assert bd["jpeg"]["payload"]["percent"] == pytest.approx(-50.0, abs=1e-9)
    # each run alone does worse than the hull (a curve over its own points)
    alone = bd_rate(ANCHOR, [(p["bpp_file"], p["psnr"]) for p in two_runs()[0][1]["vqtool"]])
    assert alone is not None and alone.percent > bd["jpeg"]["file"]["percent"]


def test_the_combined_json_names_each_run_and_its_points() -> None:
    combined = runs_rate_distortion(two_runs())
    assert [run["run"] for run in combined["runs"]] == ["low", "high"]
    assert [run["points"] for run in combined["runs"]] == [3, 3]
    assert {p["run"] for p in combined["vqtool"]} == {"low", "high"}
    assert combined["images"] == 10 and combined["data"] == "cifar10"
    rows = hull_rows(combined)
    assert [row[:3] for row in rows] == [["low", "prior", 1], ["low", "prior", 2],
                                         ["high", "prior", 2], ["high", "prior", 3]]  # fmt: skip
    assert [row[0] for row in bd_rate_rows(combined)] == ["jpeg", "webp"]
    with pytest.raises(ValueError):
        runs_rate_distortion([])


def test_the_figure_draws_every_run_the_hull_and_its_bd_rates(tmp_path: Path) -> None:
    runs = two_runs()
    runs.append(("single", fake_rd([(0.3, 27.0, 1)], "unigram")))
    fig = runs_rate_distortion_figure(runs_rate_distortion(runs))
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "low prior, stages 1-3" in labels and "high prior, stages 1-3" in labels
    assert "single unigram, 0.300 bpp" in labels
    assert any(label.startswith("lower hull") for label in labels)
    stages = [t.get_text() for t in ax.texts]
    assert sorted(stages) == ["1", "1", "2", "2", "3", "3"]  # along each curve of stages
    # the legend and the BD-rate box beside the curves, not over them
    side = fig.axes[1]
    assert not side.axison and side.get_legend() is not None and ax.get_legend() is None
    box = [t.get_text() for t in side.texts]
    assert any("BD-rate of vqtool lower hull" in t and "vs JPEG" in t for t in box)
    assert "3 runs" in ax.get_title()
    save_png(fig, tmp_path / "rd.png")
    assert (tmp_path / "rd.png").stat().st_size > 10_000
