"""Prior runs: training over a VQ run's codes, resume after SIGKILL, evaluate, sample, plot,
compare, hostile checkpoints and bad requests (vqtool.prior.train and its commands)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import last_error_line, one_error_line, source_env, vqtool_limited, wait_for
from typer.testing import CliRunner

from vqtool.checkpoint import load_checkpoint
from vqtool.cli import app
from vqtool.codes.vqc import read_codes
from vqtool.data.cifar10 import CLASS_NAMES
from vqtool.errors import UsageError
from vqtool.prior.load import load_prior
from vqtool.prior.train import train_prior
from vqtool.profiles import load_prior_profile, load_profile

runner = CliRunner()

TINY_PRIOR = """\
# A very small prior for tests.
extends = "prior-small"
name = "tiny-prior"
description = "A very small prior for tests."

[prior]
layers = 1
width = 32
heads = 2
conditional = true

[train]
steps = 12
batch_size = 16
warmup_steps = 2
log_every = 4
checkpoint_every = 4
"""

SLOW_PRIOR = """\
extends = "tiny-prior.toml"

[train]
steps = 120
checkpoint_every = 20
log_every = 20
# Pinned: "auto" may pick another count for the uninterrupted run than for the killed one when
# other processes load the cores, and float sums then differ.
threads = 1
"""


def write_prior_profiles(folder: Path) -> Path:
    """tiny-prior.toml and slow-prior.toml (120 steps) in `folder`; returns the tiny one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-prior.toml").write_text(TINY_PRIOR)
    (folder / "slow-prior.toml").write_text(SLOW_PRIOR)
    return folder / "tiny-prior.toml"


