"""A prior over grids of any size: each code predicted from a window of the prior's own size
(vqtool.models.windows), in exact arithmetic for coding (vqtool.codes.window_tables), in float
for sampling; priors trained on windows cut from larger grids (prior.window)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TINY_PRIOR, KindRuns, make_photos
from PIL import Image
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes import entropy
from vqtool.codes.vqc import read_codes
from vqtool.models import exact_prior
from vqtool.models.config import PriorConfig
from vqtool.models.exact_prior import ExactForced
from vqtool.models.transformer import CodePrior
from vqtool.models.windows import (
    Window,
    target_index,
    window_at,
    window_positions,
    window_tokens,
)
from vqtool.prior.data import crop_tokens, random_corners
from vqtool.prior.load import load_coding_prior

runner = CliRunner()
K = 16  # codes per stage of the random priors


def ok(*args: str | Path | int) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def random_exact(stages: int, grid: tuple[int, int] = (4, 4)) -> exact_prior.ExactPrior:
    torch.manual_seed(0)
    model = CodePrior(
        PriorConfig(layers=2, width=32, heads=2), K * stages, (grid[0] * stages, grid[1]), stages
    )
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # far from uniform: a wrong table shows in the bits
    offsets = torch.arange(stages).view(1, stages, 1, 1) * K
    calibration = torch.randint(0, K, (64, stages, *grid)) + offsets
    return exact_prior.derive(model.eval(), calibration.view(64, -1))


@pytest.mark.parametrize(
    ("grid", "prior_grid"),
    [((9, 11), (4, 4)), ((3, 7), (4, 4)), ((4, 4), (4, 4)), ((2, 1), (3, 5))],
)
def test_every_code_of_a_window_before_the_target_comes_before_it_in_the_grid(
    grid: tuple[int, int], prior_grid: tuple[int, int]
) -> None:
    height, width = grid
    for i in range(height):
        for j in range(width):
            window = window_at(i, j, grid, prior_grid)
            assert window.top <= i < window.top + window.height
            assert window.left <= j < window.left + window.width
            assert window.top + window.height <= height and window.left + window.width <= width
            assert window.height == min(prior_grid[0], height)
            for r in range(window.top, window.top + window.height):
                for c in range(window.left, window.left + window.width):
                    earlier_in_window = (r - window.top, c - window.left) < (
                        i - window.top,
                        j - window.left,
                    )
                    if earlier_in_window:  # raster order: the grid has it already
                        assert (r, c) < (i, j)


def test_window_positions_and_tokens_follow_the_priors_order() -> None:
    window = Window(top=1, left=2, height=2, width=3)
    # a prior of 4x5 codes per stage, 2 stages: stage 1 starts at position 20
    positions = [0, 1, 2, 5, 6, 7, 20, 21, 22, 25, 26, 27]
    assert window_positions(window, (4, 5), 2).tolist() == positions
    tokens = torch.arange(2 * 4 * 6).view(1, 2, 4, 6)
    cut = window_tokens(tokens, window, 2)[0]
    assert cut[:6].tolist() == [8, 9, 10, 14, 15, 16]
    assert cut[6:].tolist() == [32, 33, 34, 38, 39, 40]
    assert target_index(1, 2, 3, window) == 6 + 3 + 1
    # the whole grid when it is the prior's: positions in order, the target is its raster index
    whole = window_at(2, 1, (4, 5), (4, 5))
    assert whole == Window(0, 0, 4, 5)
    assert window_positions(whole, (4, 5), 1).tolist() == list(range(20))
    assert target_index(0, 2, 1, whole) == 11


@pytest.mark.parametrize("stages", [1, 2])
@pytest.mark.parametrize("grid", [(4, 4), (6, 9), (3, 2), (1, 5)])
def test_exact_coding_of_any_grid_decodes_to_the_codes(stages: int, grid: tuple[int, int]) -> None:
    model = random_exact(stages)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, K, (5, stages, *grid)).astype(np.uint16)
    codes = codes[:, 0] if stages == 1 else codes
    encoded = entropy.encode_with_prior(codes, model, threads=1)
    decoded = entropy.decode_with_prior(
        encoded.words, encoded.chunk_words, model, codes.shape, threads=2
    )
    np.testing.assert_array_equal(decoded, codes)
    if stages > 1:  # the first stage alone stops early, and is coded alone
        first = entropy.decode_with_prior(
            encoded.words, encoded.chunk_words, model, codes.shape, stages=1
        )
        np.testing.assert_array_equal(first, codes[:, :1])
        alone = entropy.encode_with_prior(codes[:, :1], model, threads=1)
        again = entropy.decode_with_prior(alone.words, alone.chunk_words, model, codes[:, :1].shape)
        np.testing.assert_array_equal(again, codes[:, :1])
        assert np.all(alone.bits < encoded.bits)  # one stage of two costs less
    # the bits are the tables' information content: a sharpened prior is far from 4 bits a code
    assert encoded.bits.shape == (5,) and np.all(encoded.bits > 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_coding_reports_progress_in_codes_within_an_image(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large image is one chunk: its progress moves code by code, not only at its end."""
    monkeypatch.setattr(entropy, "REPORT_EVERY_S", 0.0 if threads == 1 else 0.001)
    model = random_exact(2)
    codes = np.random.default_rng(3).integers(0, K, (3, 2, 6, 9)).astype(np.uint16)
    seen: list[tuple[int, int]] = []
    size = 1 if threads == 1 else 2  # one image a chunk, or chunks on threads of their own

    def note(done: int, total: int) -> None:
        seen.append((done, total))

    encoded = entropy.encode_with_prior(codes, model, note, threads, size)
    assert seen[-1] == (codes.size, codes.size)
    if threads == 1:  # every position reported: within each image
        assert len(seen) >= 2 * 6 * 9 * 3
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    decoded = entropy.decode_with_prior(
        encoded.words, encoded.chunk_words, model, codes.shape, note, threads, chunk_size=size
    )
    np.testing.assert_array_equal(decoded, codes)
    assert seen[-1] == (codes.size, codes.size)
    assert threads == 2 or 0 < seen[0][0] < 2 * 6 * 9  # the first image's codes, part way
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_larger_grids_window_tables_are_the_windows_own_predictions() -> None:
    """On an 8x8 grid with a 4x4 prior, code (6, 5)'s table is the prior's prediction at its
    window's position: the same integers as running the prior over that window alone."""
    model = random_exact(1)
    rng = np.random.default_rng(2)
    grid = rng.integers(0, K, (3, 8, 8))
    encoded = entropy.encode_with_prior(grid.astype(np.uint16), model, threads=1)
    window = window_at(6, 5, (8, 8), (4, 4))
    assert window == Window(3, 3, 4, 4)
    forced = ExactForced(model, entropy.PRECISION)
    own = forced.logits(torch.from_numpy(grid[:, 3:7, 3:7].reshape(3, 16)))  # the prior's own grid
    table = forced.frequencies(own[:, target_index(0, 6, 5, window)])
    bits = -np.log2(table.numpy() / table.numpy().sum(1, keepdims=True))
    contribution = bits[np.arange(3), grid[:, 6, 5]]
    # the file's bits count that same table for that code (among all the others)
    assert np.all(encoded.bits > contribution)
    assert contribution.min() > 0


