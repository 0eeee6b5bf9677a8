"""The `vqtool` command line: each command parses, calls one library function, reports.

Heavy imports (torch, matplotlib) happen inside the commands so that `--help` is quick.
"""

from __future__ import annotations

import functools
import inspect
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
    debug_enabled,
    os_reason,
)
from vqtool.process import exit_now, sigterm_unwinds

if TYPE_CHECKING:
    from vqtool.codes.entropy import CodingPrior
    from vqtool.vq.load import LoadedModel

F = TypeVar("F", bound=Callable[..., Any])


def _no_type(ctx: Any) -> None:
    return None


def flowed(docstring: str) -> str:
    """A command's docstring with each paragraph on one line: typer's rich help keeps the
    docstring's line breaks after the first paragraph, which then break mid-sentence in a
    terminal of another width."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class PlainHelp:
    """Help that shows placeholders (FILE, KEY=VALUE), never Python type names.

    typer's rich help prints a type beside every parameter: `<bool>` beside a flag, as if
    `--resume true` were accepted (it is not), and `<path>` beside an argument whose name
    column already shows its placeholder.
    """

    help: str | None  # click.Command's

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = flowed(self.help)

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
    help="Train a VQ-VAE on CIFAR-10 or your own image folders, and turn images into "
    "discrete codes and back.\n\n"
    "Start with: vqtool download, then vqtool train --profile smoke; or, with no training, "
    "a ready-trained run: vqtool roundtrip pretrained:cifar10-rvq my-photos -o r.png "
    "(see vqtool pretrained).",
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


def optional_option(help: str, metavar: str) -> Any:
    """An option without a default to show (what its absence means is said in `help`)."""
    return typer.Option(help=help, metavar=metavar, show_default=False)


def folder_option(help: str) -> Any:
    return optional_option(help, "DIR")


RunOrCheckpoint = Annotated[
    Path,
    typer.Argument(
        help="A run folder, its checkpoint.pt, or pretrained:NAME (see: vqtool pretrained).",
        metavar="RUN",
        show_default=False,
    ),
]
Stages = Annotated[
    int | None,
    typer.Option(
        "--stages",
        min=1,
        help="Residual stages to use, from the first (default: all the run has, or the file "
        "holds). Fewer stages: fewer bits, a coarser picture.",
        metavar="N",
        show_default=False,
    ),
]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per batch.", metavar="N")]
# How encode and roundtrip fit images to one size.
Size = Annotated[
    str | None,
    optional_option(
        "Resize every image to HEIGHTxWIDTH first (height first: 64x96 is 64 high, 96 wide; "
        "needed for images of mixed sizes), as --resize says.",
        "HxW",
    ),
]
Resize = Annotated[
    str | None,
    optional_option(
        "How --size fits an image of another shape: centre-crop (scale it to cover HxW and "
        "keep the centre), stretch (to HxW, losing its aspect ratio), random-crop (the "
        "centre HxW of it scaled to cover 9/8 of HxW: the window evaluate takes of a "
        "random-crop run's images) or native-crop (the centre HxW at its own pixels, scaled "
        "up only if smaller). Default: the run's data.resize, so that encoding sees "
        "images as training did.",
        "MODE",
    ),
]


def check_resize(resize: str | None, size: tuple[int, int] | None) -> None:
    """Refuse a --resize that names no mode, or comes without --size (UsageError)."""
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

JsonOut = Annotated[
    str | None,
    typer.Option(
        "--json", help="Also write it as JSON to FILE, or - for stdout alone.", metavar="FILE|-"
    ),
]
PriorRunDir = Annotated[Path | None, folder_option("The prior's run folder (default: RUN/prior).")]


def with_device(set_: list[str] | None, device: str | None) -> list[str]:
    """--set values, then --device as train.device."""
    return list(set_ or []) + ([f"train.device={device}"] if device else [])


def train_and_report(train: Callable[[], object], folder: Path, to_continue: str) -> None:
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


def load_coding_prior_for(path: Path | None, loaded: LoadedModel) -> CodingPrior | None:
    """The prior that --prior names, loaded on the CPU and checked against the run's model
    (None without --prior)."""
    from vqtool.codes.entropy import check_prior
    from vqtool.prior.load import load_coding_prior

    if path is None:
        return None
    prior = load_coding_prior(path)
    check_prior(prior, loaded.fingerprint, loaded.model.config.num_embeddings)
    return prior


def data_dir_of(data_dir: Path | None) -> Path:
    from vqtool.data.cifar10 import resolve_data_dir

    return resolve_data_dir(data_dir)[0]


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
