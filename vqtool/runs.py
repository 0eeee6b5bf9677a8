"""The run folder: the one module that knows its layout. Every other module asks it.

A run folder holds what one training wrote and what later commands add to it:

- `profile.toml`: the full resolved profile;
- `metrics.jsonl`: one JSON record per line (kind "train", "eval", "guard", "note");
- `checkpoint.pt`: the model, optimizer and everything a resume needs;
- `eval-<split>.json`: the metrics of `vqtool evaluate` over a split;
- `rd-<split>.json`: rate-distortion points beside JPEG, WebP and AVIF (`--rate-distortion`);
- `.lock`: held by the training process, so that a second one on the folder refuses;
- for a prior run, `codes-<split>.vqc`: the VQ run's codes it trains on, and
  `coding-model.npz`: its exact coding model (vqtool.prior.coding_model).

`RunDir.of` turns a user's path (a run folder, or a checkpoint file) into a run; the readers
below are forgiving where a run can legitimately be caught mid-write (a torn last line of
metrics.jsonl while training runs or after a kill) and return what they skipped as warnings.
Nothing here loads a model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vqtool.errors import UsageError, WorkError, counted, os_reason
from vqtool.files import FOLDER_GONE, GONE_FIX, write_all, write_text
from vqtool.pretrained import is_shipped, read_only_fix, resolve
from vqtool.tomlio import TOMLDecodeError, loads_toml

METRICS_NAME = "metrics.jsonl"
PROFILE_NAME = "profile.toml"
CHECKPOINT_NAME = "checkpoint.pt"
CODING_MODEL_NAME = "coding-model.npz"
LOCK_NAME = ".lock"
EVAL_PREFIX = "eval-"


@dataclass(frozen=True)
class RunDir:
    """A run folder and the checkpoint file it answers for."""

    path: Path
    checkpoint: Path

    @classmethod
    def at(cls, folder: str | Path) -> RunDir:
        """The run in `folder` (it need not exist yet; `pretrained:NAME` must)."""
        folder = resolve(folder)
        return cls(folder, folder / CHECKPOINT_NAME)

    @classmethod
    def default(cls, profile_name: str, parent: Path = Path("runs")) -> RunDir:
        """`runs/<profile>-<YYYYmmdd-HHMMSS>`: a new run's folder when none is given."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls.at(parent / f"{profile_name}-{stamp}")

    @classmethod
    def with_checkpoint(cls, path: str | Path) -> RunDir:
        """A run folder or a checkpoint file -> the run whose checkpoint exists.

        A checkpoint file may lie anywhere: its folder is then where eval files go.
        `pretrained:NAME` is a shipped run (vqtool.pretrained).
        """
        path = resolve(path)
        if path.is_dir():
            run = cls.at(path)
            if not run.checkpoint.is_file():
                raise UsageError(
                    "no checkpoint in this folder", path, "give a run folder that has trained"
                )
            return run
        if not path.is_file():
            raise UsageError("no such run folder or checkpoint", path, "check the path")
        return cls(path.parent, path)

    @classmethod
    def with_results(cls, path: str | Path) -> RunDir:
        """A run folder (or a file inside one) that holds results: metrics or a profile."""
        path = resolve(path)
        if path.is_file() and (path.parent / METRICS_NAME).exists():
            return cls.at(path.parent)
        if not path.exists():
            raise UsageError("no such run folder", path, "check the path")
        if not path.is_dir() or not (
            (path / METRICS_NAME).exists() or (path / PROFILE_NAME).exists()
        ):
            raise UsageError(
                "not a run folder",
                path,
                f"give a folder written by vqtool train (it holds {METRICS_NAME} and "
                f"{PROFILE_NAME})",
            )
        return cls.at(path)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def profile(self) -> Path:
        return self.path / PROFILE_NAME

    def eval_file(self, split: str, stages: int | None = None) -> Path:
        """`eval-<split>.json`; `eval-<split>-stages<N>.json` for the first N stages alone
        (`vqtool evaluate --stages N`), so that it never replaces the every-count file."""
        suffix = "" if stages is None else f"-stages{stages}"
        return self.path / f"{EVAL_PREFIX}{split}{suffix}.json"

    def rd_file(self, split: str) -> Path:
        """Rate-distortion points of a split (`vqtool evaluate --rate-distortion`)."""
        return self.path / f"rd-{split}.json"

    def codes_file(self, split: str) -> Path:
        """The code file of a split that a prior run keeps beside its checkpoint."""
        return self.path / f"codes-{split}.vqc"

    def coding_model(self) -> Path:
        """A prior run's exact coding model (`coding-model.npz`), derived from its checkpoint
        for compressed files that decode on any machine."""
        return self.path / CODING_MODEL_NAME

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    @functools.cached_property
    def read_only(self) -> bool:
        """A ready-trained run shipped in the package (vqtool.pretrained): never written to."""
        return is_shipped(self.path)

    def refuse_overwrite(self, resume: bool) -> None:
        """A folder that holds a checkpoint is continued (resume) or left alone, never replaced;
        a ready-trained run is never trained further in place."""
        if self.read_only:
            raise UsageError(
                "a ready-trained run cannot be trained", self.path, read_only_fix(self.path)
            )
        if self.checkpoint.exists() and not resume:
            raise UsageError(
                "this run folder already holds a checkpoint",
                self.path,
                "pass --resume (resume=True in Python) to continue it, or choose another --run-dir",
            )

    def kind(self) -> str:
        """ "prior" for a prior run (its profile.toml has a [prior] section), else "vq"."""
        raw, _ = self.read_profile_dict()
        return _profile_facts(raw)[2]

    @contextlib.contextmanager
    def lock(self, command: str = "vqtool train") -> Iterator[None]:
        """Hold an exclusive lock on the folder: a second trainer on it refuses at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"another {command} is using this run folder",
                    self.path,
                    "wait for it to finish, or choose another --run-dir",
                ) from None
            yield
        finally:
            os.close(fd)

    def append_metric(self, record: dict[str, Any]) -> None:
        """Add one line to metrics.jsonl; a write that fails (disk full, folder gone) raises
        WorkError and takes back what it wrote of the line, so no torn line is left."""
        line = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise self._metrics_error(exc) from exc
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                write_all(fd, line)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise self._metrics_error(exc) from exc
        finally:
            os.close(fd)

    def _metrics_error(self, exc: OSError) -> WorkError:
        if not self.path.is_dir():
            return WorkError(f"could not write the metrics: {FOLDER_GONE}", self.metrics, GONE_FIX)
        return WorkError(
            f"could not write the metrics: {os_reason(exc)}",
            self.metrics,
            "make room or make the folder writable, then continue with --resume",
        )

    def reset_metrics(self) -> None:
        """A fresh run starts with no records."""
        self.metrics.unlink(missing_ok=True)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records past the checkpoint (and a torn last line): each step is logged once."""
        if not self.metrics.exists():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= last_step:
                kept.append(line)
        write_text(self.metrics, "".join(line + "\n" for line in kept))

    def write_profile(self, toml_text: str) -> None:
        write_text(self.profile, toml_text)

    def eval_file_of(self, metrics: dict[str, Any]) -> Path:
        """Where `vqtool evaluate`'s metrics go: `eval-<split>.json`, or for one stage count of
        a run of several stages (metrics without `by_stages`) `eval-<split>-stages<N>.json`."""
        one_count = "stages" in metrics and "by_stages" not in metrics
        return self.eval_file(metrics["split"], metrics["stages"] if one_count else None)

    def write_eval(self, metrics: dict[str, Any]) -> Path:
        """Write the metrics' eval file (`eval_file_of`) atomically; returns its path."""
        out = self.eval_file_of(metrics)
        write_text(out, json.dumps(metrics, indent=2) + "\n")
        return out

    def read_eval_files(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The eval-<split>.json files: ({split: metrics}, warnings for unreadable ones)."""
        found: dict[str, dict[str, Any]] = {}
        warnings: list[str] = []
        for path in sorted(self.path.glob(f"{EVAL_PREFIX}*.json")):
            split = path.stem.removeprefix(EVAL_PREFIX)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                warnings.append(f"skipped {path}: not readable JSON ({exc})")
                continue
            if not isinstance(data, dict):
                warnings.append(f"skipped {path}: not a JSON object")
                continue
            found[split] = data
        return found, warnings

    def read_profile_dict(self) -> tuple[dict[str, Any] | None, list[str]]:
        """profile.toml as a dict (None when absent or unreadable, with a warning)."""
        if not self.profile.exists():
            return None, []
        try:
            return loads_toml(self.profile.read_text(encoding="utf-8")), []
        except (OSError, UnicodeDecodeError, TOMLDecodeError) as exc:
            return None, [f"could not read {self.profile}: {exc}"]


class MetricsLog(NamedTuple):
    train: list[dict[str, Any]]  # kind "train", sorted by step
    evals: list[dict[str, Any]]  # kind "eval" (eval_every during training), sorted by step
    warnings: list[str]


class Run(NamedTuple):
    """Everything a run folder says about itself, as plain data."""

    path: Path
    profile: str | None  # the profile's name, from profile.toml
    num_embeddings: int | None  # K, from profile.toml
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    eval_files: dict[str, dict[str, Any]]  # split -> contents of eval-<split>.json
    warnings: list[str]
    kind: str = "vq"  # "vq" (a VQ-VAE run) or "prior" (a prior over a VQ run's codes)
    # Residual stages trained with stage dropout (each step the first 1..n of them), or 0: its
    # training NMSE is over fewer stages than its test figures.
    dropout_stages: int = 0

    @property
    def has_checkpoint(self) -> bool:
        return RunDir.at(self.path).has_checkpoint()


def read_metrics(path: Path) -> MetricsLog:
    """Parse a metrics.jsonl file. A torn or unreadable line is skipped and reported.

    Raises WorkError when the file is missing or holds no training record.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise WorkError(
            "the run has no metrics yet", path, "train it for at least train.log_every steps"
        ) from None
    except OSError as exc:
        raise WorkError(f"cannot read the metrics: {os_reason(exc)}", path) from exc
    lines = text.splitlines()
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    warnings: list[str] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            bad.append(number)
        elif record.get("kind") == "train":
            train.append(record)
        elif record.get("kind") == "eval":
            evals.append(record)
    if bad and bad[-1] == len(lines):
        bad.pop()
        warnings.append(
            f"skipped the torn last line ({len(lines)}) of {path}: "
            "the run was stopped while writing it, or is still training"
        )
    if bad:
        shown = ", ".join(str(n) for n in bad[:5]) + (", ..." if len(bad) > 5 else "")
        warnings.append(f"skipped {counted(len(bad), 'unreadable line')} of {path}: line {shown}")
    if not train:
        raise WorkError(
            "no training records in the metrics",
            path,
            "the run has not logged a step yet; train it for at least train.log_every steps",
        )
    train.sort(key=lambda r: r["step"])
    evals.sort(key=lambda r: r["step"])
    return MetricsLog(train, evals, warnings)


def _parse_record(line: str) -> dict[str, Any] | None:
    """One metrics record, or None when the line is not a record with a numeric step."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return record


def _profile_facts(raw: dict[str, Any] | None) -> tuple[str | None, int | None, str, int]:
    """(profile name, K, run kind, stages under stage dropout or 0) from a profile dict; None
    where absent."""
    if raw is None:
        return None, None, "vq", 0
    name = raw.get("name")
    kind = "prior" if isinstance(raw.get("prior"), dict) else "vq"
    found = raw.get("model")
    model: dict[str, Any] = found if isinstance(found, dict) else {}
    k = model.get("num_embeddings")
    stages = model.get("stages", 1)
    dropped = isinstance(stages, int) and stages > 1 and model.get("stage_dropout", True) is True
    return (
        name if isinstance(name, str) else None,
        k if isinstance(k, int) and not isinstance(k, bool) else None,
        kind,
        stages if dropped and kind == "vq" else 0,
    )


def load_run(path: Path) -> Run:
    """Read a run folder's result files (never its checkpoint)."""
    run_dir = RunDir.with_results(path)
    log = read_metrics(run_dir.metrics)
    eval_files, eval_warnings = run_dir.read_eval_files()
    raw, profile_warnings = run_dir.read_profile_dict()
    name, k, kind, dropout_stages = _profile_facts(raw)
    warnings = log.warnings + eval_warnings + profile_warnings
    last_step = log.train[-1]["step"]
    test = eval_files.get("test")
    if test is not None and isinstance(test.get("step"), int) and test["step"] != last_step:
        warnings.append(
            f"{run_dir.eval_file('test')} is from step {test['step']} but the metrics reach step "
            f"{last_step}; rerun vqtool evaluate {run_dir.path}"
        )
    return Run(
        run_dir.path, name, k, log.train, log.evals, eval_files, warnings, kind, dropout_stages
    )
