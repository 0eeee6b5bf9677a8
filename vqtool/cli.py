"""The `vqtool` command line: each command parses, calls one library function, reports.

Heavy imports (torch, matplotlib) happen inside the commands so that `--help` is quick.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from vqtool import progress
from vqtool.errors import Interrupted, Terminated, VqtoolError, debug_enabled, os_reason
from vqtool.process import exit_now, import_torch, sigterm_unwinds

F = TypeVar("F", bound=Callable[..., Any])


class OneLineErrors(TyperGroup):
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
        show_default=False,
    ),
]
DEVICE_HELP = "Where to run: auto (CUDA when present), cpu, cuda, cuda:N or mps."
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
RunOrCheckpoint = Annotated[
    Path, typer.Argument(help="A run folder or its checkpoint.pt.", show_default=False)
]


def _data_dir(data_dir: Path | None) -> Path:
    from vqtool.data import default_data_dir

    return data_dir if data_dir is not None else default_data_dir()


@app.command()
@reports_errors
def download(
    data_dir: DataDir = None,
    source: Annotated[
        str | None,
        typer.Option(help="URL or local archive to fetch instead of the official URL."),
    ] = None,
    md5: Annotated[
        str | None, typer.Option(help="Expected md5 of the archive (default: the official one).")
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
    from vqtool.data import download_cifar10

    folder = _data_dir(data_dir)
    with progress.ByteProgress("downloading CIFAR-10") as bar:
        result = download_cifar10(folder, source, md5, not no_verify, force, bar.update)
    if result.already_present:
        progress.info(f"CIFAR-10 is already in {result.folder}; nothing to do")
    else:
        progress.info(f"CIFAR-10 is ready in {result.folder}")


@app.command()
@reports_errors
def train(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", "-p", help="Shipped profile name or a TOML file (see: vqtool profiles)."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one key: section.key=value (repeatable)."),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (default: runs/<profile>-<YYYYmmdd-HHMMSS>).", show_default=False
        ),
    ] = None,
    data_dir: DataDir = None,
    device: Annotated[
        str | None, typer.Option(help=f"{DEVICE_HELP} Overrides train.device.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --run-dir from its checkpoint.")
    ] = False,
) -> None:
    """Train a VQ-VAE; prints the run folder on stdout when done.

    Ctrl-C or SIGTERM saves a checkpoint; --resume continues it.

    Example: [bold]vqtool train --profile smoke --run-dir runs/demo[/bold]
    """
    import_torch()
    from vqtool.distributed import world_from_env
    from vqtool.train import resolve_run, run_training

    overrides = list(set_ or []) + ([f"train.device={device}"] if device else [])
    chosen, folder = resolve_run(profile, overrides, run_dir, resume)
    try:
        with progress.TrainProgress() as shown:
            run_training(
                chosen,
                folder,
                _data_dir(data_dir),
                resume=resume,
                callback=shown,
                on_download=shown.download,
            )
    except Interrupted:
        if world_from_env().rank == 0:
            progress.info(f"to continue: vqtool train --resume --run-dir {folder}")
        raise
    if world_from_env().rank == 0:  # under torchrun only rank 0 reports
        progress.out.print(str(folder), markup=False)


@app.command()
@reports_errors
def evaluate(
    run: RunOrCheckpoint,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    data_dir: DataDir = None,
    json_out: Annotated[
        str | None,
        typer.Option("--json", help="Write the metrics as JSON to FILE, or - for stdout."),
    ] = None,
    device: Device = "auto",
) -> None:
    """Metrics over a whole split from the decoded codes; writes eval-<split>.json in the run.

    Example: [bold]vqtool evaluate runs/demo --split test[/bold]
    """
    import_torch()
    from vqtool.device import resolve_device
    from vqtool.errors import UsageError
    from vqtool.evaluate import evaluate_checkpoint, write_eval
    from vqtool.files import check_output_file
    from vqtool.runs import RunDir

    if split not in ("test", "train"):
        raise UsageError(f"unknown split {split!r}", "--split", "use test or train")
    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json metrics.json")
    with progress.CountProgress(f"evaluating {split}") as bar:
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


@app.command()
@reports_errors
def profiles(
    name: Annotated[
        str | None, typer.Argument(help="Print this profile fully resolved.", show_default=False)
    ] = None,
) -> None:
    """List the shipped profiles, or print one resolved (extends and defaults applied).

    Example: [bold]vqtool profiles ema[/bold]
    """
    from vqtool.profiles import list_profiles, load_profile, profile_to_toml

    if name is not None:
        progress.out.print(profile_to_toml(load_profile(name)), markup=False, end="")
        return
    progress.print_result(progress.rows_table("profiles", ["name", "description"], list_profiles()))


@app.command()
@reports_errors
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder.", show_default=False)],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out-dir",
            help="Folder for the PNGs (default: the run folder).",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Write loss.png, reconstructions.png (test images over their reconstructions) and
    codebook.png (code usage, dead codes, PCA of the codes) for a run.

    Example: [bold]vqtool plot runs/demo -o figures/demo[/bold]
    """
    import_torch()
    from vqtool.device import resolve_device
    from vqtool.plots import write_run_plots
    from vqtool.report import run_arrays
    from vqtool.runs import load_run

    loaded = load_run(run)
    for message in loaded.warnings:
        progress.warn(message)
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
    for path in write_run_plots(loaded, out_dir if out_dir is not None else loaded.path, arrays):
        progress.info(f"wrote {path}")


