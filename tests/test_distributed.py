"""Several processes (gloo on the CPU): equal ranks, equal to one process, faults survived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import (
    closed_port,
    join_as_rank,
    make_image_folder,
    source_env,
    train_as_rank,
    wait_for,
    write_folder_profile,
    write_slow_profile,
    write_tiny_profile,
)

from vqtool.checkpoint import load_checkpoint, model_state
from vqtool.prior.train import train_prior
from vqtool.profiles import load_prior_profile, load_profile
from vqtool.vq.train import run_training


@pytest.mark.parametrize("factor", [4, 8])
def test_two_processes_agree_and_match_one(factor: int, data_dir: Path, tmp_path: Path) -> None:
    profile = write_tiny_profile(tmp_path / "tiny.toml", "")
    short = tmp_path / "short.toml"
    short.write_text(
        f'extends = "tiny.toml"\n[model]\ndead_code_steps = 3\ndownsample = {factor}\n'
        "[train]\nsteps = 6\nlog_every = 3\ncheckpoint_every = 3\n"
    )
    mp.start_processes(
        train_as_rank,
        args=(2, closed_port(), short, data_dir, tmp_path / "two"),
        nprocs=2,
        start_method="spawn",
    )
    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # codebooks, EMA statistics and weights: identical on both ranks
        assert torch.equal(rank0[key], rank1[key]), key

    torch.set_num_threads(1)
    one = model_state(run_training(load_profile(short), tmp_path / "one" / "run", data_dir).model)
    assert load_profile(profile).data.batch_size == 20  # global batch in both runs
    for key in one:
        assert torch.allclose(one[key].float(), rank0[key].float(), rtol=1e-3, atol=1e-4), key
    records = (tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [3, 6]  # each step once
    assert all(json.loads(r)["world_size"] == 2 for r in records)


def torchrun(*args: str, nproc: int = 2) -> subprocess.Popen[bytes]:
    env = source_env()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "vqtool",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for child in found for d in descendants(child)]


@pytest.mark.timeout(600)
def test_two_process_sigkill_resume_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    common = ["train", "--profile", str(write_slow_profile(tmp_path)), "--data-dir", str(data_dir)]
    straight = torchrun(*common, "--run-dir", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()

    killed = torchrun(*common, "--run-dir", str(tmp_path / "killed"))
    wait_for(tmp_path / "killed" / "checkpoint.pt", killed)
    for pid in [killed.pid, *descendants(killed.pid)]:  # the whole job, workers included
        os.kill(pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert load_checkpoint(tmp_path / "killed")["step"] < 200

    resumed = torchrun(*common, "--run-dir", str(tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    assert b["step"] == 200 and a["fingerprint"] == b["fingerprint"]
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(10, 201, 10))


@pytest.mark.timeout(600)
def test_one_rank_killed_then_resume_on_one_process(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["train", "--profile", str(write_slow_profile(tmp_path)), "--data-dir", str(data_dir)]
    job = torchrun(*common, "--run-dir", str(run))
    wait_for(run / "checkpoint.pt", job)
    workers = children(job.pid)
    assert len(workers) >= 2
    os.kill(workers[-1], signal.SIGKILL)
    code = job.wait(timeout=120)
    stderr = job.stderr.read().decode() if job.stderr else ""
    assert code != 0
    assert "Traceback" not in "\n".join(
        line for line in stderr.splitlines() if line.startswith("error:")
    )
    payload = load_checkpoint(run)  # no torn checkpoint
    assert 0 < payload["step"] < 200
    assert not list(run.glob(".*.tmp"))

    # The 2-process run continues on 1 process: the batch size is global.
    env = source_env()
    resumed = subprocess.run(
        [sys.executable, "-m", "vqtool", *common, "--run-dir", str(run), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run)["step"] == 200
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 200
    world_sizes = {
        json.loads(x)["world_size"] for x in (run / "metrics.jsonl").read_text().splitlines()
    }
    assert world_sizes == {1, 2}


def _prior_worker(
    rank: int, world: int, port: int, vq_run: Path, profile: Path, data: Path, out: Path
) -> None:
    join_as_rank(rank, world, port)
    result = train_prior(vq_run, load_prior_profile(profile), out / "prior", data)
    torch.save(model_state(result.model), out / f"rank{rank}.pt")


def test_a_prior_on_two_processes_agrees_and_matches_one(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "prior.toml"
    profile.write_text(
        'extends = "prior-small"\n[prior]\nlayers = 1\nwidth = 32\nheads = 2\ndropout = 0.0\n'
        "[train]\nsteps = 6\nbatch_size = 16\nlog_every = 3\ncheckpoint_every = 3\n"
    )
    args = (2, closed_port(), trained_run, profile, trained_data_dir, tmp_path / "two")
    mp.start_processes(_prior_worker, args=args, nprocs=2, start_method="spawn")
    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    torch.set_num_threads(1)
    one = train_prior(
        trained_run, load_prior_profile(profile), tmp_path / "one" / "prior", trained_data_dir
    )
    for key, value in model_state(one.model).items():
        assert torch.allclose(value, rank0[key], rtol=1e-3, atol=1e-5), key
    records = (tmp_path / "two" / "prior" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["world_size"] for r in records] == [2, 2]


@pytest.mark.timeout(600)
def test_torchrun_on_an_image_folder_agrees_with_one_process(tmp_path: Path) -> None:
    # Random 16x16 crops of 24x20 JPEGs: rank 0 builds the cache, each rank crops its slice.
    names = [f"p/{i:03d}.jpg" for i in range(40)]
    make_image_folder(tmp_path / "photos", names, size=(24, 20))
    short = write_folder_profile(
        tmp_path, "\n[train]\nsteps = 6\nlog_every = 3\ncheckpoint_every = 6\n"
    )
    common = ["train", "--profile", str(short), "--data-dir", str(tmp_path / "data")]
    job = torchrun(*common, "--run-dir", str(tmp_path / "two"))
    assert job.wait(timeout=300) == 0, job.stderr.read().decode() if job.stderr else ""
    two = load_checkpoint(tmp_path / "two")
    assert two["world_size"] == 2 and two["step"] == 6

    torch.set_num_threads(1)
    profile = load_profile(short)
    one = model_state(run_training(profile, tmp_path / "one", tmp_path / "data").model)
    for key in one:
        assert torch.allclose(one[key].float(), two["model"][key].float(), rtol=1e-3, atol=1e-4), (
            key
        )
    records = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"]) for r in records] == [(3, 2), (6, 2)]