def invoke(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def prior_run(trained_run: Path, trained_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A prior trained for 12 steps over the codes of the session's tiny VQ run."""
    root = tmp_path_factory.mktemp("prior")
    profile = load_prior_profile(write_prior_profiles(root))
    train_prior(trained_run, profile, root / "prior", trained_data_dir)
    return root / "prior"


def test_prior_run_folder_holds_the_codes_metrics_and_a_prior_checkpoint(
    prior_run: Path, trained_run: Path
) -> None:
    for name in ("profile.toml", "metrics.jsonl", "checkpoint.pt"):
        assert (prior_run / name).is_file(), name
    train_codes = read_codes(prior_run / "codes-train.vqc")
    vq = load_checkpoint(trained_run)
    assert train_codes.checkpoint == vq["fingerprint"] and train_codes.codes.shape[1:] == (8, 8)
    # A labelled dataset: each name starts with its class.
    assert train_codes.names[0].split("/")[0] in CLASS_NAMES
    records = [json.loads(line) for line in (prior_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert records[-1]["bits_per_code"] < records[0]["bits_per_code"] <= 5.5  # log2 32 = 5
    payload = load_checkpoint(prior_run, fmt="vqtool-prior")
    assert payload["vq"]["fingerprint"] == vq["fingerprint"]
    assert payload["threads"] >= 1  # kept for a bit-identical resume (vqtool.threads)
    assert load_prior(prior_run).vq.grid == (8, 8)


def test_evaluate_prior_gives_bits_beside_the_baselines(prior_run: Path) -> None:
    result = invoke("evaluate", prior_run, "--json", "-")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["uniform_bits_per_image"] == pytest.approx(64 * 5.0)
    assert 0 < metrics["bits_per_image"] == pytest.approx(metrics["bits_per_code"] * 64)
    assert metrics["unigram_bits_per_image"] <= metrics["uniform_bits_per_image"]
    written = json.loads((prior_run / "eval-test.json").read_text())
    assert written["bits_per_image"] == metrics["bits_per_image"]


def test_sample_then_decode_gives_pngs_and_the_same_seed_the_same_bytes(
    prior_run: Path, trained_run: Path, tmp_path: Path
) -> None:
    first = invoke("sample", prior_run, "-n", 6, "-o", tmp_path / "a.vqc", "--seed", 3)
    assert first.exit_code == 0, first.output
    again = invoke("sample", prior_run, "-n", 6, "-o", tmp_path / "b.vqc", "--seed", 3)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.vqc").read_bytes() == (tmp_path / "b.vqc").read_bytes()
    other = invoke("sample", prior_run, "-n", 6, "-o", tmp_path / "c.vqc", "--seed", 4)
    assert other.exit_code == 0
    assert (tmp_path / "a.vqc").read_bytes() != (tmp_path / "c.vqc").read_bytes()
    codes = read_codes(tmp_path / "a.vqc")
    assert (
        codes.names[0] == "sample-00001"
        and codes.checkpoint == load_prior(prior_run).vq_fingerprint
    )
    decoded = invoke("decode", trained_run, tmp_path / "a.vqc", "-o", tmp_path / "png")
    assert decoded.exit_code == 0, decoded.output
    assert len(list((tmp_path / "png").glob("*.png"))) == 6
    one_label = invoke("sample", prior_run, "-n", 2, "-o", tmp_path / "cat.vqc", "--label", "cat")
    assert one_label.exit_code == 0, one_label.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "0"], "-n must be at least 1"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--temperature", "-1"], "temperature must be > 0"),
        (["--top-k", "0"], "--top-k must be"),
        (["--label", "dragon"], "unknown label 'dragon'"),
    ],
)
def test_bad_sample_requests_exit_2_with_one_line_and_write_nothing(
    prior_run: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = invoke("sample", prior_run, "-o", tmp_path / "out.vqc", *args)
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result.output)
    assert not (tmp_path / "out.vqc").exists()


def test_a_vq_checkpoint_is_not_a_prior_and_back(
    prior_run: Path, trained_run: Path, tmp_path: Path
) -> None:
    as_prior = invoke("sample", trained_run, "-o", tmp_path / "x.vqc")
    assert as_prior.exit_code == 2
    assert "a VQ-VAE run" in one_error_line(as_prior.output)
    as_vq = invoke(
        "encode", prior_run / "checkpoint.pt", "cifar10:test:2", "-o", tmp_path / "y.vqc"
    )
    assert as_vq.exit_code == 2
    assert "a prior run" in one_error_line(as_vq.output)
    assert not (tmp_path / "x.vqc").exists() and not (tmp_path / "y.vqc").exists()


def _doctored(prior_run: Path, folder: Path, change) -> Path:  # noqa: ANN001
    """A copy of the prior run whose checkpoint payload went through `change`."""
    copy = folder / "doctored"
    shutil.copytree(prior_run, copy)
    payload = torch.load(copy / "checkpoint.pt", weights_only=True)
    torch.save(change(payload), copy / "checkpoint.pt")
    return copy


class Exploit:
    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("tampered weights", 1, "do not match its fingerprint"),
        ("code in the pickle", 1, "cannot read the checkpoint"),
        ("not a dict", 1, "not a vqtool checkpoint"),
        ("future version", 1, "unsupported checkpoint version"),
        ("truncated", 1, "cannot read the checkpoint"),
    ],
)
def test_hostile_prior_checkpoints_are_refused(
    prior_run: Path, tmp_path: Path, case: str, exit_code: int, message: str
) -> None:
    def tamper(payload: dict) -> dict:
        key = next(iter(payload["model"]))
        payload["model"][key] = payload["model"][key] + 1
        return payload

    changes = {
        "tampered weights": tamper,
        "code in the pickle": lambda p: {**p, "extra": Exploit()},
        "not a dict": lambda p: [p["step"]],
        "future version": lambda p: {**p, "version": 99},
        "truncated": lambda p: p,
    }
    folder = _doctored(prior_run, tmp_path, changes[case])
    if case == "truncated":
        data = (folder / "checkpoint.pt").read_bytes()
        (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    for command in (["sample", folder, "-o", tmp_path / "s.vqc"], ["evaluate", folder]):
        result = invoke(*command)
        assert result.exit_code == exit_code, result.output
        assert message in one_error_line(result.output)
        assert "pwned" not in result.output
    assert not (tmp_path / "s.vqc").exists()


def test_a_prior_of_another_vq_run_or_codes_of_another_model_are_refused(
    prior_run: Path, trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    # Another VQ run: the same tiny profile, another seed.
    from vqtool.vq.train import run_training

    other = tmp_path / "other-vq"
    run_training(
        load_profile(trained_run / "profile.toml", ["train.seed=1", "train.steps=10"]),
        other,
        trained_data_dir,
    )
    copy = tmp_path / "prior-copy"
    shutil.copytree(prior_run, copy)
    resumed = invoke(
        "prior", other, "--run-dir", copy, "--resume", "--set", "train.steps=20",
        "--data-dir", trained_data_dir,
    )  # fmt: skip
    assert resumed.exit_code == 2, resumed.output
    assert "another VQ checkpoint" in one_error_line(resumed.output)
    # A fresh prior folder holding code files of another model.
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(prior_run / "codes-train.vqc", stale / "codes-train.vqc")
    fresh = invoke(
        "prior", other, "--run-dir", stale, "--profile", prior_run / "profile.toml",
        "--data-dir", trained_data_dir,
    )  # fmt: skip
    assert fresh.exit_code == 2, fresh.output
    assert "another checkpoint" in one_error_line(fresh.output)
    assert not (stale / "checkpoint.pt").exists()


def test_library_refuses_a_prior_folder_with_a_checkpoint_unless_resuming(
    prior_run: Path, trained_run: Path, trained_data_dir: Path
) -> None:
    profile = load_prior_profile(prior_run / "profile.toml")
    with pytest.raises(UsageError, match="already holds a checkpoint"):
        train_prior(trained_run, profile, prior_run, trained_data_dir)


def test_prior_cli_refuses_a_vq_profile_and_a_bad_width(trained_run: Path) -> None:
    vq_profile = invoke("prior", trained_run, "--profile", "smoke")
    assert vq_profile.exit_code == 2
    assert "vq profile" in one_error_line(vq_profile.output)
    bad = invoke("prior", trained_run, "--profile", "prior-small", "--set", "prior.heads=5")
    assert bad.exit_code == 2
    assert "must divide prior.width" in one_error_line(bad.output)
    assert not (trained_run / "prior").exists()


def test_plot_and_compare_take_a_prior_run(
    prior_run: Path, trained_run: Path, tmp_path: Path
) -> None:
    plotted = invoke("plot", prior_run, "-o", tmp_path / "figures")
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "figures" / "loss.png").stat().st_size > 0
    assert (tmp_path / "figures" / "samples.png").stat().st_size > 0
    compared = invoke("compare", trained_run, prior_run, "--json", tmp_path / "runs.json")
    assert compared.exit_code == 0, compared.output
    rows = json.loads((tmp_path / "runs.json").read_text())
    assert [row["kind"] for row in rows] == ["vq", "prior"]


def prior_process(*args: str | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vqtool", "prior", *map(str, args)],
        env=source_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkill_then_resume_of_a_prior_is_bit_identical(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    write_prior_profiles(tmp_path)
    common = [
        trained_run,
        "--profile",
        tmp_path / "slow-prior.toml",
        "--data-dir",
        trained_data_dir,
    ]
    straight = prior_process(*common, "--run-dir", tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()  # type: ignore[union-attr]

    killed = prior_process(*common, "--run-dir", tmp_path / "killed")
    wait_for(tmp_path / "killed" / "checkpoint.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert load_checkpoint(tmp_path / "killed", fmt="vqtool-prior")["step"] < 120

    resumed = prior_process(*common, "--run-dir", tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()  # type: ignore[union-attr]
    a = load_checkpoint(tmp_path / "straight", fmt="vqtool-prior")
    b = load_checkpoint(tmp_path / "killed", fmt="vqtool-prior")
    assert b["step"] == 120
    assert a["fingerprint"] == b["fingerprint"]
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [20, 40, 60, 80, 100, 120]


def test_a_prior_codes_compressed_code_files_that_decode_like_raw_ones(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    profile = write_prior_profiles(tmp_path / "profiles")
    made = invoke(
        "prior", trained_run, "--profile", profile, "--set", "prior.conditional=false",
        "--run-dir", tmp_path / "prior", "--data-dir", trained_data_dir,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    inputs = ["cifar10:test:12", "--data-dir", trained_data_dir]
    raw = invoke("encode", trained_run, *inputs, "-o", tmp_path / "raw.vqc")
    assert raw.exit_code == 0, raw.output
    packed = invoke(
        "encode", trained_run, *inputs, "-o", tmp_path / "p.vqc", "--prior", tmp_path / "prior"
    )
    assert packed.exit_code == 0, packed.output
    assert (tmp_path / "p.vqc").stat().st_size < (tmp_path / "raw.vqc").stat().st_size
    for name, extra in (("raw", []), ("p", ["--prior", tmp_path / "prior"])):
        done = invoke(
            "decode", trained_run, tmp_path / f"{name}.vqc", "-o", tmp_path / name, *extra
        )
        assert done.exit_code == 0, done.output
    for png in sorted((tmp_path / "raw").glob("*.png")):
        assert png.read_bytes() == (tmp_path / "p" / png.name).read_bytes(), png.name
    without = invoke("decode", trained_run, tmp_path / "p.vqc", "-o", tmp_path / "none")
    assert without.exit_code == 2 and "prior" in one_error_line(without.output)
    assert not (tmp_path / "none").exists()


def test_a_prior_checkpoint_the_disk_cannot_take_ends_training_with_one_line(
    prior_run: Path, trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "prior"
    shutil.copytree(prior_run, copy)
    before = (copy / "checkpoint.pt").read_bytes()
    assert max(p.stat().st_size for p in copy.glob("*.vqc")) < len(before) // 2
    result = vqtool_limited(
        len(before) // 2, "prior", trained_run, "--run-dir", copy, "--resume",
        "--set", "train.steps=16", "--data-dir", trained_data_dir,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = last_error_line(result.stderr)
    assert line.startswith("error: could not write the checkpoint: File too large"), line
    assert (copy / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == [".lock"]


def test_encode_names_cifar_images_as_the_priors_code_files_do(
    prior_run: Path, trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    """One naming wherever CIFAR-10 is encoded: class, split, index ('cat/test-00000')."""
    result = invoke("encode", trained_run, "cifar10:test", "-o", "c.vqc",
                    "--data-dir", trained_data_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    names = read_codes(tmp_path / "c.vqc").names
    assert names == read_codes(prior_run / "codes-test.vqc").names
    assert names[0].split("/")[0] in CLASS_NAMES and names[0].endswith("/test-00000")
    assert invoke("decode", trained_run, "c.vqc", "-o", "out").exit_code == 0
    assert (tmp_path / "out" / f"{names[0]}.png").is_file()  # a folder per class
