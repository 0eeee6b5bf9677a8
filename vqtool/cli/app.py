"""The `vqtool` command line: each command parses, calls one library function, reports.

Heavy imports (torch, matplotlib) happen inside the commands so that `--help` is quick.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from vqtool.cli import progress
from vqtool.errors import (
    Interrupted,
    Terminated,
    VqtoolError,
    counted,
    debug_enabled,
    os_reason,
)
from vqtool.process import exit_now, import_torch, sigterm_unwinds

if TYPE_CHECKING:
    from vqtool.codes.entropy import CodingPrior
    from vqtool.vq.load import LoadedModel

F = TypeVar("F", bound=Callable[..., Any])


def _no_type(ctx: Any) -> None:
    return None


class PlainHelp:
    """Help that shows placeholders (FILE, KEY=VALUE), never Python type names.

    typer's rich help prints a type beside every parameter: `<bool>` beside a flag, as if
    `--resume true` were accepted (it is not), and `<path>` beside an argument whose name
    column already shows its placeholder.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            elif getattr(param, "param_type_name", "") == "argument" and param.metavar:
                param.display_type_rich = _no_type
        return params


class Command(PlainHelp, TyperCommand):
    """A vqtool command (see PlainHelp)."""


class OneLineErrors(PlainHelp, TyperGroup):
    """Usage errors (bad option, missing argument) as one `error:` line with exit 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            # Click's own signature, so that standalone_mode can only be given once.
            result = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except Exception as exc:
            # Click's errors, whether typer vendors click or not: they carry these two members.
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
                if type(exc).__name__ == "Abort":
                    sys.exit(130)
                raise
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "vqtool"
            if not exc.format_message():  # `vqtool` alone: the help was shown, nothing to add
                sys.exit(exc.exit_code)
            progress.error_line(
                f"error: {exc.format_message()} ({command}): see '{command} --help'"
            )
            sys.exit(exc.exit_code)
        code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    help="Train a VQ-VAE on CIFAR-10 and turn images into discrete codes and back.\n\n"
    "Start with: vqtool download, then vqtool train --profile smoke.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(asked: bool) -> None:
    if asked:
        from vqtool import __version__

        progress.out.print(f"vqtool {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    # The options of `vqtool` itself; the app's help text is the one given to typer.Typer.
    pass


def reports_errors(command: F) -> F:
    """One line and the documented exit code for every failure; VQTOOL_DEBUG=1 shows the trace."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_unwinds():
                return command(*args, **kwargs)
        except VqtoolError as exc:
            if debug_enabled():
                raise
            progress.error_line(exc.line())
            raise typer.Exit(exc.exit_code) from None
        except Interrupted as exc:
            progress.info(f"stopped by {exc.signal_name}; the checkpoint is saved")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
            progress.error_line(f"error: interrupted ({name}); no file was left half-written")
            raise typer.Exit(code) from None
        except OSError as exc:
            # A folder that cannot be written (permissions, read-only file system, full disk)
            # anywhere no more specific message was given.
            if debug_enabled():
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            progress.error_line(
                f"error: {os_reason(exc)}{where}: check that the folder exists, is writable "
                "and has free space"
            )
            raise typer.Exit(1) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            progress.error_line(
                f"error: unexpected {type(exc).__name__}: {exc} (vqtool): "
                "rerun with VQTOOL_DEBUG=1 to see where, and report it"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding cifar-10-batches-py/ (default: $VQTOOL_DATA_DIR, else ./data).",
        metavar="DIR",
        show_default=False,
    ),
]
DEVICE_HELP = "Where to run: auto (CUDA when present), cpu, cuda, cuda:N or mps."
Device = Annotated[str, typer.Option(help=DEVICE_HELP, metavar="DEVICE")]


def _optional(help: str, metavar: str) -> Any:
    """An option without a default to show (what its absence means is said in `help`)."""
    return typer.Option(help=help, metavar=metavar, show_default=False)


def _folder_option(help: str) -> Any:
    return _optional(help, "DIR")


RunOrCheckpoint = Annotated[
    Path,
    typer.Argument(help="A run folder or its checkpoint.pt.", metavar="RUN", show_default=False),
]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per batch.", metavar="N")]
ProfileChoice = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        help="Shipped profile name or a TOML file (see: vqtool profiles).",
        metavar="NAME|FILE",
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override one key: section.key=value (repeatable).", metavar="KEY=VALUE"
    ),
]
TrainDevice = Annotated[
    str | None, typer.Option(help=f"{DEVICE_HELP} Overrides train.device.", metavar="DEVICE")
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --run-dir from its checkpoint.")
]

