"""Figures of a prior run: its loss curve in bits per code, and a sheet of decoded samples.

Like vqtool.reports.plots it never loads a model: `vqtool.reports.arrays.prior_samples` gives
the pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vqtool.reports.plots import (
    DPI,
    LOSS_PNG,
    draw_curve,
    image_grid,
    record_column,
    run_title,
    save_png,
    steps_axis,
)
from vqtool.runs import Run

SAMPLES_PNG = "samples.png"


def prior_loss_figure(run: Run) -> Figure:
    """Train bits per code (smoothed) against steps, with the test figures and two baselines:
    the test codes' unigram entropy and log2 K (every code equally likely)."""
    fig = Figure(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    steps, bits = record_column(run.train, "bits_per_code")
    draw_curve(ax, steps, bits, "C0", "train", raw=True)
    eval_steps, eval_bits = record_column(run.evals, "bits_per_code")
    if len(eval_steps):
        ax.plot(eval_steps, eval_bits, "s", color="C3", label="test, during training")
    test = run.eval_files.get("test", {})
    if isinstance(test.get("bits_per_code"), (int, float)) and isinstance(test.get("step"), int):
        ax.plot(
            [test["step"]], [test["bits_per_code"]], "*", color="C3", markersize=14,
            label="test (vqtool evaluate)",
        )  # fmt: skip
        length = test["bits_per_image"] / test["bits_per_code"] if test["bits_per_code"] else 0
        baselines = [
            ("unigram_bits_per_image", "test codes' unigram entropy", "C2", "--"),
            ("uniform_bits_per_image", "log2 K (every code equally likely)", "grey", ":"),
        ]
        for key, name, color, style in baselines:
            if length and isinstance(test.get(key), (int, float)):
                per_code = test[key] / length
                ax.axhline(per_code, color=color, ls=style, label=f"{name}: {per_code:.2f}")
    steps_axis(ax, "prior: negative log-likelihood of the codes", "bits per code")
    fig.suptitle(f"prior: {run_title(run)}, {run.train[-1]['step']:,} steps")
    return fig


def samples_figure(images: np.ndarray, title: str = "") -> Figure:
    """uint8 (N, 3, H, W) sampled images, decoded by the VQ run, in a grid."""
    grid = image_grid(images.astype(np.float32) / 255.0, columns=max(1, math.isqrt(len(images))))
    height, width = grid.shape[:2]
    fig = Figure(figsize=(2 * width / DPI + 0.4, 2 * height / DPI + 0.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 0.92))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title or "samples")
    return fig


def write_prior_plots(
    run: Run, out_dir: Path, samples: np.ndarray | None, title: str = ""
) -> list[Path]:
    """loss.png, and samples.png when the samples could be decoded."""
    figures = {LOSS_PNG: prior_loss_figure(run)}
    if samples is not None:
        figures[SAMPLES_PNG] = samples_figure(samples, title)
    return [save_png(fig, out_dir / name) for name, fig in figures.items()]
