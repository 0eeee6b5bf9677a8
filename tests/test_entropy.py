"""vqtool.codes.entropy: range coding with a unigram table and with a prior, exact whatever the
batch, the order of the images or the caller's threads."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch

from vqtool.checkpoint import fingerprint
from vqtool.codes import entropy
from vqtool.errors import UsageError
from vqtool.models.config import PriorConfig
from vqtool.models.exact_prior import ExactPrior
from vqtool.models.transformer import CodePrior
from vqtool.prior.coding_model import derive_coding_model

K = 16
GRID = (3, 4)
TINY = PriorConfig(layers=2, width=32, heads=4)


class Prior(NamedTuple):
    """What vqtool.prior.load.load_coding_prior gives, for tests: a model, its exact coding
    model (None for a conditional prior) and their fingerprints."""

    model: CodePrior
    fingerprint: str
    vq_fingerprint: str
    exact: ExactPrior | None = None
    exact_fingerprint: str | None = None


def random_prior(
    k: int = K,
    grid: tuple[int, int] = GRID,
    seed: int = 0,
    vq_fingerprint: str = "0" * 64,
    cfg: PriorConfig = TINY,
) -> Prior:
    """A prior with random weights, sharpened so that it predicts far from uniform."""
    torch.manual_seed(seed)
    model = CodePrior(cfg, k, grid).eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    prior = Prior(model, fingerprint(model.state_dict()), vq_fingerprint)
    if cfg.conditional:
        return prior
    calibration = torch.from_numpy(random_codes(64, k, grid, seed).astype(np.int64))
    coding = derive_coding_model(model, calibration.view(64, -1), prior.fingerprint, vq_fingerprint)
    return prior._replace(exact=coding.model, exact_fingerprint=coding.fingerprint)


def random_codes(n: int, k: int = K, grid: tuple[int, int] = GRID, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Skewed: a unigram table has something to gain.
    p = rng.dirichlet(np.full(k, 0.3))
    return rng.choice(k, (n, *grid), p=p).astype(np.uint16)


def test_unigram_round_trip_and_size() -> None:
    codes = random_codes(500)
    frequencies = entropy.code_frequencies(codes, K)
    assert frequencies.dtype == np.uint32 and frequencies.min() >= 1
    assert int(frequencies.sum()) == codes.size + K
    encoded = entropy.encode_unigram(codes, frequencies)
    assert encoded.words.dtype == np.uint32
    decoded = entropy.decode_unigram(encoded.words, frequencies, codes.shape)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, codes)
    # The stream is the ideal code length plus at most a couple of words.
    ideal = encoded.bits.sum()
    assert ideal <= 32 * len(encoded.words) <= ideal + 96
    assert ideal < codes.size * np.log2(K) * 0.9


def coder(prior: Prior, kind: str) -> CodePrior | ExactPrior:
    """The float prior, or its exact coding model."""
    if kind == "float":
        return prior.model
    assert prior.exact is not None
    return prior.exact


KINDS = pytest.mark.parametrize("kind", ["float", "exact"])


@KINDS
def test_prior_round_trip_and_size(kind: str) -> None:
    prior = random_prior()
    model = coder(prior, kind)
    codes = random_codes(300)
    encoded = entropy.encode_with_prior(codes, model)
    # The bits are the information under PRECISION-bit tables; constriction codes with its own
    # 24-bit requantization of them, a little cheaper or dearer per symbol.
    assert abs(32 * len(encoded.words) - encoded.bits.sum()) <= 0.002 * encoded.bits.sum() + 96
    decoded = entropy.decode_with_prior(encoded.words, encoded.chunk_words, model, codes.shape)
    assert np.array_equal(decoded, codes)
    # One stream per chunk: 300 grids are chunks of 128, 128 and 44 (exact: one of 300).
    assert encoded.chunk_words is not None
    assert len(encoded.chunk_words) == -(-300 // entropy.default_chunk(model))
    assert int(encoded.chunk_words.sum()) == len(encoded.words)
    # a file needs the words alone: the same words, the bits not counted
    uncounted = entropy.encode_with_prior(codes, model, count_bits=False)
    assert np.array_equal(uncounted.words, encoded.words)
    assert uncounted.bits.shape == (300,) and np.isnan(uncounted.bits).all()


@KINDS
def test_each_image_costs_the_same_bits_in_any_file_and_position(kind: str) -> None:
    """The same grids alone, in files of 1, 7 and 300 (two chunks and a padded tail), and in
    reverse order: identical bits per grid, and every file decodes exactly."""
    model = coder(random_prior(), kind)
    codes = random_codes(300)
    reference = entropy.encode_with_prior(codes, model).bits
    for subset in (np.arange(1), np.arange(7), np.arange(300)[::-1], np.arange(5, 300, 37)):
        part = codes[subset]
        encoded = entropy.encode_with_prior(part, model)
        assert np.array_equal(encoded.bits, reference[subset]), subset
        decoded = entropy.decode_with_prior(encoded.words, encoded.chunk_words, model, part.shape)
        assert np.array_equal(decoded, part)


@KINDS
def test_the_callers_threads_and_the_coding_threads_do_not_matter(kind: str) -> None:
    """Chunks coded on 1, 2 or 3 threads, whatever torch's own setting: the same words, and
    each decodes on any number of threads; torch's setting is restored."""
    model = coder(random_prior(), kind)
    codes = random_codes(600)  # three chunks or more
    before = torch.get_num_threads()
    words = []
    try:
        for torch_threads, coding_threads in ((1, None), (2, None), (2, 1), (1, 3)):
            torch.set_num_threads(torch_threads)
            encoded = entropy.encode_with_prior(codes, model, threads=coding_threads)
            words.append(encoded.words)
            assert torch.get_num_threads() == torch_threads  # restored
        torch.set_num_threads(2)
        for threads in (1, 2, 3):
            decoded = entropy.decode_with_prior(
                words[0], encoded.chunk_words, model, codes.shape, threads=threads
            )
            assert np.array_equal(decoded, codes)
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(words[0], w) for w in words[1:])


