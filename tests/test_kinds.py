"""Every command on every kind of run: a VQ codebook (ema), finite scalar quantization (fsq),
residual stages (rvq), each with a prior inside (R/prior), and those priors themselves.

The runs are tiny and made once per session (conftest's `kind_runs`); a test that writes into a
run works on a copy.
A new kind of run goes into VQ_KINDS and meets every command; a new command that takes a run
fails `test_every_command_that_takes_a_run_is_in_the_matrix` until it has a test here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import typer.main
from helpers import KIND_GRID as GRID
from helpers import KIND_STAGES as STAGES
from helpers import (
    MIXED_SIZES,
    VQ_KINDS,
    KindRuns,
    cifar_names,
    decoded_pngs,
    make_image_folder,
    make_sized_folder,
)
from PIL import Image
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.vqc import read_codes
from vqtool.data.cifar10 import load_cifar10
from vqtool.models import bands
from vqtool.prior.load import load_coding_prior

runner = CliRunner()
bands_of = bands.bands

PRIOR_KINDS = [f"{kind}/prior" for kind in VQ_KINDS]
ALL_KINDS = [*VQ_KINDS, *PRIOR_KINDS]
K = 32  # codes per stage
# The commands this module runs on every kind they take; `download` and `profiles` take none.
COVERED = {
    "train", "evaluate", "plot", "compare", "encode", "decode", "inspect", "roundtrip",
    "prior", "sample", "export",
}  # fmt: skip


def invoke(*args: str | Path | int) -> Any:  # click's Result
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str | Path | int) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "error" not in result.stderr, result.stderr
    return result


def vq_of(kind: str) -> str:
    return kind.split("/")[0]


def copy_of(kind_runs: KindRuns, kind: str, tmp_path: Path) -> Path:
    """A copy of `kind`'s VQ run (its prior inside), for a command that writes into it; the
    path of `kind` in the copy."""
    shutil.copytree(kind_runs[vq_of(kind)], tmp_path / "copy" / vq_of(kind))
    return tmp_path / "copy" / kind


def test_every_command_that_takes_a_run_is_in_the_matrix() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert commands - {"download", "profiles", "pretrained"} == COVERED


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_resume(kind_runs: KindRuns, kind: str, tmp_path: Path) -> None:
    run = copy_of(kind_runs, kind, tmp_path)
    if kind in VQ_KINDS:
        args = ["train", "--resume", "--run-dir", run, "--set", "train.steps=40"]
    else:
        args = ["prior", run.parent, "--resume", "--run-dir", run, "--set", "train.steps=6"]
    result = ok(*args, "--data-dir", kind_runs.data)
    assert result.stdout.strip().endswith(run.name)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == (40 if kind in VQ_KINDS else 6)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_evaluate(kind_runs: KindRuns, kind: str, tmp_path: Path) -> None:
    run = copy_of(kind_runs, kind, tmp_path)
    metrics = json.loads(ok("evaluate", run, "--data-dir", kind_runs.data, "--json", "-").stdout)
    assert metrics["images"] == 40 and metrics["step"] >= 4
    assert 0 < metrics["bits_per_image"] < math.inf
    if kind in PRIOR_KINDS:
        vq = vq_of(kind)
        assert metrics["bits_per_image"] < STAGES[vq] * math.prod(GRID[vq]) * 6  # < 6 bits a code
        return
    assert 0 < metrics["psnr"] < 60 and metrics["split"] == "test"
    assert metrics["bits_per_image"] == STAGES[kind] * math.prod(GRID[kind]) * math.log2(K)
    if STAGES[kind] == 1:
        assert "stages" not in metrics and "by_stages" not in metrics
    else:
        assert metrics["stages"] == STAGES[kind]
        assert [row["stages"] for row in metrics["by_stages"]] == [1, 2, 3]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_plot(kind_runs: KindRuns, kind: str, tmp_path: Path) -> None:
    ok("plot", kind_runs[kind], "-o", "figures", "--data-dir", kind_runs.data)
    names = {"loss.png", "samples.png"} if kind in PRIOR_KINDS else {
        "loss.png", "reconstructions.png", "codebook.png"
    }  # fmt: skip
    written = {p.name for p in (tmp_path / "figures").iterdir() if p.is_file()}
    assert names <= written
    for name in names:
        with Image.open(tmp_path / "figures" / name) as figure:
            assert min(figure.size) > 200


def test_plot_says_how_many_stages_its_reconstructions_decode(kind_runs: KindRuns) -> None:
    from vqtool.reports.arrays import run_arrays
    from vqtool.reports.plots import reconstructions_figure

    arrays = run_arrays(kind_runs["rvq"], kind_runs.data, samples=4)
    assert arrays.stages == 3
    figure = reconstructions_figure(arrays.originals, arrays.reconstructions, "", "", 3)
    assert "all 3 residual stages" in figure.axes[0].get_title()


def test_compare_every_kind_at_once(kind_runs: KindRuns) -> None:
    rows = json.loads(ok("compare", *(kind_runs[k] for k in ALL_KINDS), "--json", "-").stdout)
    assert len(rows) == len(ALL_KINDS)


@pytest.mark.parametrize("kind", [*VQ_KINDS, "prior"])
def test_encode_inspect_decode(kind_runs: KindRuns, kind: str, tmp_path: Path) -> None:
    # "prior": each VQ kind's codes compressed with its prior, decoded without naming it
    for vq in VQ_KINDS if kind == "prior" else [kind]:
        run, stages = kind_runs[vq], STAGES[vq]
        coding = ["--prior", run / "prior"] if kind == "prior" else []
        data = kind_runs.data
        ok("encode", run, "cifar10:test:8", "-o", f"{vq}.vqc", "--data-dir", data, *coding)
        facts = json.loads(ok("inspect", f"{vq}.vqc", "--json", "-").stdout)
        assert (facts["images"], facts["stages"]) == (8, stages)
        assert facts["coding"] == ("exact" if kind == "prior" else "raw")
        ok("decode", run, f"{vq}.vqc", "-o", f"{vq}-out", "--grid", f"{vq}-grid.png")
        assert len(list((tmp_path / f"{vq}-out").rglob("*.png"))) == 8  # a folder per class
        prior = load_coding_prior(run / "prior") if kind == "prior" else None
        codes = read_codes(tmp_path / f"{vq}.vqc", prior).codes
        assert codes.shape == ((8, *GRID[vq]) if stages == 1 else (8, stages, *GRID[vq]))


@pytest.mark.parametrize("kind", VQ_KINDS)
def test_roundtrip_is_encode_then_decode_at_every_stage_count(
    kind_runs: KindRuns, kind: str, tmp_path: Path
) -> None:
    run, data = kind_runs[kind], kind_runs.data
    originals = load_cifar10(data, "test")[:6].permute(0, 2, 3, 1).numpy().astype(np.float64)
    for n in range(1, STAGES[kind] + 1):
        stages = ["--stages", n] if STAGES[kind] > 1 else []
        facts = json.loads(ok("roundtrip", run, "cifar10:test:6", "-o", f"rt{n}.png",
                              "--json", "-", "--data-dir", data, *stages).stdout)  # fmt: skip
        raw_bits = n * math.prod(GRID[kind]) * math.log2(K)
        assert facts["stages"] == n and facts["raw_bits_per_image"] == raw_bits
        ok("encode", run, "cifar10:test:6", "-o", f"c{n}.vqc", "--data-dir", data, *stages)
        ok("decode", run, f"c{n}.vqc", "-o", f"out{n}")
        for i, record in enumerate(facts["per_image"]):
            decoded = np.asarray(Image.open(tmp_path / f"out{n}" / f"{record['name']}.png"))
            mse = (((originals[i] - decoded) / 255.0) ** 2).mean()
            assert record["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
        with Image.open(tmp_path / f"rt{n}.png") as figure:
            assert figure.size[0] > 600


@pytest.mark.parametrize("kind", VQ_KINDS)
def test_roundtrip_with_a_prior_at_every_stage_count_and_resize(
    kind_runs: KindRuns, kind: str, tmp_path: Path
) -> None:
    run = kind_runs[kind]
    for n in range(1, STAGES[kind] + 1):
        stages = ["--stages", n] if STAGES[kind] > 1 else []
        result = ok("roundtrip", run, "cifar10:test:6", "-o", f"rt{n}.png", "--json", "-",
                    "--prior", run / "prior", "--size", "32x32", "--resize", "centre-crop",
                    "--data-dir", kind_runs.data, *stages)  # fmt: skip
        facts = json.loads(result.stdout)
        assert facts["stages"] == n and facts["prior"] is not None
        # a few steps of training leave the prior near the uniform bound
        assert 0.5 * facts["raw_bits_per_image"] < facts["prior_bits_per_image"]
        assert facts["prior_bits_per_image"] < 1.5 * facts["raw_bits_per_image"]
    result = invoke("roundtrip", run, "cifar10:test:2", "-o", "x.png", "--stages",
                    STAGES[kind] + 1, "--data-dir", kind_runs.data)  # fmt: skip
    assert result.exit_code == 2 and "--stages" in result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", VQ_KINDS)
def test_an_image_in_bands_is_coded_as_whole(
    kind_runs: KindRuns, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """encode, decode and roundtrip of an image above bands.band_pixels (made small here, so
    that a small image goes in bands): the codes, PNG and PSNR of the image coded whole."""
    run, threads = kind_runs[kind], torch.get_num_threads()
    make_image_folder(tmp_path, ["photo.png"], (381, 70))  # 96 code rows at factor 4
    plans: list[list[bands.Band]] = []

    def recorded(*args: int) -> list[bands.Band]:
        plans.append(bands_of(*args))
        return plans[-1]

    monkeypatch.setattr(bands, "bands", recorded)
    outputs = {}
    try:
        torch.set_num_threads(1)  # oneDNN's rounding changes with some thread counts
        # bands of 13,824 pixels for the tiny networks' 16 channels: a few code rows each
        for mode, band_pixels in (("whole", bands.BAND_PIXELS), ("bands", 1728)):
            monkeypatch.setattr(bands, "BAND_PIXELS", band_pixels)
            ok("encode", run, "photo.png", "-o", f"{mode}.vqc")
            ok("decode", run, f"{mode}.vqc", "-o", mode)
            facts = json.loads(ok("roundtrip", run, "photo.png", "-o", f"{mode}.png",
                                  "--json", "-").stdout)  # fmt: skip
            png = np.asarray(Image.open(tmp_path / mode / "photo.png"))
            outputs[mode] = (read_codes(tmp_path / f"{mode}.vqc").codes, png, facts)
            assert bool(plans) == (mode == "bands")
    finally:
        torch.set_num_threads(threads)
    # encode, decode, and both halves of roundtrip, each in several bands
    assert len(plans) == 4 and all(len(plan) > 1 for plan in plans)
    (codes, png, facts), (banded_codes, banded_png, banded_facts) = outputs.values()
    assert np.array_equal(codes, banded_codes) and np.array_equal(png, banded_png)
    assert facts["per_image"] == banded_facts["per_image"]


@pytest.mark.parametrize("kind", PRIOR_KINDS)
def test_sample_and_decode(kind_runs: KindRuns, kind: str, tmp_path: Path) -> None:
    ok("sample", kind_runs[kind], "-n", 3, "-o", "s.vqc", "--seed", 1)
    stages, grid = STAGES[vq_of(kind)], GRID[vq_of(kind)]
    codes = read_codes(tmp_path / "s.vqc").codes
    assert codes.shape == ((3, *grid) if stages == 1 else (3, stages, *grid))
    ok("decode", kind_runs[vq_of(kind)], "s.vqc", "-o", "samples")
    assert len(list((tmp_path / "samples").glob("*.png"))) == 3


def test_the_prior_command_names_its_profile_sections_in_its_help() -> None:
    assert "keys under [prior] and [train]" in " ".join(ok("prior", "--help").stdout.split())


@pytest.mark.parametrize("kind", [*VQ_KINDS, "prior"])
def test_a_folder_of_mixed_sizes_through_encode_inspect_decode_and_roundtrip(
    kind_runs: KindRuns, kind: str, tmp_path: Path
) -> None:
    # "prior": each VQ kind's file of several grids coded with its prior (over grids of each
    # size), decoded without naming it to the raw file's PNGs
    sizes = MIXED_SIZES
    photos = make_sized_folder(tmp_path / "photos", sizes)
    for vq in VQ_KINDS if kind == "prior" else [kind]:
        run = kind_runs[vq]
        coded = ["--prior", run / "prior"] if kind == "prior" else ["--compress"]
        ok("encode", run, photos, "-o", f"{vq}.vqc")
        ok("encode", run, photos, "-o", f"{vq}-coded.vqc", *coded)
        facts = json.loads(ok("inspect", f"{vq}-coded.vqc", "--json", "-").stdout)
        assert (facts["version"], facts["images"], facts["stages"]) == (6, 4, STAGES[vq])
        assert facts["coding"] == ("exact" if kind == "prior" else "unigram")
        for name in (vq, f"{vq}-coded"):
            ok("decode", run, f"{name}.vqc", "-o", f"out-{name}")
        pngs = decoded_pngs(tmp_path / f"out-{vq}")
        assert pngs == decoded_pngs(tmp_path / f"out-{vq}-coded") and len(pngs) == 4
        for name, size in sizes.items():
            with Image.open(tmp_path / f"out-{vq}" / f"{name}.png") as image:
                assert image.size == (size[1], size[0])
        prior = ["--prior", run / "prior"] if kind == "prior" else []
        facts = json.loads(ok("roundtrip", run, photos, "-o", f"{vq}.png", "--json", "-",
                              *prior).stdout)  # fmt: skip
        assert [(r["height"], r["width"]) for r in facts["per_image"]] == list(sizes.values())
        assert (facts["prior_bits_per_image"] is not None) == (kind == "prior")


def onnx_session(path: Path) -> Any:  # onnxruntime.InferenceSession
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options)


def png_pixels(path: Path) -> np.ndarray:
    """A PNG as uint8 (3, H, W), as the graphs take and give images."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def vqtool_round(
    run: Path, data: Path, inputs: list[str | Path], names: list[str], tag: str, *options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """vqtool's codes of `inputs` as int64, and its decoded PNGs as uint8 (N, 3, H, W)."""
    ok("encode", run, *inputs, "-o", f"{tag}.vqc", "--data-dir", data, *options)
    ok("decode", run, f"{tag}.vqc", "-o", tag)
    codes = read_codes(Path(f"{tag}.vqc")).codes.astype(np.int64)
    return codes, np.stack([png_pixels(Path(tag) / f"{name}.png") for name in names])


