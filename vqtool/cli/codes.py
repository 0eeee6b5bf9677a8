"""Commands of code files: encode images into a .vqc, decode one into PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vqtool.cli import progress, streams
from vqtool.cli.app import (
    BatchSize,
    Command,
    DataDir,
    Device,
    JsonOut,
    PriorOption,
    Resize,
    RunOrCheckpoint,
    Size,
    Stages,
    app,
    check_resize,
    data_dir_of,
    load_coding_prior_for,
    optional_option,
    reports_errors,
)
from vqtool.errors import (
    counted,
)
from vqtool.process import import_torch

if TYPE_CHECKING:
    from vqtool.codes.vqc import CodeSummary, Source


# What encode and roundtrip read.
Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Image files, folders (recursive, sorted), or cifar10:test, cifar10:train, "
        "cifar10:test:N (the first N; named by class, split and index: cat/test-00042).",
        metavar="INPUT",
        show_default=False,
    ),
]


@app.command(cls=Command, short_help="Encode images into a code file (.vqc).")
@reports_errors
def encode(
    run: RunOrCheckpoint,
    inputs: Inputs,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="The code file to write (.vqc), or - for standard output.",
            metavar="FILE|-",
            show_default=False,
        ),
    ],
    size: Size = None,
    resize: Resize = None,
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
    stages: Stages = None,
    json_out: JsonOut = None,
) -> None:
    """Encode images into a code file (.vqc): code indices, names, sizes and the checkpoint's
    fingerprint. A run of several residual stages stores all of them, or the first N with
    --stages N.

    -o - writes the code file to standard output (nothing else goes there); --json gives what
    vqtool inspect --json says of the file written.

    In folders, files that are not images and damaged images are skipped with a note.

    --strict refuses them instead; a file named on its own must be a readable image.

    Images larger than 4096x4096, or wider than 16384 pixels, need --size HxW, which shrinks
    them while they are read; large ones are encoded in bands, in bounded memory.

    --size fits each image as the run's training did (its data.resize) unless --resize says
    otherwise; without --size, images keep their own size.

    Example: [bold]vqtool encode runs/demo photos/ cifar10:test:100 -o codes.vqc --size 32x32[/bold]
    """
    import_torch()
    from vqtool.codes.pipeline import encode_inputs
    from vqtool.device import resolve_device
    from vqtool.images.pixels import parse_size
    from vqtool.vq.load import load_model

    shape = parse_size(size) if size is not None else None
    check_resize(resize, shape)
    streams.check_outputs(output, json_out)
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
            stages,
            mode,
        )
        on_coding = bar.stage("compressing")
        written = streams.write_code_file(output, codes, compress, coding_prior, on_coding)
    coded = ""
    if compress or coding_prior is not None:
        coded = f", {written.bytes * 8 / codes.count:,.1f} bits per image"
    fitted = ""
    if shape is not None:
        fitted = f", resized by {mode}" + (" (the run's data.resize)" if resize is None else "")
    progress.info(f"wrote {written.name}: {_encoded(codes)}{coded}{fitted}; sizes are HxW")
    if json_out is not None:
        progress.emit_json({"file": str(output), **written.summary().as_dict()}, json_out)


def _encoded(codes: Any) -> str:
    """'1 image of 300x451 (padded to 300x452) as 75x113 codes of 512': the sizes as given
    (after --size), height first, and the padded size they share when it differs; for images
    of different padded sizes, each grid of codes and its images."""
    from vqtool.codes.vqc import grid_groups

    n = codes.count
    staged = f"{counted(codes.stages, 'stage')} of " if codes.stage_axis else ""
    sizes = {(int(a), int(b)) for a, b in codes.sizes}
    if codes.image_size is None:
        groups = grid_groups(codes.grids())
        grids = [f"{h}x{w} ({counted(len(i), 'image')})" for (h, w), i in groups]
        more = len(grids) - SHOWN_SIZES
        shown = ", ".join(grids[:SHOWN_SIZES]) + (f" and {more:,} more" if more > 0 else "")
        return (
            f"{counted(n, 'image')} of {len(sizes):,} sizes, each padded to a multiple of "
            f"{codes.downsample}, as {staged}codes of {codes.num_embeddings} in "
            f"{len(groups):,} grids: {shown}"
        )
    h, w = codes.codes.shape[-2:]
    padded = f"{codes.image_size[0]}x{codes.image_size[1]}"
    if len(sizes) == 1:
        ((height, width),) = sizes
        given = f"{height}x{width}"
        shape = given if given == padded else f"{given} (padded to {padded})"
        images = f"{counted(n, 'image')} of {shape}"
    else:
        images = f"{counted(n, 'image')} of mixed sizes, padded to {padded},"
    return f"{images} as {staged}{h}x{w} codes of {codes.num_embeddings}"


@app.command(cls=Command, short_help="Decode a code file into one PNG per image.")
@reports_errors
def decode(
    run: RunOrCheckpoint,
    codes: Annotated[
        Path,
        typer.Argument(
            help="A code file written by vqtool encode, or - for standard input.",
            metavar="CODES",
            show_default=False,
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
            help="Also write the first images side by side to this PNG, each at its own size "
            "(small ones enlarged by a whole factor, each pixel a square; as many as fit "
            "1024x1024 pixels): pixels only, in the code file's order, row by "
            "row. vqtool roundtrip shows originals, names and PSNR.",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    prior: PriorOption = None,
    stages: Stages = None,
    first: Annotated[
        int | None,
        typer.Option(
            "--first",
            min=1,
            help="Decode only the first N images (of those --names picks).",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    names: Annotated[
        str | None,
        optional_option(
            "Decode only the images whose names match GLOB (* ? \\[abc]; * also matches /, so "
            "'cat/*' is a CIFAR-10 class). Quote it from the shell.",
            "GLOB",
        ),
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Decode a code file into one PNG per image, at the size it was encoded at, named after
    the stored names (DIR/cat/0001.png). --stages N decodes a multi-stage file's first N
    stages only (a compressed file's later stages are not even read). CODES - reads the code
    file from standard input.

    A file compressed with a prior needs that prior, given as --prior P.

    Without --prior, the prior inside RUN that compressed the file (by its fingerprint) is used.

    Example: [bold]vqtool decode runs/demo codes.vqc -o decoded --grid grid.png[/bold]
    """
    import_torch()
    from vqtool.codes.pipeline import Pick, decode_file
    from vqtool.codes.vqc import describe_codes
    from vqtool.device import resolve_device
    from vqtool.files import check_output_file
    from vqtool.vq.load import load_model

    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json decoded.json")
    loaded = load_model(run, resolve_device(device))
    source = streams.code_source(codes)
    if prior is None:
        prior = _prior_in_run(loaded.path, source)
    coding_prior = load_coding_prior_for(prior, loaded)
    with progress.CountProgress("decoding") as bar:
        result = decode_file(
            loaded, source, output, grid, batch_size, bar.update, coding_prior,
            bar.stage("range decoding"), stages, Pick(first, names),
        )  # fmt: skip
    picked = f" (of {result.file_images:,})" if result.images < result.file_images else ""
    progress.info(f"wrote {counted(result.images, 'PNG')}{picked} to {result.out_dir}")
    if result.grid is not None:
        shown = f" (the first {result.grid_images:,})" if result.grid_images < result.images else ""
        progress.info(f"wrote {result.grid}{shown}")
    if json_out is not None:
        facts = {"file": str(codes), **result.as_dict()}
        progress.emit_json(facts | {"code_file": describe_codes(source).as_dict()}, json_out)


