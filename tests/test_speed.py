"""Speed features: torch.compile, bf16 autocast with an fp32 quantizer, no host syncs on CUDA.

The `gpu` tests need CUDA (deselected by default; benchmarks/gpu_check.sh runs them); the
compile test on the CPU is `slow` (compiling takes about a minute on two cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_cifar_folder, write_tiny_profile

from vqtool.checkpoint import load_checkpoint, load_model
from vqtool.data import load_cifar10
from vqtool.profiles import load_profile
from vqtool.train import Placement, Trainer, resolve_run, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny_trainer(tmp_path: Path, device: str, overrides: list[str]) -> Trainer:
    data = make_cifar_folder(tmp_path / "data")
    profile = load_profile(write_tiny_profile(tmp_path / "tiny.toml"), overrides)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    images = load_cifar10(data, "train").to(dev)
    return Trainer(profile, tmp_path / "run", images, Placement(dev, dtype), lambda e: None)


def train_compiled(tmp_path: Path, data_dir: Path, device: str) -> None:
    profile = load_profile(
        write_tiny_profile(tmp_path / "tiny.toml"),
        ["train.compile=true", f"train.device={device}", "train.steps=12", "train.log_every=4"],
    )
    result = train(profile, tmp_path / "run", data_dir)
    assert result.step == 12
    payload = load_checkpoint(tmp_path / "run")
    assert not any("_orig_mod" in key for key in payload["model"])
    loaded = load_model(tmp_path / "run")  # a plain, uncompiled model
    assert loaded.model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 8)


@pytest.mark.slow
def test_compile_on_the_cpu_trains_and_saves_a_plain_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    train_compiled(tmp_path, data_dir, "cpu")


def test_cpu_training_uses_channels_last_input_and_a_fused_optimizer(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, "cpu", [])
    assert trainer.optimizer.defaults.get("fused") is True
    x = trainer.next_batch(0)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_cpu_bf16_training_is_repeatable_and_resumes_bit_identically(
    data_dir: Path, tmp_path: Path
) -> None:
    # bf16 on the CPU (opt-in, about twice as fast on CPUs with AMX) stays deterministic.
    tiny = write_tiny_profile(tmp_path / "tiny.toml")
    bf16 = ["train.precision=bf16", "train.device=cpu"]
    train(load_profile(tiny, bf16), tmp_path / "a", data_dir)
    train(load_profile(tiny, bf16), tmp_path / "b", data_dir)
    train(load_profile(tiny, [*bf16, "train.steps=20"]), tmp_path / "split", data_dir)
    longer, run = resolve_run(None, ["train.steps=30"], tmp_path / "split", resume=True)
    train(longer, run, data_dir, resume=True)
    prints = {load_checkpoint(tmp_path / name)["fingerprint"] for name in ("a", "b", "split")}
    assert len(prints) == 1


@pytest.mark.gpu
@cuda
def test_bf16_training_step_keeps_the_quantizer_in_fp32(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, "cuda", [])
    trainer.model.train()
    x = trainer.next_batch(0)
    trainer.init_codebook(x)
    seen: dict[str, torch.dtype] = {}
    quantizer = trainer.model.quantizer
    hook = quantizer.register_forward_hook(
        lambda m, inputs, out: seen.update(z=inputs[0].dtype, quantized=out.quantized.dtype)
    )
    stats = trainer.train_step(x)
    hook.remove()
    assert seen["z"] == torch.bfloat16  # the encoder ran under autocast
    assert seen["quantized"] == torch.float32
    assert quantizer.embedding.dtype == torch.float32
    assert quantizer.embed_sum.dtype == quantizer.cluster_size.dtype == torch.float32
    assert torch.isfinite(stats).all()


@pytest.mark.gpu
@cuda
def test_cuda_training_step_does_not_sync_with_the_host(tmp_path: Path) -> None:
    # Host syncs stall the GPU queue every step (and cannot be recorded in a CUDA graph);
    # eager steps, with dead-code restart on, must not make one.
    trainer = tiny_trainer(tmp_path, "cuda", ["model.dead_code_steps=2", "train.cuda_graphs=false"])
    trainer.model.train()
    x = trainer.next_batch(0)
    trainer.init_codebook(x)
    trainer.train_step(x)  # first step: lazy initialisations may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            trainer.train_step(trainer.next_batch(step))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@cuda
def test_compile_on_cuda_trains_and_saves_a_plain_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    train_compiled(tmp_path, data_dir, "cuda")


def run_steps(trainer: Trainer, steps: int) -> list[list[float]]:
    trainer.model.train()
    out = []
    for step in range(steps):
        x = trainer.next_batch(step)
        if step == 0:
            trainer.init_codebook(x)
        out.append(trainer.train_step(x).tolist())
        trainer.step += 1
    return out


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
    result = train(profile, tmp_path / "run", data_dir)
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
