"""Compressed code files (.vqc version 2): the layout, exact decodes through the CLI, damaged
and mismatched files as one line, and a fuzzed reader."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import code_arrays, decoded_pngs, one_error_line, save_code_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codes import assert_same, fuzz_reads, golden_code_file
from test_entropy import Prior, random_prior
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes import container, entropy, vqc
from vqtool.codes.vqc import (
    CodeFile,
    codes_sha256,
    describe_codes,
    pack_names,
    read_codes,
    size_runs,
    unpack_names,
    write_codes,
)
from vqtool.errors import UsageError, WorkError
from vqtool.models.config import PriorConfig
from vqtool.models.exact_prior import ExactSteps
from vqtool.prior import load as prior_load
from vqtool.vq.load import load_model

runner = CliRunner()
GOLDEN_VQ = golden_code_file().checkpoint


def golden_prior(seed: int = 0) -> Prior:
    """A prior for the golden file's 2x3 grids of 512 codes."""
    return random_prior(512, (2, 3), seed=seed, vq_fingerprint=GOLDEN_VQ)


def members(path: Path) -> dict[str, np.ndarray]:
    return code_arrays(path)


def header_of(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(json.loads(arrays["header"].tobytes()))


def save_members(path: Path, arrays: dict[str, Any]) -> None:
    save_code_arrays(path, arrays)


def with_header(arrays: dict[str, np.ndarray], **changes: Any) -> dict[str, np.ndarray]:
    header = header_of(arrays) | changes
    return {**arrays, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)}


def test_a_unigram_file_holds_what_the_format_says(tmp_path: Path) -> None:
    path = tmp_path / "u.vqc"
    write_codes(path, golden_code_file(), compress=True)
    arrays = members(path)
    assert list(arrays) == ["header", "names", "sizes", "frequencies", "stream"]
    header = header_of(arrays)
    assert header == golden_code_file().header() | {
        "version": 2,
        "coding": "unigram",
        "prior": None,
        "images": 3,
        "words": len(arrays["stream"]),
        "codes_sha256": codes_sha256(golden_code_file().codes),
    }
    assert arrays["stream"].dtype == np.dtype("<u4")
    assert arrays["names"].tobytes().decode().split("\n") == list(golden_code_file().names)
    assert arrays["sizes"].tolist() == [[1, 8, 12], [1, 7, 12], [1, 5, 9]]
    assert int(arrays["frequencies"].sum()) == 18 + 512
    assert_same(read_codes(path), golden_code_file())
    write_codes(tmp_path / "again.vqc", golden_code_file(), compress=True)
    assert (tmp_path / "again.vqc").read_bytes() == path.read_bytes()


def test_a_prior_file_names_its_prior_and_needs_it(tmp_path: Path) -> None:
    prior = golden_prior()
    path = tmp_path / "p.vqc"
    write_codes(path, golden_code_file(), prior=prior)
    arrays = members(path)
    assert list(arrays) == ["header", "names", "sizes", "chunks", "stream"]
    assert arrays["chunks"].tolist() == [len(arrays["stream"])]  # one chunk of 4 images
    header = header_of(arrays)
    assert header["coding"] == "exact" and header["prior"] == prior.fingerprint
    assert header["coding_model"] == prior.exact_fingerprint and header["chunk"] == 256
    assert_same(read_codes(path, prior), golden_code_file())
    with pytest.raises(UsageError, match="compressed with a prior"):
        read_codes(path)
    with pytest.raises(UsageError, match="another prior"):
        read_codes(path, golden_prior(seed=1))
    # the same prior checkpoint with another coding model (derived on another machine)
    other = golden_prior(seed=1)
    rederived = prior._replace(exact=other.exact, exact_fingerprint=other.exact_fingerprint)
    with pytest.raises(UsageError, match="exact coding model"):
        read_codes(path, rederived)


