"""One code file of images of different sizes, each with its own grid (versions 5 and 6):
encode and roundtrip of a folder of three sizes without --size, decode back at each image's own
size with the pixels of each size encoded on its own, the prior coding a grid size at a time,
and damaged files refused with one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    KIND_STAGES,
    MIXED_SIZES,
    KindRuns,
    code_arrays,
    decoded_pngs,
    make_sized_folder,
    one_error_line,
    save_code_arrays,
)
from PIL import Image
from test_codes import fuzz_reads
from typer.testing import CliRunner

from vqtool import codes_to_tokens
from vqtool.cli import app
from vqtool.codes.ratedistortion import psnr_per_image
from vqtool.codes.vqc import CodeFile, read_codes, write_codes
from vqtool.errors import WorkError
from vqtool.prior.load import load_coding_prior

runner = CliRunner()
FACTOR = {"ema": 4, "rvq": 4, "ds8": 8}
K = 32  # codes per stage of the tiny runs


def invoke(*args: str | Path | int) -> Any:  # click's Result
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str | Path | int) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def grid(size: tuple[int, int], factor: int) -> tuple[int, int]:
    return -(-size[0] // factor), -(-size[1] // factor)


def by_size(folder: Path, sizes: dict[str, tuple[int, int]], into: Path) -> list[Path]:
    """Copies of `folder`'s PNGs in a folder per size, below `into`: each size on its own."""
    folders = []
    for name, (height, width) in sizes.items():
        target = into / f"{height}x{width}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"{name}.png", target / f"{name}.png")
        if target not in folders:
            folders.append(target)
    return folders


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("kind", list(FACTOR))
def test_a_folder_of_three_sizes_decodes_each_at_its_own_size_as_each_size_alone(
    kind_runs: KindRuns, kind: str, tmp_path: Path
) -> None:
    run, factor, stages = kind_runs[kind], FACTOR[kind], KIND_STAGES[kind]
    photos = make_sized_folder(tmp_path / "photos", MIXED_SIZES)
    result = ok("encode", run, photos, "-o", "raw.vqc")
    assert "4 images of 3 sizes, each padded to a multiple of" in " ".join(result.output.split())
    ok("encode", run, photos, "-o", "unigram.vqc", "--compress")
    raw, unigram = read_codes(tmp_path / "raw.vqc"), read_codes(tmp_path / "unigram.vqc")
    assert raw.image_size is None and isinstance(raw.codes, tuple)
    expected = [grid(size, factor) for size in MIXED_SIZES.values()]
    assert [part.shape[-2:] for part in raw.codes] == expected
    assert all(part.ndim == (3 if stages > 1 else 2) for part in raw.codes)
    assert all(np.array_equal(a, b) for a, b in zip(raw.codes, unigram.codes, strict=True))
    for name, version, coding in (("raw", 5, "raw"), ("unigram", 6, "unigram")):
        facts = json.loads(ok("inspect", f"{name}.vqc", "--json", "-").stdout)
        assert (facts["version"], facts["coding"], facts["stages"]) == (version, coding, stages)
        assert facts["padded_size"] is None and facts["codes_per_image"] is None
        assert [(s["height"], s["width"], s["images"]) for s in facts["sizes"]] == [
            (32, 32, 2), (13, 27, 1), (20, 36, 1)
        ]  # fmt: skip
        codes = sum(math.prod(g) for g in expected) / 4
        assert facts["uniform_bits_per_image"] == stages * codes * math.log2(K)
        ok("decode", run, f"{name}.vqc", "-o", f"out-{name}")
    mixed = decoded_pngs(tmp_path / "out-raw")
    assert mixed == decoded_pngs(tmp_path / "out-unigram")
    for name, (height, width) in MIXED_SIZES.items():
        assert pixels(tmp_path / "out-raw" / f"{name}.png").shape == (height, width, 3)
    # each size encoded into a file of its own (versions 1 to 4) decodes to the same PNGs
    alone: dict[str, bytes] = {}
    for folder in by_size(photos, MIXED_SIZES, tmp_path / "alone"):
        ok("encode", run, folder, "-o", f"{folder.name}.vqc")
        assert read_codes(tmp_path / f"{folder.name}.vqc").image_size is not None
        ok("decode", run, f"{folder.name}.vqc", "-o", f"out-{folder.name}")
        alone |= decoded_pngs(tmp_path / f"out-{folder.name}")
    assert alone == mixed
    # roundtrip measures the PNG decode writes, each image at its own size and grid
    facts = json.loads(ok("roundtrip", run, photos, "-o", "rt.png", "--json", "-").stdout)
    assert facts["codes_per_image"] is None and facts["images"] == 4
    for record, size in zip(facts["per_image"], MIXED_SIZES.values(), strict=True):
        assert (record["height"], record["width"]) == size
        original = pixels(photos / f"{record['name']}.png")
        decoded = pixels(tmp_path / "out-raw" / f"{record['name']}.png")
        assert record["psnr"] == pytest.approx(psnr_per_image(original[None], decoded[None])[0])
        assert record["raw_bits"] == stages * math.prod(grid(size, factor)) * math.log2(K)
    with Image.open(tmp_path / "rt.png") as figure:
        assert figure.size[0] > 600