def _prior_in_run(run: Path, codes: Source) -> Path | None:
    """For a file compressed with a prior and decoded without --prior: the prior run inside
    R that compressed it, said on stderr; None when there is none (decode then asks for
    --prior). Using it is safe: its fingerprint is the file's, checked as it loads, and the
    decoded codes must match the file's checksum."""
    from vqtool.codes.vqc import prior_fingerprint
    from vqtool.prior.load import find_prior

    wanted = prior_fingerprint(codes)
    found = find_prior(run, wanted) if wanted is not None else None
    if found is not None:
        progress.info(
            f"note: decoding with the prior {found}, which compressed this file "
            f"({progress.short_fingerprint(str(wanted))}); --prior P chooses it yourself"
        )
    return found


@app.command("inspect", cls=Command, short_help="Show what a code file holds, without decoding.")
@reports_errors
def inspect_file(
    codes: Annotated[
        Path,
        typer.Argument(
            help="A code file (.vqc), or - for standard input.", metavar="CODES", show_default=False
        ),
    ],
    json_out: JsonOut = None,
) -> None:
    """Show what a code file holds: the checkpoint that made it, how it is coded (raw, unigram,
    or which prior), its images and their sizes (height x width), and its bits per image.

    A damaged file is refused with the one-line error decode gives.

    A prior-coded stream is checked when it is decoded with its prior.

    Example: [bold]vqtool inspect codes.vqc --json -[/bold]
    """
    from vqtool.codes.vqc import describe_codes
    from vqtool.files import check_output_file

    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json facts.json")
    source = streams.code_source(codes)
    summary = describe_codes(source)
    if json_out is not None:
        progress.emit_json({"file": str(codes), **summary.as_dict()}, json_out)
    if json_out != "-":
        progress.print_result(progress.facts_table(f"code file {source}", _summary_rows(summary)))
    if not summary.stream_checked:
        progress.info(
            "note: the prior-coded stream was not decoded; vqtool decode R FILE --prior P "
            "checks it against the codes' checksum"
        )


SHOWN_SIZES = 4  # distinct image sizes listed one by one; the rest are counted


