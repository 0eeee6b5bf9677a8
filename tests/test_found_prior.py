"""`vqtool decode R FILE` without --prior, for a file compressed with a prior: the prior inside
R that has the file's fingerprint is found, used and named; without one, the error asks for
--prior as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import one_error_line
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.prior.load import find_prior, load_prior
from vqtool.prior.train import train_prior
from vqtool.profiles import load_prior_profile

runner = CliRunner()

# An unconditional prior (code files hold no classes) that trains in a moment.
CODING = [
    "prior.layers=1", "prior.width=32", "prior.heads=2", "train.steps=4", "train.batch_size=16",
    "train.warmup_steps=1", "train.log_every=2", "train.checkpoint_every=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_with_priors(
    trained_run: Path, trained_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the session's VQ run holding two priors: R/prior (trained with seed 1) and
    R/prior-coding (seed 0), plus a subfolder that is not a run."""
    run = tmp_path_factory.mktemp("found") / "run"
    shutil.copytree(trained_run, run)
    for folder, seed in (("prior", 1), ("prior-coding", 0)):
        profile = load_prior_profile("prior-coding", [*CODING, f"train.seed={seed}"])
        train_prior(run, profile, run / folder, trained_data_dir)
    (run / "decoded").mkdir()
    return run


def invoke(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [str(a) for a in args])


def encode_with(run: Path, prior: Path, data_dir: Path, out: str = "p.vqc") -> None:
    result = invoke("encode", run, "cifar10:test:6", "-o", out, "--data-dir", data_dir,
                    "--prior", prior)  # fmt: skip
    assert result.exit_code == 0, result.output


def test_find_prior_looks_in_r_prior_then_the_other_subfolders(run_with_priors: Path) -> None:
    for name in ("prior", "prior-coding"):
        fingerprint = load_prior(run_with_priors / name).fingerprint
        assert find_prior(run_with_priors, fingerprint) == run_with_priors / name
        assert find_prior(run_with_priors / "checkpoint.pt", fingerprint) == run_with_priors / name
    assert find_prior(run_with_priors, "f" * 64) is None


def test_decode_uses_the_prior_in_the_run_and_says_so(
    run_with_priors: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    encode_with(run_with_priors, run_with_priors / "prior-coding", trained_data_dir)
    result = invoke("decode", run_with_priors, "p.vqc", "-o", "found")
    assert result.exit_code == 0, result.output
    note = f"note: decoding with the prior {run_with_priors / 'prior-coding'}, which compressed"
    assert note in result.stderr
    explicit = invoke("decode", run_with_priors, "p.vqc", "-o", "given", "--prior",
                      run_with_priors / "prior-coding")  # fmt: skip
    assert explicit.exit_code == 0, explicit.output
    assert "note: decoding with the prior" not in explicit.stderr
    found = sorted(p.relative_to(tmp_path / "found") for p in (tmp_path / "found").rglob("*.png"))
    given = sorted(p.relative_to(tmp_path / "given") for p in (tmp_path / "given").rglob("*.png"))
    assert len(found) == 6 and found == given
    for name in found:
        assert (tmp_path / "found" / name).read_bytes() == (tmp_path / "given" / name).read_bytes()


def test_without_that_prior_in_the_run_decode_asks_for_it(
    run_with_priors: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    encode_with(run_with_priors, run_with_priors / "prior", trained_data_dir)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run_with_priors, elsewhere, ignore=shutil.ignore_patterns("prior*"))
    result = invoke("decode", elsewhere, "p.vqc", "-o", "out")
    assert result.exit_code == 2
    assert "pass --prior P" in one_error_line(result.output)
    assert not (tmp_path / "out").exists()
    # Raw and unigram files never look for a prior.
    result = invoke("encode", elsewhere, "cifar10:test:3", "-o", "u.vqc", "--compress",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke("decode", elsewhere, "u.vqc", "-o", "u")
    assert result.exit_code == 0 and "note:" not in result.stderr


def test_a_damaged_prior_in_the_run_is_passed_over(
    run_with_priors: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    encode_with(run_with_priors, run_with_priors / "prior-coding", trained_data_dir)
    run = tmp_path / "run"
    shutil.copytree(run_with_priors, run)
    (run / "prior" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = invoke("decode", run, "p.vqc", "-o", "out")
    assert result.exit_code == 0, result.output
    assert f"decoding with the prior {run / 'prior-coding'}" in result.stderr
