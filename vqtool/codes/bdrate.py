"""vqtool's rate-distortion curves, and the Bjøntegaard delta rate (BD-rate) between two curves.

Torch-free: `vqtool plot` draws the curves from the JSON alone.

How many more (positive) or fewer (negative) bits, in percent, a test curve needs than an anchor
for the same PSNR, averaged over the PSNR range both curves cover: log-rate as a function of PSNR,
interpolated piecewise-cubic (PCHIP) and integrated over the shared range. The interpolation and
integration are the maintained `bjontegaard` package's; this module picks the points and the
shared range.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

METHOD = "pchip"
CODING_ORDER = ("prior", "unigram", "raw")  # vqtool's codings, fewest bits first
RATES = {"file": "bpp_file", "payload": "bpp_payload"}  # whole files, and payloads alone


def vqtool_curves(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """vqtool's points grouped by coding (raw, unigram, prior), each sorted by stage count: one
    curve per coding for a multi-stage run, one point each for a single stage."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        curves.setdefault(point["label"], []).append(point)
    for curve in curves.values():
        curve.sort(key=lambda p: p.get("stages", 1))
    return curves


class BDRate(NamedTuple):
    percent: float  # negative: the test curve needs fewer bits than the anchor
    psnr_low: float  # the shared PSNR range (dB) the average is taken over
    psnr_high: float


def _curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, psnr) points as arrays sorted by PSNR, one point per PSNR (the fewest bits), and
    only points that more bits improve (the Pareto front: what a user would pick)."""
    best: dict[float, float] = {}
    for bpp, psnr in points:
        if bpp > 0 and math.isfinite(psnr):
            best[psnr] = min(bpp, best.get(psnr, math.inf))
    psnrs = sorted(best)
    kept: list[tuple[float, float]] = []
    for psnr in psnrs:  # drop a point that costs no more than one of higher PSNR
        while kept and kept[-1][0] >= best[psnr]:
            kept.pop()
        kept.append((best[psnr], psnr))
    return np.array([b for b, _ in kept]), np.array([p for _, p in kept])


def bd_rate(
    anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]
) -> BDRate | None:
    """The BD-rate of `test` against `anchor`, each a list of (bits per pixel, PSNR) points;
    None when either has fewer than two usable points or their PSNR ranges do not overlap."""
    import bjontegaard  # imported here: it pulls in scipy, which only this needs

    rate_a, psnr_a = _curve(anchor)
    rate_t, psnr_t = _curve(test)
    if len(rate_a) < 2 or len(rate_t) < 2:
        return None
    low, high = max(psnr_a[0], psnr_t[0]), min(psnr_a[-1], psnr_t[-1])
    if high <= low:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns about partial overlap: expected here
        percent = bjontegaard.bd_rate(
            rate_a, psnr_a, rate_t, psnr_t, method=METHOD,
            require_matching_points=False, min_overlap=0,
        )  # fmt: skip
    return BDRate(float(percent), float(low), float(high))


def bd_rates_against(
    codecs: Mapping[str, Sequence[Mapping[str, Any]]],
    tests: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, dict[str, dict[str, float] | None]]:
    """The BD-rate of a test curve against each codec's sweep, whole files against whole
    files and payloads against payloads: `tests` holds the test points for "file" and for
    "payload" (rd JSON points, which may differ: the best points in payload bits need not be
    the best in file bits). {codec: {"file": BDRate as a dict | None, "payload": ...}}."""
    result: dict[str, dict[str, dict[str, float] | None]] = {}
    for codec, sweep in codecs.items():
        result[codec] = {}
        for kind, key in RATES.items():
            anchor = [(p[key], p["psnr"]) for p in sweep]
            found = bd_rate(anchor, [(p[key], p["psnr"]) for p in tests[kind]])
            result[codec][kind] = None if found is None else found._asdict()
    return result


BD_COLUMNS = ("against", "whole files (%)", "payloads (%)", "PSNR range (dB)")


def bd_rate_rows(rd: Mapping[str, Any]) -> list[list[Any]]:
    """One row per codec of an rd JSON's "bd_rate": the BD-rates of vqtool's curve (negative:
    fewer bits than the codec); none for a run of one stage, whose files are one point per
    coding."""
    bd = rd.get("bd_rate") or {}
    rows = []
    for codec, found in bd.items():
        if codec == "vqtool" or not any(found.values()):
            continue
        file, payload = found.get("file"), found.get("payload")
        span = file or payload
        rows.append([
            codec,
            None if file is None else round(file["percent"], 1),
            None if payload is None else round(payload["percent"], 1),
            f"{span['psnr_low']:.2f} to {span['psnr_high']:.2f}",
        ])  # fmt: skip
    return rows