def _summary_rows(summary: CodeSummary) -> list[tuple[str, Any]]:
    """inspect's table: a CodeSummary in words, sizes as HxW and fingerprints shortened."""
    from vqtool.images.pixels import HW, size_text

    coding = {
        "raw": "raw (uint16 codes, not compressed)",
        "unigram": "unigram (range-coded with the file's own code frequencies)",
        "exact": "exact (range-coded with the prior's exact coding model: decodes anywhere)",
        "prior": "prior (range-coded with the prior's float predictions: decodes only on a "
        "machine like the one that wrote it)",
    }[summary.coding]
    sizes = [f"{size_text((h, w))} ({counted(n, 'image')})" for h, w, n in summary.size_counts]
    more = len(sizes) - SHOWN_SIZES
    shown = "; ".join(sizes[:SHOWN_SIZES]) + (f"; and {more:,} more sizes" if more > 0 else "")
    codes = f"of K = {summary.num_embeddings} (D = {summary.embedding_dim})"
    if summary.image_size is not None and summary.grid is not None:
        padded, grid = size_text(summary.image_size), f"{size_text(summary.grid)} {codes}"
    else:  # images of different padded sizes: each its own grid
        grids = list(dict.fromkeys(summary.grid_of(h, w) for h, w, _ in summary.size_counts))
        padded = f"each image's own size, to a multiple of {summary.downsample}"
        listed = ", ".join(size_text(g) for g in grids[:SHOWN_SIZES])
        rest = len(grids) - SHOWN_SIZES
        grid = f"one per size: {listed}{f' and {rest:,} more' if rest > 0 else ''}, {codes}"
    names = summary.first_name
    if summary.images > 1:
        names += f" ... {summary.last_name}"
    return [
        ("made by the checkpoint", progress.short_fingerprint(summary.checkpoint)),
        ("coding", coding),
        ("prior", progress.short_fingerprint(summary.prior) if summary.prior else "none"),
        *(
            [("exact coding model", progress.short_fingerprint(summary.coding_model))]
            if summary.coding_model
            else []
        ),
        ("format version", summary.version),
        ("images", summary.images),
        ("residual stages", summary.stages),
        (f"image sizes ({HW})", shown),
        (f"padded to ({HW})", padded),
        (f"codes per image ({HW})", grid),
        ("names (first ... last)", names),
        ("file size", f"{summary.file_bytes:,} bytes"),
        ("bits per image (whole file)", summary.bits_per_image),
        ("bits per image (codes or stream alone)", summary.payload_bits_per_image),
        (progress.UNIFORM, summary.uniform_bits_per_image),
    ]  # fmt: skip


@app.command(cls=Command, short_help="Your images over their reconstructions, with PSNR and bits.")
@reports_errors
def roundtrip(
    run: RunOrCheckpoint,
    inputs: Inputs,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="The figure to write (PNG).",
            metavar="FILE",
            show_default=False,
        ),
    ],
    json_out: JsonOut = None,
    prior: Annotated[
        Path | None,
        optional_option(
            "A prior run (or its checkpoint): also give the bits its coding spends on each image.",
            "PRIOR",
        ),
    ] = None,
    size: Size = None,
    resize: Resize = None,
    stages: Stages = None,
    show: Annotated[
        int, typer.Option(min=1, help="Images in the figure and the table.", metavar="N")
    ] = 32,
    batch_size: BatchSize = 256,
    data_dir: DataDir = None,
    device: Device = "auto",
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Refuse damaged images in folders, as encode --strict does."),
    ] = False,
) -> None:
    """Put your images through the codes and back: a figure of each original above its
    reconstruction with its PSNR, and a table of each image's PSNR and bits.

    Bits per image: raw, h*w*log2 K for h x w codes of K (times the stages decoded, for a run
    of residual stages: all of them, or the first N with --stages N); with --prior, the prior
    coding's.

    --size fits each image as the run's training did (its data.resize) unless --resize says
    otherwise, as encode does.

    The table lists the images the figure shows and the mean of all; --json gives every image.

    Example: [bold]vqtool roundtrip runs/demo photos/ -o roundtrip.png --size 64x64[/bold]
    """
    import_torch()
    from vqtool.codes.roundtrip import round_trip
    from vqtool.device import resolve_device
    from vqtool.files import check_output_file
    from vqtool.images.pixels import parse_size
    from vqtool.reports.plots import save_picture
    from vqtool.reports.roundtrip_plots import roundtrip_picture, roundtrip_rows
    from vqtool.vq.load import load_model

    shape = parse_size(size) if size is not None else None
    check_resize(resize, shape)
    check_output_file(output, "the figure", "-o roundtrip.png")
    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json roundtrip.json")
    loaded = load_model(run, resolve_device(device))
    coding_prior = load_coding_prior_for(prior, loaded)
    mode = resize if resize is not None else loaded.profile.data.resize
    with progress.CountProgress("encoding and decoding") as bar:
        result = round_trip(
            loaded, inputs, data_dir_of(data_dir), shape, coding_prior, show, batch_size,
            bar.update, lambda note: progress.info(f"note: {note}"), strict,
            bar.stage("prior coding"), stages, mode,
        )  # fmt: skip
    picture = roundtrip_picture(result, loaded.run_dir.path.name)
    progress.info(f"wrote {save_picture(picture, output)}")
    if json_out is not None:
        progress.emit_json(result.as_dict(), json_out)
    if json_out != "-":
        columns, rows = roundtrip_rows(result, show)
        progress.print_result(progress.rows_table(f"round trip through {run}", columns, rows))
    if len(result.names) > show:
        progress.info(f"showed the first {show} of {len(result.names):,} images; --json has all")