PriorRunDir = Annotated[Path | None, _folder_option("The prior's run folder (default: RUN/prior).")]


def _overrides(set_: list[str] | None, device: str | None) -> list[str]:
    """--set values, then --device as train.device."""
    return list(set_ or []) + ([f"train.device={device}"] if device else [])


def _train_and_report(train: Callable[[], object], folder: Path, to_continue: str) -> None:
    """Run a training; say how to continue after a signal; print the run folder when done.
    Under torchrun only rank 0 reports."""
    from vqtool.distributed import world_from_env

    try:
        train()
    except Interrupted:
        if world_from_env().rank == 0:
            progress.info(f"to continue: {to_continue}")
        raise
    if world_from_env().rank == 0:
        progress.out.print(str(folder), markup=False)


PriorOption = Annotated[
    Path | None,
    typer.Option(
        "--prior",
        help="A prior run (or its checkpoint) whose predictions code the codes; implies "
        "--compress; decode needs the same prior. Train one with vqtool prior R --profile "
        "prior-coding (small, so files decode fast).",
        metavar="PRIOR",
        show_default=False,
    ),
]


def _coding_prior(path: Path | None, loaded: LoadedModel) -> CodingPrior | None:
    """The prior that --prior names, loaded on the CPU and checked against the run's model
    (None without --prior)."""
    from vqtool.codes.entropy import check_prior
    from vqtool.prior.load import load_coding_prior

    if path is None:
        return None
    prior = load_coding_prior(path)
    check_prior(prior, loaded.fingerprint, loaded.model.config.num_embeddings)
    return prior


def _data_dir(data_dir: Path | None) -> Path:
    from vqtool.data.cifar10 import resolve_data_dir

    return resolve_data_dir(data_dir)[0]


@app.command(cls=Command, short_help="Fetch, verify and extract the CIFAR-10 archive.")
@reports_errors
def download(
    data_dir: DataDir = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="URL or local archive to fetch instead of the official URL.", metavar="URL|FILE"
        ),
    ] = None,
    md5: Annotated[
        str | None,
        typer.Option(
            help="Expected md5 of the archive (default: the official one).", metavar="HEX"
        ),
    ] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the md5 check (e.g. a rebuilt archive).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a data folder that does not validate.")
    ] = False,
) -> None:
    """Fetch, verify and extract the CIFAR-10 python archive.

    Example: [bold]vqtool download --source ~/cifar-10-python.tar.gz --no-verify[/bold]
    """
    from vqtool.data.cifar10 import download_cifar10

    folder = _data_dir(data_dir)
    with progress.ByteProgress("downloading CIFAR-10") as bar:
        result = download_cifar10(folder, source, md5, not no_verify, force, bar.update)
    if result.already_present:
        progress.info(f"CIFAR-10 is already in {result.folder}; nothing to do")
    else:
        progress.info(f"CIFAR-10 is ready in {result.folder}")


@app.command(cls=Command, short_help="Train a VQ-VAE; prints the run folder when done.")
@reports_errors
def train(
    profile: ProfileChoice = None,
    set_: Overrides = None,
    run_dir: Annotated[
        Path | None, _folder_option("Run folder (default: runs/<profile>-<YYYYmmdd-HHMMSS>).")
    ] = None,
    data_dir: DataDir = None,
    device: TrainDevice = None,
    resume: Resume = False,
) -> None:
    """Train a VQ-VAE; prints the run folder on stdout when done.

    Ctrl-C or SIGTERM saves a checkpoint; --resume continues it.

    Example: [bold]vqtool train --profile smoke --run-dir runs/demo[/bold]
    """
    import_torch()
    from vqtool.data.cifar10 import resolve_data_dir
    from vqtool.vq.train import resolve_run, run_training

    chosen, folder = resolve_run(profile, _overrides(set_, device), run_dir, resume)
    data_folder, data_origin = resolve_data_dir(data_dir)

    def start() -> None:
        with progress.TrainProgress() as shown:
            run_training(
                chosen,
                folder,
                data_folder,
                resume=resume,
                callback=shown,
                on_download=shown.download,
                data_origin=data_origin,
            )

    _train_and_report(start, folder, f"vqtool train --resume --run-dir {folder}")


