"""vqtool.vq.graphs: the whole training step recorded as one CUDA graph and replayed.

These tests need CUDA (`gpu`, deselected by default; benchmarks/gpu_check.sh runs them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import cuda, run_steps, tiny_trainer, write_tiny_profile

from vqtool.checkpoint import load_checkpoint
from vqtool.profiles import load_profile
from vqtool.vq.load import load_model
from vqtool.vq.train import run_training


@pytest.mark.gpu
@cuda
def test_cuda_graph_steps_train_like_eager_steps(tmp_path: Path) -> None:
    # Same seed, same batches: the recorded and replayed steps (with a learning rate that
    # changes every step and EMA codebook updates) follow the eager ones.
    schedule = ["train.warmup_steps=8", "train.lr_schedule=cosine", "model.dead_code_steps=0"]
    # Each trainer seeds the RNGs when built: build and run one, then the other.
    eager = tiny_trainer(tmp_path / "eager", "cuda", [*schedule, "train.cuda_graphs=false"])
    a = run_steps(eager, 12)
    graphed = tiny_trainer(tmp_path / "graphed", "cuda", [*schedule, "train.cuda_graphs=true"])
    b = run_steps(graphed, 12)
    assert eager.graphed is None and graphed.graphed is not None
    assert graphed.graphed.graph is not None and graphed.graphed.failure is None
    for row_a, row_b in zip(a, b, strict=True):
        assert row_b[0] == pytest.approx(row_a[0], rel=0.05)  # NMSE, bf16 autocast both
    assert float(graphed.optimizer.param_groups[0]["lr"]) == pytest.approx(
        eager.optimizer.param_groups[0]["lr"]
    )
    states = zip(eager.model.state_dict().items(), graphed.model.state_dict().values(), strict=True)
    for (name, p_a), p_b in states:
        assert torch.allclose(p_a.float(), p_b.float(), rtol=0.05, atol=0.02), name


@pytest.mark.gpu
@cuda
def test_cuda_graph_steps_restart_dead_codes(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, "cuda", ["model.dead_code_steps=2", "train.cuda_graphs=true"])
    rows = run_steps(trainer, 12)
    assert trainer.graphed is not None and trainer.graphed.graph is not None
    assert sum(row[3] for row in rows[5:]) > 0  # codes re-seeded inside the replays
    assert all(torch.isfinite(torch.tensor(row)).all() for row in rows)


@pytest.mark.gpu
@cuda
def test_cuda_graph_run_saves_a_checkpoint_that_loads_on_the_cpu(
    data_dir: Path, tmp_path: Path
) -> None:
    profile = load_profile(
        write_tiny_profile(tmp_path / "tiny.toml"),
        ["train.device=cuda", "train.cuda_graphs=true", "train.steps=12", "train.log_every=4"],
    )
    result = run_training(profile, tmp_path / "run", data_dir)
    assert result.step == 12
    payload = load_checkpoint(tmp_path / "run")
    assert all(isinstance(g["lr"], float) for g in payload["optimizer"]["param_groups"])
    loaded = load_model(tmp_path / "run", device="cpu")
    assert loaded.model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 8)


@pytest.mark.gpu
@cuda
def test_cuda_graph_is_recorded_again_after_the_guard_restores(tmp_path: Path) -> None:
    # The guard loads a saved optimizer state: new state tensors, which the old recording
    # would not see. The step is recorded again and training goes on from the saved state.
    trainer = tiny_trainer(tmp_path, "cuda", ["train.collapse_guard=true"])
    run_steps(trainer, 6)
    assert trainer.guard is not None and trainer.graphed is not None
    first = trainer.graphed.graph
    assert first is not None
    trainer.guard.snapshot(trainer.model, trainer.optimizer)
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rows = run_steps(trainer, 3)
    trainer.guard.restore(trainer.model, trainer.optimizer)
    trainer.graphed.reset()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    rows += run_steps(trainer, 4)
    assert trainer.graphed.graph is not None and trainer.graphed.graph is not first
    assert trainer.graphed.failure is None
    assert all(torch.isfinite(torch.tensor(row)).all() for row in rows)
    moved = any(not torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())
    assert moved  # the replays after the restore still train
