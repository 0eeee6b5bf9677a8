"""Commands of prior runs: train a prior over a run's codes, sample code grids from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vqtool.cli import progress
from vqtool.cli.app import (
    Command,
    DataDir,
    Device,
    Overrides,
    PriorRunDir,
    ProfileChoice,
    Resume,
    RunOrCheckpoint,
    TrainDevice,
    app,
    data_dir_of,
    optional_option,
    reports_errors,
    train_and_report,
    with_device,
)
from vqtool.process import import_torch


@app.command(cls=Command, short_help="Train a prior over a VQ run's codes; prints its folder.")
@reports_errors
def prior(
    run: RunOrCheckpoint,
    profile: ProfileChoice = None,
    run_dir: PriorRunDir = None,
    resume: Resume = False,
    set_: Overrides = None,
    device: TrainDevice = None,
    data_dir: DataDir = None,
) -> None:
    """Train a prior over a VQ run's codes; prints the prior's run folder when done.

    Profiles: prior-small (demos), prior-coding (compressed code files: decodes fast on a CPU),
    prior-cpu, prior (one GPU); keys under \\[prior] and \\[train].
    The VQ run's dataset is encoded once into code files kept in the prior's folder. Ctrl-C or
    SIGTERM saves a checkpoint; --resume continues it. Then: vqtool evaluate P, vqtool sample P.

    Example: [bold]vqtool prior runs/demo --profile prior-small[/bold]
    """
    import_torch()
    from vqtool.prior.train import resolve_prior_run, train_prior

    chosen, folder = resolve_prior_run(run, profile, with_device(set_, device), run_dir, resume)
    data_folder = data_dir_of(data_dir)

    def start() -> None:
        with progress.PriorProgress() as shown:
            train_prior(run, chosen, folder, data_folder, resume=resume, callback=shown)

    train_and_report(start, folder, f"vqtool prior {run} --resume --run-dir {folder}")


@app.command(cls=Command, short_help="Sample code grids from a prior into a code file.")
@reports_errors
def sample(
    run: Annotated[
        Path,
        typer.Argument(
            help="A prior run folder or its checkpoint.pt.", metavar="PRIOR", show_default=False
        ),
    ],
    n: Annotated[int, typer.Option("-n", help="How many images to sample.", metavar="N")] = 64,
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="The code file to write (.vqc).", metavar="FILE"),
    ] = Path("samples.vqc"),
    temperature: Annotated[
        float,
        typer.Option(
            help="Softmax temperature, > 0: lower is safer, higher more varied.", metavar="T"
        ),
    ] = 1.0,
    top_k: Annotated[
        int | None, optional_option("Draw each code from the K likeliest only.", "K")
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same samples.", metavar="S")] = 0,
    label: Annotated[
        str | None,
        optional_option(
            "Class to draw (conditional priors; default: every class in turn).", "NAME"
        ),
    ] = None,
    size: Annotated[
        str | None,
        optional_option(
            "Sample images of HEIGHTxWIDTH pixels, multiples of the run's factor (default: the "
            "run's image size). Another size than the prior's is drawn window by window.",
            "HxW",
        ),
    ] = None,
    device: Device = "auto",
) -> None:
    """Sample code grids from a prior into a code file for its VQ run; decode it to see them.

    Example: [bold]vqtool sample runs/demo/prior -n 64 -o s.vqc && vqtool decode runs/demo s.vqc
    -o samples --grid grid.png[/bold]

    Larger images: [bold]vqtool sample runs/demo/prior -n 8 --size 64x64 -o big.vqc[/bold]
    """
    import_torch()
    from vqtool.codes.vqc import check_output, write_codes
    from vqtool.device import resolve_device
    from vqtool.images.pixels import parse_size
    from vqtool.prior.load import load_prior
    from vqtool.prior.sample import sample_codes

    check_output(output)
    shape = parse_size(size) if size is not None else None
    loaded = load_prior(run, resolve_device(device))
    with progress.CountProgress("sampling") as bar:
        code_file = sample_codes(
            loaded,
            n,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            label=label,
            size=shape,
            on_progress=bar.update,
        )
    write_codes(output, code_file)
    h, w = code_file.one_grid().shape[-2:]  # samples share the prior's grid
    staged = f"{code_file.stages} stages of " if code_file.stages > 1 else ""
    progress.info(
        f"wrote {output}: {n:,} sampled grids of {staged}{h}x{w} codes (HxW) for the VQ checkpoint "
        f"{loaded.vq.fingerprint[:12]}... ({loaded.vq.checkpoint})"
    )