def test_a_large_file_codes_in_larger_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A quarter of the images a chunk (at least 256, at most 1,024): fewer, larger steps.
    rng = np.random.default_rng(0)
    n = 1_100
    code_file = dataclasses.replace(
        golden_code_file(),
        codes=rng.integers(0, 512, (n, 2, 3), dtype=np.uint16),
        names=tuple(f"image-{i:04d}" for i in range(n)),
        sizes=np.tile(np.array([[8, 12]], np.int32), (n, 1)),
    )
    prior = golden_prior()
    path = tmp_path / "large.vqc"
    write_codes(path, code_file, prior=prior)
    arrays = members(path)
    assert header_of(arrays)["chunk"] == 275 and len(arrays["chunks"]) == 4
    assert_same(read_codes(path, prior), code_file)
    assert entropy.exact_chunk(prior.exact, [((2, 3), 10_000)]) == entropy.EXACT_CHUNK
    # grids of another size than the prior's: window tables, small chunks
    assert entropy.exact_chunk(prior.exact, [((2, 3), 5_000), ((4, 6), 1)]) == 256
    # a model whose decoder caches would outgrow CACHE_BYTES: fewer grids a chunk
    monkeypatch.setattr(entropy, "CACHE_BYTES", 100 * ExactSteps.cache_bytes(prior.exact))
    assert entropy.exact_chunk(prior.exact, [((2, 3), 10_000)]) == 100


def test_a_header_asking_for_too_large_a_chunk_is_refused(tmp_path: Path) -> None:
    # A chunk's images are decoded together: a header cannot make the caches outgrow memory.
    prior = golden_prior()
    assert prior.exact is not None
    path = tmp_path / "p.vqc"
    write_codes(path, golden_code_file(), prior=prior)
    largest = entropy.largest_chunk(prior.exact)
    save_members(path, with_header(members(path), chunk=largest + 1))
    with pytest.raises(WorkError, match=f"chunk of {largest + 1} images is more than"):
        read_codes(path, prior)
    save_members(path, with_header(members(path), chunk=largest))  # the largest is read
    assert_same(read_codes(path, prior), golden_code_file())


def float_coded(path: Path, prior: Prior) -> None:
    """Rewrite the exact-coded file at `path` as an earlier vqtool's float prior coding
    (coding "prior"): the same codes, coded with the float prior's tables."""
    arrays = members(path)
    codes = read_codes(path, prior).codes
    encoded = entropy.encode_with_prior(codes, prior.model)
    header = header_of(arrays) | {"coding": "prior", "words": len(encoded.words)}
    for key in ("coding_model", "chunk"):
        header.pop(key)
    arrays |= {"stream": encoded.words, "chunks": encoded.chunk_words}
    save_members(path, {**arrays, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)})


def test_an_earlier_float_coded_file_still_decodes_where_it_was_written(tmp_path: Path) -> None:
    prior = golden_prior()
    path = tmp_path / "p.vqc"
    write_codes(path, golden_code_file(), prior=prior)
    float_coded(path, prior)
    assert header_of(members(path))["coding"] == "prior"
    assert_same(read_codes(path, prior), golden_code_file())


