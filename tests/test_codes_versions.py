"""Every code file version vqtool has written, pinned by a golden file each (tests/golden/;
VQTOOL_REGEN_GOLDEN=1 rewrites them): each still reads to the codes it was written from, and
writing those codes again gives the same bytes, so a file of images of one size stays exactly
as compact as before."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_codes import assert_same, golden_code_file

from vqtool.codes.vqc import CodeFile, describe_codes, read_codes, write_codes

GOLDEN = Path(__file__).parent / "golden"


def golden_staged_file() -> CodeFile:
    """The version 1 golden file's images with codes of 2 residual stages."""
    one = golden_code_file()
    second = (one.codes.astype(np.int64) * 5 + 11) % 512
    codes = np.stack([one.codes, second.astype(np.uint16)], axis=1)  # (3, 2, 2, 3)
    return CodeFile(**{**one.__dict__, "codes": codes, "version": 3})


# version -> (file name, the codes it holds, written compressed)
GOLDENS = {
    2: ("codes-v2-unigram.vqc", golden_code_file, True),
    3: ("codes-v3.vqc", golden_staged_file, False),
    4: ("codes-v4-unigram.vqc", golden_staged_file, True),
}


@pytest.mark.parametrize("version", sorted(GOLDENS))
def test_golden_file_of_each_version_reads_and_is_written_again_byte_for_byte(
    version: int, tmp_path: Path
) -> None:
    name, code_file, compress = GOLDENS[version]
    path = GOLDEN / name
    if os.environ.get("VQTOOL_REGEN_GOLDEN") == "1":
        write_codes(path, code_file(), compress=compress)
    assert describe_codes(path).version == version
    assert_same(read_codes(path), code_file())
    write_codes(tmp_path / name, code_file(), compress=compress)
    assert (tmp_path / name).read_bytes() == path.read_bytes()
