"""The export command: a run's encoder and decoder as ONNX graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vqtool.cli import progress
from vqtool.cli.app import Command, RunOrCheckpoint, Stages, app, reports_errors
from vqtool.process import import_torch


@app.command("export", cls=Command, short_help="Export a run's encoder and decoder as ONNX.")
@reports_errors
def export_graphs(
    run: RunOrCheckpoint,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Folder for encoder.onnx, decoder.onnx and model.json (made if missing; "
            "files of those names in it are replaced).",
            metavar="DIR",
            show_default=False,
        ),
    ],
    stages: Stages = None,
) -> None:
    """Export a run's encoder and decoder as ONNX graphs, to encode and decode images with
    onnxruntime (or any ONNX runtime) without torch or vqtool.

    encoder.onnx: uint8 RGB images (N, 3, H, W), any N, H and W multiples of the run's
    model.downsample f -> int64 codes (N, H/f, W/f), or (N, S, H/f, W/f) for a run of S
    residual stages (--stages N: its first N). decoder.onnx: those codes -> uint8 images,
    rounded and clamped as vqtool decode writes them. model.json: the checkpoint's
    fingerprint, K, D, f, stages, fsq levels, the pixel convention and the opset.

    Needs onnx and onnxruntime: pip install 'vqtool\\[export]'.

    Example: [bold]vqtool export runs/demo -o demo-onnx[/bold]
    """
    import_torch()
    from vqtool.vq.export import export_run

    result = export_run(run, output, stages)
    facts = result.facts
    f = facts["downsample"]
    shape = ", ".join(str(s) for s in facts["encoder"]["output"]["shape"][:-2])
    progress.info(
        f"wrote encoder.onnx, decoder.onnx and model.json to {result.out_dir}: uint8 images "
        f"(N, 3, H, W) <-> codes ({shape}, H/{f}, W/{f}) of {facts['num_embeddings']}; ONNX "
        f"opset {facts['opset']}"
    )
