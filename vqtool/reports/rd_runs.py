"""Several runs on one rate-distortion figure (`vqtool plot R1 R2 --rd`): their rd JSONs read
and checked, combined with their lower hull (vqtool.codes.hull), and drawn.

Reads only the rd-<split>.json files that `vqtool evaluate --rate-distortion` writes, never a
model. Runs are put together only when they were measured on the same images (the same
dataset, split and number of images), so that one set of codec sweeps serves them all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vqtool.codes.bdrate import CODING_ORDER, vqtool_curves
from vqtool.codes.hull import runs_rate_distortion
from vqtool.errors import UsageError, WorkError, first_line
from vqtool.reports.plots import DPI, draw_codec_sweeps, finish_rate_distortion_axes
from vqtool.reports.summary import run_labels
from vqtool.runs import RunDir

# How each coding's points are drawn: the run's colour, and a marker per coding.
CODING_STYLE: dict[str, dict[str, Any]] = {
    "prior": {"marker": "*", "markersize": 13, "linewidth": 1.8, "alpha": 1.0},
    "unigram": {"marker": "o", "markersize": 6, "linewidth": 1.2, "alpha": 0.8},
    "raw": {"marker": "x", "markersize": 6, "linewidth": 0.8, "alpha": 0.45},
}
FIRST_RUN_COLOUR = 3  # C0 to C2 are the codecs'


class RunsRD(NamedTuple):
    combined: dict[str, Any]  # vqtool.codes.hull.runs_rate_distortion's JSON
    warnings: list[str]


def read_runs_rd(paths: Sequence[Path], split: str = "test") -> RunsRD:
    """The rd JSONs of the runs at `paths`, checked to be of the same images, combined.

    Raises UsageError for a path that is not a VQ run, a run without rd-<split>.json (naming
    the command that writes it), or runs measured on different images; WorkError for an rd
    JSON that cannot be read."""
    folders = [RunDir.with_results(path) for path in paths]
    seen: dict[Path, Path] = {}
    for given, folder in zip(paths, folders, strict=True):
        if folder.path.resolve() in seen:
            raise UsageError("the same run is given twice", given, "give each run once")
        seen[folder.path.resolve()] = given
    labels = run_labels([folder.path for folder in folders])
    runs = [(label, _read_rd(folder, given, split))
            for label, folder, given in zip(labels, folders, paths, strict=True)]  # fmt: skip
    _check_same_images(runs, folders, split)
    warnings = _codec_differences(runs)
    try:
        return RunsRD(runs_rate_distortion(runs), warnings)
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkError(
            f"cannot combine the rate-distortion points: {first_line(exc, 80)}",
            ", ".join(str(folder.rd_file(split)) for folder in folders),
            "run vqtool evaluate RUN --rate-distortion again for each run",
        ) from exc


def _read_rd(folder: RunDir, given: Path, split: str) -> dict[str, Any]:
    if folder.kind() == "prior":
        raise UsageError(
            "a prior run has no rate-distortion points of its own",
            given,
            "give its VQ run, measured by vqtool evaluate VQ_RUN --rate-distortion --prior "
            f"{given}",
        )
    source = folder.rd_file(split)
    if not source.is_file():
        raise UsageError(
            f"no rate-distortion points of the {split} split in this run",
            given,
            f"run vqtool evaluate {given} --rate-distortion"
            + ("" if split == "test" else f" --split {split}"),
        )
    try:
        rd = json.loads(source.read_text(encoding="utf-8"))
        if not isinstance(rd, dict) or not all(
            key in rd for key in ("vqtool", "codecs", "images", "image_size")
        ):
            raise ValueError("not the JSON of vqtool evaluate --rate-distortion")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WorkError(
            f"cannot read the rate-distortion points: {first_line(exc, 80)}",
            source,
            f"run vqtool evaluate {given} --rate-distortion again",
        ) from exc
    return rd


def _images_of(rd: Mapping[str, Any], folder: RunDir, split: str) -> tuple[Any, ...]:
    """What picks an rd JSON's images: source, split, count and size. An rd JSON written
    before the source was kept names none; its run's profile.toml does."""
    source = rd.get("data")
    if source is None:
        profile, _ = folder.read_profile_dict()
        data = (profile or {}).get("data")
        source = data.get("dataset", "cifar10") if isinstance(data, dict) else None
        if source == "folder":  # its path and fitting are named only in newer rd JSONs
            source = None
    return source, rd.get("split", split), rd["images"], tuple(rd["image_size"])


