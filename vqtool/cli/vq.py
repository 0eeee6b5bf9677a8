"""Commands of VQ runs and their data: download, train, evaluate, profiles, plot, compare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vqtool.cli import progress
from vqtool.cli.app import (
    Command,
    DataDir,
    Device,
    Overrides,
    PriorOption,
    ProfileChoice,
    Resume,
    RunOrCheckpoint,
    TrainDevice,
    app,
    data_dir_of,
    folder_option,
    load_coding_prior_for,
    reports_errors,
    train_and_report,
    with_device,
)
from vqtool.errors import (
    VqtoolError,
    os_reason,
)
from vqtool.process import import_torch


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

    folder = data_dir_of(data_dir)
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
        Path | None, folder_option("Run folder (default: runs/<profile>-<YYYYmmdd-HHMMSS>).")
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

    chosen, folder = resolve_run(profile, with_device(set_, device), run_dir, resume)
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

    train_and_report(start, folder, f"vqtool train --resume --run-dir {folder}")


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
            "same images; writes rd-<split>.json (vqtool plot draws rd.png; vqtool plot R1 R2 "
            "--rd, several runs on one figure) and shows its table instead of the metrics "
            "(still written to eval-<split>.json).",
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
    stages: Annotated[
        int | None,
        typer.Option(
            help="A run of residual stages: measure decoding its first N stages only "
            "(default: every count from 1 to all, a row each).",
            metavar="N",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Metrics over a whole split from the decoded codes; writes eval-<split>.json in the run.

    A run of residual stages is measured for each number of stages decoded (--stages N: one,
    written to eval-<split>-stages<N>.json).
    --rate-distortion shows instead the run's code files beside JPEG, WebP and AVIF (for a run
    of stages, every stage count, with the Bjøntegaard delta rates).

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
    files = RunDir.with_checkpoint(run)
    is_prior = files.kind() == "prior"
    if stages is not None and is_prior:
        raise UsageError("--stages belongs to VQ runs", "--stages", "leave it out for a prior")
    if (prior is not None or rd_images is not None) and not rate_distortion:
        raise UsageError(
            "--prior and --rd-images belong to --rate-distortion", "vqtool evaluate",
            "add --rate-distortion",
        )  # fmt: skip
    measure_rd = _rate_distortion_job(run, prior, device) if rate_distortion else None
    with progress.CountProgress(f"evaluating {split}") as bar:
        if is_prior:
            from vqtool.prior.evaluate import evaluate_prior

            if split != "test":
                raise UsageError("a prior is evaluated on its test codes", "--split", "use test")
            metrics = evaluate_prior(run, resolve_device(device), bar.update)
        else:
            metrics = evaluate_checkpoint(
                run,
                split,
                data_dir_of(data_dir),
                resolve_device(device),
                bar.update,
                bar.counter("decoding images"),
                stages,
            )
    # The run's own copy first (a reader that closes stdout early must not cost it), but a
    # run folder that cannot be written (shared, read-only) still gives the results.
    if files.read_only:
        progress.info(f"note: {run} is read-only: {KEEP_IT}")
    else:
        try:
            progress.info(f"wrote {write_eval(run, metrics)}")
        except OSError as exc:
            progress.warn(
                f"could not save {files.eval_file_of(metrics).name} in the run folder "
                f"({os_reason(exc)}); the metrics below are complete"
            )
    if json_out is not None:
        progress.emit_json(metrics, json_out)
    # --rate-distortion asks for its own table: the metrics are in eval-<split>.json.
    if json_out != "-" and measure_rd is None:
        rows = metrics.get("by_stages", [])
        shown = {key: value for key, value in metrics.items() if key != "by_stages"}
        progress.print_result(progress.metrics_table(f"{split} split", shown))
        if rows:
            title = f"{split} split, decoding the first n stages"
            progress.print_result(progress.stages_table(title, rows))
    if measure_rd is not None:
        measure_rd(split, data_dir_of(data_dir), rd_images, json_out != "-")


# What evaluate says instead of writing into a ready-trained run (vqtool.pretrained).
KEEP_IT = "nothing is written into it; --json FILE keeps the figures"


def _rate_distortion_job(run: Path, prior: Path | None, device: str) -> Callable[..., None]:
    """Load what --rate-distortion needs now (a bad --prior fails before any work); the
    returned function measures, writes rd-<split>.json and shows the table."""
    from vqtool.codes.bdrate import BD_COLUMNS, bd_rate_rows
    from vqtool.codes.ratedistortion import (
        RD_COLUMNS,
        rate_distortion_rows,
        rate_distortion_split,
        write_rate_distortion,
    )
    from vqtool.device import resolve_device
    from vqtool.vq.load import load_model

    loaded = load_model(run, resolve_device(device))
    coding_prior = load_coding_prior_for(prior, loaded)

    def measure(split: str, data_dir: Path, images: int | None, show: bool) -> None:
        with progress.CountProgress("rate-distortion") as bar:
            rd = rate_distortion_split(loaded, split, data_dir, coding_prior, images, bar.stage)
        if loaded.run_dir.read_only:
            progress.info(f"note: {run} is read-only: {KEEP_IT}")
        else:
            progress.info(f"wrote {write_rate_distortion(run, rd)}")
        if show:  # not under --json -, whose stdout holds the JSON alone
            title = f"rate-distortion, {rd['images']:,} {split} images"
            rows = rate_distortion_rows(rd)
            progress.print_result(progress.rows_table(title, RD_COLUMNS, rows))
            bd = bd_rate_rows(rd)
            if bd:
                title = f"BD-rate of vqtool's {rd['bd_rate']['vqtool']} curve (shared PSNR range)"
                progress.print_result(progress.rows_table(title, BD_COLUMNS, bd))

    return measure


@app.command(cls=Command, short_help="List the shipped profiles by command, or print one.")
@reports_errors
def profiles(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Print this profile fully resolved.", metavar="NAME", show_default=False
        ),
    ] = None,
) -> None:
    """List the shipped profiles, those for vqtool train (VQ-VAEs) apart from those for vqtool
    prior (priors over a run's codes), or print one resolved (extends and defaults applied).

    Example: [bold]vqtool profiles ema[/bold]
    """
    from vqtool.profiles import load_any_profile, profile_to_toml, profiles_by_command

    if name is not None:
        progress.out.print(profile_to_toml(load_any_profile(name)), markup=False, end="")
        return
    for command, listed in profiles_by_command():
        title = f"profiles for {command}"
        progress.print_result(progress.rows_table(title, ["name", "description"], listed))


@app.command(cls=Command, short_help="Draw a run's loss, reconstructions and codebook PNGs.")
@reports_errors
def plot(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="A run folder; with --rd, one or more VQ runs.", metavar="RUN", show_default=False
        ),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out-dir",
            help="Folder for the PNGs (default: the run folder); with --rd, the PNG file "
            "(default: rd.png; a folder gets rd.png inside).",
            metavar="DIR|FILE",
            show_default=False,
        ),
    ] = None,
    rd: Annotated[
        bool,
        typer.Option(
            "--rd",
            help="Only the rate-distortion figure of the runs, from the rd-test.json that "
            "vqtool evaluate RUN --rate-distortion writes: every run's code files, the codecs "
            "and the lower hull of all the runs' points, with its BD-rates against each codec "
            "(also as a table).",
        ),
    ] = False,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            help="With --rd: write the runs' points, their lower hull and its BD-rates as "
            "JSON to FILE, or - for stdout (then no PNG unless -o names one).",
            metavar="FILE|-",
        ),
    ] = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Write loss.png, reconstructions.png (test images over their reconstructions) and
    codebook.png (code usage, dead codes, PCA of the codes) for a run, and rd.png when
    evaluate --rate-distortion has measured it; for a prior run, loss.png (bits per code)
    and samples.png (samples decoded by its VQ run).

    --rd draws instead one rate-distortion figure of several runs measured on the same images,
    with the lower hull of their points and its BD-rates.

    Example: [bold]vqtool plot runs/demo -o figures/demo[/bold]

    Example: [bold]vqtool plot runs/ema runs/lowrate --rd -o rd.png[/bold]
    """
    from vqtool.errors import UsageError

    if rd:
        _plot_runs_rd(runs, out_dir, json_out)
        return
    if len(runs) > 1:
        raise UsageError(
            f"plot draws one run's figures; {len(runs)} runs are given", "vqtool plot",
            "add --rd for their rate-distortion on one figure, or use vqtool compare for "
            "their training curves",
        )  # fmt: skip
    if json_out is not None:
        raise UsageError("--json belongs to --rd", "--json", "add --rd, or leave --json out")
    import_torch()
    from vqtool.device import resolve_device
    from vqtool.reports.arrays import run_arrays
    from vqtool.reports.plots import write_rate_distortion_plot, write_run_plots
    from vqtool.runs import load_run

    loaded = load_run(runs[0])
    for message in loaded.warnings:
        progress.warn(message)
    target = out_dir if out_dir is not None else _plots_folder(loaded.path)
    if loaded.kind == "prior":
        _plot_prior(loaded, target, resolve_device(device))
        return
    arrays = None
    if loaded.has_checkpoint:
        with progress.CountProgress("encoding the test split") as bar:
            arrays = run_arrays(
                loaded.path,
                data_dir_of(data_dir),
                resolve_device(device),
                on_progress=bar.update,
                on_decode=bar.counter("decoding images"),
            )
    else:
        progress.warn(f"no checkpoint in {loaded.path}: wrote the loss curves only")
    for path in write_run_plots(loaded, target, arrays):
        progress.info(f"wrote {path}")
    rd_png = write_rate_distortion_plot(loaded.path, target)
    if rd_png is not None:
        progress.info(f"wrote {rd_png}")


def _plots_folder(run: Path) -> Path:
    """Where plot writes without -o: the run folder, but a ready-trained run is read-only and
    its figures go to ./<name>-plots."""
    from vqtool.runs import RunDir

    if not RunDir.at(run).read_only:
        return run
    folder = Path(f"{run.name}-plots")
    progress.info(f"note: the run is read-only; the figures go to {folder} (-o chooses)")
    return folder


def _plot_runs_rd(runs: list[Path], out: Path | None, json_out: str | None) -> None:
    """`vqtool plot R1 R2 --rd`: the runs' rd JSONs on one figure, with their lower hull."""
    from vqtool.codes.bdrate import BD_COLUMNS, bd_rate_rows
    from vqtool.codes.hull import HULL_COLUMNS, hull_rows
    from vqtool.errors import UsageError, counted
    from vqtool.files import check_output_file
    from vqtool.reports.plots import RATE_DISTORTION_PNG, save_png
    from vqtool.reports.rd_runs import read_runs_rd, runs_rate_distortion_figure

    # `--json -` feeds a pipe: a figure nobody asked for would land in the working folder.
    target = None if out is None and json_out == "-" else Path(RATE_DISTORTION_PNG)
    if out is not None:
        target = out / RATE_DISTORTION_PNG if out.is_dir() else out
        if target.suffix.lower() != ".png":
            raise UsageError("with --rd, -o names the PNG file", out, "give e.g. -o rd.png")
    if target is not None:
        check_output_file(target, "the figure", "-o rd.png")
    if json_out not in (None, "-"):
        check_output_file(Path(json_out), "the --json file", "--json rd-runs.json")
    read = read_runs_rd(runs)
    for message in read.warnings:
        progress.warn(message)
    if target is not None:
        progress.info(f"wrote {save_png(runs_rate_distortion_figure(read.combined), target)}")
    if json_out is not None:
        progress.emit_json(read.combined, json_out)
    if json_out != "-":
        combined = read.combined
        runs_of = counted(len(combined["runs"]), "run")
        title = f"lower hull of {runs_of} (whole files), {combined['images']:,} images"
        progress.print_result(progress.rows_table(title, HULL_COLUMNS, hull_rows(combined)))
        rows = bd_rate_rows(combined)
        if rows:
            title = "BD-rate of the runs' lower hull (shared PSNR range)"
            progress.print_result(progress.rows_table(title, BD_COLUMNS, rows))
        else:
            progress.info(
                "no BD-rates: the lower hull needs two points within the PSNR range of a codec"
            )


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
