"""Reading a run folder's result files: metrics.jsonl, eval-<split>.json, profile.toml.

Nothing here loads a model. Readers are forgiving where a run can legitimately be caught
mid-write (a torn last line of metrics.jsonl while training runs or after a kill) and return
what they skipped as warnings for the caller to show; a folder that is not a run, or a run
with nothing logged yet, is an error.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from vqtool.errors import UsageError, WorkError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

METRICS_NAME = "metrics.jsonl"
PROFILE_NAME = "profile.toml"
CHECKPOINT_NAME = "checkpoint.pt"


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

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT_NAME).is_file()


def run_folder(path: Path) -> Path:
    """The run folder for `path` (a run folder, or a file inside one such as checkpoint.pt)."""
    if path.is_file() and (path.parent / METRICS_NAME).exists():
        return path.parent
    if not path.exists():
        raise UsageError("no such run folder", path, "check the path")
    if not path.is_dir() or not ((path / METRICS_NAME).exists() or (path / PROFILE_NAME).exists()):
        raise UsageError(
            "not a run folder",
            path,
            f"give a folder written by vqtool train (it holds {METRICS_NAME} and {PROFILE_NAME})",
        )
    return path


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
        raise WorkError(f"cannot read the metrics: {exc.strerror or exc}", path) from exc
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
        warnings.append(f"skipped {len(bad)} unreadable line(s) of {path}: line {shown}")
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


def read_eval_files(run_dir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The eval-<split>.json files of a run: ({split: metrics}, warnings for unreadable ones)."""
    found: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for path in sorted(run_dir.glob("eval-*.json")):
        split = path.stem.removeprefix("eval-")
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


def read_profile_facts(run_dir: Path) -> tuple[str | None, int | None, list[str]]:
    """(profile name, num_embeddings, warnings) from profile.toml; None where absent."""
    path = run_dir / PROFILE_NAME
    if not path.exists():
        return None, None, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, None, [f"could not read {path}: {exc}"]
    name = data.get("name")
    k = data.get("model", {}).get("num_embeddings") if isinstance(data.get("model"), dict) else None
    return (
        name if isinstance(name, str) else None,
        k if isinstance(k, int) and not isinstance(k, bool) else None,
        [],
    )


def load_run(path: Path) -> Run:
    """Read a run folder's result files (never its checkpoint)."""
    folder = run_folder(path)
    log = read_metrics(folder / METRICS_NAME)
    eval_files, eval_warnings = read_eval_files(folder)
    name, k, profile_warnings = read_profile_facts(folder)
    warnings = log.warnings + eval_warnings + profile_warnings
    last_step = log.train[-1]["step"]
    test = eval_files.get("test")
    if test is not None and isinstance(test.get("step"), int) and test["step"] != last_step:
        warnings.append(
            f"{folder / 'eval-test.json'} is from step {test['step']} but the metrics reach step "
            f"{last_step}; rerun vqtool evaluate {folder}"
        )
    return Run(folder, name, k, log.train, log.evals, eval_files, warnings)


def _number(value: Any) -> float | int | None:
    """A finite JSON number, else None (so summaries stay valid JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarise_run(run: Run, label: str | None = None) -> dict[str, Any]:
    """One run as a flat dict for tables and JSON; None where a value is absent.

    Test metrics come from eval-test.json (written by `vqtool evaluate`); wall time is the last
    training record's elapsed_s; images/s is the mean over the training records.
    """
    last = run.train[-1]
    test = run.eval_files.get("test", {})
    speeds = [v for r in run.train if (v := _number(r.get("images_per_s"))) is not None]
    return {
        "run": label if label is not None else run.path.name,
        "path": str(run.path),
        "profile": run.profile,
        "steps": last["step"],
        "train_nmse": _number(last.get("nmse")),
        "test_nmse": _number(test.get("nmse")),
        "psnr": _number(test.get("psnr")),
        "perplexity": _number(test.get("perplexity")),
        "codebook_usage": _number(test.get("codebook_usage")),
        "dead_codes": _number(test.get("dead_codes")),
        "eval_step": _number(test.get("step")),
        "wall_s": _number(last.get("elapsed_s")),
        "images_per_s": sum(speeds) / len(speeds) if speeds else None,
    }


# summary key -> column header of `vqtool compare`'s table
COMPARE_COLUMNS = {
    "run": "run",
    "profile": "profile",
    "steps": "steps",
    "train_nmse": "train NMSE",
    "test_nmse": "test NMSE",
    "psnr": "PSNR (dB)",
    "perplexity": "perplexity",
    "codebook_usage": "codes used",
    "wall_s": "wall (s)",
    "images_per_s": "images/s",
}


def compare_row(summary: dict[str, Any]) -> list[Any]:
    """A summary as a table row: the COMPARE_COLUMNS values, usage as a percentage."""
    row = [summary[key] for key in COMPARE_COLUMNS]
    usage = summary["codebook_usage"]
    if usage is not None:
        row[list(COMPARE_COLUMNS).index("codebook_usage")] = f"{usage:.1%}"
    return row


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short names for runs: the folder name, with parent folders added until they differ."""
    resolved = [p.resolve() for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in resolved):
            return labels
        depth += 1
