"""Speed features: torch.compile, bf16 autocast with an fp32 quantizer, no host syncs on CUDA.

The `gpu` tests need CUDA (deselected by default; benchmarks/gpu_check.sh runs them); the
compile test on the CPU is `slow` (compiling takes about a minute on two cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import cuda, tiny_trainer, write_tiny_profile

from vqtool import device
from vqtool.checkpoint import load_checkpoint
from vqtool.profiles import load_profile
from vqtool.vq.load import load_model
from vqtool.vq.train import resolve_run, run_training


def train_compiled(tmp_path: Path, data_dir: Path, device: str) -> None:
    profile = load_profile(
        write_tiny_profile(tmp_path / "tiny.toml"),
        ["train.compile=true", f"train.device={device}", "train.steps=12", "train.log_every=4"],
    )
    result = run_training(profile, tmp_path / "run", data_dir)
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
    run_training(load_profile(tiny, bf16), tmp_path / "a", data_dir)
    run_training(load_profile(tiny, bf16), tmp_path / "b", data_dir)
    run_training(load_profile(tiny, [*bf16, "train.steps=20"]), tmp_path / "split", data_dir)
    longer, run = resolve_run(None, ["train.steps=30"], tmp_path / "split", resume=True)
    run_training(longer, run, data_dir, resume=True)
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


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype | None
) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) is expected
    assert device.resolve_precision("auto", cpu, cpu_bf16=False) is None  # the prior's choice
    assert device.resolve_precision("fp32", cpu) is None
    assert device.resolve_precision("bf16", cpu) is torch.bfloat16


def test_native_bf16_is_read_from_the_cpu_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = {"avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags, raising=False)
    assert device.cpu_has_native_bf16() is False
    flags["amx_bf16"] = True
    assert device.cpu_has_native_bf16() is True
