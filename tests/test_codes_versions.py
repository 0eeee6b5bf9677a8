"""Every code file version vqtool has written, pinned by a golden file each (tests/golden/;
VQTOOL_REGEN_GOLDEN=1 rewrites them): each still reads to the codes it was written from, and
writing those codes again gives the same bytes, so a file of images of one size stays exactly
as compact as before."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import code_arrays
from test_codes import assert_same, golden_code_file

from vqtool.codes.vqc import CodeFile, describe_codes, read_codes, write_codes

GOLDEN = Path(__file__).parent / "golden"


def golden_staged_file() -> CodeFile:
    """The version 1 golden file's images with codes of 2 residual stages."""
    one = golden_code_file()
    second = (one.codes.astype(np.int64) * 5 + 11) % 512
    codes = np.stack([one.codes, second.astype(np.uint16)], axis=1)  # (3, 2, 2, 3)
    return CodeFile(**{**one.__dict__, "codes": codes, "version": 3})


def golden_mixed_file(stages: int | None = None) -> CodeFile:
    """Images of three grids, interleaved (versions 5 and 6): 2x3, 2x2, 2x3 and 4x1 codes."""
    one = golden_code_file()
    sizes = np.array([[8, 12], [5, 5], [7, 9], [16, 4]], np.int32)
    shapes = [(2, 3), (2, 2), (2, 3), (4, 1)]
    count = sum(h * w for h, w in shapes) * (stages or 1)
    flat = (np.arange(count, dtype=np.int64) * 37 % 512).astype(np.uint16)
    parts, start = [], 0
    for h, w in shapes:
        shape = (h, w) if stages is None else (stages, h, w)
        parts.append(flat[start : start + math.prod(shape)].reshape(shape))
        start += math.prod(shape)
    return CodeFile(
        **{**one.__dict__, "codes": tuple(parts), "names": ("a", "b/c", "d", "e"),
           "sizes": sizes, "image_size": None}
    )  # fmt: skip


# file name -> (version, the codes it holds, written compressed). Compressed files are written
# in the compact container (vqtool.codes.container); the zips that vqtool wrote for them before
# are EARLIER: they still read, and hold the same arrays as today's files.
GOLDENS: dict[str, tuple[int, Callable[[], CodeFile], bool]] = {
    "codes-v2-unigram-compact.vqc": (2, golden_code_file, True),
    "codes-v3.vqc": (3, golden_staged_file, False),
    "codes-v4-unigram-compact.vqc": (4, golden_staged_file, True),
    "codes-v5.vqc": (5, golden_mixed_file, False),
    "codes-v5-stages.vqc": (5, lambda: golden_mixed_file(2), False),
    "codes-v6-unigram-compact.vqc": (6, golden_mixed_file, True),
    "codes-v6-unigram-stages-compact.vqc": (6, lambda: golden_mixed_file(2), True),
}
EARLIER: dict[str, str] = {  # a zip of an earlier vqtool -> today's file of the same codes
    "codes-v2-unigram.vqc": "codes-v2-unigram-compact.vqc",
    "codes-v4-unigram.vqc": "codes-v4-unigram-compact.vqc",
    "codes-v6-unigram.vqc": "codes-v6-unigram-compact.vqc",
    "codes-v6-unigram-stages.vqc": "codes-v6-unigram-stages-compact.vqc",
}


def assert_same_codes(a: CodeFile, b: CodeFile) -> None:
    """assert_same, for codes of one grid or of several."""
    if isinstance(a.codes, np.ndarray) or isinstance(b.codes, np.ndarray):
        assert_same(a, b)
        return
    assert a.header() == b.header() and a.names == b.names
    assert np.array_equal(a.sizes, b.sizes) and a.sizes.dtype == b.sizes.dtype
    assert len(a.codes) == len(b.codes)
    for x, y in zip(a.codes, b.codes, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden_file_of_each_version_reads_and_is_written_again_byte_for_byte(
    name: str, tmp_path: Path
) -> None:
    version, code_file, compress = GOLDENS[name]
    path = GOLDEN / name
    if os.environ.get("VQTOOL_REGEN_GOLDEN") == "1":
        write_codes(path, code_file(), compress=compress)
    assert describe_codes(path).version == version
    assert_same_codes(read_codes(path), code_file())
    write_codes(tmp_path / name, code_file(), compress=compress)
    assert (tmp_path / name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", sorted(EARLIER))
def test_a_compressed_zip_of_an_earlier_vqtool_reads_to_todays_arrays(name: str) -> None:
    version, code_file, _ = GOLDENS[EARLIER[name]]
    assert (GOLDEN / name).read_bytes().startswith(b"PK")
    assert describe_codes(GOLDEN / name).version == version
    assert_same_codes(read_codes(GOLDEN / name), code_file())
    earlier, today = code_arrays(GOLDEN / name), code_arrays(GOLDEN / EARLIER[name])
    assert earlier.keys() == today.keys()
    for key, array in earlier.items():
        assert np.array_equal(array, today[key]), key


def test_the_golden_version_5_file_is_what_its_documented_layout_says() -> None:
    with np.load(GOLDEN / "codes-v5-stages.vqc", allow_pickle=False) as npz:
        header = json.loads(str(npz["header"]))
        flat, sizes = npz["codes"], npz["sizes"]
    assert header["version"] == 5 and header["stages"] == 2 and "image_size" not in header
    assert flat.dtype == np.dtype("<u2") and flat.shape == (2 * (6 + 4 + 6 + 4),)
    grids = -(-sizes // header["downsample"])  # each image's size padded, over the factor
    first = flat[: 2 * grids[0, 0] * grids[0, 1]].reshape(2, *grids[0])  # image 0, (S, h, w)
    assert np.array_equal(first, golden_mixed_file(2).codes[0])


def test_a_file_of_one_grid_is_never_written_as_version_5_or_6(tmp_path: Path) -> None:
    one = golden_mixed_file().take(np.array([0, 2]))  # both 2x3: one array, an image_size
    assert isinstance(one.codes, np.ndarray) and one.image_size == (8, 12)
    for compress, version in ((False, 1), (True, 2)):
        write_codes(tmp_path / "one.vqc", one, compress=compress)
        assert describe_codes(tmp_path / "one.vqc").version == version