@pytest.mark.parametrize("kind", VQ_KINDS)
def test_export_gives_vqtools_codes_and_pixels(
    kind_runs: KindRuns, kind: str, tmp_path: Path
) -> None:
    run, data = kind_runs[kind], kind_runs.data
    f = 8 if kind == "ds8" else 4
    ok("export", run, "-o", "onnx")
    facts = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert (facts["downsample"], facts["num_embeddings"], facts["stages"]) == (f, K, STAGES[kind])
    assert facts["levels"] == ([4, 4, 2] if kind == "fsq" else None)
    encoder, decoder = (
        onnx_session(Path("onnx/encoder.onnx")),
        onnx_session(Path("onnx/decoder.onnx")),
    )
    # CIFAR-like images, and a photo neither square nor of CIFAR's size
    make_image_folder(tmp_path / "photo", ["wide.png"], size=(4 * f, 7 * f))
    cifar = load_cifar10(data, "test")[:5].numpy()
    photo = png_pixels(tmp_path / "photo" / "wide.png")[None]
    cifar_run = (cifar, ["cifar10:test:5"], cifar_names(data, "test", 5))
    for tag, (images, inputs, names) in enumerate([cifar_run, (photo, ["photo"], ["wide"])]):
        expected, pngs = vqtool_round(run, data, inputs, names, f"round{tag}")
        codes = encoder.run(None, {"images": images})[0]
        assert codes.dtype == np.int64 and np.array_equal(codes, expected)
        decoded = decoder.run(None, {"codes": codes})[0]
        assert decoded.dtype == np.uint8 and decoded.shape == images.shape
        assert np.abs(decoded.astype(int) - pngs).max() <= 1
    # the batch is free: an image alone gets the codes it gets among others
    alone = encoder.run(None, {"images": cifar[3:4]})[0]
    assert np.array_equal(alone, encoder.run(None, {"images": cifar})[0][3:4])
    if STAGES[kind] > 1:
        ok("export", run, "-o", "two", "--stages", 2)
        expected, pngs = vqtool_round(run, data, *cifar_run[1:], "two-stages", "--stages", 2)
        codes = onnx_session(Path("two/encoder.onnx")).run(None, {"images": cifar})[0]
        assert codes.shape == (5, 2, 8, 8) and np.array_equal(codes, expected)
        decoded = onnx_session(Path("two/decoder.onnx")).run(None, {"codes": codes})[0]
        assert np.abs(decoded.astype(int) - pngs).max() <= 1