def test_progress_counts_every_code_once_on_any_number_of_threads() -> None:
    prior = random_prior()
    codes = random_codes(300)
    for threads in (1, 2):
        seen: list[tuple[int, int]] = []
        entropy.encode_with_prior(codes, prior.model, _recorder(seen), threads)
        assert {n for _, n in seen} == {codes.size} and seen[-1][0] == codes.size
        assert sorted(d for d, _ in seen) == [d for d, _ in seen]


def _recorder(seen: list[tuple[int, int]]) -> entropy.Progress:
    return lambda done, n: seen.append((done, n))


def test_chunks_run_with_torch_on_one_thread_and_an_error_stops_them() -> None:
    """Each chunk's thread sees one torch thread (its matrix products split no further); a
    failing chunk's error reaches the caller, and torch's setting comes back either way."""
    prior = random_prior()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []

    def work(start: int, stop: int, rows: int, shared: object) -> int:
        seen.append(torch.get_num_threads())
        return start

    def failing(start: int, stop: int, rows: int, shared: object) -> int:
        if start == entropy.CHUNK:
            raise entropy.StreamError("chunk 2 is damaged")
        return start

    try:
        n = 5 * entropy.CHUNK
        assert entropy._each_chunk(
            entropy.FloatPredictor(prior.model), n, work, 2, None, entropy.CHUNK
        ) == [i * entropy.CHUNK for i in range(5)]
        assert seen == [1] * 5 and torch.get_num_threads() == 2
        with pytest.raises(entropy.StreamError, match="chunk 2"):
            entropy._each_chunk(
                entropy.FloatPredictor(prior.model), n, failing, 2, None, entropy.CHUNK
            )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_set_cancel_flag_stops_a_chunk_at_its_next_position() -> None:
    prior = random_prior()
    shared = entropy._Shared(None, in_caller=True)
    calls: list[int] = []

    def step(t: int, tables: np.ndarray) -> np.ndarray:
        calls.append(t)
        shared.cancelled.set()
        return np.zeros(len(tables), np.int64)

    with pytest.raises(entropy._Cancelled):
        entropy._chunk_steps(entropy.FloatPredictor(prior.model), 3, 4, step, shared)
    assert calls == [0] and shared.codes == 3  # the position done counts its real rows