def test_float_window_logits_over_the_whole_grid_are_the_forward() -> None:
    torch.manual_seed(0)
    model = CodePrior(PriorConfig(layers=1, width=32, heads=2), 2 * K, (6, 3), 2).eval()
    codes = torch.randint(0, K, (4, 2, 3, 3)) + torch.tensor([0, K]).view(1, 2, 1, 1)
    whole = window_at(2, 2, (3, 3), (3, 3))
    positions = window_positions(whole, (3, 3), 2)
    with torch.no_grad():
        windowed = model.window_logits(window_tokens(codes, whole, 2), positions)
        forward = model(codes.view(4, 6, 3))
    torch.testing.assert_close(windowed, forward)


def test_crops_take_the_same_window_of_every_stage() -> None:
    tokens = torch.arange(2 * 2 * 5 * 6).view(2, 10, 6)  # 2 grids, 2 stages of 5x6
    corners = torch.tensor([[0, 0], [3, 4]])
    cut = crop_tokens(tokens, 2, (2, 2), corners)
    assert cut.shape == (2, 4, 2)
    assert cut[0].tolist() == [[0, 1], [6, 7], [30, 31], [36, 37]]
    assert cut[1].tolist() == [[82, 83], [88, 89], [112, 113], [118, 119]]
    drawn = random_corners(500, (5, 6), (2, 2), torch.Generator().manual_seed(0))
    assert drawn[:, 0].min() == 0 and drawn[:, 0].max() == 3
    assert drawn[:, 1].min() == 0 and drawn[:, 1].max() == 4