def test_names_and_sizes_are_stored_compactly() -> None:
    names = [f"cifar10-test-{i:05d}" for i in range(10_000)]
    assert pack_names(names) == "cifar10-test-\x1f00000\x1f10000"
    mixed = ["a", "cat/0009", "cat/0010", "cat/0011", "x1", "x1", "dog/7", "dog/8", "b9", "b10"]
    packed = pack_names(mixed)
    assert packed.count("\n") == 5  # a, cat run, x1, x1, dog run, b9..b10 run
    assert unpack_names(packed, len(mixed)) == mixed
    with pytest.raises(ValueError, match="more names"):
        unpack_names(packed, len(mixed) - 1)
    sizes = np.array([[32, 32]] * 5 + [[7, 9]] * 2 + [[32, 32]], np.int32)
    assert size_runs(sizes).tolist() == [[5, 32, 32], [2, 7, 9], [1, 32, 32]]


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.one_of(
            st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=8),
            st.builds(
                lambda p, i: f"{p}{i}", st.sampled_from(["a", "b/0", ""]), st.integers(0, 12)
            ),
            st.builds(
                lambda h, i: f"{h}test-{i:02d}",
                st.sampled_from(["cat/", "dog/", "a/b/", "", "x/test/", "é/"]),
                st.integers(0, 12),
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_names_round_trip(names: list[str]) -> None:
    assert unpack_names(pack_names(names), len(names)) == names


def test_class_prefixed_names_pack_into_one_run() -> None:
    rng = np.random.default_rng(0)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse")
    names = [f"{classes[c]}/test-{i:05d}" for i, c in enumerate(rng.integers(0, 8, 1000))]
    packed = pack_names(names)
    assert "\n" not in packed  # one 5-field line
    assert unpack_names(packed, len(names)) == names
    # The picks cost a few bits a name; one line a name would cost several times the bound.
    assert len(zlib.compress(packed.encode(), 9)) < 700


def test_a_head_varying_run_decodes_exactly() -> None:
    line = "test-\x1f0098\x1f4\x1fcat/\x1edog/\x1e\x1f0112"
    assert unpack_names(line, 4) == ["cat/test-0098", "dog/test-0099", "dog/test-0100", "test-0101"]
    assert pack_names(unpack_names(line, 4)) == line


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("t\x1f0\x1f2\x1fa/\x1eb/", "fields"),
        ("t\x1f0\x1f2\x1fa/\x1eb/\x1f01\x1fx", "fields"),
        ("t\x1fx\x1f2\x1fa/\x1eb/\x1f01", "bad run"),
        ("t\x1f0\x1f2\x1fa/\x1eb/\x1f02", "picks a head"),
        ("t\x1f0\x1f2\x1fa/\x1eb/\x1f0!", "picks a head"),
        ("t\x1f0\x1f2\x1fa/\x1eb/\x1f011", "3 picks"),
        ("t\x1f0\x1f9\x1fa/\x1eb/\x1f010101010", "more names"),
        ("t\x1f0\x1f2\x1fa\n/\x1eb/\x1f01", "fields"),
        ("t\x1f0\x1f2\x1fa\x07/\x1eb/\x1f01", "control character"),
        ("t\x1f0\x1f2\x1f" + "\x1e" * 62 + "\x1f01", "63 heads"),
    ],
)
def test_doctored_head_varying_runs_are_refused(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        unpack_names(line, 8)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(st.sampled_from("ab/0129\x1f\x1e\n\x00é"), max_size=40), st.integers(0, 20))
def test_unpack_names_refuses_any_text_with_a_value_error(text: str, limit: int) -> None:
    try:
        names = unpack_names(text, limit)
    except ValueError:
        return
    assert len(names) <= limit


def test_a_raw_file_is_unchanged_by_all_this(tmp_path: Path) -> None:
    write_codes(tmp_path / "raw.vqc", golden_code_file())
    golden = Path(__file__).parent / "golden" / "codes-v1.vqc"
    assert (tmp_path / "raw.vqc").read_bytes() == golden.read_bytes()


# Through the CLI, on the tiny run: compressed decodes to the same PNGs as raw.


@pytest.fixture(scope="module")
def run_prior(trained_run: Path) -> Prior:
    loaded = load_model(trained_run)
    k = loaded.model.config.num_embeddings
    return random_prior(k, (8, 8), seed=3, vq_fingerprint=loaded.fingerprint)


@pytest.fixture
def prior_at_p(monkeypatch: pytest.MonkeyPatch, run_prior: Prior) -> Prior:
    """`--prior P` loads the test prior; `--prior other` one with other weights."""

    def load(path: Path) -> Prior:
        if Path(path).name == "other":
            return random_prior(run_prior.model.num_embeddings, (8, 8), seed=4,
                                vq_fingerprint=run_prior.vq_fingerprint)  # fmt: skip
        return run_prior

    monkeypatch.setattr(prior_load, "load_coding_prior", load)
    return run_prior


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_compressed_decodes_to_the_raw_files_pngs(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path, prior_at_p: Prior
) -> None:
    """Raw, unigram and prior files of the same 40 images, encoded with batch sizes 1, 7 and
    256 and torch on 1 or 2 threads: the same compressed bytes, the same PNGs."""
    common = ("encode", trained_run, "cifar10:test", "--data-dir", trained_data_dir)
    assert invoke(*common, "-o", "raw.vqc")[0] == 0
    assert invoke("decode", trained_run, "raw.vqc", "-o", "raw")[0] == 0
    before = torch.get_num_threads()
    try:
        for kind, extra in (("unigram", ["--compress"]), ("prior", ["--prior", "P"])):
            files = []
            for batch, threads in ((1, 1), (7, 2), (256, 1)):
                torch.set_num_threads(threads)
                out = f"{kind}-{batch}.vqc"
                code, output = invoke(*common, "-o", out, "--batch-size", batch, *extra)
                assert code == 0, output
                assert "bits per image" in output
                files.append((tmp_path / out).read_bytes())
            assert files[0] == files[1] == files[2], kind
            torch.set_num_threads(2)
            decode_extra = extra[1:] and ["--prior", "P"]
            code, output = invoke("decode", trained_run, f"{kind}-7.vqc", "-o", kind, *decode_extra)
            assert code == 0, output
            assert decoded_pngs(tmp_path / kind) == decoded_pngs(tmp_path / "raw"), kind
    finally:
        torch.set_num_threads(before)
    raw_bytes = (tmp_path / "raw.vqc").stat().st_size
    assert (tmp_path / "unigram-1.vqc").stat().st_size < raw_bytes / 2


