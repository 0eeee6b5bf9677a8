"""Tables adapted to the image being coded (vqtool.codes.adaptive): exact integers, used on
window-coded grids alone, named in the header, and paid for only where they help."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import code_arrays, save_code_arrays
from test_codes import FINGERPRINT as GOLDEN_VQ_FINGERPRINT
from test_entropy import random_codes, random_prior

from vqtool.codes import adaptive, entropy
from vqtool.codes.vqc import CodeFile, read_codes, write_codes
from vqtool.errors import WorkError

K = 32
PRIOR_GRID = (3, 3)


def test_the_weights_are_exact_integer_fourth_roots() -> None:
    weight = adaptive.weights(5000)
    assert weight[0] == 1 << adaptive.SHIFT
    for c in (0, 1, 2, 7, 100, 4999, 5000):
        x = (2 * c + 1) << 32
        assert int(weight[c]) ** 4 <= x < (int(weight[c]) + 1) ** 4
    assert np.all(np.diff(weight) >= 0)
    x = (2 * np.arange(5001, dtype=np.int64) + 1) << 32  # every one, in integers
    assert np.all(weight**4 <= x) and np.all((weight + 1) ** 4 > x)
    big = adaptive.weights(1 << 22)  # the counts of a grid of 2^22 positions a stage
    c = (1 << 22) - 1
    assert int(big[c]) ** 4 <= (2 * c + 1) << 32 < (int(big[c]) + 1) ** 4
    assert abs(weight[100] / 256 - math.pow(100.5, 0.25) * math.pow(2, 0.25)) < 0.01


def test_counts_start_again_at_each_stage_and_unseen_codes_keep_their_table() -> None:
    adapter = adaptive.Adapter(rows=2, codes=4, positions=3)
    tables = np.array([[10.0, 20.0, 30.0, 40.0], [100.0, 100.0, 100.0, 100.0]])
    assert np.array_equal(adapter.tables(0, tables), tables)
    adapter.saw(np.array([2, 0]))
    adapted = adapter.tables(1, tables)
    assert adapted[0, 2] > tables[0, 2] and adapted[0, 0] == tables[0, 0]
    assert adapted[1, 0] > 100 and np.array_equal(adapted[1, 1:], tables[1, 1:])
    adapter.saw(np.array([2, 0]))
    adapter.tables(2, tables)
    adapter.saw(np.array([2, 0]))
    assert np.array_equal(adapter.tables(3, tables), tables)  # stage 2: nothing seen yet


def _photo_like(n: int, grid: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Grids that use a few codes over and over, as a photo's do."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([3, 7, 8, 20], np.uint16), (n, *grid), p=[0.5, 0.3, 0.15, 0.05])


def test_adapting_codes_a_photo_like_grid_in_fewer_bits_and_decodes_it() -> None:
    prior = random_prior(K, PRIOR_GRID)
    assert prior.exact is not None
    codes = _photo_like(2, (7, 8))
    plain = entropy.encode_with_prior(codes, prior.exact)
    adapted = entropy.encode_with_prior(codes, prior.exact, adapt=True)
    assert adapted.bits.sum() < 0.97 * plain.bits.sum()  # a random prior, confidently wrong
    assert adapted.chunk_words is not None
    decoded = entropy.decode_with_prior(
        adapted.words, adapted.chunk_words, prior.exact, codes.shape, adapt=True
    )
    assert np.array_equal(decoded, codes)


def test_the_priors_own_grid_is_never_adapted() -> None:
    prior = random_prior(K, PRIOR_GRID)
    assert prior.exact is not None
    codes = random_codes(40, K, PRIOR_GRID)
    plain = entropy.encode_with_prior(codes, prior.exact)
    adapted = entropy.encode_with_prior(codes, prior.exact, adapt=True)
    assert np.array_equal(plain.words, adapted.words)


def _file(codes: np.ndarray) -> CodeFile:
    n, h, w = codes.shape
    return CodeFile(
        codes=codes,
        names=tuple(f"p{i}" for i in range(n)),
        sizes=np.full((n, 2), (4 * h, 4 * w), np.int32),
        checkpoint=GOLDEN_VQ_FINGERPRINT,
        num_embeddings=K,
        embedding_dim=8,
        image_size=(4 * h, 4 * w),
    )


def _prior():  # type: ignore[no-untyped-def]
    return random_prior(K, PRIOR_GRID, vq_fingerprint=GOLDEN_VQ_FINGERPRINT)


def test_a_window_coded_file_says_adapt_and_a_file_of_the_priors_grid_does_not(
    tmp_path: Path,
) -> None:
    prior = _prior()
    photo = _file(_photo_like(2, (7, 8)))
    write_codes(tmp_path / "photo.vqc", photo, prior=prior)
    header = json.loads(code_arrays(tmp_path / "photo.vqc")["header"].tobytes())
    assert header["adapt"] == adaptive.SCHEME
    assert np.array_equal(read_codes(tmp_path / "photo.vqc", prior).codes, photo.codes)
    own = _file(random_codes(5, K, PRIOR_GRID))
    write_codes(tmp_path / "own.vqc", own, prior=prior)
    assert "adapt" not in json.loads(code_arrays(tmp_path / "own.vqc")["header"].tobytes())
    assert np.array_equal(read_codes(tmp_path / "own.vqc", prior).codes, own.codes)


def test_a_window_coded_file_of_an_earlier_vqtool_decodes_unadapted(tmp_path: Path) -> None:
    prior = _prior()
    photo = _file(_photo_like(2, (7, 8)))
    write_codes(tmp_path / "photo.vqc", photo, prior=prior)
    arrays = code_arrays(tmp_path / "photo.vqc")
    header = json.loads(arrays["header"].tobytes())
    del header["adapt"]
    earlier = entropy.encode_with_prior(photo.codes, prior.exact, chunk_size=header["chunk"])
    assert earlier.chunk_words is not None
    arrays |= {
        "header": np.frombuffer(json.dumps(header | {"words": len(earlier.words)}).encode(), "u1"),
        "stream": earlier.words,
        "chunks": earlier.chunk_words,
    }
    with open(tmp_path / "earlier.vqc", "wb") as f:  # the zip that vqtool wrote then
        np.savez(f, **arrays)
    assert np.array_equal(read_codes(tmp_path / "earlier.vqc", prior).codes, photo.codes)


@pytest.mark.parametrize(
    ("value", "message"),
    [(2, "adapted by rule 2"), (True, "adapted by rule true"), (1.0, "rule 1.0"), ("1\nx", "rule")],
)
def test_an_unknown_adaptation_is_one_line(value: object, message: str, tmp_path: Path) -> None:
    prior = _prior()
    write_codes(tmp_path / "photo.vqc", _file(_photo_like(1, (7, 8))), prior=prior)
    arrays = code_arrays(tmp_path / "photo.vqc")
    header = json.loads(arrays["header"].tobytes()) | {"adapt": value}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    save_code_arrays(tmp_path / "bad.vqc", arrays)
    with pytest.raises(WorkError, match=message) as caught:
        read_codes(tmp_path / "bad.vqc", prior)
    assert "\n" not in caught.value.line()


def test_adapt_in_a_unigram_header_is_damage(tmp_path: Path) -> None:
    write_codes(tmp_path / "u.vqc", _file(_photo_like(1, (7, 8))), compress=True)
    arrays = code_arrays(tmp_path / "u.vqc")
    header = json.loads(arrays["header"].tobytes()) | {"adapt": 1}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    save_code_arrays(tmp_path / "bad.vqc", arrays)
    with pytest.raises(WorkError, match="keys"):
        read_codes(tmp_path / "bad.vqc")