def test_size_still_makes_one_size_and_picks_of_one_grid_are_one_array(
    kind_runs: KindRuns, tmp_path: Path
) -> None:
    run = kind_runs["ema"]
    photos = make_sized_folder(tmp_path / "photos", MIXED_SIZES)
    ok("encode", run, photos, "-o", "sized.vqc", "--size", "24x24")
    sized = read_codes(tmp_path / "sized.vqc")
    assert sized.image_size == (24, 24) and sized.codes.shape == (4, 6, 6)
    ok("encode", run, photos, "-o", "m.vqc")
    result = ok("inspect", "m.vqc")
    assert "each image's own size, to a multiple of 4" in " ".join(result.output.split())
    result = ok("decode", run, "m.vqc", "-o", "picked", "--names", "[ad]", "--json", "-")
    assert json.loads(result.stdout)["images"] == 2
    assert sorted(decoded_pngs(tmp_path / "picked")) == ["a.png", "d.png"]
    ok("decode", run, "m.vqc", "-o", "first", "--first", "3", "--grid", "sheet.png")
    assert sorted(decoded_pngs(tmp_path / "first")) == ["a.png", "b.png", "c.png"]
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert min(sheet.size) > 64
    picked = read_codes(tmp_path / "m.vqc").take(np.array([3, 0]))
    assert picked.image_size == (32, 32) and picked.codes.shape == (2, 8, 8)
    assert picked.names == ("d", "a")


@pytest.mark.parametrize("kind", list(FACTOR))
def test_the_prior_codes_each_grid_size_as_a_file_of_that_size_alone(
    kind_runs: KindRuns, kind: str, tmp_path: Path
) -> None:
    run = kind_runs[kind]
    photos = make_sized_folder(tmp_path / "photos", MIXED_SIZES, seed=5)
    ok("encode", run, photos, "-o", "p.vqc", "--prior", run / "prior")
    ok("encode", run, photos, "-o", "raw.vqc")
    arrays = members(tmp_path / "p.vqc")
    header, stream = header_of(arrays), arrays["stream"]
    assert (header["version"], header["coding"]) == (6, "exact")
    assert len(arrays["chunks"]) == 3  # a chunk for each grid: a and d's, b's, c's
    result = ok("decode", run, "p.vqc", "-o", "out-prior")  # the prior found inside the run
    assert "note: decoding with the prior" in result.output
    ok("decode", run, "raw.vqc", "-o", "out-raw")
    assert decoded_pngs(tmp_path / "out-prior") == decoded_pngs(tmp_path / "out-raw")
    # each grid's images coded alone make the same stream, group after group in the order of
    # their first image: a and d (32x32), then b, then c
    alone = []
    for names in ("ad", "b", "c"):
        files = [photos / f"{name}.png" for name in names]
        ok("encode", run, *files, "-o", f"{names}.vqc", "--prior", run / "prior")
        alone.append(members(tmp_path / f"{names}.vqc")["stream"])
    assert np.array_equal(np.concatenate(alone), stream)
    # roundtrip's prior bits: each image's in its own grid's group, as coded alone
    facts = json.loads(ok("roundtrip", run, photos, "-o", "rt.png", "--json", "-",
                          "--prior", run / "prior").stdout)  # fmt: skip
    bits = {r["name"]: r["prior_bits"] for r in facts["per_image"]}
    for names in ("ad", "b"):
        files = [photos / f"{name}.png" for name in names]
        alone_facts = json.loads(ok("roundtrip", run, *files, "-o", f"{names}.png", "--json",
                                    "-", "--prior", run / "prior").stdout)  # fmt: skip
        assert [bits[name] for name in names] == [r["prior_bits"] for r in alone_facts["per_image"]]
    prior = load_coding_prior(run / "prior")
    assert read_codes(tmp_path / "p.vqc", prior).mixed