def test_encode_refuses_a_prior_of_another_run(
    trained_run: Path, trained_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prior_load, "load_coding_prior", lambda path: golden_prior())
    code, output = invoke("encode", trained_run, "cifar10:test:3", "-o", "p.vqc",
                          "--data-dir", trained_data_dir, "--prior", "P")  # fmt: skip
    assert code == 2 and "another checkpoint" in one_error_line(output)
    assert not Path("p.vqc").exists()


def test_a_prior_codes_grids_smaller_and_larger_than_its_own(
    trained_run: Path, trained_data_dir: Path, prior_at_p: Prior, tmp_path: Path
) -> None:
    """The prior learnt 8x8 grids; 16x16 and 24x40 images (4x4 and 6x10 grids) are coded
    window by window and decode to the raw files' pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for size in [(16, 16), (24, 40)]:
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in.png")
        for coding in [[], ["--prior", "P"]]:
            code, output = invoke("encode", trained_run, "in.png", "-o", "c.vqc", *coding)
            assert code == 0, output
            code, output = invoke(
                "decode", trained_run, "c.vqc", "-o", f"out{len(coding)}", *coding
            )
            assert code == 0, output
        raw, coded = (tmp_path / f"out{n}" / "in.png" for n in (0, 2))
        assert raw.read_bytes() == coded.read_bytes()


# Bad compressed files through `vqtool decode`: one line, exit 1 or 2, nothing written.


def _flip_word(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    stream = arrays["stream"].copy()
    stream[len(stream) // 2] ^= 1 << 7
    return {**arrays, "stream": stream}


def _truncate(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    stream = arrays["stream"][: len(arrays["stream"]) // 2]
    return with_header({**arrays, "stream": stream}, words=len(stream))


def _unreadable(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()[:-200]


def _earlier_unchunked(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first prior coding's layout: one stream, no chunks, no exact keys."""
    header = {k: v for k, v in header_of(arrays).items() if k not in ("coding_model", "chunk")}
    header["coding"] = "prior"
    kept = {k: v for k, v in arrays.items() if k != "chunks"}
    return {**kept, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)}


