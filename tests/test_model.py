"""The network and the quantizer: shapes, the seed's defects avoided, the math."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.utils import parametrize

from vqtool.models.quantizer import (
    VectorQuantizer,
    code_counts,
    codebook_from_ema,
    nearest_codes,
    perplexity_from_counts,
    squared_distances,
)
from vqtool.models.vqvae import build_model
from vqtool.profiles import ModelConfig, load_profile, profile_from_dict, profile_to_dict

SMALL = ModelConfig(
    num_hiddens=16,
    num_residual_hiddens=8,
    num_residual_layers=2,
    embedding_dim=8,
    num_embeddings=32,
)


def test_shapes_and_encode_decode_halves() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    x = torch.rand(3, 3, 32, 48) - 0.5
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (3, 8, 12)
    indices = model.encode(x)
    assert torch.equal(indices, out.indices)
    assert torch.allclose(model.decode(indices), out.reconstruction, atol=1e-5)


def test_residual_layers_do_not_share_weights() -> None:
    model = build_model(SMALL)
    first, second = model.encoder.residual.layers
    assert first is not second
    assert first.conv3.weight.data_ptr() != second.conv3.weight.data_ptr()


def _convs(model: torch.nn.Module) -> list[torch.nn.Module]:
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    return [m for m in model.modules() if isinstance(m, kinds)]


def test_weight_norm_is_on_every_conv() -> None:
    model = build_model(SMALL)
    convs = _convs(model)
    assert len(convs) == 3 + 4 + 1 + 1 + 4 + 2  # encoder, 2x2 residual convs, pre-vq, decoder...
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)
    # The seed's typo (`self._conv3 = weight_norm(self._conv_3)`) still wrapped its third conv.
    assert parametrize.is_parametrized(model.encoder.conv3, "weight")


def test_weight_norm_keeps_the_default_init_as_the_seed_trained_it() -> None:
    # The seed's Kaiming draw was a no-op: weight norm over PyTorch's default weights and biases.
    torch.manual_seed(3)
    plain = build_model(replace(SMALL, weight_norm=False))
    torch.manual_seed(3)
    normed = build_model(SMALL)
    for a, b in zip(_convs(plain), _convs(normed), strict=True):
        assert torch.allclose(a.weight, b.weight, atol=1e-6)
        if a.bias is not None:
            assert torch.equal(a.bias, b.bias) and bool(a.bias.abs().sum() > 0)


def test_kaiming_init_draws_kaiming_weights_and_zero_biases_under_weight_norm() -> None:
    torch.manual_seed(0)
    model = build_model(replace(SMALL, weight_norm=False, kaiming_init=True))
    assert all(parametrize.is_parametrized(m, "weight") for m in _convs(model))
    conv = model.encoder.conv3  # 16 -> 16, 3x3: fan_in 144, Kaiming std sqrt(2 / 144)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.15)
    assert conv.bias is not None and not conv.bias.any()


def test_no_weight_norm_means_plain_convs() -> None:
    model = build_model(replace(SMALL, weight_norm=False))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_distances_and_nearest_codes_match_brute_force() -> None:
    torch.manual_seed(1)
    z, codebook = torch.randn(50, 4), torch.randn(7, 4)
    brute = ((z[:, None, :] - codebook[None]) ** 2).sum(-1)
    assert torch.allclose(squared_distances(z, codebook), brute, atol=1e-4)
    assert torch.equal(nearest_codes(z, codebook), brute.argmin(1))


def test_perplexity_bounds() -> None:
    assert math.isclose(
        float(perplexity_from_counts(torch.tensor([5.0, 0, 0, 0]))), 1.0, rel_tol=1e-4
    )
    assert math.isclose(float(perplexity_from_counts(torch.ones(8))), 8.0, rel_tol=1e-4)


def test_ema_codebook_keeps_unused_codes_in_place() -> None:
    # The seed started the EMA at zero cluster sizes: unused codes jumped to norms of ~1e5.
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, 0.25, decay=0.99, codebook_init="seed").train()
    before = vq.embedding.clone()
    z = before[0].view(1, 4, 1, 1).expand(2, 4, 3, 3).contiguous()  # only code 0 is used
    vq(z)
    assert torch.allclose(vq.embedding[1:], before[1:], rtol=1e-3, atol=1e-4)
    assert float(vq.embedding.norm(dim=1).max()) < 10 * float(before.norm(dim=1).max())


def test_ema_moves_used_code_towards_its_inputs() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, 0.25, decay=0.5, codebook_init="seed").train()
    target = vq.embedding[2] + 0.1
    z = target.view(1, 2, 1, 1).expand(1, 2, 4, 4).contiguous()
    for _ in range(30):
        vq(z)
    assert torch.allclose(vq.embedding[2], target, atol=1e-3)


def test_codebook_from_ema_is_sums_over_counts() -> None:
    counts = torch.tensor([2.0, 4.0])
    sums = torch.tensor([[2.0, 2.0], [8.0, 4.0]])
    assert torch.allclose(
        codebook_from_ema(counts, sums), torch.tensor([[1.0, 1.0], [2.0, 1.0]]), atol=1e-4
    )


def test_original_loss_trains_codebook_by_gradient() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, 0.25, decay=0.0, codebook_init="seed").train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    assert vq.embedding.grad is not None and vq.embedding.grad.abs().sum() > 0
    assert z.grad is not None  # commitment term reaches the encoder


def test_quantizer_runs_in_fp32_under_autocast() -> None:
    vq = VectorQuantizer(8, 4, 0.25, decay=0.99).train()
    z = torch.randn(2, 4, 3, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert out.quantized.dtype == torch.float32
    assert vq.embed_sum.dtype == torch.float32


def test_codebook_init_from_data_uses_encoder_outputs() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, 0.25, decay=0.99, codebook_init="encoder")
    assert not bool(vq.initialized)
    data = torch.randn(100, 2) * 0.01 + 5.0
    vq.init_from_data(data)
    assert bool(vq.initialized)
    assert torch.allclose(vq.embedding.mean(0), torch.tensor([5.0, 5.0]), atol=0.05)


@pytest.mark.parametrize("method", ["encoder", "kmeans"])
def test_init_methods_cover_clusters(method: str) -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    data = centres[torch.arange(400) % 4] + 0.1 * torch.randn(400, 2)
    vq = VectorQuantizer(4, 2, 0.25, decay=0.99, codebook_init=method)
    vq.init_from_data(data)
    used = code_counts(nearest_codes(data, vq.embedding), 4)
    if method == "kmeans":
        assert int((used > 0).sum()) == 4
    else:
        assert int((used > 0).sum()) >= 2


# The networks every shipped profile builds, and the seed's at every factor, as main built
# them before the network became profile keys: tests/golden/networks.json
# (VQTOOL_REGEN_GOLDEN=1 rewrites it). A new network key at its default must leave them alone.
NETWORKS_GOLDEN = Path(__file__).parent / "golden" / "networks.json"
SHIPPED_VQ = ["ema", "ema-kaiming", "fast", "folder", "fsq", "lowrate", "original", "photo",
              "rvq", "smoke"]  # fmt: skip
VARIANTS = {
    **{f"ema-ds{f}": ("ema", [f"model.downsample={f}"]) for f in (2, 8, 16)},
    "ema-kaiming-init": ("ema-kaiming", ["model.kaiming_init=true"]),
    "smoke-ds2-wn": ("smoke", ["model.downsample=2", "model.weight_norm=true"]),
}


def _projections(t: torch.Tensor) -> list[float]:
    """Two numbers that change with any value or any order of `t`'s values."""
    flat = t.detach().double().flatten()
    weights = torch.sin(torch.arange(flat.numel(), dtype=torch.float64) * 0.7 + 0.1)
    return [float(flat.sum()), float((flat * weights).sum())]


