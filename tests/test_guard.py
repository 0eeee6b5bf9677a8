"""The collapse guard: its verdicts, and a forced collapse that it undoes (and that stays
when the guard is off)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import write_tiny_profile

import vqtool.vq.train as train_module
from vqtool.checkpoint import load_checkpoint
from vqtool.profiles import load_profile
from vqtool.vq.guard import CollapseGuard
from vqtool.vq.train import resolve_run, run_training

# The tiny model's learning rate is multiplied by this for steps 30-39: a blow-up.
SPIKE = 300.0


def record(nmse: float, perplexity: float) -> dict[str, Any]:
    return {"kind": "train", "nmse": nmse, "perplexity": perplexity}


def armed_guard() -> CollapseGuard:
    guard = CollapseGuard()
    model = torch.nn.Linear(2, 2)
    guard.snapshot(model, torch.optim.Adam(model.parameters()))
    assert not guard.observe(100, record(0.10, 300.0)).restore
    return guard


def test_guard_verdicts() -> None:
    guard = armed_guard()
    assert not guard.observe(200, record(0.09, 310.0)).restore  # normal progress
    jump = guard.observe(300, record(0.25, 300.0))
    assert jump.restore and "NMSE jumped" in jump.reason and "step 200" in jump.reason
    crash = armed_guard().observe(200, record(0.11, 12.0))
    assert crash.restore and "perplexity fell" in crash.reason
    # Perplexity falling while NMSE improves is an encoder settling, not a collapse.
    assert not armed_guard().observe(200, record(0.08, 60.0)).restore
    assert armed_guard().observe(200, record(math.nan, 300.0)).restore


def test_guard_without_a_snapshot_lets_the_run_go_on() -> None:
    guard = CollapseGuard()
    assert not guard.observe(10, record(0.5, 10.0)).restore
    assert not guard.observe(20, record(5.0, 1.0)).restore


def test_restore_puts_back_model_and_optimizer_state() -> None:
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    guard = CollapseGuard()
    guard.observe(10, record(0.5, 10.0))
    guard.snapshot(model, optimizer)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, good["weight"])
    assert guard.restore(model, optimizer) == 10
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}


@pytest.fixture
def spiky_learning_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A learning rate SPIKE times too large for steps 30 to 39: the model blows up."""
    normal = train_module.learning_rate

    def spiky(profile: Any, step: int, scale: float) -> float:
        return normal(profile, step, scale) * (SPIKE if 30 <= step < 40 else 1.0)

    monkeypatch.setattr(train_module, "learning_rate", spiky)


def run_records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("spiky_learning_rate")
def test_guard_restores_the_last_good_state_and_lowers_the_rate(
    data_dir: Path, tmp_path: Path
) -> None:
    tiny = write_tiny_profile(tmp_path / "tiny.toml")
    notes: list[str] = []

    def watch(event: train_module.TrainEvent) -> None:
        if event.kind == "note":
            notes.append(event.message)

    guarded = load_profile(tiny, ["train.steps=60", "train.collapse_guard=true"])
    run_training(guarded, tmp_path / "on", data_dir, callback=watch)
    unguarded = load_profile(tiny, ["train.steps=60", "train.collapse_guard=false"])
    run_training(unguarded, tmp_path / "off", data_dir)

    on, off = run_records(tmp_path / "on"), run_records(tmp_path / "off")
    before = next(r for r in on if r["kind"] == "train" and r["step"] == 30)["nmse"]
    guard_records = [r for r in on if r["kind"] == "guard"]
    assert [(r["step"], r["restored_step"], r["lr_scale"]) for r in guard_records] == [
        (40, 30, 0.5)
    ]
    assert len(notes) == 1 and notes[0].startswith("collapse guard: NMSE jumped")
    last_on = on[-1]
    assert last_on["step"] == 60 and last_on["lr"] == pytest.approx(
        0.5 * guarded.train.learning_rate
    )
    assert last_on["nmse"] < 1.1 * before  # back where it was before the blow-up
    assert load_checkpoint(tmp_path / "on")["lr_scale"] == 0.5

    # Without the guard the collapse stays: the run never gets back.
    assert not any(r["kind"] == "guard" for r in off)
    assert off[-1]["nmse"] > 10 * before
    assert off[-1]["perplexity"] < 0.8 * last_on["perplexity"]


def test_resume_with_the_guard_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    tiny = write_tiny_profile(tmp_path / "tiny.toml")
    straight = load_profile(tiny, ["train.collapse_guard=true"])
    run_training(straight, tmp_path / "straight", data_dir)
    short = load_profile(tiny, ["train.collapse_guard=true", "train.steps=20"])
    run_training(short, tmp_path / "split", data_dir)
    assert load_checkpoint(tmp_path / "split")["guard"]["good"]["step"] == 20
    longer, run = resolve_run(None, ["train.steps=30"], tmp_path / "split", resume=True)
    run_training(longer, run, data_dir, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["fingerprint"] == b["fingerprint"]