# A damaged stream is caught by the decoder (words left over, or none that fit) or, when it
# decodes to something, by the checksum of the codes.
DAMAGED_STREAM = "checksum|stream holds more words|cannot be decoded|chunk lengths"
HEADS_PICKED_BADLY = b"x\x1f0\x1f40\x1fa/\x1eb/\x1f" + b"0" * 39 + b"2"
Case = tuple[str, Callable[[dict[str, np.ndarray]], Any], int, str]
BAD: list[Case] = [
    ("unigram", _flip_word, 1, DAMAGED_STREAM),
    ("prior", _flip_word, 1, DAMAGED_STREAM),
    ("unigram", _truncate, 1, DAMAGED_STREAM),
    ("prior", _truncate, 1, DAMAGED_STREAM),
    ("unigram", _unreadable, 1, "not a readable code file"),
    ("unigram", lambda a: with_header(a, words=len(a["stream"]) + 1), 1, "words"),
    ("prior", lambda a: with_header(a, images=39), 1, "more names than images"),
    ("prior", lambda a: with_header(a, images=41), 1, "41"),
    ("unigram", lambda a: {**a, "sizes": np.array([[39, 32, 32]], np.int32)}, 1, "size runs"),
    ("unigram", lambda a: {**a, "frequencies": a["frequencies"] + 1}, 1, "frequencies"),
    ("unigram", lambda a: {**a, "frequencies": a["frequencies"][:-1]}, 1, "frequencies"),
    ("unigram", lambda a: with_header(a, coding="prior"), 1, "coding prior with members"),
    ("prior", lambda a: with_header(a, coding="arith"), 1, "unknown coding"),
    ("prior", lambda a: with_header(a, codes_sha256="0" * 64), 1, "checksum"),
    ("prior", lambda a: {**a, "header": np.array(json.dumps(header_of(a)))}, 1, "stored as"),
    ("prior", lambda a: {**a, "stream": a["stream"].astype(np.int64)}, 1, "uint32"),
    ("prior", lambda a: {**a, "names": np.frombuffer(b"a\x1fx\x1f40", np.uint8)}, 1, "names"),
    ("prior", lambda a: {**a, "names": np.frombuffer(b"\xff\xfe", np.uint8)}, 1, "names"),
    ("prior", lambda a: {**a, "names": np.frombuffer(HEADS_PICKED_BADLY, np.uint8)}, 1, "names"),
    ("prior", lambda a: with_header(a, images=10**9), 1, "images"),
    ("prior", lambda a: with_header(a, prior="f" * 64), 2, "another prior"),
    ("prior", lambda a: with_header(a, coding_model="f" * 64), 2, "exact coding model"),
    ("prior", lambda a: with_header(a, coding_model="f"), 1, "coding_model is not"),
    ("prior", lambda a: with_header(a, chunk=0), 1, "chunk is not"),
    ("prior", lambda a: with_header(a, chunk=16), 1, "chunks must be"),
    ("prior", lambda a: with_header(a, coding="prior"), 1, "header's keys"),
    ("prior", lambda a: {k: v for k, v in a.items() if k != "chunks"}, 1, "with members"),
    ("prior", _earlier_unchunked, 1, "earlier vqtool"),
    ("prior", lambda a: {**a, "chunks": a["chunks"].astype(np.int64)}, 1, "chunks must be"),
    ("prior", lambda a: {**a, "chunks": np.append(a["chunks"], 0)}, 1, "chunks must be"),
    ("prior", lambda a: {**a, "chunks": a["chunks"] - 1}, 1, "chunk lengths"),
    (
        "prior",
        lambda a: with_header({**a, "chunks": a["chunks"] * 0, "stream": a["stream"][:0]}, words=0),
        1,
        "0 words",
    ),  # fmt: skip
    ("unigram", lambda a: {**a, "chunks": np.array([1], np.uint32)}, 1, "not a vqtool code"),
]


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{c[0]}-{c[3].split('|')[0]}" for c in BAD])
def test_bad_compressed_files_fail_cleanly(
    case: int, trained_run: Path, trained_data_dir: Path, tmp_path: Path, prior_at_p: Prior
) -> None:
    kind, make, exit_code, message = BAD[case]
    extra = ["--compress"] if kind == "unigram" else ["--prior", "P"]
    code, output = invoke("encode", trained_run, "cifar10:test", "-o", "good.vqc",
                          "--data-dir", trained_data_dir, *extra)  # fmt: skip
    assert code == 0, output
    made = make(members(tmp_path / "good.vqc"))
    path = tmp_path / "bad.vqc"
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        save_members(path, made)
    code, output = invoke("decode", trained_run, "bad.vqc", "-o", "out", "--prior", "P")
    assert code == exit_code, output
    assert re.search(message, one_error_line(output))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vqc", "good.vqc"]


def encode_five_with_the_prior(run: Path, data_dir: Path) -> None:
    """p.vqc: five test images coded with the prior at P."""
    code, output = invoke("encode", run, "cifar10:test:5", "-o", "p.vqc",
                          "--data-dir", data_dir, "--prior", "P")  # fmt: skip
    assert code == 0, output


def test_a_prior_file_without_the_prior_or_with_another(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path, prior_at_p: Prior
) -> None:
    encode_five_with_the_prior(trained_run, trained_data_dir)
    for extra, message in (([], "pass --prior P"), (["--prior", "other"], "another prior")):
        code, output = invoke("decode", trained_run, "p.vqc", "-o", "out", *extra)
        assert code == 2 and message in one_error_line(output)
        assert not (tmp_path / "out").exists()


def test_a_prior_that_computes_otherwise_is_caught_by_the_checksum(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path, prior_at_p: Prior
) -> None:
    """Another machine's float arithmetic, played by the same fingerprint on other weights,
    decoding an earlier vqtool's float-coded file."""
    encode_five_with_the_prior(trained_run, trained_data_dir)
    float_coded(tmp_path / "p.vqc", prior_at_p)
    impostor = random_prior(prior_at_p.model.num_embeddings, (8, 8), seed=9,
                            vq_fingerprint=prior_at_p.vq_fingerprint)  # fmt: skip
    with pytest.raises(WorkError, match="computes the prior's probabilities differently"):
        read_codes(tmp_path / "p.vqc", impostor._replace(fingerprint=prior_at_p.fingerprint))


