"""Figures from results: metrics records and arrays in, matplotlib figures and PNG files out.

This module never loads a model; `vqtool.reports.arrays.run_arrays` produces the arrays that the
reconstruction and codebook figures need. Figures are built on `matplotlib.figure.Figure`
with the Agg canvas, not pyplot, so no global figure state or GUI backend is involved.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

# Agg before anything imports pyplot (a headless server has no display); a notebook that has
# already chosen its backend keeps it, since we draw on our own Agg canvas anyway.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogFormatter,
    MaxNLocator,
    PercentFormatter,
)

from vqtool.codes.bdrate import vqtool_curves  # noqa: E402
from vqtool.errors import WorkError, counted, first_line  # noqa: E402
from vqtool.files import write_bytes  # noqa: E402
from vqtool.images.png import png_bytes  # noqa: E402
from vqtool.runs import Run, RunDir  # noqa: E402

if TYPE_CHECKING:
    from vqtool.reports.arrays import RunArrays

DPI = 100
SAMPLE_COLUMNS = 8


def smooth(values: Sequence[float] | np.ndarray, window: int | None = None) -> np.ndarray:
    """Centred moving average that shrinks at the ends (no lag, no edge dip).

    `window` defaults to `smoothing_window`, so a short run is left as it is.
    """
    y = np.asarray(values, dtype=np.float64)
    if window is None:
        window = smoothing_window(len(y))
    if window <= 1 or len(y) < 3:
        return y
    window = min(window, len(y)) | 1  # odd, so the average is centred on its point
    kernel = np.ones(window)
    finite = np.isfinite(y)
    sums = np.convolve(np.where(finite, y, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def smoothing_window(points: int) -> int:
    """About 1/25 of the curve: 250 log records (25k steps, log_every 100) average 10."""
    return max(1, round(points / 25))


def record_column(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that hold a number under `key`."""
    pairs = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _marker(n: int) -> str | None:
    # A curve of a few points shows its points; a single point would otherwise be invisible.
    return "o" if n <= 30 else None


def _positive(values: np.ndarray) -> np.ndarray:
    """Values usable on a log axis (NaN elsewhere, so the line breaks instead of erroring)."""
    return np.where(values > 0, values, np.nan)


def run_title(run: Run) -> str:
    return f"{run.path.name} ({run.profile})" if run.profile else run.path.name


def _compare_label(run: Run, label: str) -> str:
    """A run in compare's legends: its folder label, profile and K."""
    profile = run.profile if run.profile != label else None  # runs/ema (ema): said once
    k = f"K = {run.num_embeddings}" if run.num_embeddings else None
    facts = [fact for fact in (profile, k) if fact]
    return f"{label} ({', '.join(facts)})" if facts else label


class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (0.4, 0.05, 2), on the ticks matplotlib's own
    formatter labels (decades, and minor ticks when the axis spans little), instead of its
    scientific notation (4x10^-1)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.fix_minus(f"{x:g}") if super().__call__(x, pos) else ""


def _log_y(ax: Any) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter())


