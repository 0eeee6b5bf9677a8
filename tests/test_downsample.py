"""model.downsample: 2, 4, 8 or 16 halvings of the sides; the default 4 is the seed's network,
bit for bit. Every command on a run of factor 8 is in tests/test_kinds.py (the kind "ds8")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import KindRuns, make_image_folder, one_error_line
from test_codes_compressed import members, save_members, with_header
from typer.testing import CliRunner

from vqtool.checkpoint import fingerprint
from vqtool.cli import app
from vqtool.codes.vqc import CodeFile, read_codes, write_codes
from vqtool.errors import UsageError, WorkError
from vqtool.models.config import ModelConfig
from vqtool.models.vqvae import VQVAE
from vqtool.profiles import load_profile

# The seed-0 fingerprints of default networks before model.downsample existed (commit 5f7040f).
BEFORE = {
    "ema": "65c22ba1be1a4c2d8db5580c1ba11cedd30e2aac1331499ce865646e25cf039d",
    "kaiming": "e98fe707de65bfa2b4c6838b6e449a5f9bed4ee01218666241749c3504d14b98",
    "rvq": "cca7487f4d06148964d0c05fb4091a7af79ca65b4696256dec9e38e8b19d872c",
}


@pytest.mark.parametrize(
    ("name", "cfg"),
    [
        ("ema", ModelConfig()),
        ("kaiming", ModelConfig(kaiming_init=True)),
        ("rvq", ModelConfig(stages=3)),
    ],
)
def test_the_default_factor_builds_the_same_network_as_before(name: str, cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    assert fingerprint(VQVAE(cfg).state_dict()) == BEFORE[name]


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_each_factor_gives_its_grid_and_decodes_back_to_the_image_size(factor: int) -> None:
    torch.manual_seed(0)
    model = VQVAE(ModelConfig(downsample=factor, num_hiddens=16, num_residual_hiddens=4)).eval()
    images = torch.rand(2, 3, 32, 48) - 0.5
    with torch.inference_mode():
        codes = model.encode(images)
        assert codes.shape == (2, 32 // factor, 48 // factor)
        assert model.decode(codes).shape == images.shape


def test_a_factor_outside_the_four_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--profile", "smoke", "--set", "model.downsample=3", "--run-dir", "R"]
    )
    assert result.exit_code == 2
    assert "model.downsample" in one_error_line(result.output)
    assert "one of 2, 4, 8, 16" in one_error_line(result.output)
    assert not (tmp_path / "R").exists()


def test_an_image_size_that_the_factor_does_not_divide_is_refused(tmp_path: Path) -> None:
    settings = [f"data.path={tmp_path}", "data.image_size=[40, 40]", "model.downsample=16"]
    with pytest.raises(UsageError, match="not a multiple of model.downsample"):
        load_profile("folder", settings)
    assert load_profile("folder", [*settings[:2], "model.downsample=8"]).model.downsample == 8


def _file(factor: int) -> CodeFile:
    grid = 32 // factor
    return CodeFile(
        codes=np.arange(3 * grid * grid, dtype=np.uint16).reshape(3, grid, grid) % 16,
        names=("a", "b", "c"),
        sizes=np.full((3, 2), 32, np.int32),
        checkpoint="c" * 64,
        num_embeddings=16,
        embedding_dim=4,
        downsample=factor,
        image_size=(32, 32),
    )


@pytest.mark.parametrize("compress", [False, True])
def test_a_code_file_keeps_its_factor(compress: bool, tmp_path: Path) -> None:
    write_codes(tmp_path / "f.vqc", _file(8), compress)
    back = read_codes(tmp_path / "f.vqc")
    assert back.downsample == 8 and back.codes.shape == (3, 4, 4)
    summary = CliRunner().invoke(app, ["inspect", str(tmp_path / "f.vqc"), "--json", "-"])
    assert json.loads(summary.stdout)["codes_per_image"] == {"height": 4, "width": 4}


@pytest.mark.parametrize("factor", [3, 8, True])
def test_a_header_whose_factor_does_not_fit_its_codes_is_damaged(
    factor: object, tmp_path: Path
) -> None:
    write_codes(tmp_path / "f.vqc", _file(4), True)
    save_members(tmp_path / "bad.vqc", with_header(members(tmp_path / "f.vqc"), downsample=factor))
    with pytest.raises(WorkError) as caught:
        read_codes(tmp_path / "bad.vqc")
    assert "\n" not in caught.value.line()


def test_an_image_smaller_than_one_code_is_one_line(kind_runs: KindRuns, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "small", ["a.png"], size=(6, 6))
    runner = CliRunner()
    run = str(kind_runs["ds8"])
    for extra in ([str(tmp_path / "small" / "a.png")], ["cifar10:test:2", "--size", "4x4"]):
        result = runner.invoke(
            app, ["encode", run, *extra, "-o", "x.vqc", "--data-dir", str(kind_runs.data)]
        )
        assert result.exit_code == 2, result.output
        assert "smaller than one code's 8x8 pixels" in one_error_line(result.output)
        assert not (tmp_path / "x.vqc").exists()