# 1,000 byte-level mutations of compressed files (500 unigram, 500 prior): read_codes either
# returns a valid file or raises WorkError / UsageError, nothing else.


@pytest.mark.parametrize("kind", ["unigram", "prior"])
def test_fuzzed_compressed_files_raise_only_vqtool_errors(kind: str, tmp_path: Path) -> None:
    prior = golden_prior()
    write_codes(
        tmp_path / "valid.vqc", golden_code_file(), True, None if kind == "unigram" else prior
    )
    valid = (tmp_path / "valid.vqc").read_bytes()

    def check(code_file: CodeFile) -> None:
        assert_same(code_file, golden_code_file())

    def read(path: Path) -> CodeFile:
        return read_codes(path, prior)

    outcomes = fuzz_reads(valid, tmp_path / "fuzz.vqc", 500, read, check)
    print(f"fuzzed {kind} .vqc files: {outcomes}")  # shown with pytest -s
    assert sum(outcomes.values()) >= 500, outcomes
    assert outcomes["refused"] > 250, outcomes


def _one_image(
    shape: tuple[int, ...], k: int, size: tuple[int, int], padded: tuple[int, int]
) -> CodeFile:
    """One image's random codes of `shape` ((1, h, w) or (1, S, h, w)) below `k`."""
    codes = np.random.default_rng(0).integers(0, k, shape).astype(np.uint16)
    return CodeFile(
        codes=codes, names=("a",), sizes=np.array([size], np.int32), checkpoint=GOLDEN_VQ,
        num_embeddings=k, embedding_dim=8, image_size=padded, version=3 if len(shape) == 4 else 1,
    )  # fmt: skip


def test_a_compressed_file_is_the_compact_container_its_stream_stored_at_the_end(
    tmp_path: Path,
) -> None:
    names = tuple(f"cifar10-test-{i:05d}" for i in range(200))
    code_file = CodeFile(
        codes=np.zeros((200, 8, 8), np.uint16),
        names=names,
        sizes=np.full((200, 2), 32, np.int32),
        checkpoint=GOLDEN_VQ,
        num_embeddings=512,
        embedding_dim=64,
        image_size=(32, 32),
    )
    write_codes(tmp_path / "c.vqc", code_file, compress=True)
    data = (tmp_path / "c.vqc").read_bytes()
    assert data.startswith(container.MAGIC)
    arrays = container.unpack(data, 1 << 20)
    assert data.endswith(arrays["stream"].astype("<u4").tobytes())  # stored, not deflated
    # everything but the stream: the header's digests and a few dozen bytes
    assert len(data) - arrays["stream"].nbytes < len(arrays["header"]) * 0.6
    assert_same(read_codes(tmp_path / "c.vqc"), code_file)


def test_the_compact_container_costs_a_fraction_of_the_zip_a_one_photo_file(
    tmp_path: Path,
) -> None:
    one = _one_image((1, 75, 113), 512, (300, 451), (300, 452))
    write_codes(tmp_path / "c.vqc", one, compress=True)
    arrays = code_arrays(tmp_path / "c.vqc")
    zipped = tmp_path / "z.vqc"
    with open(zipped, "wb") as f:  # the zip an earlier vqtool wrote: still read
        np.savez(f, **arrays)
    assert_same(read_codes(zipped), one)
    assert zipped.stat().st_size - (tmp_path / "c.vqc").stat().st_size > 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d[:-3], "CRC-32"),
        (lambda d: d + b"\x00", "CRC-32"),
        (lambda d: d[:9] + d[10:], "CRC-32"),
        (lambda d: d[:6], "damaged or truncated"),
        (lambda d: b"\x89VQD" + d[4:], "not a vqtool code file"),
    ],
)
def test_a_damaged_compact_container_is_one_line(
    change: Callable[[bytes], bytes], message: str, tmp_path: Path
) -> None:
    write_codes(tmp_path / "c.vqc", golden_code_file(), compress=True)
    path = tmp_path / "bad.vqc"
    path.write_bytes(change((tmp_path / "c.vqc").read_bytes()))
    with pytest.raises(WorkError, match=message) as caught:
        read_codes(path)
    assert "\n" not in caught.value.line()
    with pytest.raises(WorkError, match=message):
        describe_codes(path)


