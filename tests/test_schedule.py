"""The learning-rate schedule: warm-up, constant or cosine, and the hold before a decay."""

from __future__ import annotations

import math

import pytest

from vqtool.profiles import TrainConfig, load_profile
from vqtool.schedule import scheduled_rate


def rates(cfg: TrainConfig) -> list[float]:
    return [scheduled_rate(cfg, step) for step in range(cfg.steps)]


def test_constant_and_warm_up() -> None:
    cfg = TrainConfig(steps=50, learning_rate=1e-3, warmup_steps=10)
    got = rates(cfg)
    assert got[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert set(got[10:]) == {1e-3}


def test_cosine_decays_from_the_first_step_without_a_hold() -> None:
    cfg = TrainConfig(steps=100, learning_rate=2e-3, lr_schedule="cosine")
    got = rates(cfg)
    expected = [2e-3 * (0.5 * (1 + math.cos(math.pi * (s / 100)))) for s in range(100)]
    assert got == expected  # bit for bit: the runs made before the hold existed are unchanged
    assert got[50] == pytest.approx(1e-3) and got[-1] < 1e-6


def test_a_hold_keeps_the_full_rate_then_decays_to_zero_at_the_last_step() -> None:
    cfg = TrainConfig(steps=1000, learning_rate=1e-3, lr_schedule="cosine", lr_hold_steps=200)
    got = rates(cfg)
    assert set(got[:201]) == {1e-3}
    assert got[600] == pytest.approx(5e-4)  # half-way through the decay
    assert all(a > b for a, b in zip(got[200:-1], got[201:], strict=True))
    assert got[-1] < 1e-8
    # A run no longer than the hold never decays.
    short = TrainConfig(steps=150, learning_rate=1e-3, lr_schedule="cosine", lr_hold_steps=200)
    assert set(rates(short)) == {1e-3}


def test_a_shortened_rvq_run_trains_at_the_full_rate_and_the_full_run_decays() -> None:
    short = load_profile("rvq", ["train.steps=2000"]).train
    assert set(rates(short)) == {short.learning_rate}
    full = load_profile("rvq").train
    assert full.steps > full.lr_hold_steps
    assert scheduled_rate(full, full.steps - 1) < 1e-3 * full.learning_rate
