"""Several runs' rate-distortion points together: their lower hull and its BD-rates.

Torch-free, like vqtool.codes.bdrate: `vqtool plot --rd` computes it from the runs' rd JSONs.

The lower hull is the Pareto frontier of every run's code files in (bits per pixel, PSNR): a
point stays unless another has as few bits or fewer for as high a PSNR or higher. It is the
best PSNR the runs reach at each rate, whichever run, coding (raw, unigram, prior) or stage
count gives it. Not the convex hull: convexity depends on the axes (bits or log bits, PSNR or
MSE), and every frontier point is a file that a user can make.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vqtool.codes.bdrate import RATES, bd_rates_against

HULL = "lower hull"  # the "vqtool" entry of the combined BD-rates: which curve they measure


def lower_hull(points: Sequence[Mapping[str, Any]], key: str = "bpp_file") -> list[dict[str, Any]]:
    """The points that no other point beats in (`key` bits per pixel, PSNR), sorted by bits:
    each costs more bits than the one before and buys more PSNR. A point without positive
    bits or a finite PSNR is left out (no log-rate)."""
    usable = [p for p in points if p[key] > 0 and math.isfinite(p["psnr"])]
    # By bits, and at equal bits the higher PSNR first, so that only it can be kept.
    ordered = sorted(usable, key=lambda p: (p[key], -p["psnr"]))
    hull: list[dict[str, Any]] = []
    for point in ordered:
        if not hull or point["psnr"] > hull[-1]["psnr"]:
            hull.append(dict(point))
    return hull


def runs_rate_distortion(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Runs' rd JSONs (label, rd), measured on the same images, as one: every run's points
    (each with its `run` label), the codecs' sweeps (the first run's), the lower hull in whole
    file bits and in payload bits, and the hull's BD-rates against each codec over their
    shared PSNR range (`bd_rate`, shaped as one run's, with "vqtool": "lower hull")."""
    if not runs:
        raise ValueError("no runs to combine")
    first = runs[0][1]
    points = [{"run": label, **point} for label, rd in runs for point in rd["vqtool"]]
    hull = {kind: lower_hull(points, key) for kind, key in RATES.items()}
    return {
        "runs": [_run_facts(label, rd) for label, rd in runs],
        "split": first.get("split"),
        "data": first.get("data"),
        "images": first["images"],
        "image_size": first["image_size"],
        "vqtool": points,
        "codecs": first["codecs"],
        "hull": hull,
        "bd_rate": {"vqtool": HULL, **bd_rates_against(first["codecs"], hull)},
    }


def _run_facts(label: str, rd: Mapping[str, Any]) -> dict[str, Any]:
    """What the combined JSON keeps of one run's rd JSON besides its points."""
    return {
        "run": label,
        "checkpoint": rd.get("checkpoint"),
        "prior": rd.get("prior"),
        "points": len(rd["vqtool"]),
        "bd_rate": rd.get("bd_rate"),
    }


HULL_COLUMNS = ("run", "coding", "stages", "bpp (whole files)", "bpp (payload)", "PSNR (dB)")


def hull_rows(combined: Mapping[str, Any], kind: str = "file") -> list[list[Any]]:
    """The hull's points as table rows, fewest bits first."""
    return [
        [p["run"], p["label"], p.get("stages", 1), p["bpp_file"], p["bpp_payload"], p["psnr"]]
        for p in combined["hull"][kind]
    ]