def write_photos(folder: Path, size: tuple[int, int], n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(make_photos(n, size, np.random.default_rng(0))):
        Image.fromarray(photo).save(folder / f"p{i}.png")
    return folder


def test_a_windowed_prior_codes_and_samples_larger_images(
    kind_runs: KindRuns, tmp_path: Path
) -> None:
    """A prior trained on 4x4 windows of the 8x8 grids codes 64x48 images (16x12 grids) in a
    file that decodes to the raw file's pixels, and samples 48x48 images."""
    run = kind_runs["ema"]
    settings = [
        arg for setting in [*TINY_PRIOR, "prior.window=[4,4]"] for arg in ("--set", setting)
    ]
    ok(
        "prior",
        run,
        "--profile",
        "prior-small",
        "--run-dir",
        "P",
        "--data-dir",
        kind_runs.data,
        *settings,
    )
    checkpoint = torch.load(tmp_path / "P" / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"]["positions"].shape[0] == 16  # a 4x4 window
    photos = write_photos(tmp_path / "photos", (64, 48))
    ok("encode", run, photos, "-o", "raw.vqc")
    facts = json.loads(
        ok("encode", run, photos, "-o", "coded.vqc", "--prior", "P", "--json", "-").stdout
    )
    assert facts["coding"] == "exact" and facts["bits_per_image"] > 0
    assert read_codes(tmp_path / "coded.vqc", load_coding_prior("P")).codes.shape == (3, 16, 12)
    ok("decode", run, "raw.vqc", "-o", "raw")
    ok("decode", run, "coded.vqc", "-o", "coded", "--prior", "P")
    for name in ("p0", "p1", "p2"):
        assert (tmp_path / "raw" / f"{name}.png").read_bytes() == (
            tmp_path / "coded" / f"{name}.png"
        ).read_bytes()
    ok("sample", "P", "-n", 2, "--size", "48x48", "-o", "s.vqc", "--seed", 3)
    assert read_codes(tmp_path / "s.vqc").codes.shape == (2, 12, 12)
    ok("decode", run, "s.vqc", "-o", "samples")
    with Image.open(tmp_path / "samples" / "sample-00001.png") as image:
        assert image.size == (48, 48)


def test_a_window_larger_than_the_grid_and_a_size_off_the_factor_are_refused(
    kind_runs: KindRuns, tmp_path: Path
) -> None:
    run = kind_runs["ds8"]  # 4x4 grids
    result = runner.invoke(
        app, ["prior", str(run), "--profile", "prior-small", "--run-dir", "P",
              "--data-dir", str(kind_runs.data),
              *[a for s in [*TINY_PRIOR, "prior.window=[6,6]"] for a in ("--set", s)]],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "prior.window 6x6 is larger than the codes' grid 4x4" in result.stderr
    assert not (tmp_path / "P" / "checkpoint.pt").exists()
    result = runner.invoke(app, ["sample", str(run / "prior"), "--size", "36x32", "-o", "s.vqc"])
    assert result.exit_code == 2 and "not a multiple of the run's factor 8" in result.stderr
    assert not (tmp_path / "s.vqc").exists()