@app.command(cls=Command, short_help="Metrics over a whole split; writes eval-<split>.json.")
@reports_errors
def evaluate(
    run: RunOrCheckpoint,
    split: Annotated[str, typer.Option(help="test or train.", metavar="SPLIT")] = "test",
    data_dir: DataDir = None,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json", help="Write the metrics as JSON to FILE, or - for stdout.", metavar="FILE|-"
        ),
    ] = None,
    device: Device = "auto",
    rate_distortion: Annotated[
        bool,
        typer.Option(
            "--rate-distortion",
            help="Also put the run's real code files beside JPEG, WebP and AVIF sweeps on the "
            "same images; writes rd-<split>.json (vqtool plot draws rd.png).",
        ),
    ] = False,
    rd_images: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rate-distortion over the first N images (default: all).",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    prior: PriorOption = None,
) -> None:
    """Metrics over a whole split from the decoded codes; writes eval-<split>.json in the run.

    --rate-distortion also compares the run's code files with JPEG, WebP and AVIF.

    Example: [bold]vqtool evaluate runs/demo --split test[/bold]
    """
    import_torch()
    from vqtool.device import resolve_device
    from vqtool.errors import UsageError
    from vqtool.files import check_output_file
    from vqtool.runs import RunDir
    from vqtool.vq.evaluate import evaluate_checkpoint, write_eval

    if split not in ("test", "train"):
        raise UsageError(f"unknown split {split!r}", "--split", "use test or train")
    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json metrics.json")
    if (prior is not None or rd_images is not None) and not rate_distortion:
        raise UsageError(
            "--prior and --rd-images belong to --rate-distortion", "vqtool evaluate",
            "add --rate-distortion",
        )  # fmt: skip
    measure_rd = _rate_distortion_job(run, prior, device) if rate_distortion else None
    with progress.CountProgress(f"evaluating {split}") as bar:
        if RunDir.with_checkpoint(run).kind() == "prior":
            from vqtool.prior.evaluate import evaluate_prior

            if split != "test":
                raise UsageError("a prior is evaluated on its test codes", "--split", "use test")
            metrics = evaluate_prior(run, resolve_device(device), bar.update)
        else:
            metrics = evaluate_checkpoint(
                run,
                split,
                _data_dir(data_dir),
                resolve_device(device),
                bar.update,
                bar.counter("decoding images"),
            )
    # The run's own copy first (a reader that closes stdout early must not cost it), but a
    # run folder that cannot be written (shared, read-only) still gives the results.
    try:
        progress.info(f"wrote {write_eval(run, metrics)}")
    except OSError as exc:
        progress.warn(
            f"could not save {RunDir.with_checkpoint(run).eval_file(split).name} in the run folder "
            f"({os_reason(exc)}); "
            "the metrics below are complete"
        )
    if json_out is not None:
        progress.emit_json(metrics, json_out)
    if json_out != "-":
        progress.print_result(progress.metrics_table(f"{split} split", metrics))
    if measure_rd is not None:
        measure_rd(split, _data_dir(data_dir), rd_images)


def _rate_distortion_job(run: Path, prior: Path | None, device: str) -> Callable[..., None]:
    """Load what --rate-distortion needs now (a bad --prior fails before any work); the
    returned function measures, writes rd-<split>.json and shows the table."""
    from vqtool.codes.ratedistortion import (
        RD_COLUMNS,
        rate_distortion_rows,
        rate_distortion_split,
        write_rate_distortion,
    )
    from vqtool.device import resolve_device
    from vqtool.vq.load import load_model

    loaded = load_model(run, resolve_device(device))
    coding_prior = _coding_prior(prior, loaded)

    def measure(split: str, data_dir: Path, images: int | None) -> None:
        with progress.CountProgress("rate-distortion") as bar:
            rd = rate_distortion_split(loaded, split, data_dir, coding_prior, images, bar.stage)
        progress.info(f"wrote {write_rate_distortion(run, rd)}")
        title = f"rate-distortion, {rd['images']:,} {split} images"
        progress.print_result(progress.rows_table(title, RD_COLUMNS, rate_distortion_rows(rd)))

    return measure


