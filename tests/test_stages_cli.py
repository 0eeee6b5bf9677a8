"""A run of residual stages end to end through the CLI: code files of every prefix of stages,
a prior over the stages, compressed files whose first stages decode alone, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import decoded_pngs, make_cifar_folder, one_error_line, write_tiny_profile
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.vqc import read_codes

runner = CliRunner()
STAGES = 3


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(run, its data, its prior): the tiny model with 3 residual stages, a tiny prior."""
    from vqtool.prior.train import train_prior
    from vqtool.profiles import load_prior_profile, load_profile
    from vqtool.vq.train import run_training

    root = tmp_path_factory.mktemp("staged")
    data = make_cifar_folder(root / "data")
    tiny = write_tiny_profile(root / "tiny.toml")
    run_training(load_profile(tiny, [f"model.stages={STAGES}"]), root / "run", data)
    prior = load_prior_profile("prior-small", ["train.steps=4", "train.eval_every=0",
                                               "prior.layers=1", "prior.width=32"])  # fmt: skip
    train_prior(root / "run", prior, root / "run" / "prior", data)
    return root / "run", data, root / "run" / "prior"


def test_every_prefix_of_a_prior_coded_file_decodes_as_the_raw_file(
    staged: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run, data, prior = staged
    assert invoke("encode", run, "cifar10:test:20", "-o", "raw.vqc", "--data-dir", data)[0] == 0
    code, output = invoke("encode", run, "cifar10:test:20", "-o", "p.vqc", "--data-dir", data,
                          "--prior", prior)  # fmt: skip
    assert code == 0, output
    assert read_codes(tmp_path / "raw.vqc").codes.shape == (20, STAGES, 8, 8)
    for n in range(1, STAGES + 1):
        assert invoke("decode", run, "raw.vqc", "-o", f"r{n}", "--stages", n)[0] == 0
        code, output = invoke("decode", run, "p.vqc", "-o", f"p{n}", "--stages", n,
                              "--prior", prior)  # fmt: skip
        assert code == 0, output
        assert decoded_pngs(tmp_path / f"r{n}") == decoded_pngs(tmp_path / f"p{n}")
    # more stages, finer pictures: the first stage alone differs from all of them
    assert decoded_pngs(tmp_path / "r1") != decoded_pngs(tmp_path / f"r{STAGES}")


def test_encode_stores_the_first_stages(staged: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run, data, _ = staged
    code, output = invoke("encode", run, "cifar10:test:5", "-o", "two.vqc", "--data-dir", data,
                          "--stages", 2)  # fmt: skip
    assert code == 0 and "2 stages of 8x8 codes" in output
    whole = invoke("encode", run, "cifar10:test:5", "-o", "all.vqc", "--data-dir", data)
    assert whole[0] == 0
    assert np.array_equal(
        read_codes(tmp_path / "two.vqc").codes, read_codes(tmp_path / "all.vqc").codes[:, :2]
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["encode", "cifar10:test:5", "-o", "x.vqc", "--stages", "0"], "--stages"),
        (["encode", "cifar10:test:5", "-o", "x.vqc", "--stages", str(STAGES + 1)], "stage"),
    ],
)
def test_stage_counts_outside_the_run_are_usage_errors(
    staged: tuple[Path, Path, Path], tmp_path: Path, args: list[str], expected: str
) -> None:
    run, data, _ = staged
    code, output = invoke(args[0], run, *args[1:], "--data-dir", data)
    assert code == 2 and expected in one_error_line(output)
    assert not (tmp_path / "x.vqc").exists()


def test_decoding_more_stages_than_stored_is_a_usage_error(
    staged: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run, data, _ = staged
    invoke("encode", run, "cifar10:test:5", "-o", "two.vqc", "--data-dir", data, "--stages", 2)
    code, output = invoke("decode", run, "two.vqc", "-o", "out", "--stages", 3)
    assert code == 2 and "hold 2 stages" in one_error_line(output)
    assert not (tmp_path / "out").exists()


def test_sampled_grids_hold_every_stage(staged: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run, _, prior = staged
    assert invoke("sample", prior, "-n", 3, "-o", "s.vqc", "--seed", 1)[0] == 0
    assert read_codes(tmp_path / "s.vqc").codes.shape == (3, STAGES, 8, 8)
    code, output = invoke("decode", run, "s.vqc", "-o", "s")
    assert code == 0, output
    assert len(decoded_pngs(tmp_path / "s")) == 3