def test_a_container_that_inflates_past_its_limit_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    zeros = np.zeros(1 << 25, np.uint8)  # 32 MiB of zeros deflate to about 32 KB
    arrays = {"header": zeros, "stream": np.zeros(1, np.uint32)}
    path = tmp_path / "bomb.vqc"
    path.write_bytes(vqc.compact_bytes(arrays))
    assert path.stat().st_size < 65536
    with pytest.raises(WorkError, match="inflates past"):
        read_codes(path)


def test_an_array_named_twice_is_refused(tmp_path: Path) -> None:
    write_codes(tmp_path / "c.vqc", golden_code_file(), compress=True)
    body = _body((tmp_path / "c.vqc").read_bytes())
    path = tmp_path / "bad.vqc"
    path.write_bytes(_packed(body + body))
    with pytest.raises(WorkError, match="twice"):
        read_codes(path)


def test_a_conditional_prior_is_refused() -> None:
    conditional = PriorConfig(layers=1, width=32, heads=4, conditional=True, num_classes=3)
    prior = random_prior(512, (2, 3), vq_fingerprint=GOLDEN_VQ, cfg=conditional)
    with pytest.raises(UsageError, match="conditional"):
        write_codes(Path("c.vqc"), golden_code_file(), prior=prior)
    assert not Path("c.vqc").exists()


def test_a_unigram_file_of_the_largest_codebook_reads_back(tmp_path: Path) -> None:
    """K = 65,536 over one 8x8 grid: its frequency table (nearly all ones) deflates past 64:1,
    which the reader allows for what a file's tables can hold."""
    one = _one_image((1, 4, 8, 8), 65536, (32, 32), (32, 32))
    write_codes(tmp_path / "k.vqc", one, compress=True)
    assert (tmp_path / "k.vqc").stat().st_size < 65536 * 4 / 64  # the table deflated
    assert_same(read_codes(tmp_path / "k.vqc"), one)


def _body(data: bytes) -> bytes:
    """A container's inflated members, the stored stream's words appended."""
    inflater = zlib.decompressobj(-15, zdict=container.DICTIONARY)
    return inflater.decompress(data[len(container.MAGIC) + 4 :]) + inflater.unused_data


def _packed(body: bytes) -> bytes:
    """`body` deflated again behind the mark and a CRC-32 that matches it."""
    again = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=container.DICTIONARY)
    payload = again.compress(body) + again.flush()
    return container.MAGIC + zlib.crc32(payload).to_bytes(4, "little") + payload


@pytest.mark.parametrize("kind", ["unigram", "prior"])
def test_mutated_members_behind_a_valid_crc_raise_only_vqtool_errors(
    kind: str, tmp_path: Path
) -> None:
    """The CRC-32 stops a byte flip in a file; a container built around changed members (as a
    tool could write) still meets one line of error or reads codes that pass their checks."""
    prior = golden_prior()
    write_codes(tmp_path / "c.vqc", golden_code_file(), True, None if kind == "unigram" else prior)
    body = _body((tmp_path / "c.vqc").read_bytes())
    rng = np.random.default_rng(1)
    path = tmp_path / "m.vqc"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(300):
        mutated = bytearray(body)
        at = int(rng.integers(0, len(mutated)))
        if rng.random() < 0.7:
            mutated[at] ^= 1 << int(rng.integers(0, 8))
        else:
            del mutated[at:]
        path.write_bytes(_packed(bytes(mutated)))
        try:
            code_file = read_codes(path, prior if kind == "prior" else None)
        except (WorkError, UsageError) as exc:
            assert exc.line().startswith("error: ") and "\n" not in exc.line()
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        assert code_file.codes.shape == golden_code_file().codes.shape
    assert outcomes["refused"] > 200, outcomes


def test_a_container_whose_first_member_is_not_the_header_is_refused(tmp_path: Path) -> None:
    write_codes(tmp_path / "c.vqc", golden_code_file(), compress=True)
    arrays = code_arrays(tmp_path / "c.vqc")
    names_first = {"names": arrays.pop("names"), **arrays}
    stream = names_first.pop("stream")
    (tmp_path / "bad.vqc").write_bytes(container.pack(names_first | {"stream": stream}))
    with pytest.raises(WorkError, match="not a vqtool code file"):
        read_codes(tmp_path / "bad.vqc")
