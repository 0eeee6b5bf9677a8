"""vqtool.codes.vqc: the .vqc format, a golden file (VQTOOL_REGEN_GOLDEN=1 rewrites it), a fuzzed
reader, and hostile files through decode."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import one_error_line
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.pipeline import decode_file
from vqtool.codes.vqc import CodeFile, check_codes_for_model, read_codes, write_codes
from vqtool.errors import UsageError, VqtoolError, WorkError
from vqtool.vq.load import load_model

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden" / "codes-v1.vqc"
FINGERPRINT = "0123456789abcdef" * 4
GOLDEN_HEADER = (
    '{"format": "vqtool-codes", "version": 1, "checkpoint": "' + FINGERPRINT + '", '
    '"num_embeddings": 512, "embedding_dim": 64, "downsample": 4, "image_size": [8, 12]}'
)


def golden_code_file() -> CodeFile:
    return CodeFile(
        codes=(np.arange(18, dtype=np.uint16).reshape(3, 2, 3) * 37) % 512,
        names=("cat/0001", "café", "cifar10-test-00042"),
        sizes=np.array([[8, 12], [7, 12], [5, 9]], np.int32),
        checkpoint=FINGERPRINT,
        num_embeddings=512,
        embedding_dim=64,
        image_size=(8, 12),
    )


def assert_same(a: CodeFile, b: CodeFile) -> None:
    assert a.header() == b.header()
    assert a.names == b.names
    for x, y in ((a.codes, b.codes), (a.sizes, b.sizes)):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


def test_golden_file_pins_the_format() -> None:
    if os.environ.get("VQTOOL_REGEN_GOLDEN") == "1":
        write_codes(GOLDEN, golden_code_file())
    with np.load(GOLDEN, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["codes", "header", "names", "sizes"]
        assert npz["codes"].dtype == np.dtype("<u2") and npz["codes"].shape == (3, 2, 3)
        assert np.array_equal(npz["codes"], golden_code_file().codes)
        assert npz["names"].dtype == np.dtype("<U18")
        assert npz["names"].tolist() == ["cat/0001", "café", "cifar10-test-00042"]
        assert npz["sizes"].dtype == np.dtype("<i4")
        assert npz["sizes"].tolist() == [[8, 12], [7, 12], [5, 9]]
        assert npz["header"].shape == () and npz["header"].dtype.kind == "U"
        assert str(npz["header"]) == GOLDEN_HEADER
    assert_same(read_codes(GOLDEN), golden_code_file())


def test_write_read_round_trip_is_exact_and_byte_reproducible(tmp_path: Path) -> None:
    write_codes(tmp_path / "a.vqc", golden_code_file())
    write_codes(tmp_path / "b.vqc", golden_code_file())
    assert (tmp_path / "a.vqc").read_bytes() == (tmp_path / "b.vqc").read_bytes()
    assert_same(read_codes(tmp_path / "a.vqc"), golden_code_file())
    with zipfile.ZipFile(tmp_path / "a.vqc") as archive:  # stored, as documented
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    assert not list(tmp_path.glob(".*.tmp"))


def test_reader_accepts_a_compressed_copy(tmp_path: Path) -> None:
    write_codes(tmp_path / "a.vqc", golden_code_file())
    with (
        np.load(tmp_path / "a.vqc", allow_pickle=False) as npz,
        open(tmp_path / "z.vqc", "wb") as f,
    ):
        np.savez_compressed(f, **{k: npz[k] for k in npz.files})
    assert_same(read_codes(tmp_path / "z.vqc"), golden_code_file())


def test_writer_refuses_an_invalid_code_file(tmp_path: Path) -> None:
    good = golden_code_file()
    bad = CodeFile(**{**good.__dict__, "codes": good.codes.astype(np.int64)})
    with pytest.raises(ValueError, match="uint16"):
        write_codes(tmp_path / "bad.vqc", bad)
    assert not (tmp_path / "bad.vqc").exists()


def test_fingerprint_check() -> None:
    code_file = golden_code_file()
    check_codes_for_model(code_file, FINGERPRINT, 512, 64, "x")
    with pytest.raises(UsageError, match="another checkpoint"):
        check_codes_for_model(code_file, "f" * 64, 512, 64, "x")
    with pytest.raises(WorkError, match="K=512"):
        check_codes_for_model(code_file, FINGERPRINT, 256, 64, "x")


def _mutate(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind = mutation[0]
    if kind == "flip":
        out = bytearray(data)
        for position, bit in mutation[1]:
            out[position % len(out)] ^= 1 << bit
        return bytes(out)
    if kind == "truncate":
        return data[: mutation[1] % len(data)]
    if kind == "splice":
        position = mutation[1] % len(data)
        return data[:position] + mutation[2] + data[position + len(mutation[2]) :]
    position = mutation[1] % (len(data) + 1)
    return data[:position] + mutation[2] + data[position:]


MUTATIONS = st.one_of(
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=6),
    ),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("splice"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=40)),
)


def fuzz_reads(
    valid: bytes,
    target: Path,
    examples: int,
    read: Callable[[Path], CodeFile],
    check: Callable[[CodeFile], None],
) -> dict[str, int]:
    """`examples` byte-level mutations of a valid file's bytes, each read with `read`: either
    a file that passes `check`, or a one-line WorkError / UsageError, nothing else. Returns how
    many were read and refused."""
    outcomes = {"read": 0, "refused": 0}

    @settings(max_examples=examples, deadline=None, database=None)
    @given(mutation=MUTATIONS)
    def one(mutation: tuple[Any, ...]) -> None:
        target.write_bytes(_mutate(valid, mutation))
        try:
            code_file = read(target)
        except (WorkError, UsageError) as exc:
            assert exc.line().startswith("error: ") and "\n" not in exc.line()
            outcomes["refused"] += 1
            return
        outcomes["read"] += 1  # a change the format does not see (zip timestamps, padding)
        check(code_file)

    one()
    return outcomes


def test_fuzzed_files_raise_only_vqtool_errors(tmp_path: Path) -> None:
    """1,000 byte-level mutations of one valid file: read_codes either returns a valid file
    or raises WorkError / UsageError, nothing else."""
    write_codes(tmp_path / "valid.vqc", golden_code_file())

    def check(code_file: CodeFile) -> None:
        assert int(code_file.codes.max()) < code_file.num_embeddings
        assert code_file.codes.shape == (3, 2, 3)

    valid = (tmp_path / "valid.vqc").read_bytes()
    outcomes = fuzz_reads(valid, tmp_path / "fuzz.vqc", 1000, read_codes, check)
    print(f"fuzzed .vqc files: {outcomes}")  # shown with pytest -s
    assert sum(outcomes.values()) >= 1000, outcomes
    assert outcomes["refused"] > 500, outcomes


# Hostile files, each through `vqtool decode` against a real checkpoint: exit 1 or 2, one
# line, no traceback, nothing written.


def _arrays(fingerprint: str) -> dict[str, np.ndarray]:
    header = {
        "format": "vqtool-codes",
        "version": 1,
        "checkpoint": fingerprint,
        "num_embeddings": 32,
        "embedding_dim": 8,
        "downsample": 4,
        "image_size": [32, 32],
    }
    return {
        "header": np.array(json.dumps(header)),
        "codes": np.zeros((2, 8, 8), np.uint16),
        "names": np.array(["a", "b"]),
        "sizes": np.full((2, 2), 32, np.int32),
    }


def _with_header(arrays: dict[str, np.ndarray], **changes: Any) -> dict[str, np.ndarray]:
    header = json.loads(str(arrays["header"]))
    header.update(changes)
    return {**arrays, "header": np.array(json.dumps(header))}


def _savez(path: Path, arrays: dict[str, Any]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, **arrays)


def _valid_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _flip_in_codes(data: bytes) -> bytes:
    out = bytearray(data)
    at = data.index(b"codes.npy") + 200  # inside the codes member's payload
    out[at] ^= 0x04
    return bytes(out)


HOSTILE: dict[str, tuple[Any, int, str]] = {
    "empty file": (lambda a: b"", 1, "not a readable code file"),
    "truncated": (lambda a: _valid_bytes(a)[:700], 1, "not a readable code file"),
    "bit-flipped": (lambda a: _flip_in_codes(_valid_bytes(a)), 1, "CRC"),
    "not a zip": (lambda a: b"hello, world\n" * 20, 1, "not a readable code file"),
    "index >= K": (lambda a: {**a, "codes": np.full((2, 8, 8), 32, np.uint16)}, 1, "below K"),
    "float codes": (lambda a: {**a, "codes": np.zeros((2, 8, 8), np.float32)}, 1, "uint16"),
    "int64 codes": (lambda a: {**a, "codes": np.zeros((2, 8, 8), np.int64)}, 1, "uint16"),
    "flattened codes": (lambda a: {**a, "codes": np.zeros((2, 64), np.uint16)}, 1, "shape"),
    "other checkpoint": (lambda a: _with_header(a, checkpoint="f" * 64), 2, "another checkpoint"),
    "unknown version": (lambda a: _with_header(a, version=7), 1, "unsupported code file version"),
    "version 2 raw": (lambda a: _with_header(a, version=2), 1, "keys"),
    "other format": (lambda a: _with_header(a, format="npz"), 1, "not a vqtool code file"),
    "header not json": (lambda a: {**a, "header": np.array("{nope")}, 1, "not JSON"),
    "header extra key": (lambda a: _with_header(a, extra=1), 1, "keys"),
    "bad image_size": (lambda a: _with_header(a, image_size=[30, 32]), 1, "image_size"),
    "K in header lies": (lambda a: _with_header(a, num_embeddings=64), 1, "K=64"),
    "dotdot name": (lambda a: {**a, "names": np.array(["../../x", "b"])}, 1, "'..'"),
    "absolute name": (lambda a: {**a, "names": np.array(["/tmp/x", "b"])}, 1, "absolute"),
    "backslash name": (lambda a: {**a, "names": np.array(["..\\x", "b"])}, 1, "backslash"),
    "nul in name": (lambda a: {**a, "names": np.array(["a\x00b", "b"])}, 1, "control"),
    "empty part": (lambda a: {**a, "names": np.array(["a//b", "b"])}, 1, "empty"),
    "names not text": (lambda a: {**a, "names": np.array([1, 2])}, 1, "unicode"),
    "too few names": (lambda a: {**a, "names": np.array(["a"])}, 1, "1 names for 2"),
    "object names": (
        lambda a: {**a, "names": np.array(["a", "b"], dtype=object)},
        1,
        "Python objects",
    ),
    "object codes": (
        lambda a: {**a, "codes": np.array([None, 1], dtype=object)},
        1,
        "Python objects",
    ),
    "sizes int64": (lambda a: {**a, "sizes": np.full((2, 2), 32, np.int64)}, 1, "int32"),
    "sizes too big": (lambda a: {**a, "sizes": np.full((2, 2), 40, np.int32)}, 1, "pad"),
    "sizes zero": (lambda a: {**a, "sizes": np.zeros((2, 2), np.int32)}, 1, "pad"),
    "missing member": (lambda a: {k: v for k, v in a.items() if k != "sizes"}, 1, "holds"),
    "extra member": (lambda a: {**a, "labels": np.zeros(2)}, 1, "holds"),
    "no images": (
        lambda a: {
            **a,
            "codes": np.zeros((0, 8, 8), np.uint16),
            "names": np.array([], "<U1"),
            "sizes": np.zeros((0, 2), np.int32),
        },
        1,
        "no images",
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def fingerprint(trained_run: Path) -> str:
    return load_model(trained_run).fingerprint


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_code_files_fail_cleanly(
    case: str, tmp_path: Path, trained_run: Path, fingerprint: str
) -> None:
    make, exit_code, message = HOSTILE[case]
    made = make(_arrays(fingerprint))
    path = tmp_path / "hostile.vqc"
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        _savez(path, made)
    with pytest.raises(VqtoolError) as raised:
        decode_file(load_model(trained_run), path, tmp_path / "out")
    assert raised.value.exit_code == exit_code
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    result = runner.invoke(app, ["decode", str(trained_run), str(path), "-o", "out/deeper"])
    assert result.exit_code == exit_code, result.output
    assert message in one_error_line(result.output)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.vqc"]


def test_a_valid_hand_made_file_decodes(
    tmp_path: Path, trained_run: Path, fingerprint: str
) -> None:
    """The hostile cases differ from this one in one thing each."""
    _savez(tmp_path / "ok.vqc", _arrays(fingerprint))
    result = runner.invoke(app, ["decode", str(trained_run), "ok.vqc", "-o", "out"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_missing_code_file_is_a_usage_error(trained_run: Path) -> None:
    result = runner.invoke(app, ["decode", str(trained_run), "nope.vqc", "-o", "out"])
    assert result.exit_code == 2 and "no such code file" in result.output
