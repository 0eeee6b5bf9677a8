"""The prior over codes: causality, the KV cache against the full forward, sampling, bits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from vqtool.models.config import PriorConfig
from vqtool.models.transformer import (
    CodePrior,
    draw,
    nll_bits,
    sample,
)

K = 16
GRID = (3, 4)
T = GRID[0] * GRID[1]
TINY = PriorConfig(layers=2, width=32, heads=4)
TINY_CONDITIONAL = PriorConfig(layers=2, width=32, heads=4, conditional=True, num_classes=3)


def tiny_prior(cfg: PriorConfig = TINY, dtype: torch.dtype = torch.float32) -> CodePrior:
    torch.manual_seed(0)
    return CodePrior(cfg, K, GRID).to(dtype).eval()


def random_codes(batch: int, seed: int = 1) -> Tensor:
    return torch.randint(K, (batch, *GRID), generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def incremental_logits(model: CodePrior, codes: Tensor, labels: Tensor | None = None) -> Tensor:
    """Logits of every position through the cache, fed the given codes: (B, h, w) -> (B, T, K)."""
    flat = codes.reshape(codes.shape[0], -1)
    cache = model.new_cache(codes.shape[0], labels)
    steps = [model.step_logits(cache, None)]
    steps += [model.step_logits(cache, flat[:, t]) for t in range(T - 1)]
    return torch.stack(steps, 1)


def test_forward_shape() -> None:
    model = tiny_prior()
    assert model(random_codes(5)).shape == (5, T, K)
    with pytest.raises(ValueError, match="expected"):
        model(torch.zeros(5, 4, 3, dtype=torch.long))


def test_causality_changing_code_t_changes_no_logit_up_to_t() -> None:
    model = tiny_prior()
    codes = random_codes(4)
    with torch.no_grad():
        logits = model(codes)
        for t in range(T):
            changed = codes.clone().view(4, T)
            changed[:, t] = (changed[:, t] + 1) % K
            after = model(changed.view(4, *GRID))
            # Logits at t predict code t from codes < t: those up to t must not move at all.
            assert torch.equal(after[:, : t + 1], logits[:, : t + 1]), t
            if t + 1 < T:
                assert not torch.allclose(after[:, t + 1 :], logits[:, t + 1 :]), t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_incremental_logits_match_forward(dtype: torch.dtype) -> None:
    model = tiny_prior(dtype=dtype)
    codes = random_codes(3)
    with torch.no_grad():
        full = model(codes)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(incremental_logits(model, codes), full, rtol=0, atol=tolerance)


def test_incremental_logits_match_forward_conditional() -> None:
    model = tiny_prior(TINY_CONDITIONAL)
    codes = random_codes(3)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        full = model(codes, labels)
    torch.testing.assert_close(incremental_logits(model, codes, labels), full, rtol=0, atol=1e-5)


def test_cache_refuses_misuse() -> None:
    model = tiny_prior()
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="None exactly"):
        model.step_logits(cache, torch.zeros(2, dtype=torch.long))
    model.step_logits(cache, None)
    with pytest.raises(ValueError, match="None exactly"):
        model.step_logits(cache, None)
    for _ in range(T - 1):
        model.step_logits(cache, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="already holds"):
        model.step_logits(cache, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_and_uncached_sampling_agree(dtype: torch.dtype) -> None:
    model = tiny_prior(dtype=dtype)
    for seed in range(3):
        cached = sample(model, 8, generator=seeded(seed))
        uncached = sample(model, 8, generator=seeded(seed), use_cache=False)
        assert cached.shape == (8, *GRID)
        assert cached.dtype == torch.long
        assert torch.equal(cached, uncached), seed


def test_cached_and_uncached_sampling_agree_conditional() -> None:
    model = tiny_prior(TINY_CONDITIONAL, torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    cached = sample(model, 6, labels=labels, generator=seeded(5), top_k=5, temperature=0.7)
    uncached = sample(
        model, 6, labels=labels, generator=seeded(5), top_k=5, temperature=0.7, use_cache=False
    )
    assert torch.equal(cached, uncached)


def test_same_seed_same_samples_other_seed_others() -> None:
    model = tiny_prior()
    first = sample(model, 8, generator=seeded(7))
    assert torch.equal(first, sample(model, 8, generator=seeded(7)))
    assert not torch.equal(first, sample(model, 8, generator=seeded(8)))


def greedy(model: CodePrior, n: int) -> Tensor:
    """Argmax decoding through the full forward, one position at a time: -> (n, h, w)."""
    codes = torch.zeros(n, T, dtype=torch.long)
    with torch.no_grad():
        for t in range(T):
            codes[:, t] = model(codes.view(n, *GRID))[:, t].argmax(-1)
    return codes.view(n, *GRID)


def test_top_k_one_is_argmax_decoding_whatever_the_seed() -> None:
    model = tiny_prior()
    expected = greedy(model, 4)
    for seed in range(3):
        assert torch.equal(sample(model, 4, top_k=1, generator=seeded(seed)), expected)
        assert torch.equal(
            sample(model, 4, top_k=1, generator=seeded(seed), use_cache=False), expected
        )


def test_tiny_temperature_is_argmax_decoding() -> None:
    model = tiny_prior()
    assert torch.equal(sample(model, 4, temperature=1e-6, generator=seeded(0)), greedy(model, 4))


def test_top_k_draws_only_among_the_k_most_likely() -> None:
    model = tiny_prior()
    codes = sample(model, 32, top_k=3, temperature=5.0, generator=seeded(0))
    with torch.no_grad():
        top3 = model(codes).topk(3, dim=-1).indices  # (B, T, 3)
    assert (top3 == codes.view(32, T, 1)).any(-1).all()
    # A high temperature spreads the draws over all three.
    assert (top3[..., 0] != codes.view(32, T)).any()


def test_draw_frequencies_follow_the_tempered_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, -1)
    for temperature in (1.0, 0.5):
        codes = draw(logits, temperature, generator=seeded(0))
        frequencies = torch.bincount(codes, minlength=4).float() / codes.numel()
        expected = torch.softmax(logits[0] / temperature, -1)
        torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.015)


def test_draw_refuses_bad_temperature_and_top_k() -> None:
    logits = torch.zeros(2, K)
    with pytest.raises(ValueError, match="temperature"):
        draw(logits, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        draw(logits, 1.0, top_k=0)


def test_conditioning_changes_the_output() -> None:
    model = tiny_prior(TINY_CONDITIONAL)
    assert model.classes is not None
    with torch.no_grad():
        # Push the class embeddings apart, as training would, so the effect is plain.
        model.classes.weight.normal_(std=1.0)
    codes = random_codes(1).expand(3, *GRID)
    with torch.no_grad():
        logits = model(codes, torch.tensor([0, 1, 2]))
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.allclose(logits[a], logits[b], atol=1e-3)
    samples = sample(model, 3, labels=torch.tensor([0, 1, 2]), top_k=1, generator=seeded(0))
    assert len({tuple(s.flatten().tolist()) for s in samples}) > 1


def test_labels_must_match_the_model() -> None:
    codes = random_codes(2)
    with pytest.raises(ValueError, match="needs labels"):
        tiny_prior(TINY_CONDITIONAL)(codes)
    with pytest.raises(ValueError, match="unconditional"):
        tiny_prior()(codes, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expected"):
        tiny_prior(TINY_CONDITIONAL)(codes, torch.tensor([0]))


def test_nll_bits_is_the_cross_entropy_in_bits() -> None:
    model = tiny_prior()
    codes = random_codes(3)
    with torch.no_grad():
        bits = nll_bits(model, codes)
        probs = torch.softmax(model(codes).double(), -1)  # (B, T, K)
    flat = codes.view(3, T)
    by_hand = torch.zeros(3, dtype=torch.float64)
    for b in range(3):
        for t in range(T):
            by_hand[b] -= math.log2(probs[b, t, flat[b, t]].item())
    assert bits.shape == (3,)
    torch.testing.assert_close(bits.double(), by_hand, rtol=1e-5, atol=1e-5)
    # An untrained prior is close to uniform: about log2 K bits per code.
    assert abs(bits.mean().item() / T - math.log2(K)) < 0.5


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        CodePrior(PriorConfig(width=30, heads=4), K, GRID)
