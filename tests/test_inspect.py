"""`vqtool inspect`: what a code file holds, without a model; damaged files refused with
decode's own lines, and a truncated file called damaged, not "not a zip file"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line
from test_codes import FINGERPRINT, HOSTILE, _arrays, _savez, golden_code_file
from test_entropy import random_prior
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.vqc import describe_codes, prior_fingerprint, write_codes
from vqtool.vq.load import load_model

runner = CliRunner()


def inspect(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, ["inspect", *(str(a) for a in args)])


def test_inspect_help_has_an_example() -> None:
    result = runner.invoke(app, ["inspect", "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "vqtool inspect" in result.output
    assert "height x width" in result.output


def test_a_raw_file_in_words(tmp_path: Path) -> None:
    write_codes(tmp_path / "raw.vqc", golden_code_file())
    result = inspect("raw.vqc")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "made by the checkpoint" in out and "0123456789ab..." in out
    assert FINGERPRINT not in out  # shortened on the terminal
    assert "raw (uint16 codes, not compressed)" in out
    assert "image sizes (HxW)" in out
    assert "8x12 (1 image); 7x12 (1 image); 5x9 (1 image)" in out
    assert "padded to (HxW)" in out and "codes per image (HxW)" in out
    assert "2x3 of K = 512 (D = 64)" in out
    assert "cat/0001 ... cifar10-test-00042" in out
    assert f"{(tmp_path / 'raw.vqc').stat().st_size:,} bytes" in out
    assert result.stderr == ""


def test_json_names_height_and_width_and_keeps_whole_fingerprints(tmp_path: Path) -> None:
    write_codes(tmp_path / "raw.vqc", golden_code_file())
    result = inspect("raw.vqc", "--json", "-")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)  # stdout holds the JSON alone
    size = (tmp_path / "raw.vqc").stat().st_size
    assert facts["file"] == "raw.vqc" and facts["format"] == "vqtool-codes"
    assert facts["version"] == 1 and facts["coding"] == "raw" and facts["prior"] is None
    assert facts["checkpoint"] == FINGERPRINT and facts["images"] == 3
    grid = {"height": 2, "width": 3}  # each size's codes: all pad to 8x12
    assert facts["sizes"] == [
        {"height": 8, "width": 12, "images": 1, "codes_per_image": grid},
        {"height": 7, "width": 12, "images": 1, "codes_per_image": grid},
        {"height": 5, "width": 9, "images": 1, "codes_per_image": grid},
    ]
    assert facts["padded_size"] == {"height": 8, "width": 12}
    assert facts["codes_per_image"] == {"height": 2, "width": 3}
    assert facts["file_bytes"] == size and facts["bits_per_image"] == size * 8 / 3
    assert facts["payload_bytes"] == 18 * 2  # uint16 codes
    assert facts["uniform_bits_per_image"] == 6 * 9  # 2x3 codes, log2 512 bits each
    assert facts["stream_checked"] is True
    assert inspect("raw.vqc", "--json", "facts.json").exit_code == 0
    assert json.loads((tmp_path / "facts.json").read_text()) == facts


def test_compressed_files_name_their_coding_and_prior(tmp_path: Path) -> None:
    code_file = golden_code_file()
    prior = random_prior(512, (2, 3), vq_fingerprint=code_file.checkpoint)
    write_codes(tmp_path / "u.vqc", code_file, compress=True)
    write_codes(tmp_path / "p.vqc", code_file, prior=prior)

    unigram = describe_codes(tmp_path / "u.vqc")
    assert (unigram.coding, unigram.prior, unigram.version) == ("unigram", None, 2)
    assert unigram.stream_checked and unigram.images == 3
    assert prior_fingerprint(tmp_path / "u.vqc") is None

    result = inspect("p.vqc")
    assert result.exit_code == 0, result.output
    assert "exact (range-coded with the prior's exact coding model" in result.stdout
    assert f"{prior.fingerprint[:12]}..." in result.stdout
    assert f"{str(prior.exact_fingerprint)[:12]}..." in result.stdout
    assert "not decoded" in result.stderr and "--prior P" in result.stderr
    facts = json.loads(inspect("p.vqc", "--json", "-").stdout)
    assert facts["coding"] == "exact" and facts["prior"] == prior.fingerprint
    assert facts["coding_model"] == prior.exact_fingerprint
    assert facts["stream_checked"] is False
    assert facts["payload_bytes"] < facts["file_bytes"]
    assert prior_fingerprint(tmp_path / "p.vqc") == prior.fingerprint


def test_many_sizes_are_counted_after_the_first_few(tmp_path: Path) -> None:
    sizes = np.array([[8, 12], [7, 12], [6, 12], [5, 12], [5, 11], [5, 10], [8, 12]], np.int32)
    code_file = golden_code_file()
    many = type(code_file)(
        codes=np.zeros((7, 2, 3), np.uint16),
        names=tuple(f"img{i}" for i in range(7)),
        sizes=sizes,
        checkpoint=code_file.checkpoint,
        num_embeddings=512,
        embedding_dim=64,
        image_size=(8, 12),
    )
    write_codes(tmp_path / "many.vqc", many)
    result = inspect("many.vqc")
    assert result.exit_code == 0, result.output
    assert "8x12 (2 images)" in result.stdout and "and 2 more sizes" in result.stdout


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda data: data[:700], "it is damaged or truncated"),
        (lambda data: data[: len(data) // 2], "it is damaged or truncated"),
        (lambda data: data[:-30], "it is damaged or truncated"),
        (lambda data: b"", "it is empty"),
        (lambda data: b"hello, world\n" * 20, "it is not a vqtool code file"),
    ],
    ids=["cut at 700 bytes", "cut in half", "end cut off", "empty", "not a zip"],
)
def test_a_cut_file_is_called_damaged_without_the_zip_readers_words(
    make, reason: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_codes(tmp_path / "good.vqc", golden_code_file())
    (tmp_path / "bad.vqc").write_bytes(make((tmp_path / "good.vqc").read_bytes()))
    result = inspect("bad.vqc")
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert line.startswith(f"error: not a readable code file: {reason} (bad.vqc)"), line
    assert "zip file" not in line and "magic" not in line.lower()


def test_a_missing_file_and_a_bad_option(tmp_path: Path) -> None:
    result = inspect("nope.vqc")
    assert result.exit_code == 2 and "no such code file" in one_error_line(result.output)
    result = inspect()
    assert result.exit_code == 2 and "CODES" in one_error_line(result.output)
    write_codes(tmp_path / "raw.vqc", golden_code_file())
    (tmp_path / "folder").mkdir()
    result = inspect("raw.vqc", "--json", "folder")
    assert result.exit_code == 2 and "is a folder" in one_error_line(result.output)


# Damaged files: inspect's line is decode's line, word for word. The cases that decode refuses
# only against its checkpoint (another fingerprint, a K that the checkpoint contradicts) are
# fine files to inspect.
AGAINST_THE_CHECKPOINT = ("other checkpoint", "K in header lies")


@pytest.mark.parametrize("case", sorted(set(HOSTILE) - set(AGAINST_THE_CHECKPOINT)))
def test_damaged_files_get_decodes_error_line(case: str, tmp_path: Path, trained_run: Path) -> None:
    make, exit_code, message = HOSTILE[case]
    made = make(_arrays(load_model(trained_run).fingerprint))
    path = tmp_path / "hostile.vqc"
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        _savez(path, made)
    inspected = inspect(path)
    decoded = runner.invoke(app, ["decode", str(trained_run), str(path), "-o", "out"])
    assert inspected.exit_code == decoded.exit_code == exit_code
    assert one_error_line(inspected.output) == one_error_line(decoded.output)
    assert message in one_error_line(inspected.output)


@pytest.mark.parametrize("case", AGAINST_THE_CHECKPOINT)
def test_files_only_a_checkpoint_refuses_are_inspected(
    case: str, tmp_path: Path, trained_run: Path
) -> None:
    make = HOSTILE[case][0]
    _savez(tmp_path / "f.vqc", make(_arrays(load_model(trained_run).fingerprint)))
    assert inspect("f.vqc").exit_code == 0
