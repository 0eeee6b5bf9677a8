"""Commands of code files: encode images into a .vqc, decode one into PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vqtool.cli import progress
from vqtool.cli.app import (
    BatchSize,
    Command,
    DataDir,
    Device,
    PriorOption,
    RunOrCheckpoint,
    app,
    data_dir_of,
    load_coding_prior_for,
    optional_option,
    reports_errors,
)
from vqtool.errors import (
    counted,
)
from vqtool.process import import_torch


@app.command(cls=Command, short_help="Encode images into a code file (.vqc).")
@reports_errors
def encode(
    run: RunOrCheckpoint,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (recursive, sorted), or cifar10:test, cifar10:train, "
            "cifar10:test:N (the first N).",
            metavar="INPUT",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="The code file to write (.vqc).",
            metavar="FILE",
            show_default=False,
        ),
    ],
    size: Annotated[
        str | None,
        optional_option(
            "Resize every image to HxW first (needed for images of mixed sizes), as --resize says.",
            "HxW",
        ),
    ] = None,
    resize: Annotated[
        str | None,
        optional_option(
            "How --size fits an image of another shape: centre-crop (scale it to cover HxW and "
            "keep the centre), stretch (to HxW, losing its aspect ratio) or random-crop (the "
            "centre HxW of it scaled to cover 9/8 of HxW: the window evaluate takes of a "
            "random-crop run's images). Default: the run's data.resize, so that encoding sees "
            "images as training did.",
            "MODE",
        ),
    ] = None,
    batch_size: BatchSize = 256,
    data_dir: DataDir = None,
    device: Device = "auto",
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse (exit 1, nothing written) a folder holding a damaged image or a file "
            "that is not an image, instead of skipping it with a note.",
        ),
    ] = False,
    compress: Annotated[
        bool,
        typer.Option(
            "--compress",
            help="Range-code the codes: with the file's own code frequencies, or with --prior.",
        ),
    ] = False,
    prior: PriorOption = None,
) -> None:
    """Encode images into a code file (.vqc): code indices, names, sizes and the checkpoint's
    fingerprint.

    In folders, files that are not images and damaged images are skipped with a note.

    --strict refuses them instead; a file named on its own must be a readable image.

    Images larger than 4096x4096 need --size, which shrinks them while they are read.

    --size fits each image as the run's training did (its data.resize) unless --resize says
    otherwise; without --size, images keep their own size.

    Example: [bold]vqtool encode runs/demo photos/ cifar10:test:100 -o codes.vqc --size 32x32[/bold]
    """
    import_torch()
    from vqtool.codes.pipeline import encode_inputs
    from vqtool.codes.vqc import check_output, write_codes
    from vqtool.device import resolve_device
    from vqtool.images.pixels import parse_size
    from vqtool.vq.load import load_model

    shape = parse_size(size) if size is not None else None
    _check_resize(resize, shape)
    check_output(output)
    loaded = load_model(run, resolve_device(device))
    mode = resize if resize is not None else loaded.profile.data.resize
    coding_prior = load_coding_prior_for(prior, loaded)
    with progress.CountProgress("encoding") as bar:
        codes = encode_inputs(
            loaded,
            inputs,
            data_dir_of(data_dir),
            shape,
            batch_size,
            bar.update,
            lambda note: progress.info(f"note: {note}"),
            strict,
            mode,
        )
        write_codes(output, codes, compress, coding_prior, bar.stage("compressing"))
    coded = ""
    if compress or coding_prior is not None:
        coded = f", {output.stat().st_size * 8 / codes.codes.shape[0]:,.1f} bits per image"
    fitted = ""
    if shape is not None:
        fitted = f", resized by {mode}" + (" (the run's data.resize)" if resize is None else "")
    progress.info(f"wrote {output}: {_encoded(codes)}{coded}{fitted}")


def _check_resize(resize: str | None, size: tuple[int, int] | None) -> None:
    from vqtool.errors import UsageError
    from vqtool.profiles import RESIZE_MODES

    if resize is None:
        return
    if resize not in RESIZE_MODES:
        raise UsageError(
            f"unknown resize mode {resize!r}", "--resize", f"use {', '.join(RESIZE_MODES)}"
        )
    if size is None:
        raise UsageError(
            "--resize needs --size",
            "--resize",
            "add --size HxW (e.g. --size 64x64); without it, images keep their own size",
        )


def _encoded(codes: Any) -> str:
    """'1 image of 300x451 (padded to 300x452) as 75x113 codes of 512': the sizes as given
    (after --size), and the padded size they share when it differs."""
    n, h, w = codes.codes.shape
    padded = f"{codes.image_size[0]}x{codes.image_size[1]}"
    sizes = {(int(a), int(b)) for a, b in codes.sizes}
    if len(sizes) == 1:
        ((height, width),) = sizes
        given = f"{height}x{width}"
        shape = given if given == padded else f"{given} (padded to {padded})"
        images = f"{counted(n, 'image')} of {shape}"
    else:
        images = f"{counted(n, 'image')} of mixed sizes, padded to {padded},"
    return f"{images} as {h}x{w} codes of {codes.num_embeddings}"


@app.command(cls=Command, short_help="Decode a code file into one PNG per image.")
@reports_errors
def decode(
    run: RunOrCheckpoint,
    codes: Annotated[
        Path,
        typer.Argument(
            help="A code file written by vqtool encode.", metavar="CODES", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Folder for the PNGs (made if missing).",
            metavar="DIR",
            show_default=False,
        ),
    ],
    grid: Annotated[
        Path | None,
        typer.Option(
            help="Also write the first images side by side to this PNG: pixels only, in the "
            "code file's order, row by row (names are in the PNG files' names).",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    prior: PriorOption = None,
) -> None:
    """Decode a code file into one PNG per image, at the size it was encoded at, named after
    the stored names (DIR/cat/0001.png).

    Example: [bold]vqtool decode runs/demo codes.vqc -o decoded --grid grid.png[/bold]
    """
    import_torch()
    from vqtool.codes.pipeline import decode_file
    from vqtool.device import resolve_device
    from vqtool.vq.load import load_model

    loaded = load_model(run, resolve_device(device))
    coding_prior = load_coding_prior_for(prior, loaded)
    with progress.CountProgress("decoding") as bar:
        stream = bar.stage("range decoding")
        result = decode_file(
            loaded, codes, output, grid, batch_size, bar.update, coding_prior, stream
        )
    progress.info(f"wrote {counted(result.images, 'PNG')} to {result.out_dir}")
    if result.grid is not None:
        shown = f" (the first {result.grid_images:,})" if result.grid_images < result.images else ""
        progress.info(f"wrote {result.grid}{shown}")
