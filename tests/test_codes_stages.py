"""Code files with a stage axis (versions 3 and 4): codes (N, S, h, w) of residual stages, raw,
unigram- and prior-coded; the first n stages read (and decode) without the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import code_arrays, save_code_arrays
from test_entropy import Prior

from vqtool.codes import entropy
from vqtool.codes.tokens import codes_to_tokens, tokens_to_codes
from vqtool.codes.vqc import CodeFile, read_codes, write_codes
from vqtool.errors import UsageError, WorkError
from vqtool.models.config import PriorConfig
from vqtool.models.transformer import CodePrior
from vqtool.prior.coding_model import derive_coding_model

K, STAGES, N = 8, 3, 150


def staged_file(stages: int = STAGES, seed: int = 0) -> CodeFile:
    rng = np.random.default_rng(seed)
    # later stages skewed differently from the first: a table per stage pays
    codes = np.stack(
        [rng.integers(0, K // (1 + s), (N, 2, 2)) for s in range(stages)], axis=1
    ).astype(np.uint16)
    return CodeFile(
        codes=codes,
        names=tuple(f"image-{i:03d}" for i in range(N)),
        sizes=np.tile(np.array([[8, 8]], np.int32), (N, 1)),
        checkpoint="a" * 64,
        num_embeddings=K,
        embedding_dim=4,
        image_size=(8, 8),
    )


def staged_prior(stages: int = STAGES) -> Prior:
    torch.manual_seed(0)
    cfg = PriorConfig(layers=1, width=32, heads=2)
    model = CodePrior(cfg, stages * K, (stages * 2, 2), stages=stages).eval()
    calibration = torch.from_numpy(codes_to_tokens(staged_file(stages).codes, K).reshape(N, -1))
    coding = derive_coding_model(model, calibration, "b" * 64, "a" * 64)
    return Prior(model, "b" * 64, "a" * 64, coding.model, coding.fingerprint)


@pytest.mark.parametrize("coding", ["raw", "unigram", "prior"])
def test_every_prefix_of_stages_reads_back(coding: str, tmp_path: Path) -> None:
    code_file, prior = staged_file(), staged_prior()
    path = tmp_path / "s.vqc"
    write_codes(path, code_file, coding != "raw", prior if coding == "prior" else None)
    use = prior if coding == "prior" else None
    whole = read_codes(path, use)
    assert whole.stages == STAGES and np.array_equal(whole.codes, code_file.codes)
    for n in range(1, STAGES + 1):
        first = read_codes(path, use, stages=n)
        assert first.codes.shape == (N, n, 2, 2)
        assert np.array_equal(first.codes, code_file.codes[:, :n])
    header_version = 3 if coding == "raw" else 4
    raw = code_arrays(path)["header"]
    header = json.loads(raw.tobytes().decode() if raw.dtype == np.uint8 else str(raw[()]))
    assert header["version"] == header_version and header["stages"] == STAGES


@pytest.mark.parametrize("stages", [0, STAGES + 1])
def test_stages_outside_the_file_are_usage_errors(stages: int, tmp_path: Path) -> None:
    path = tmp_path / "s.vqc"
    write_codes(path, staged_file(), compress=True)
    with pytest.raises(UsageError, match="stage"):
        read_codes(path, stages=stages)


def test_a_prior_of_fewer_stages_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="2 stage"):
        write_codes(tmp_path / "s.vqc", staged_file(), prior=staged_prior(2))
    assert not (tmp_path / "s.vqc").exists()


def test_a_prior_of_more_stages_codes_the_first_ones(tmp_path: Path) -> None:
    # A prior predicts stage after stage: its first two stages' predictions never look at
    # the third, so a file of two stages costs what those stages cost in a file of three.
    prior, whole = staged_prior(), staged_file()
    first_two = CodeFile(**{**whole.__dict__, "codes": np.ascontiguousarray(whole.codes[:, :2])})
    write_codes(tmp_path / "two.vqc", first_two, prior=prior)
    assert np.array_equal(read_codes(tmp_path / "two.vqc", prior).codes, whole.codes[:, :2])
    two = entropy.encode_with_prior(first_two.codes, prior.model)
    three = entropy.encode_with_prior(whole.codes, prior.model)
    assert two.bits.sum() < three.bits.sum()


def test_the_prior_reads_the_stages_one_after_another_with_their_own_tokens() -> None:
    codes = staged_file().codes  # (N, 3, 2, 2) of K codes each
    tokens = codes_to_tokens(codes, K)
    assert tokens.shape == (N, STAGES * 2, 2) and tokens.dtype == np.int64
    sequence = tokens.reshape(N, -1)  # what the prior reads, position by position
    for s in range(STAGES):
        assert np.array_equal(sequence[:, 4 * s : 4 * s + 4], codes[:, s].reshape(N, 4) + s * K)
    assert np.array_equal(tokens_to_codes(tokens, K, STAGES), codes)
    flat = codes[:, 0]  # one stage: the codes are their own tokens
    assert np.array_equal(codes_to_tokens(flat, K), flat)
    assert np.array_equal(tokens_to_codes(codes_to_tokens(flat, K), K), flat)
    with pytest.raises(ValueError, match="stage"):
        tokens_to_codes(tokens[:, ::-1], K, STAGES)  # stage 2's tokens where stage 0's go


def test_unigram_tables_per_stage_cost_less_than_one_table(tmp_path: Path) -> None:
    code_file = staged_file()
    per_stage = entropy.encode_unigram(
        code_file.codes, entropy.code_frequencies(code_file.codes, K)
    )
    flat = code_file.codes.reshape(N, -1, 2)  # the same codes as one stage
    shared = entropy.encode_unigram(flat, entropy.code_frequencies(flat, K))
    assert per_stage.bits.sum() < shared.bits.sum()


def test_one_stage_codes_keep_the_earlier_versions(tmp_path: Path) -> None:
    code_file = staged_file(stages=1)
    flat = CodeFile(**{**code_file.__dict__, "codes": code_file.codes[:, 0]})
    write_codes(tmp_path / "raw.vqc", flat)
    write_codes(tmp_path / "uni.vqc", flat, compress=True)
    assert read_codes(tmp_path / "raw.vqc").codes.ndim == 3
    assert read_codes(tmp_path / "uni.vqc").version == 1
    with pytest.raises(UsageError):
        read_codes(tmp_path / "raw.vqc", stages=2)
    assert read_codes(tmp_path / "raw.vqc", stages=1).codes.shape == (N, 2, 2)


def test_a_wrong_stage_checksum_list_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.vqc"
    write_codes(path, staged_file(), compress=True)
    digests = json.loads(code_arrays(path)["header"].tobytes())["codes_sha256"]
    _rewrite(path, {"codes_sha256": digests[:2]})
    with pytest.raises(WorkError, match="one digest per stage"):
        read_codes(path)


def _rewrite(path: Path, change: dict[str, object], codes: np.ndarray | None = None) -> None:
    """Rewrite a code file's header keys (and codes), keeping its other members."""
    arrays = code_arrays(path)
    raw = arrays["header"]
    utf8 = raw.dtype == np.uint8
    header = json.loads(raw.tobytes().decode() if utf8 else str(raw[()])) | change
    text = json.dumps(header)
    arrays["header"] = np.frombuffer(text.encode(), np.uint8) if utf8 else np.array(text)
    if codes is not None:
        arrays["codes"] = codes
    save_code_arrays(path, arrays)


def test_a_version_1_file_with_a_stage_axis_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.vqc"
    code_file = staged_file()
    write_codes(path, code_file)
    del_stages = {"version": 1}
    _rewrite(path, del_stages)  # version 1 keys do not include "stages": refused by its keys
    with pytest.raises(WorkError):
        read_codes(path)
    flat = CodeFile(**{**code_file.__dict__, "codes": code_file.codes[:, 0]})
    write_codes(path, flat)
    _rewrite(path, {}, codes=code_file.codes)  # a version 1 header over (N, S, h, w) codes
    with pytest.raises(WorkError, match="shape"):
        read_codes(path)


def test_every_prefix_checksum_is_checked_on_a_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "s.vqc"
    write_codes(path, staged_file(), compress=True)
    digests = json.loads(code_arrays(path)["header"].tobytes().decode())["codes_sha256"]
    _rewrite(path, {"codes_sha256": [digests[1], digests[0], digests[2]]})
    with pytest.raises(WorkError, match="checksum"):
        read_codes(path)