def test_chunk_schedule_depends_on_the_count_alone() -> None:
    assert list(entropy.chunks(1)) == [(0, 1, 4)]
    assert list(entropy.chunks(5)) == [(0, 5, 8)]
    n = entropy.CHUNK * 2 + 3
    assert list(entropy.chunks(n)) == [
        (0, entropy.CHUNK, entropy.CHUNK),
        (entropy.CHUNK, 2 * entropy.CHUNK, entropy.CHUNK),
        (2 * entropy.CHUNK, n, 4),
    ]
    assert all(rows <= entropy.CHUNK for _, _, rows in entropy.chunks(entropy.CHUNK - 1))


def test_frequencies_are_integers_at_least_one() -> None:
    logits = torch.tensor([[0.0, 100.0, -100.0], [1.0, 1.0, 1.0]])
    tables = entropy.frequencies_from_logits(logits)
    assert tables.dtype == np.float64
    assert np.array_equal(tables, np.floor(tables)) and tables.min() == 1
    assert tables[1, 0] == tables[1, 1] == tables[1, 2] == (1 << entropy.PRECISION) // 3


def test_the_model_is_left_as_it_was_and_must_be_float32_on_the_cpu() -> None:
    prior = random_prior()
    prior.model.train()
    codes = random_codes(3)
    encoded = entropy.encode_with_prior(codes, prior.model)
    assert prior.model.training  # coded in eval mode, then restored
    prior.model.eval()
    assert np.array_equal(encoded.words, entropy.encode_with_prior(codes, prior.model).words)
    with pytest.raises(ValueError, match="float32"):
        entropy.encode_with_prior(codes, prior.model.double())


def test_a_stream_with_words_to_spare_or_that_cannot_be_decoded_is_refused() -> None:
    codes = random_codes(50)
    frequencies = entropy.code_frequencies(codes, K)
    words = entropy.encode_unigram(codes, frequencies).words
    with pytest.raises(entropy.StreamError, match="more words"):
        entropy.decode_unigram(np.append(words, words), frequencies, codes.shape)
    prior = random_prior()
    encoded = entropy.encode_with_prior(codes, prior.model)
    lengths = encoded.chunk_words
    assert lengths is not None
    with pytest.raises(entropy.StreamError):
        entropy.decode_with_prior(
            np.append(encoded.words, encoded.words), lengths * 2, prior.model, codes.shape
        )
    with pytest.raises(entropy.StreamError, match="chunk lengths"):
        entropy.decode_with_prior(encoded.words, lengths + 1, prior.model, codes.shape)
    with pytest.raises(entropy.StreamError, match="chunk lengths"):
        entropy.decode_with_prior(encoded.words, lengths, prior.model, (300, *GRID))


def test_priors_that_cannot_code_the_codes_are_usage_errors() -> None:
    prior = random_prior(vq_fingerprint="a" * 64)
    entropy.check_prior(prior, "a" * 64, K, GRID)
    with pytest.raises(UsageError, match="another checkpoint"):
        entropy.check_prior(prior, "b" * 64, K, GRID)
    entropy.check_prior(prior, "a" * 64, K, (4, 4))  # its exact model codes any grid
    with pytest.raises(UsageError, match="grids"):  # the float prior codes its own only
        entropy.check_prior(prior._replace(exact=None), "a" * 64, K, (4, 4))
    with pytest.raises(UsageError, match="grids"):
        entropy.check_prior(prior, "a" * 64, 2 * K)
    conditional = PriorConfig(layers=1, width=32, heads=4, conditional=True, num_classes=3)
    with pytest.raises(UsageError, match="conditional"):
        entropy.check_prior(random_prior(vq_fingerprint="a" * 64, cfg=conditional), "a" * 64, K)
