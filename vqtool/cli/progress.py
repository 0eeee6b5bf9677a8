"""Everything vqtool shows on the terminal: progress bars, status lines and tables.

Progress, logs and warnings go to stderr; results (tables, JSON) go to stdout. When stderr
is not a terminal (a log file, CI), progress becomes plain lines instead of live bars.

What is shown is a view of the work, never a part of it: a write that fails (the reader of a
pipe has gone, as in `vqtool train ... 2>&1 | head`; a full disk under a log file) is dropped,
and so is everything after it on that stream, while the work goes on to its end.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TextIO, TypeVar, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from vqtool.errors import counted

# Streams that a write failed on: nothing more is written to them.
_gone: list[TextIO] = []


class _Stream:
    """sys.stdout or sys.stderr as it is at each write (CliRunner and pytest swap them), whose
    failed writes are dropped (see the module). What rich's Console uses of a file: write,
    flush, isatty and encoding."""

    def __init__(self, name: str) -> None:
        self.stream_name = name

    def _target(self) -> TextIO | None:
        stream: TextIO | None = getattr(sys, self.stream_name)
        # While a live display redirects sys.stdout, rich's proxy prints through the console:
        # the file behind it is the one to write to, as rich's own Console.file takes it.
        stream = getattr(stream, "rich_proxied_file", stream)
        if stream is None or any(stream is gone for gone in _gone):
            return None
        return stream

    def write(self, text: str) -> int:
        stream = self._target()
        if stream is not None:
            try:
                try:
                    stream.write(text)
                except UnicodeEncodeError:  # a name the terminal's encoding lacks
                    encoding = stream.encoding or "ascii"
                    stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except (OSError, ValueError):  # EPIPE and the like; ValueError: a closed file
                _give_up(stream)
        return len(text)

    def flush(self) -> None:
        stream = self._target()
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                _give_up(stream)

    def isatty(self) -> bool:
        stream = self._target()
        try:
            return stream is not None and stream.isatty()
        except (OSError, ValueError):
            return False

    @property
    def encoding(self) -> str:
        return getattr(self._target(), "encoding", None) or "utf-8"


def _give_up(stream: TextIO) -> None:
    """Write nothing more to `stream`. Its file descriptor, if it has one, now points at
    /dev/null, so that its other writers (Python's final flush, warnings, torch's C++ logs)
    do not fail in turn; the pipe itself is closed only once every process lets go of it."""
    _gone.append(stream)
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no descriptor (a test's buffer), or closed
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


stdout = cast(TextIO, _Stream("stdout"))
stderr = cast(TextIO, _Stream("stderr"))
# emoji=False: rich would turn ":train:" in `cifar10:train:N` (or in a file name) into an emoji.
# soft_wrap: a status line is one line however long, so that logs stay greppable; a terminal
# wraps it for the eye.
err = Console(file=stderr, highlight=False, emoji=False, soft_wrap=True)
out = Console(file=stdout, highlight=False, soft_wrap=True, emoji=False)
if not out.is_terminal:
    # Piped results have no terminal width to fit; rich's default 80 columns would cut cells.
    out = Console(file=stdout, highlight=False, soft_wrap=True, width=160, emoji=False)


def info(message: str) -> None:
    """A status line on stderr."""
    err.print(message, markup=False)


def warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False, style="yellow")


def error_line(line: str) -> None:
    err.print(line, markup=False, style="red", soft_wrap=True)


B = TypeVar("B", bound="_Bar")


class _Bar:
    """A rich progress bar with a single task; silent when stderr is not a terminal."""

    def __init__(self, description: str, *columns: Any) -> None:
        self.description = description
        self.live = err.is_terminal
        self.progress = Progress(*columns, console=err, transient=False, disable=not self.live)
        self.task: TaskID | None = None

    def __enter__(self: B) -> B:
        # Returns the subclass, so `with ByteProgress(...) as bar` knows `bar.update`.
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def counter(self, description: str) -> Callable[[int, int], None]:
        """An on_progress callback (done, total) for a second task shown in this bar."""
        task: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if not task:
                task.append(self.progress.add_task(description, total=total, stats=""))
            self.progress.update(task[0], completed=done, total=total)

        return update


class ByteProgress(_Bar):
    """Bytes, speed and ETA of a download: pass `.update` as the on_progress callback."""

    def __init__(self, description: str) -> None:
        super().__init__(
            description,
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )

    def update(self, done: int, total: int | None) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=total)
        self.progress.update(self.task, completed=done, total=total)


# Seconds between plain progress lines (stderr not a terminal): a log shows that a long encode
# or decode is alive and how far it got, and a short one prints none.
PLAIN_EVERY_S = 10.0


class PlainLines:
    """Progress as a plain line every PLAIN_EVERY_S seconds ('encoding: 12,800/50,000 (26%),
    30 s'), and a last one at the end once any was printed."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.start = time.monotonic()
        self.last = self.start
        self.printed = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total:
            if not self.printed:
                return
        elif now - self.last < PLAIN_EVERY_S:
            return
        self.last, self.printed = now, True
        share = f" ({done / total:.0%})" if total else ""
        info(f"{self.description}: {done:,}/{total:,}{share}, {now - self.start:,.0f} s")


class CountProgress(_Bar):
    """Items done out of a total (images, batches): pass `.update` as the on_progress callback.
    A live bar on a terminal; otherwise plain lines now and then (PlainLines)."""

    def __init__(self, description: str) -> None:
        super().__init__(
            description,
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.plain = PlainLines(description)

    def update(self, done: int, total: int) -> None:
        if not self.live:
            self.plain(done, total)
            return
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def stage(self, description: str) -> Callable[[int, int], None]:
        """An on_progress callback for another stage of the work: a line of its own."""
        if not self.live:
            return PlainLines(description)
        tasks: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if not tasks:
                tasks.append(self.progress.add_task(description, total=total))
            self.progress.update(tasks[0], completed=done, total=total)

        return update


class TrainProgress(_Bar):
    """Renders training events: a live bar on a terminal, one plain line per log otherwise.

    The lines' wording comes from the methods below; PriorProgress words them for a prior.
    """

    activity = "training"
    what = "image"  # what a training step consumes (counted makes the plural)
    speed_unit = "img/s"

    def __init__(self, description: str = "train") -> None:
        super().__init__(
            description,
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.download = ByteProgress("downloading CIFAR-10").update
        self.setup = ""  # "device, precision" from the start event, repeated at the end
        self.decode = self.counter("decoding images")
        self.first_log = False

    def describe_setup(self, record: Mapping[str, Any]) -> str:
        compiled = ", torch.compile" if record.get("compile") else ""
        graphs = ", CUDA graphs" if record.get("cuda_graphs") else ""
        return f"{record['device']}, {record['precision']}{compiled}{graphs}"

    def stats(self, record: Mapping[str, Any]) -> str:
        """A log record's figures, for the bar and the plain step lines."""
        return f"nmse {record['nmse']:.4f}  perplexity {record['perplexity']:.1f}"

    def eval_line(self, record: Mapping[str, Any]) -> str:
        return (
            f"test nmse {record['nmse']:.4f}, psnr {record['psnr']:.2f} dB, "
            f"perplexity {record['perplexity']:.1f}"
        )

    def __call__(self, event: Any) -> None:
        record: Mapping[str, Any] = event.record
        if event.kind == "decode":
            self.decode(record["done"], record["total"])
            if not self.live and record["done"] == 0:
                info(f"decoding {counted(record['total'], 'image')} into the image cache (once)")
        elif event.kind == "start":
            self.setup = self.describe_setup(record)
            self.first_log = True
            data = counted(record["train_images"], self.what)
            processes = counted(record["world_size"], "process", "processes")
            info(
                f"{self.activity} on {self.setup}, {processes}, {data}, "
                f"{record['parameters']:,} parameters -> {record['run_dir']}"
            )
            if self.live:
                self.task = self.progress.add_task(
                    self.description, total=event.total_steps, completed=event.step, stats=""
                )
        elif event.kind == "log":
            speed = f"{record['images_per_s']:,.0f} {self.speed_unit}"
            stats = f"{self.stats(record)}  {speed}"
            if self.task is not None:
                self.progress.update(self.task, completed=event.step, stats=stats)
                if self.first_log:
                    # The bar keeps updating; say the speed once in the log as well.
                    info(
                        f"speed: {speed} on {self.setup} "
                        f"(first {event.step} steps, start-up included)"
                    )
            else:
                info(f"step {event.step}/{event.total_steps}  {stats}")
            self.first_log = False
            if record.get("restarted_codes"):
                restarted = counted(record["restarted_codes"], "dead code")
                info(f"step {event.step}: re-seeded {restarted}")
        elif event.kind == "eval":
            info(f"step {event.step}: {self.eval_line(record)}")
        elif event.kind == "note":
            warn(event.message) if record.get("kind") == "guard" else info(event.message)
        elif event.kind == "end" and record:
            info(
                f"done: step {event.step}, {self.stats(record).replace('  ', ', ')}, "
                f"{record['images_per_s']:,.0f} {self.speed_unit} "
                f"on {self.setup}, {record['elapsed_s']:.1f} s of training"
            )


class PriorProgress(TrainProgress):
    """Prior training: the dataset's encoding into code files first, then bits per code."""

    activity = "training a prior"
    what = "code grid"
    speed_unit = "grids/s"

    def __init__(self) -> None:
        super().__init__("prior")
        self.codes: dict[str, TaskID] = {}  # split -> its encoding task on the same display

    def describe_setup(self, record: Mapping[str, Any]) -> str:
        return f"{record['device']}, {record['precision']}"

    def stats(self, record: Mapping[str, Any]) -> str:
        return (
            f"{record['bits_per_code']:.3f} bits/code  {record['bits_per_image']:,.1f} bits/image"
        )

    def eval_line(self, record: Mapping[str, Any]) -> str:
        return (
            f"test {record['bits_per_code']:.3f} bits/code, "
            f"{record['bits_per_image']:,.1f} bits/image"
        )

    def __call__(self, event: Any) -> None:
        if event.kind != "codes":
            super().__call__(event)
            return
        # step: grids encoded so far, total_steps: of how many
        split = event.record["split"]
        if self.live and split not in self.codes:
            self.codes[split] = self.progress.add_task(
                f"encoding {split}", total=event.total_steps, stats=""
            )
        if split in self.codes:
            self.progress.update(self.codes[split], completed=event.step)
        if event.step == event.total_steps:
            info(f"encoded the {split} split with the VQ run: {event.step:,} code grids")


def facts_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    """Two columns without a header: what, then its value."""
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value")
    for label, value in rows:
        table.add_row(label, format_value(value))
    return table


def short_fingerprint(fingerprint: str) -> str:
    """A sha256 fingerprint as its first 12 hex digits, for tables (JSON keeps all 64)."""
    return f"{fingerprint[:12]}..." if len(fingerprint) > 12 else fingerprint


def rows_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(format_value(v) for v in row))
    return table


def format_value(value: Any) -> str:
    """Every table's numbers: integers and floats from 1,000 up with thousands separators
    and no decimals (67,650, never 6.765e+04), whole floats as integers (576), other smaller
    floats to 4 significant digits with their trailing zeros (31.00, 24.60)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 999.5:  # .4g would print 999.97 as 1000
            return f"{value:,.0f}"
        if value.is_integer():
            return f"{int(value):,}"  # 576 bits, not 576.0
        return f"{value:#.4g}"  # "#": 30.997 dB as 31.00 beside 28.14, never 31
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_result(table: Table) -> None:
    out.print(table)


def emit_json(data: Any, target: str) -> None:
    """`--json -` writes to stdout, `--json FILE` to that file."""
    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        stdout.write(text)
        stdout.flush()
    else:
        from pathlib import Path

        from vqtool.files import write_text

        write_text(Path(target), text)


def _db(value: Any) -> str:
    return f"{value:.2f} dB" if isinstance(value, (int, float)) else format_value(value)


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else format_value(value)


def _bits(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, (int, float)) else format_value(value)


def _fingerprint(value: Any) -> str:
    return short_fingerprint(value) if isinstance(value, str) else format_value(value)


UNIFORM = "bits per image (uniform bound: h*w*log2 K)"
# metric -> its label in evaluate's table and how its value reads there (JSON keeps the
# keys and raw values): a VQ run's metrics, then where a prior's differ.
VQ_METRICS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "split": ("split", format_value),
    "nmse": ("nmse (MSE / train pixel variance)", format_value),
    "mse": ("mse (pixels in [0, 1])", format_value),
    "psnr": ("psnr", _db),
    "perplexity": ("perplexity (codes in effective use)", format_value),
    "codebook_usage": ("codebook usage (codes chosen at least once)", _percent),
    "dead_codes": ("dead codes (never chosen)", format_value),
    "bits_per_image": (UNIFORM, _bits),
    "entropy_bits_per_image": ("bits per image (entropy of the codes)", _bits),
    "images": ("images", format_value),
    "images_per_s": ("images per second", format_value),
    "checkpoint": ("checkpoint", _fingerprint),
    "step": ("step", format_value),
}
PRIOR_METRICS: dict[str, tuple[str, Callable[[Any], str]]] = {
    **VQ_METRICS,
    "bits_per_code": ("bits per code (the prior's)", format_value),
    "bits_per_image": ("bits per image (the prior's)", _bits),
    "unigram_bits_per_image": ("bits per image (entropy of the codes)", _bits),
    "uniform_bits_per_image": (UNIFORM, _bits),
    "ratio_to_unigram": ("the prior's bits / entropy's", format_value),
    "images": ("code grids", format_value),
    "images_per_s": ("code grids per second", format_value),
}


# A row of evaluate's table of stage counts: (key of a by_stages row, its column's label); the
# codebook columns are stage n's own, the bits those of all n stages.
STAGE_COLUMNS = [
    ("stages", "stages decoded"),
    ("nmse", "nmse"),
    ("psnr", "psnr"),
    ("bits_per_image", "bits per image (uniform)"),
    ("entropy_bits_per_image", "bits per image (entropy)"),
    ("perplexity", "stage n's perplexity"),
    ("codebook_usage", "stage n's codes used"),
]


def stages_table(title: str, rows: Iterable[Mapping[str, Any]]) -> Table:
    """evaluate's rows of a run of stages (one per stage count), read as the metrics table's."""
    table = Table(title=title)
    for _, label in STAGE_COLUMNS:
        table.add_column(label, justify="right")
    for row in rows:
        table.add_row(*(VQ_METRICS.get(key, (key, format_value))[1](row[key])
                        for key, _ in STAGE_COLUMNS))  # fmt: skip
    return table


def metrics_table(title: str, metrics: Mapping[str, Any]) -> Table:
    """evaluate's metrics in words: fingerprints shortened, units said, bits qualified."""
    known = PRIOR_METRICS if "bits_per_code" in metrics else VQ_METRICS
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        label, shown = known.get(key, (key, format_value))
        table.add_row(label, shown(value))
    return table