def steps_axis(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_xlim(left=0)  # from the start of training, also when a single point is logged
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def _final_test_point(ax: Any, run: Run, color: str, label: str | None) -> None:
    """The star of eval-test.json (vqtool evaluate) at the checkpoint's step, if there is one."""
    final = run.eval_files.get("test", {})
    nmse, step = final.get("nmse"), final.get("step")
    if isinstance(nmse, (int, float)) and nmse > 0 and isinstance(step, int):
        ax.plot([step], [nmse], "*", color=color, markersize=14, label=label)


def draw_curve(
    ax: Any, steps: np.ndarray, values: np.ndarray, color: str, label: str, raw: bool
) -> None:
    """A smoothed curve, over its raw values drawn faintly when smoothing changes anything."""
    smoothed = smooth(values)
    if raw and smoothing_window(len(values)) > 1:
        ax.plot(steps, values, color=color, alpha=0.3, lw=1, label=f"{label}, per log window")
        label = f"{label}, smoothed"
    ax.plot(steps, smoothed, color=color, lw=2, marker=_marker(len(steps)), label=label)


def loss_figure(run: Run) -> Figure:
    """Train NMSE (smoothed, log scale) with test NMSE points, and perplexity, against steps."""
    fig = Figure(figsize=(12, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_nmse, ax_ppl = fig.subplots(1, 2)
    steps, nmse = record_column(run.train, "nmse")
    # Under stage dropout a training step decodes through 1 to n stages, the test through n:
    # the labels say so, or the gap between them reads as overfitting.
    n = run.dropout_stages
    train_label = f"train (1 to {n} stages a step: stage dropout)" if n else "train"
    test_label = f", all {n} stages" if n else ""
    draw_curve(ax_nmse, steps, _positive(nmse), "C0", train_label, raw=True)
    test_evals = [r for r in run.evals if r.get("split", "test") == "test"]
    eval_steps, eval_nmse = record_column(test_evals, "nmse")
    if len(eval_steps):
        ax_nmse.plot(
            eval_steps,
            _positive(eval_nmse),
            "s",
            color="C3",
            label=f"test, during training{test_label}",
        )
    _final_test_point(ax_nmse, run, "C3", f"test (vqtool evaluate){test_label}")
    _log_y(ax_nmse)
    steps_axis(ax_nmse, "reconstruction error", "NMSE (MSE / train pixel variance)")

    steps, ppl = record_column(run.train, "perplexity")
    draw_curve(ax_ppl, steps, ppl, "C1", "train", raw=True)
    ax_ppl.set_ylim(bottom=0)
    # K in the title rather than as a line, which would flatten a low perplexity curve.
    of_k = f" of K = {run.num_embeddings}" if run.num_embeddings else ""
    steps_axis(ax_ppl, f"codebook perplexity (codes in effective use{of_k})", "perplexity (codes)")
    fig.suptitle(f"training curves: {run_title(run)}, {run.train[-1]['step']:,} steps")
    return fig


def image_grid(images: np.ndarray, columns: int = SAMPLE_COLUMNS, gap: int = 2) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> one (H', W', 3) image of `columns` per row, white gaps."""
    import torch
    from torchvision.utils import make_grid

    tensor = torch.from_numpy(np.asarray(images, dtype=np.float32))
    grid = make_grid(tensor, nrow=max(1, min(columns, len(images))), padding=gap, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def psnr_db(mse: float) -> float:
    """PSNR in dB of pixels in [0, 1] with this mean squared error."""
    return 10 * math.log10(1 / mse) if mse > 0 else float("inf")


# Image pixels between cells, and under each pair for its PSNR (2 screen pixels each).
PAIR_GAP = 2
CAPTION = 9


def reconstructions_figure(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    title: str = "",
    which: str = "",
    stages: int = 1,
) -> Figure:
    """Originals (uint8 or [0, 1] floats, (N, 3, H, W)) above their reconstructions ([0, 1]),
    8 pairs a row, each reconstruction's PSNR under it, and the PSNR of all N together.

    `which` says which images these are ("the first 32 test images"), so that their PSNR is
    not read as a whole split's; `stages`, how many residual stages the reconstructions
    decode (said when more than one).
    """
    top = _unit_range(originals)
    bottom = _unit_range(reconstructions)
    n, _, h, w = top.shape
    errors = ((top - bottom) ** 2).reshape(n, -1).mean(axis=1)  # (N,) per-image MSE
    columns = min(SAMPLE_COLUMNS, n)
    rows = math.ceil(n / columns)
    pitch_y, pitch_x = 2 * h + 3 * PAIR_GAP + CAPTION, w + PAIR_GAP
    canvas = np.ones((rows * pitch_y + PAIR_GAP, columns * pitch_x + PAIR_GAP, 3), np.float32)
    fig = Figure(
        figsize=(2 * canvas.shape[1] / DPI + 0.4, 2 * canvas.shape[0] / DPI + 1.3),
        dpi=DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i in range(n):
        row, col = divmod(i, columns)
        y, x = row * pitch_y + PAIR_GAP, col * pitch_x + PAIR_GAP
        canvas[y : y + h, x : x + w] = top[i].transpose(1, 2, 0)
        below = y + h + PAIR_GAP
        canvas[below : below + h, x : x + w] = bottom[i].transpose(1, 2, 0)
        caption_y = below + h + PAIR_GAP + CAPTION / 2 - 0.5
        ax.text(
            x + w / 2 - 0.5,
            caption_y,
            f"{psnr_db(float(errors[i])):.1f}",
            ha="center",
            va="center",
            fontsize=7,
        )
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    staged = f"(the codes of all {stages} residual stages)\n" if stages > 1 else ""
    ax.set_title(
        f"{which or counted(n, 'image')}, each above its reconstruction decoded from the codes\n"
        f"{staged}PSNR (dB) under each; of these {n} together "
        f"{psnr_db(float(errors.mean())):.2f} dB\n"
        "(vqtool evaluate's PSNR covers the whole split)",
        fontsize=9,
    )
    if title:
        fig.suptitle(title)
    return fig


def _unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] images as float32 in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return np.clip(images.astype(np.float32), 0.0, 1.0)


def pca_2d(vectors: np.ndarray, fit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Project (K, D) vectors on the first two principal axes of `fit` (default: the vectors).

    Returns ((K, 2) coordinates, the fraction of `fit`'s variance along each axis).
    """
    base = (vectors if fit is None or len(fit) < 2 else fit).astype(np.float64)
    mean = base.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(base - mean, full_matrices=False)
    projected = (vectors.astype(np.float64) - mean) @ vt[:2].T
    total = float((s**2).sum())
    explained = (s[:2] ** 2) / total if total > 0 else np.zeros(min(2, len(s)))
    if projected.shape[1] < 2:  # D == 1: a flat second axis
        projected = np.column_stack([projected, np.zeros(len(projected))])
        explained = np.append(explained, 0.0)
    return projected, explained


def _perplexity(counts: np.ndarray) -> float:
    import torch

    from vqtool.models.quantizer import perplexity_from_counts

    return float(perplexity_from_counts(torch.from_numpy(counts)))


def codebook_figure(
    counts: np.ndarray, codebook: np.ndarray, title: str = "", images: int = 0
) -> Figure:
    """Code usage sorted by frequency (dead codes counted) and a PCA of the codes by usage.

    counts: (K,) how often each code was chosen; codebook: (K, D) code vectors.
    """
    counts = np.asarray(counts, dtype=np.float64)
    k = len(counts)
    total = counts.sum()
    used = int((counts > 0).sum())
    probs = counts / total if total > 0 else np.zeros(k)
    perplexity = _perplexity(counts) if total > 0 else 0.0

    fig = Figure(figsize=(12, 4.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_use, ax_pca = fig.subplots(1, 2)
    order = np.argsort(-counts, kind="stable")
    ranks = np.arange(1, k + 1)
    ax_use.bar(ranks, probs[order] * 100, width=1.0, color="C0")
    if used < k:
        ax_use.axvspan(used + 0.5, k + 0.5, color="C3", alpha=0.12, label=f"{k - used} dead codes")
        ax_use.legend(loc="upper right")
    over = f" over {images:,} test images" if images else ""
    ax_use.set_title(
        f"code usage{over}\n{used} of {k} codes used ({used / k:.0%}), {k - used} dead, "
        f"perplexity {perplexity:.1f}"
    )
    ax_use.set_xlabel("code rank (most used first)")
    ax_use.set_ylabel("share of latent positions (%)")
    ax_use.set_xlim(0.5, k + 0.5)
    ax_use.grid(True, axis="y", alpha=0.3)

    alive = counts > 0
    # Axes of the codes in use: dead codes (often all decayed to one point) would skew them.
    points, explained = pca_2d(codebook, codebook[alive])
    scatter = ax_pca.scatter(
        points[alive, 0],
        points[alive, 1],
        c=np.log10(counts[alive]),
        s=22,
        cmap="viridis",
        label=f"used ({used})",
    )
    if (~alive).any():  # drawn last so that they stay visible among the used ones
        ax_pca.scatter(
            points[~alive, 0],
            points[~alive, 1],
            marker="x",
            s=18,
            color="C3",
            alpha=0.7,
            label=f"dead ({k - used}, never used)",
        )
    colorbar = fig.colorbar(scatter, ax=ax_pca)
    colorbar.set_label("uses (log10 count)")
    ax_pca.set_title("code vectors, first two principal components")
    ax_pca.set_xlabel(f"PC1 ({explained[0]:.0%} of the used codes' variance)")
    ax_pca.set_ylabel(f"PC2 ({explained[1]:.0%} of the used codes' variance)")
    ax_pca.grid(True, alpha=0.3)
    ax_pca.legend(loc="best")
    if title:
        fig.suptitle(title)
    return fig


def compare_figure(runs: Sequence[Run], labels: Sequence[str]) -> Figure:
    """Smoothed train NMSE (log scale) and perplexity of several runs overlaid, vs steps."""
    fig = Figure(figsize=(12, 4.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_nmse, ax_ppl = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = f"C{i % 10}"
        label = _compare_label(run, label)
        steps, nmse = record_column(run.train, "nmse")
        draw_curve(ax_nmse, steps, _positive(nmse), color, label, raw=False)
        _final_test_point(ax_nmse, run, color, None)
        if run.num_embeddings:
            steps, ppl = record_column(run.train, "perplexity")
            draw_curve(ax_ppl, steps, ppl / run.num_embeddings, color, label, raw=False)
    if any(r.eval_files.get("test") for r in runs):
        ax_nmse.plot([], [], "*", color="grey", markersize=14, label="test (vqtool evaluate)")
    _log_y(ax_nmse)
    steps_axis(ax_nmse, "train NMSE, smoothed", "NMSE (MSE / train pixel variance)")
    ax_ppl.set_ylim(bottom=0)
    ax_ppl.yaxis.set_major_formatter(PercentFormatter(1.0))
    # Runs may have codebooks of different sizes K: perplexity / K puts them on one scale.
    unknown = [label for run, label in zip(runs, labels, strict=True) if not run.num_embeddings]
    title = "codebook in effective use (perplexity / K), smoothed"
    if unknown:
        title += f"\nnot drawn (K unknown: no profile.toml): {', '.join(unknown)}"
    steps_axis(ax_ppl, title, "perplexity / K (share of the K codes)")
    fig.suptitle(f"{len(runs)} runs compared" if len(runs) != 1 else "1 run")
    return fig


def rate_distortion_figure(rd: Mapping[str, Any]) -> Figure:
    """PSNR against bits per pixel: each codec's sweep (whole files solid, payloads dashed)
    under vqtool's code files (whole files), from the JSON of `evaluate --rate-distortion`."""
    fig = Figure(figsize=(8, 5.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    draw_codec_sweeps(ax, rd["codecs"])
    for j, (label, curve) in enumerate(vqtool_curves(rd["vqtool"]).items()):
        bpp, psnr = [p["bpp_file"] for p in curve], [p["psnr"] for p in curve]
        if len(curve) == 1:
            name = f"vqtool {label} ({bpp[0]:.3f} bpp)"
        else:
            name = f"vqtool {label}, stages 1-{curve[-1].get('stages', len(curve))}"
        ax.plot(bpp, psnr, "*-", color=f"C{3 + j}", markersize=15, linewidth=2, label=name)
    size = rd["image_size"]
    title = f"rate-distortion over {rd['images']:,} images of {size[0]}x{size[1]} (HxW)"
    finish_rate_distortion_axes(ax, rd.get("bd_rate"), title)
    return fig


def draw_codec_sweeps(ax: Any, codecs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Each codec's sweep of an rd JSON in colours C0, C1, ...: whole files solid, payloads
    dashed."""
    for i, (codec, points) in enumerate(codecs.items()):
        ordered = sorted(points, key=lambda p: p["quality"])
        psnr = [p["psnr"] for p in ordered]
        color = f"C{i}"
        ax.plot([p["bpp_file"] for p in ordered], psnr, "o-", color=color, markersize=4,
                label=f"{codec.upper()} (whole files)")  # fmt: skip
        ax.plot([p["bpp_payload"] for p in ordered], psnr, "--", color=color, alpha=0.6,
                label=f"{codec.upper()} (payload)")  # fmt: skip


def finish_rate_distortion_axes(
    ax: Any, bd: Mapping[str, Any] | None, title: str, side: Any = None
) -> None:
    """The BD-rate box (when there are BD-rates), a log bits-per-pixel axis read in plain
    numbers, the legend and the title; the legend and the box go to the axes `side` (turned
    off) when it is given, so that on a crowded figure they hide no curve."""
    lines = bd_rate_lines(bd)
    box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.85}
    if side is not None:
        side.set_axis_off()
        side.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper left")
        if lines:
            side.text(0.0, 0.0, "\n".join(lines), transform=side.transAxes, ha="left",
                      va="bottom", fontsize=8, family="monospace", bbox=box)  # fmt: skip
    elif lines:
        ax.text(0.98, 0.03, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, family="monospace", bbox=box)  # fmt: skip
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("bits per pixel (log scale)")
    ax.set_ylabel("PSNR (dB), mean over images")
    ax.grid(True, which="both", alpha=0.3)
    if side is None:
        ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)


def bd_rate_lines(bd: Mapping[str, Any] | None) -> list[str]:
    """The BD-rate box: one line per codec, whole files and payloads."""
    measured = [v for k, v in (bd or {}).items() if k != "vqtool" and any(v.values())]
    if bd is None or not measured:  # a single stage: a point, no curve to compare
        return []
    lines = [f"BD-rate of vqtool {bd['vqtool']} (shared PSNR range)"]
    for codec, found in bd.items():
        if codec == "vqtool":
            continue
        shown = [
            f"{kind} {found[kind]['percent']:+.1f}%" if found.get(kind) else f"{kind} n/a"
            for kind in ("file", "payload")
        ]
        lines.append(f"vs {codec.upper():5s} {shown[0]:>16s}  {shown[1]:>16s}")
    return lines


def save_png(fig: Figure, path: Path) -> Path:
    """Render a figure to PNG and write it atomically (never a half-written file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = buffer.getvalue()
    write_bytes(path, data)
    return path


def save_picture(picture: np.ndarray, path: Path) -> Path:
    """Write a picture made pixel by pixel, uint8 (height, width, 3), as a PNG, atomically."""
    write_bytes(path, png_bytes(picture))
    return path


LOSS_PNG = "loss.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
CODEBOOK_PNG = "codebook.png"
RATE_DISTORTION_PNG = "rd.png"


def write_run_plots(run: Run, out_dir: Path, arrays: RunArrays | None) -> list[Path]:
    """Write loss.png, and with the model's arrays reconstructions.png and codebook.png."""
    figures = {LOSS_PNG: loss_figure(run)}
    if arrays is not None:
        title = f"{run_title(run)}, checkpoint at step {arrays.step:,}"
        figures[RECONSTRUCTIONS_PNG] = reconstructions_figure(
            arrays.originals,
            arrays.reconstructions,
            title,
            f"the first {counted(len(arrays.originals), 'test image')}",
            arrays.stages,
        )
        # a run of stages: RunArrays holds the first stage's codebook and usage alone
        first = (
            f": stage 1's codebook (of {arrays.stages} residual stages)"
            if arrays.stages > 1
            else ""
        )
        figures[CODEBOOK_PNG] = codebook_figure(
            arrays.counts, arrays.codebook, title + first, arrays.images
        )
    return [save_png(fig, out_dir / name) for name, fig in figures.items()]


def write_rate_distortion_plot(run_path: Path, out_dir: Path) -> Path | None:
    """rd.png from the run's rd-test.json, when `vqtool evaluate --rate-distortion` wrote one."""
    source = RunDir.at(run_path).rd_file("test")
    if not source.is_file():
        return None
    try:
        figure = rate_distortion_figure(json.loads(source.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"cannot draw the rate-distortion points: {first_line(exc, 80)}"
        raise WorkError(what, source, "run vqtool evaluate --rate-distortion again") from exc
    return save_png(figure, out_dir / RATE_DISTORTION_PNG)