@app.command()
@reports_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG of the overlaid curves.")] = Path(
        "compare.png"
    ),
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the table as JSON to FILE, or - for stdout.")
    ] = None,
) -> None:
    """Put runs side by side: a table (test metrics from eval-test.json), overlaid curves, JSON.

    Example: [bold]vqtool compare runs/original runs/ema runs/ema-kaiming --json runs.json[/bold]
    """

    from vqtool.plots import compare_figure, save_png
    from vqtool.runs import load_run
    from vqtool.summary import COMPARE_COLUMNS, compare_row, run_labels, summarise_run

    loaded = [load_run(path) for path in runs]
    labels = run_labels([r.path for r in loaded])
    for label, run in zip(labels, loaded, strict=True):
        for message in run.warnings:
            progress.warn(f"{label}: {message}")
    rows = [summarise_run(run, label) for run, label in zip(loaded, labels, strict=True)]
    progress.info(f"wrote {save_png(compare_figure(loaded, labels), out)}")
    if json_out is not None:
        progress.emit_json(rows, json_out)
    if json_out != "-":
        table = progress.rows_table("runs", COMPARE_COLUMNS.values(), map(compare_row, rows))
        progress.print_result(table)


@app.command()
@reports_errors
def encode(
    run: RunOrCheckpoint,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (recursive, sorted), or cifar10:test, cifar10:train, "
            "cifar10:test:N (the first N).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="The code file to write (.vqc).", show_default=False),
    ],
    size: Annotated[
        str | None,
        typer.Option(
            help="Resize every image to HxW first (needed for images of mixed sizes).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 256,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Encode images into a code file (.vqc): code indices, names, sizes and the checkpoint's
    fingerprint.

    Example: [bold]vqtool encode runs/demo photos/ cifar10:test:100 -o codes.vqc --size 32x32[/bold]
    """
    import_torch()
    from vqtool.checkpoint import load_model
    from vqtool.codec import encode_inputs
    from vqtool.codes import check_output, write_codes
    from vqtool.device import resolve_device
    from vqtool.pixels import parse_size

    shape = parse_size(size) if size is not None else None
    check_output(output)
    loaded = load_model(run, resolve_device(device))
    with progress.CountProgress("encoding") as bar:
        codes = encode_inputs(
            loaded,
            inputs,
            _data_dir(data_dir),
            shape,
            batch_size,
            bar.update,
            lambda note: progress.info(f"note: {note}"),
        )
    write_codes(output, codes)
    n, h, w = codes.codes.shape
    progress.info(
        f"wrote {output}: {n:,} images of {codes.image_size[0]}x{codes.image_size[1]} as "
        f"{h}x{w} codes of {codes.num_embeddings}"
    )


@app.command()
@reports_errors
def decode(
    run: RunOrCheckpoint,
    codes: Annotated[
        Path, typer.Argument(help="A code file written by vqtool encode.", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Folder for the PNGs (made if missing).", show_default=False
        ),
    ],
    grid: Annotated[
        Path | None,
        typer.Option(help="Also write the images side by side to this PNG.", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 256,
    device: Device = "auto",
) -> None:
    """Decode a code file into one PNG per image, at the size it was encoded at, named after
    the stored names (DIR/cat/0001.png).

    Example: [bold]vqtool decode runs/demo codes.vqc -o decoded --grid grid.png[/bold]
    """
    import_torch()
    from vqtool.checkpoint import load_model
    from vqtool.codec import decode_file
    from vqtool.device import resolve_device

    loaded = load_model(run, resolve_device(device))
    with progress.CountProgress("decoding") as bar:
        result = decode_file(loaded, codes, output, grid, batch_size, bar.update)
    progress.info(f"wrote {result.images:,} PNGs to {result.out_dir}")
    if result.grid is not None:
        shown = f" (the first {result.grid_images:,})" if result.grid_images < result.images else ""
        progress.info(f"wrote {result.grid}{shown}")


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