def _describe(images: tuple[Any, ...]) -> str:
    source, split, count, (h, w) = images
    of = f" of {source}" if source else ""
    return f"{count:,} {split} images{of}, {h}x{w}"


def _check_same_images(
    runs: Sequence[tuple[str, Mapping[str, Any]]], folders: Sequence[RunDir], split: str
) -> None:
    first = _images_of(runs[0][1], folders[0], split)
    for (label, rd), folder in zip(runs[1:], folders[1:], strict=True):
        other = _images_of(rd, folder, split)
        # A source unknown on one side (an older rd JSON of an image folder) is not compared.
        known = first[0] is not None and other[0] is not None
        if first[1:] != other[1:] or (known and first[0] != other[0]):
            raise UsageError(
                f"{runs[0][0]} and {label} were measured on different images "
                f"({_describe(first)}; {_describe(other)})",
                folder.rd_file(split),
                "measure each run on the same images: vqtool evaluate RUN --rate-distortion "
                "--rd-images N, the same N for every run",
            )


def _codec_differences(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """A warning for each run whose codec sweeps differ from the first run's (another Pillow,
    say): the figure draws the first run's."""
    first_label, first = runs[0]
    return [
        f"the codec sweeps of {label} differ from those of {first_label} (Pillow "
        f"{rd.get('pillow', '?')} and {first.get('pillow', '?')}): drawn from {first_label}'s"
        for label, rd in runs[1:]
        if rd["codecs"] != first["codecs"]
    ]


def runs_rate_distortion_figure(combined: Mapping[str, Any]) -> Figure:
    """PSNR against bits per pixel (whole files): the codecs' sweeps, each run's code files
    (a colour per run, a marker per coding, a line through its stage counts), the lower hull
    of them all beneath, and the hull's BD-rates against each codec."""
    fig = Figure(figsize=(12, 6.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax, side = fig.subplots(1, 2, width_ratios=(2.6, 1))
    draw_codec_sweeps(ax, combined["codecs"])
    hull = combined["hull"]["file"]
    ax.plot([p["bpp_file"] for p in hull], [p["psnr"] for p in hull], "-", color="black",
            linewidth=7, alpha=0.18, solid_capstyle="round", zorder=1,
            label="lower hull of the runs (whole files)")  # fmt: skip
    staged = False
    for i, run in enumerate(combined["runs"]):
        color = f"C{(FIRST_RUN_COLOUR + i) % 10}"
        curves = vqtool_curves([p for p in combined["vqtool"] if p["run"] == run["run"]])
        for coding, curve in curves.items():
            style = CODING_STYLE.get(coding, CODING_STYLE["raw"])
            last = curve[-1].get("stages", 1)
            what = f", stages 1-{last}" if len(curve) > 1 else f", {curve[0]['bpp_file']:.3f} bpp"
            ax.plot([p["bpp_file"] for p in curve], [p["psnr"] for p in curve], "-",
                    color=color, label=f"{run['run']} {coding}{what}", **style)  # fmt: skip
        best = next(curves[coding] for coding in CODING_ORDER if coding in curves)
        if len(best) > 1:  # the stage counts along the run's most compact curve
            staged = True
            for p in best:
                ax.annotate(str(p.get("stages", 1)), (p["bpp_file"], p["psnr"]), fontsize=7,
                            color=color, xytext=(4, -11), textcoords="offset points")  # fmt: skip
    h, w = combined["image_size"]
    of = f" of {combined['data']}" if combined.get("data") else ""
    split = combined.get("split") or "test"
    title = (
        f"{len(combined['runs'])} runs' rate-distortion over {combined['images']:,} {split} "
        f"images{of}, {h}x{w} (HxW)" + ("\nnumbers: stages decoded" if staged else "")
    )
    finish_rate_distortion_axes(ax, combined["bd_rate"], title, side)
    return fig
