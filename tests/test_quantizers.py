"""Finite scalar quantization and residual stages: the math, prefix decoding, stage draws."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from vqtool.models.fsq import (
    FiniteScalarQuantizer,
    bound,
    codes_to_indices,
    indices_to_codes,
    quantize_scalars,
    round_straight_through,
)
from vqtool.models.quantizer import VectorQuantizer, rotate_to
from vqtool.models.residual import ResidualVectorQuantizer
from vqtool.models.vqvae import build_model
from vqtool.profiles import ModelConfig
from vqtool.schedule import drawn_stages

SMALL = ModelConfig(
    num_hiddens=16,
    num_residual_hiddens=8,
    num_residual_layers=1,
    embedding_dim=8,
    num_embeddings=32,
)


@pytest.mark.parametrize("levels", [(8, 8, 8), (8, 5, 5, 5), (2, 3), (7,)])
def test_fsq_indices_and_codes_round_trip(levels: tuple[int, ...]) -> None:
    lv = torch.tensor(levels, dtype=torch.float32)
    k = math.prod(levels)
    indices = torch.arange(k)
    codes = indices_to_codes(indices, lv)  # (K, d)
    assert codes.shape == (k, len(levels))
    assert torch.equal(codes_to_indices(codes, lv), indices)
    assert len({tuple(row) for row in codes.tolist()}) == k  # K distinct grid points
    # Each channel takes exactly its L values, all in [-1, 1].
    for i, n in enumerate(levels):
        assert codes[:, i].unique().numel() == n
    assert codes.abs().max() <= 1.0
    # Mixed radix: channel 0 is the least significant digit.
    assert codes_to_indices(indices_to_codes(torch.tensor([1]), lv), lv).item() == 1
    assert not torch.equal(codes[0], codes[1]) and torch.equal(codes[0, 1:], codes[1, 1:])


@pytest.mark.parametrize("levels", [(8, 8, 8), (8, 5, 5, 5), (2, 3)])
def test_fsq_quantizes_any_latent_onto_the_grid(levels: tuple[int, ...]) -> None:
    lv = torch.tensor(levels, dtype=torch.float32)
    z = torch.cat([torch.randn(1000, len(levels)) * 3, torch.full((2, len(levels)), 1e6)])
    z[-1] = -1e6
    bounded = bound(z, lv)
    half = lv // 2
    # Bounded within half a level beyond the outer levels; rounding lands on a level.
    assert (bounded >= -half - 0.5).all() and (bounded <= lv - 1 - half + 0.5).all()
    codes = quantize_scalars(z, lv)
    indices = codes_to_indices(codes, lv)
    assert indices.min() >= 0 and indices.max() < math.prod(levels)
    assert torch.equal(indices_to_codes(indices, lv), codes)
    # The extremes reach the outer levels: every level is usable.
    assert indices[-2] == math.prod(levels) - 1 and indices[-1] == 0
    zero = torch.zeros(1, len(levels))
    assert torch.equal(quantize_scalars(zero, lv).abs(), zero)  # 0 is a level of every channel


def test_fsq_gradient_passes_straight_through_the_rounding() -> None:
    x = torch.randn(50, 3, requires_grad=True)
    round_straight_through(x).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones_like(x))
    lv = torch.tensor([8.0, 5.0, 5.0])
    z = torch.randn(50, 3, requires_grad=True)
    quantize_scalars(z, lv).sum().backward()
    # The gradient is the bound's (tanh) over the half width: rounding adds nothing to it.
    z2 = z.detach().clone().requires_grad_(True)
    (bound(z2, lv) / (lv // 2)).sum().backward()
    assert z.grad is not None and torch.allclose(z.grad, z2.grad)  # type: ignore[arg-type]


def test_fsq_model_has_no_codebook_to_learn_and_k_is_the_product() -> None:
    cfg = replace(SMALL, quantizer="fsq", levels=(8, 5, 5, 5), num_embeddings=3)
    assert cfg.num_embeddings == 1000  # derived, whatever was given
    torch.manual_seed(0)
    model = build_model(cfg)
    q = model.quantizer
    assert isinstance(q, FiniteScalarQuantizer) and not q.needs_init()
    assert not any("levels" in key for key in model.state_dict())  # derived, not stored
    x = torch.rand(2, 3, 16, 16) - 0.5
    out = model.train()(x)
    assert out.vq_loss.item() == 0.0 and out.restarted.item() == 0.0
    assert out.indices.shape == (2, 4, 4) and int(out.indices.max()) < 1000
    model.eval()
    codes = model.encode(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(model.decode(codes), model(x).reconstruction, atol=1e-5)
    assert torch.equal(model.encode(x, stages=1), codes)  # one stage: all there is
    with pytest.raises(ValueError):
        model.encode(x, stages=2)
    assert q.codebook().shape == (1000, SMALL.embedding_dim)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_residual_stages_decode_every_prefix(quantizer: str) -> None:
    cfg = replace(SMALL, quantizer=quantizer, stages=3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = (torch.rand(4, 3, 16, 16) - 0.5).contiguous(memory_format=torch.channels_last)
    if model.quantizer.needs_init():
        z = model.latents(x)
        model.quantizer.init_from_data(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    codes = model.encode(x)
    assert codes.shape == (4, 3, 4, 4)
    assert torch.equal(model(x).indices, codes)
    assert torch.allclose(model.decode(codes), model(x).reconstruction, atol=1e-5)
    errors = []
    latents = model.latents(x).detach()
    for n in (1, 2, 3):
        assert torch.equal(model.encode(x, stages=n), codes[:, :n])  # the later ones unneeded
        prefix = model.decode(codes, stages=n)
        assert torch.equal(prefix, model.decode(codes[:, :n]))  # stored prefix, same image
        assert torch.allclose(prefix, model(x, n).reconstruction, atol=1e-5)
        errors.append(
            float((latents - model.quantizer.lookup(codes[:, :n]).detach()).pow(2).mean())
        )
    # Each stage quantizes what the stages before it left: the latents' error shrinks.
    assert errors[0] > errors[1] > errors[2]
    for bad in (0, 4):
        with pytest.raises(ValueError):
            model.decode(codes, stages=bad)
        with pytest.raises(ValueError):
            model.encode(x, stages=bad)
    with pytest.raises(ValueError):
        model.decode(codes[:, 0])  # a stage axis is required


def test_residual_vq_stages_are_vector_quantizers_of_their_own() -> None:
    torch.manual_seed(0)
    model = build_model(replace(SMALL, stages=2, dead_code_steps=1))
    q = model.quantizer
    assert isinstance(q, ResidualVectorQuantizer) and q.stages == 2
    layers = [layer for layer in q.layers if isinstance(layer, VectorQuantizer)]
    assert len(layers) == 2 and layers[0].embedding is not layers[1].embedding
    assert q.needs_init()
    x = torch.rand(4, 3, 16, 16) - 0.5
    z = model.latents(x)
    q.init_from_data(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    assert not q.needs_init() and all(bool(layer.initialized) for layer in layers)
    # Stage 2 starts from the residuals of stage 1: far smaller than the latents.
    assert layers[1].embedding.norm(dim=1).mean() < 0.5 * layers[0].embedding.norm(dim=1).mean()
    model.train()
    before = [layer.embedding.clone() for layer in layers]
    out = model(x, stages=1)
    assert out.indices.shape == (4, 1, 4, 4)
    assert not torch.equal(layers[0].embedding, before[0])  # EMA step of the stage used
    assert torch.equal(layers[1].embedding, before[1])  # the stage left out is untouched
    assert int(layers[1].unused_steps.max()) == 0


def test_single_stage_vq_keeps_the_seed_state_dict() -> None:
    keys = set(build_model(SMALL).state_dict())
    assert {"quantizer.embedding", "quantizer.cluster_size", "quantizer.embed_sum"} <= keys
    assert not any(k.startswith("quantizer.layers") for k in keys)


def test_stage_draws_depend_on_seed_and_step_only() -> None:
    draws = [drawn_stages(0, step, 4) for step in range(400)]
    assert draws == [drawn_stages(0, step, 4) for step in range(400)]
    assert set(draws) == {1, 2, 3, 4}
    assert all(abs(draws.count(n) - 100) < 40 for n in (1, 2, 3, 4))  # uniform
    assert draws != [drawn_stages(1, step, 4) for step in range(400)]
    state = torch.get_rng_state()
    drawn_stages(0, 7, 4)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone


def test_rotation_trick_gives_the_codes_and_a_rotated_gradient() -> None:
    torch.manual_seed(0)
    src = torch.randn(64, 8, requires_grad=True)
    tgt = torch.randn(64, 8)
    out = rotate_to(src, tgt)
    assert torch.allclose(out, tgt, atol=1e-5)  # the codes in value
    grad = torch.randn(64, 8)
    out.backward(grad)
    assert src.grad is not None
    # A rotation keeps lengths: the gradient's length scaled by |tgt| / |src|.
    scale = tgt.norm(dim=1) / src.detach().norm(dim=1)
    assert torch.allclose(src.grad.norm(dim=1), grad.norm(dim=1) * scale, rtol=1e-4)
    # Along the same direction there is nothing to rotate: the gradient is only scaled.
    same = (3 * tgt).requires_grad_(True)
    rotate_to(same, tgt).backward(grad)
    assert same.grad is not None and torch.allclose(same.grad, grad / 3, atol=1e-5)


@pytest.mark.parametrize("stages", [1, 3])
def test_rotation_gradient_keeps_the_forward_values(stages: int) -> None:
    cfg = replace(SMALL, stages=stages)
    x = (torch.rand(4, 3, 16, 16) - 0.5).contiguous(memory_format=torch.channels_last)
    outs = []
    for gradient in ("straight-through", "rotation"):
        torch.manual_seed(0)
        model = build_model(replace(cfg, gradient=gradient)).eval()
        out = model(x)
        outs.append(out.reconstruction)
        model.train()
        model(x).reconstruction.sum().backward()
        assert model.encoder.conv1.bias.grad is not None
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
