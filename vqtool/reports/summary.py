"""Runs as table rows: the summaries behind `vqtool compare`'s table and JSON.

Reads only what `vqtool.runs.load_run` returns: plain data, never a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vqtool.runs import Run


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
    training record's elapsed_s; images/s is the mean over the training records. `checkpoint`
    is False for a run stopped before it saved one: its steps were logged, then lost.
    """
    last = run.train[-1]
    test = run.eval_files.get("test", {})
    speeds = [v for r in run.train if (v := _number(r.get("images_per_s"))) is not None]
    return {
        "run": label if label is not None else run.path.name,
        "path": str(run.path),
        "kind": run.kind,
        "profile": run.profile,
        "steps": last["step"],
        "checkpoint": run.has_checkpoint,
        "train_nmse": _number(last.get("nmse")),
        "test_nmse": _number(test.get("nmse")),
        "psnr": _number(test.get("psnr")),
        "perplexity": _number(test.get("perplexity")),
        "codebook_usage": _number(test.get("codebook_usage")),
        "dead_codes": _number(test.get("dead_codes")),
        "train_bits_per_code": _number(last.get("bits_per_code")),
        "test_bits_per_image": _number(test.get("bits_per_image")) if run.kind == "prior" else None,
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
    "test_bits_per_image": "test bits/image",
    "wall_s": "wall (s)",
    "images_per_s": "images/s",
}


def compare_row(summary: dict[str, Any]) -> list[Any]:
    """A summary as a table row: the COMPARE_COLUMNS values, usage as a percentage, and the
    steps of a run without a checkpoint marked as such."""
    row = [summary[key] for key in COMPARE_COLUMNS]
    usage = summary["codebook_usage"]
    if usage is not None:
        row[list(COMPARE_COLUMNS).index("codebook_usage")] = f"{usage:.1%}"
    if not summary["checkpoint"]:
        row[list(COMPARE_COLUMNS).index("steps")] = f"{summary['steps']:,} (no checkpoint)"
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


def pretrained_summary(name: str) -> dict[str, Any]:
    """A ready-trained run (vqtool.pretrained) for `vqtool pretrained`: its about.toml, what
    its training wrote, and its test figures at every stage count."""
    from vqtool.pretrained import PREFIX, about
    from vqtool.runs import load_run

    run = load_run(Path(PREFIX + name))
    test = run.eval_files.get("test", {})
    by_stages = test.get("by_stages") or [test]
    prior = run.path / "prior"
    return {
        "name": PREFIX + name,
        "path": str(run.path),
        **about(run.path),
        "profile": run.profile,
        "steps": run.train[-1]["step"],
        "psnr": [_number(row.get("psnr")) for row in by_stages],
        "bits_per_image": [_number(row.get("bits_per_image")) for row in by_stages],
        "prior": PREFIX + f"{name}/prior" if prior.is_dir() else None,
    }