# A file of three grids (K = 32, one image each and two of 2x3), and what damages it.


def mixed_file(stages: int | None = None) -> CodeFile:
    sizes = np.array([[8, 12], [5, 5], [7, 9], [16, 4]], np.int32)  # grids 2x3, 2x2, 2x3, 4x1
    rng = np.random.default_rng(3)
    shapes = [(-(-h // 4), -(-w // 4)) for h, w in sizes.tolist()]
    parts = tuple(
        rng.integers(0, 32, shape if stages is None else (stages, *shape)).astype(np.uint16)
        for shape in shapes
    )
    return CodeFile(
        codes=parts, names=("a", "b", "c", "d"), sizes=sizes, checkpoint="ab" * 32,
        num_embeddings=32, embedding_dim=8, image_size=None,
    )  # fmt: skip


def members(path: Path) -> dict[str, np.ndarray]:
    return code_arrays(path)


def header_of(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    header = arrays["header"]
    return dict(json.loads(header.tobytes() if header.dtype == np.uint8 else str(header[()])))


def with_header(arrays: dict[str, np.ndarray], **changes: Any) -> dict[str, np.ndarray]:
    header = json.dumps(header_of(arrays) | changes)
    if arrays["header"].dtype == np.uint8:
        return {**arrays, "header": np.frombuffer(header.encode(), np.uint8)}
    return {**arrays, "header": np.array(header)}


DAMAGES: dict[str, tuple[bool, Any, str]] = {  # name -> (compressed, change, message)
    "v5 with an image_size": (False, lambda a: with_header(a, image_size=[8, 12]), "keys"),
    "v5 without stages": (
        False,
        lambda a: {
            **a,
            "header": np.array(
                json.dumps({k: v for k, v in header_of(a).items() if k != "stages"})
            ),
        },  # fmt: skip
        "keys",
    ),
    "v5 stages 0": (False, lambda a: with_header(a, stages=0), "stages"),
    "v5 a size of another grid": (
        False,
        lambda a: {**a, "sizes": np.array([[8, 12], [5, 5], [7, 9], [16, 8]], np.int32)},
        "sizes call for",
    ),
    "v5 one grid for all": (
        False,
        lambda a: {**a, "sizes": np.array([[8, 12], [8, 9], [7, 9], [5, 12]], np.int32)},
        "share one grid",
    ),
    "v5 a size of 0": (
        False,
        lambda a: {**a, "sizes": np.array([[8, 12], [0, 5], [7, 9], [16, 4]], np.int32)},
        "less than 1 pixel",
    ),
    "v5 sizes of 3 images": (
        False,
        lambda a: {**a, "sizes": np.array([[8, 12], [5, 5], [7, 9]], np.int32)},
        "sizes call for",
    ),
    "v5 codes as a grid": (
        False,
        lambda a: {**a, "codes": a["codes"].reshape(2, -1)},
        "1-d uint16",
    ),
    "v6 sizes of another grid": (
        True,
        lambda a: {
            **a,
            "sizes": np.array([[1, 8, 12], [1, 5, 5], [1, 7, 9], [1, 16, 8]], np.int32),
        },
        "frequencies do not count",
    ),
    "v6 with an image_size": (True, lambda a: with_header(a, image_size=[8, 12]), "keys"),
    "v6 one digest for two stages": (
        True,
        lambda a: with_header(a, codes_sha256=header_of(a)["codes_sha256"][0]),
        "one digest per stage",
    ),
    "v6 float prior coding": (
        True,
        lambda a: with_header(a, coding="prior", prior="cd" * 32),
        "float prior",
    ),
    "v6 sizes of one grid": (
        True,
        lambda a: {**a, "sizes": np.array([[4, 8, 12]], np.int32)},
        "share one grid",
    ),
    "v6 a flipped word": (
        True,
        lambda a: {
            **a,
            "stream": a["stream"] ^ np.array([0] * (len(a["stream"]) - 1) + [1 << 7], np.uint32),
        },
        "damaged or was changed",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_file_of_several_grids_is_refused_with_one_line(
    case: str, tmp_path: Path, kind_runs: KindRuns
) -> None:
    compressed, change, message = DAMAGES[case]
    good = tmp_path / "good.vqc"
    write_codes(good, mixed_file(None if case.startswith("v5") else 2), compress=compressed)
    path = tmp_path / "bad.vqc"
    save_code_arrays(path, change(members(good)))
    with pytest.raises(WorkError, match=message):
        read_codes(path)
    for args in (["inspect", path], ["decode", kind_runs["ema"], path, "-o", "out"]):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert message in one_error_line(result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("stages", "compress"), [(None, False), (2, True)])
def test_fuzzed_files_of_several_grids_raise_only_vqtool_errors(
    stages: int | None, compress: bool, tmp_path: Path
) -> None:
    write_codes(tmp_path / "valid.vqc", mixed_file(stages), compress=compress)
    valid = (tmp_path / "valid.vqc").read_bytes()

    def check(code_file: CodeFile) -> None:
        assert all(int(part.max()) < 32 for part in code_file.codes)

    outcomes = fuzz_reads(valid, tmp_path / "fuzz.vqc", 300, read_codes, check)
    assert outcomes["refused"] > 150, outcomes


def test_the_prior_refuses_to_train_or_evaluate_on_several_grids(
    kind_runs: KindRuns, tmp_path: Path
) -> None:
    shutil.copytree(kind_runs["ema"], tmp_path / "ema")
    run = tmp_path / "ema"
    photos = make_sized_folder(tmp_path / "photos", MIXED_SIZES)
    (run / "prior" / "codes-test.vqc").unlink()
    ok("encode", run, photos, "-o", run / "prior" / "codes-test.vqc")
    result = invoke("evaluate", run / "prior")
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert (
        "the prior trains on grids of one size; this code file holds images of 3 grid sizes" in line
    )


def test_codes_to_tokens_gives_each_image_its_tokens_for_several_grids() -> None:
    code_file = mixed_file(2)
    tokens = codes_to_tokens(code_file.codes, 32)
    assert isinstance(tokens, tuple) and len(tokens) == 4
    for part, image_tokens in zip(code_file.codes, tokens, strict=True):
        assert np.array_equal(image_tokens, codes_to_tokens(part[None], 32)[0])
        assert image_tokens.shape == (2 * part.shape[1], part.shape[2])
    groups = code_file.groups()
    assert [(g.grid, g.indices.tolist()) for g in groups] == [
        ((2, 3), [0, 2]), ((2, 2), [1]), ((4, 1), [3])
    ]  # fmt: skip
    with pytest.raises(ValueError, match="3 grid sizes"):
        code_file.one_grid()
