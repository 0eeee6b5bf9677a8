"""Checkpoints: atomic, self-describing, fingerprinted, and never a way to run code."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import one_error_line
from typer.testing import CliRunner

from vqtool.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from vqtool.cli import app
from vqtool.errors import UsageError, WorkError
from vqtool.files import atomic_write
from vqtool.vq.load import load_model

runner = CliRunner()


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def copy_checkpoint(trained_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.pt"
    shutil.copy(trained_run / "checkpoint.pt", target)
    return target


def test_fingerprint_covers_names_dtypes_shapes_and_bytes() -> None:
    state = {"a": torch.zeros(2, 3), "b": torch.arange(4)}
    base = fingerprint(state)
    assert fingerprint(dict(reversed(state.items()))) == base  # order-independent
    assert fingerprint({**state, "a": torch.zeros(3, 2)}) != base
    assert fingerprint({**state, "a": torch.zeros(2, 3, dtype=torch.float64)}) != base
    assert fingerprint({"c": state["a"], "b": state["b"]}) != base
    changed = torch.zeros(2, 3)
    changed[1, 2] = 1e-30
    assert fingerprint({**state, "a": changed}) != base
    assert len(fingerprint({"x": torch.ones(2, dtype=torch.bfloat16)})) == 64


def test_load_model_rebuilds_from_profile(trained_run: Path) -> None:
    loaded = load_model(trained_run)
    assert loaded.profile.name == "tiny"
    assert loaded.model.config.num_embeddings == 32
    assert not loaded.model.training
    assert loaded.step == 30


def test_truncated_checkpoint_is_refused(trained_run: Path, tmp_path: Path) -> None:
    path = copy_checkpoint(trained_run, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WorkError, match="cannot read the checkpoint"):
        load_checkpoint(path)
    result = runner.invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read the checkpoint")
    assert "Traceback" not in result.output


def test_tampered_weights_are_refused(trained_run: Path, tmp_path: Path) -> None:
    path = copy_checkpoint(trained_run, tmp_path)
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["model"]))
    payload["model"][key] = payload["model"][key] + 1e-3
    torch.save(payload, path)
    with pytest.raises(WorkError, match="fingerprint"):
        load_checkpoint(path)
    result = runner.invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 1 and "fingerprint" in result.output


@pytest.mark.parametrize("zip_format", [True, False])
def test_code_in_a_pickle_never_runs(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if zip_format:
        torch.save({"format": "vqtool-checkpoint", "x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(WorkError, match="refused, not run|cannot read"):
        load_checkpoint(path)
    result = runner.invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, path)
    with pytest.raises(WorkError, match="not a vqtool checkpoint"):
        load_checkpoint(path)
    torch.save({"format": "vqtool-checkpoint", "version": 99}, path)
    with pytest.raises(WorkError, match="version 99"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(UsageError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty-run")


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def failing(f: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_save_checkpoint_disk_full_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    before = path.read_bytes()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WorkError, match="No space left") as info:
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2})
    assert "previous checkpoint is intact" in info.value.line()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # Issue 11, item 7: a text file got "holds objects other than tensors (refused, not
        # run)", a truncated file torch's internal zip message cut mid-sentence.
        (lambda data: b"[model]\nnum_hiddens = 128\n", "not a checkpoint"),
        (lambda data: data[: len(data) // 2], "the file is truncated or damaged"),
        (lambda data: data[:-30], "the file is truncated or damaged"),
        (lambda data: b"", "not a checkpoint"),
    ],
    ids=["text", "half", "end cut", "empty"],
)
def test_unreadable_checkpoints_are_named_plainly(
    make: Callable[[bytes], bytes], expected: str, trained_run: Path, tmp_path: Path
) -> None:
    path = copy_checkpoint(trained_run, tmp_path)
    path.write_bytes(make(path.read_bytes()))
    result = runner.invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert line.startswith(f"error: cannot read the checkpoint: {expected} ("), line
    assert "refused" not in line and "miniz" not in line


def test_a_legacy_pickle_checkpoint_is_still_read(trained_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    payload = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    assert load_checkpoint(path)["step"] == 30
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WorkError, match="the file is truncated or damaged"):
        load_checkpoint(path)