def _network_fingerprint(cfg: ModelConfig) -> dict[str, Any]:
    """The state dict (names, shapes, values), the draw that follows the build, and the
    networks' outputs on fixed inputs, for a model built from seed 0."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    next_draw = float(torch.rand(()))
    state = {name: [list(t.shape), *_projections(t)] for name, t in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=generator) - 0.5
    with torch.no_grad():
        latents = model.latents(images)
        vectors = torch.randn(latents.shape, generator=generator)
        pixels = model.decoder(vectors)
    return {
        "state": state,
        "next_draw": next_draw,
        "latents": [list(latents.shape), *_projections(latents)],
        "pixels": [list(pixels.shape), *_projections(pixels)],
    }


def _golden_networks() -> dict[str, ModelConfig]:
    configs = {name: load_profile(name).model for name in SHIPPED_VQ}
    for name, (base, overrides) in VARIANTS.items():
        configs[name] = load_profile(base, overrides).model
    return configs


def test_shipped_networks_are_the_ones_main_built() -> None:
    found = {name: _network_fingerprint(cfg) for name, cfg in _golden_networks().items()}
    if os.environ.get("VQTOOL_REGEN_GOLDEN") == "1":
        text = json.dumps(found, indent=1)
        for inner in (r"[^\[\]]", r"[^\[\]]|\[[^\[\]]*\]"):  # a tensor a line
            pattern = rf"\[\s+((?:{inner})*?)\s+\]"
            text = re.sub(pattern, lambda m: f"[{' '.join(m[1].split())}]", text)
        NETWORKS_GOLDEN.write_text(text + "\n", encoding="utf-8")
    golden = json.loads(NETWORKS_GOLDEN.read_text(encoding="utf-8"))
    assert sorted(found) == sorted(golden)
    for name, want in golden.items():
        _assert_same_network(name, found[name], want)


def _assert_same_network(name: str, got: dict[str, Any], want: dict[str, Any]) -> None:
    """Fingerprints equal: names, shapes and the draw exactly, values to float rounding."""
    assert list(got["state"]) == list(want["state"]), f"{name}: state dict keys"
    for key, (shape, *values) in want["state"].items():
        assert got["state"][key][0] == shape, f"{name}: {key} shape"
        assert got["state"][key][1:] == pytest.approx(values, rel=1e-5, abs=1e-6), (name, key)
    assert got["next_draw"] == want["next_draw"], f"{name}: the draws after the build"
    for output in ("latents", "pixels"):
        assert got[output][0] == want[output][0], f"{name}: {output} shape"
        assert got[output][1:] == pytest.approx(want[output][1:], rel=1e-4, abs=1e-5), (
            name,
            output,
        )


@pytest.mark.parametrize(
    ("channels", "factor", "plan"),
    [
        ((), 2, (64, 128)),
        ((), 16, (64, 128, 128, 128)),
        ((32,), 8, (32, 32, 32)),
        ((32, 96, 200, 40), 4, (32, 96)),
        ((32, 96), 16, (32, 96, 96, 96)),
    ],
)
def test_one_channel_plan_serves_every_factor(
    channels: tuple[int, ...], factor: int, plan: tuple[int, ...]
) -> None:
    cfg = ModelConfig(channels=channels, downsample=factor)
    assert cfg.stage_channels == plan
    model = build_model(replace(cfg, weight_norm=False))
    strided = [model.encoder.conv1, model.encoder.conv2, *model.encoder.down]
    assert [conv.out_channels for conv in strided] == list(plan)
    assert model.encoder.conv3.in_channels == plan[-1]
    assert model.encoder.conv3.out_channels == model.decoder.conv.out_channels == 128
    # the decoder from num_hiddens back through the plan: the mirror of each strided conv
    up = [*model.decoder.up, model.decoder.up1, model.decoder.up2]
    assert [conv.in_channels for conv in up] == [128, *reversed(plan[:-1])]
    assert [conv.out_channels for conv in up] == [*reversed(plan[:-1]), 3]


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_a_network_of_its_own_plan_codes_and_decodes_at_every_factor(factor: int) -> None:
    torch.manual_seed(0)
    cfg = replace(SMALL, channels=(6, 20, 10), num_hiddens=12, num_residual_layers=3,
                  num_residual_hiddens=4, activation="silu", downsample=factor)  # fmt: skip
    model = build_model(cfg).eval()
    x = torch.rand(2, 3, 32, 48) - 0.5
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (2, 32 // factor, 48 // factor)
    assert torch.allclose(model.decode(model.encode(x)), out.reconstruction, atol=1e-5)
    assert len(model.encoder.residual.layers) == len(model.decoder.residual.layers) == 3


def test_no_residual_blocks() -> None:
    model = build_model(replace(SMALL, num_residual_layers=0)).eval()
    assert len(model.encoder.residual.layers) == 0
    x = torch.rand(1, 3, 16, 16) - 0.5
    assert model(x).reconstruction.shape == x.shape


def test_silu_is_the_activation_it_names() -> None:
    torch.manual_seed(0)
    relu = build_model(replace(SMALL, weight_norm=False)).eval()
    torch.manual_seed(0)
    silu = build_model(replace(SMALL, weight_norm=False, activation="silu")).eval()
    pairs = zip(relu.state_dict().values(), silu.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    x = torch.rand(1, 3, 16, 16) - 0.5
    with torch.no_grad():
        first = torch.nn.functional.silu(silu.encoder.conv1(x))
        hooked: list[torch.Tensor] = []
        silu.encoder.conv2.register_forward_pre_hook(lambda _, args: hooked.append(args[0]))
        silu.latents(x)
    assert torch.equal(hooked[0], first)
    assert not torch.equal(relu.latents(x), silu.latents(x))


def test_the_seed_plan_written_out_is_the_seed_network() -> None:
    golden = json.loads(NETWORKS_GOLDEN.read_text(encoding="utf-8"))
    for name, overrides in [("ema", ["model.channels=[64,128]"]),
                            ("smoke", ["model.channels=[32,64,64,64]"]),
                            ("lowrate", ["model.channels=[64,128]"])]:  # fmt: skip
        _assert_same_network(
            name, _network_fingerprint(load_profile(name, overrides).model), golden[name]
        )


def test_a_profile_stored_before_the_network_keys_loads_the_seed_network() -> None:
    stored = profile_to_dict(load_profile("rvq"))
    for key in ("channels", "activation"):
        del stored["model"][key]  # as checkpoints written before these keys hold it
    model = profile_from_dict(stored, "rvq", "checkpoint").model
    assert (model.channels, model.activation) == ((), "relu")
    assert model == load_profile("rvq").model