@app.command(cls=Command, short_help="List the shipped profiles, or print one resolved.")
@reports_errors
def profiles(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Print this profile fully resolved.", metavar="NAME", show_default=False
        ),
    ] = None,
) -> None:
    """List the shipped profiles, or print one resolved (extends and defaults applied).

    Example: [bold]vqtool profiles ema[/bold]
    """
    from vqtool.profiles import list_profiles, load_any_profile, profile_to_toml

    if name is not None:
        progress.out.print(profile_to_toml(load_any_profile(name)), markup=False, end="")
        return
    progress.print_result(progress.rows_table("profiles", ["name", "description"], list_profiles()))


@app.command(cls=Command, short_help="Draw a run's loss, reconstructions and codebook PNGs.")
@reports_errors
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder.", metavar="RUN", show_default=False)],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out-dir",
            help="Folder for the PNGs (default: the run folder).",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Write loss.png, reconstructions.png (test images over their reconstructions) and
    codebook.png (code usage, dead codes, PCA of the codes) for a run; for a prior run,
    loss.png (bits per code) and samples.png (samples decoded by its VQ run).

    Example: [bold]vqtool plot runs/demo -o figures/demo[/bold]
    """
    import_torch()
    from vqtool.device import resolve_device
    from vqtool.reports.arrays import run_arrays
    from vqtool.reports.plots import write_rate_distortion_plot, write_run_plots
    from vqtool.runs import load_run

    loaded = load_run(run)
    for message in loaded.warnings:
        progress.warn(message)
    target = out_dir if out_dir is not None else loaded.path
    if loaded.kind == "prior":
        _plot_prior(loaded, target, resolve_device(device))
        return
    arrays = None
    if loaded.has_checkpoint:
        with progress.CountProgress("encoding the test split") as bar:
            arrays = run_arrays(
                loaded.path,
                _data_dir(data_dir),
                resolve_device(device),
                on_progress=bar.update,
                on_decode=bar.counter("decoding images"),
            )
    else:
        progress.warn(f"no checkpoint in {loaded.path}: wrote the loss curves only")
    for path in write_run_plots(loaded, target, arrays):
        progress.info(f"wrote {path}")
    rd = write_rate_distortion_plot(loaded.path, out_dir if out_dir is not None else loaded.path)
    if rd is not None:
        progress.info(f"wrote {rd}")


def _plot_prior(run: Any, out_dir: Path, device: Any) -> None:
    """`vqtool plot P`: the loss curve, and samples decoded by the VQ run when it is found."""
    from vqtool.reports.arrays import prior_samples
    from vqtool.reports.prior_plots import write_prior_plots

    samples, title = None, ""
    if run.has_checkpoint:
        try:
            samples, vq_path = prior_samples(run.path, device)
            decoder = Path(vq_path).parent.name
            title = f"64 samples of {run.path.name} ({run.profile}), decoded by {decoder}"
        except VqtoolError as exc:
            progress.warn(f"{exc.what} ({exc.where}): wrote the loss curve only")
    for path in write_prior_plots(run, out_dir, samples, title):
        progress.info(f"wrote {path}")


@app.command(cls=Command, short_help="Put runs side by side: a table, overlaid curves, JSON.")
@reports_errors
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders.", metavar="RUN", show_default=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out",
            help="PNG of the overlaid curves (default: compare.png; with --json - and no -o, "
            "none).",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json", help="Write the table as JSON to FILE, or - for stdout.", metavar="FILE|-"
        ),
    ] = None,
) -> None:
    """Put runs side by side: a table (test metrics from eval-test.json), overlaid curves, JSON.

    Example: [bold]vqtool compare runs/original runs/ema runs/ema-kaiming --json runs.json[/bold]
    """

    from vqtool.reports.plots import compare_figure, save_png
    from vqtool.reports.summary import COMPARE_COLUMNS, compare_row, run_labels, summarise_run
    from vqtool.runs import load_run

    loaded = [load_run(path) for path in runs]
    labels = run_labels([r.path for r in loaded])
    for label, run in zip(labels, loaded, strict=True):
        for message in run.warnings:
            progress.warn(f"{label}: {message}")
    rows = [summarise_run(run, label) for run, label in zip(loaded, labels, strict=True)]
    # `--json -` feeds a pipe: a figure nobody asked for would land in the working folder.
    if out is not None or json_out != "-":
        figure = compare_figure(loaded, labels)
        progress.info(f"wrote {save_png(figure, out if out is not None else Path('compare.png'))}")
    if json_out is not None:
        progress.emit_json(rows, json_out)
    if json_out != "-":
        table = progress.rows_table("runs", COMPARE_COLUMNS.values(), map(compare_row, rows))
        progress.print_result(table)


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
        _optional("Resize every image to HxW first (needed for images of mixed sizes).", "HxW"),
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

    Example: [bold]vqtool encode runs/demo photos/ cifar10:test:100 -o codes.vqc --size 32x32[/bold]
    """
    import_torch()
    from vqtool.codes.pipeline import encode_inputs
    from vqtool.codes.vqc import check_output, write_codes
    from vqtool.device import resolve_device
    from vqtool.images.pixels import parse_size
    from vqtool.vq.load import load_model

    shape = parse_size(size) if size is not None else None
    check_output(output)
    loaded = load_model(run, resolve_device(device))
    coding_prior = _coding_prior(prior, loaded)
    with progress.CountProgress("encoding") as bar:
        codes = encode_inputs(
            loaded,
            inputs,
            _data_dir(data_dir),
            shape,
            batch_size,
            bar.update,
            lambda note: progress.info(f"note: {note}"),
            strict,
        )
        write_codes(output, codes, compress, coding_prior, bar.stage("compressing"))
    coded = ""
    if compress or coding_prior is not None:
        coded = f", {output.stat().st_size * 8 / codes.codes.shape[0]:,.1f} bits per image"
    progress.info(f"wrote {output}: {_encoded(codes)}{coded}")


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
    coding_prior = _coding_prior(prior, loaded)
    with progress.CountProgress("decoding") as bar:
        stream = bar.stage("range decoding")
        result = decode_file(
            loaded, codes, output, grid, batch_size, bar.update, coding_prior, stream
        )
    progress.info(f"wrote {counted(result.images, 'PNG')} to {result.out_dir}")
    if result.grid is not None:
        shown = f" (the first {result.grid_images:,})" if result.grid_images < result.images else ""
        progress.info(f"wrote {result.grid}{shown}")


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
    prior-cpu, prior (one GPU); keys under [prior] and [train].
    The VQ run's dataset is encoded once into code files kept in the prior's folder. Ctrl-C or
    SIGTERM saves a checkpoint; --resume continues it. Then: vqtool evaluate P, vqtool sample P.

    Example: [bold]vqtool prior runs/demo --profile prior-small[/bold]
    """
    import_torch()
    from vqtool.prior.train import resolve_prior_run, train_prior

    chosen, folder = resolve_prior_run(run, profile, _overrides(set_, device), run_dir, resume)
    data_folder = _data_dir(data_dir)

    def start() -> None:
        with progress.PriorProgress() as shown:
            train_prior(run, chosen, folder, data_folder, resume=resume, callback=shown)

    _train_and_report(start, folder, f"vqtool prior {run} --resume --run-dir {folder}")


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
        int | None, _optional("Draw each code from the K likeliest only.", "K")
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same samples.", metavar="S")] = 0,
    label: Annotated[
        str | None,
        _optional("Class to draw (conditional priors; default: every class in turn).", "NAME"),
    ] = None,
    device: Device = "auto",
) -> None:
    """Sample code grids from a prior into a code file for its VQ run; decode it to see them.

    Example: [bold]vqtool sample runs/demo/prior -n 64 -o s.vqc && vqtool decode runs/demo s.vqc
    -o samples --grid grid.png[/bold]
    """
    import_torch()
    from vqtool.codes.vqc import check_output, write_codes
    from vqtool.device import resolve_device
    from vqtool.prior.load import load_prior
    from vqtool.prior.sample import sample_codes

    check_output(output)
    loaded = load_prior(run, resolve_device(device))
    with progress.CountProgress("sampling") as bar:
        code_file = sample_codes(
            loaded,
            n,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            label=label,
            on_progress=bar.update,
        )
    write_codes(output, code_file)
    h, w = code_file.codes.shape[1:]
    progress.info(
        f"wrote {output}: {n:,} sampled grids of {h}x{w} codes for the VQ checkpoint "
        f"{loaded.vq.fingerprint[:12]}... ({loaded.vq.checkpoint})"
    )


def main() -> None:
    """The `vqtool` command.

    Once the command has finished, every file it wrote is closed and its output is flushed,
    the process ends with os._exit: tearing down the interpreter after `import torch` takes
    about half a second on two cores, a fifth of a whole `vqtool decode` of 10,000 images,
    and repeats in every step of a shell pipeline. Errors that escape as exceptions still go
    through the normal exit, with their traceback.
    """
    try:
        app()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)  # pragma: no cover - click always ends with SystemExit in standalone mode
