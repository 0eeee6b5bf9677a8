"""Large images in bands of code rows (vqtool.models.bands): the halo computed from the config
is the networks' true reach, and banded codes and pixels are those of the whole image, on every
kind of run (through the CLI in tests/test_kinds.py); the size limits refuse in one line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import VQ_KINDS, KindRuns, make_image_folder, one_error_line, png_declaring
from torch import Tensor
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes.pipeline import decode_indices, encode_images
from vqtool.codes.vqc import CodeFile, write_codes
from vqtool.images.read import MAX_IMAGE_PIXELS, MAX_IMAGE_WIDTH, read_image
from vqtool.models import bands
from vqtool.models.config import ModelConfig
from vqtool.models.vqvae import VQVAE, Layer, decoder_layers, encoder_layers
from vqtool.vq.load import load_model

FACTORS = [2, 4, 8, 16]


def _geometry(module: torch.nn.Module) -> list[Layer]:
    """The convolutions of `module` in the order they were made (the order they run in)."""
    return [
        Layer(m.kernel_size[0], m.stride[0], m.padding[0], isinstance(m, torch.nn.ConvTranspose2d))  # type: ignore[arg-type, index]
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]


# A channel plan other than the seed's, for every factor: cut at 2 and 4, its last entry
# repeated at 16; with SiLU, which must not change where the networks look.
PLAN: dict[str, Any] = {"channels": (6, 12, 4), "activation": "silu"}


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("residual_layers", [0, 2])
@pytest.mark.parametrize("plan", [{}, PLAN])
def test_the_layer_lists_are_the_networks(
    factor: int, residual_layers: int, plan: dict[str, Any]
) -> None:
    cfg = ModelConfig(downsample=factor, num_residual_layers=residual_layers, num_hiddens=8,
                      num_residual_hiddens=4, weight_norm=False, **plan)  # fmt: skip
    model = VQVAE(cfg)
    assert list(encoder_layers(cfg)) == [*_geometry(model.encoder), *_geometry(model.pre_vq)]
    assert list(decoder_layers(cfg)) == _geometry(model.decoder)


def _rows_reached(gradient: Tensor) -> int:
    """How many rows of (B, C, H, W) have a nonzero gradient (first to last)."""
    rows = gradient.abs().sum((0, 1, 3)).nonzero().flatten()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("plan", [{}, PLAN])
def test_reach_is_what_the_gradients_reach(factor: int, plan: dict[str, Any]) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(downsample=factor, num_hiddens=16, num_residual_hiddens=8, **plan)
    model = VQVAE(cfg).double().eval()
    reach = bands.reach(cfg)
    images = (torch.rand(4, 3, 20 * factor, 2 * factor, dtype=torch.float64) - 0.5).requires_grad_()
    model.latents(images)[:, :, 10].sum().backward()  # one code row's latents
    assert images.grad is not None
    assert _rows_reached(images.grad) == reach.encoder_pixels
    vectors = torch.randn(4, cfg.embedding_dim, 20, 2, dtype=torch.float64, requires_grad=True)
    widest = 0
    for pixel in range(factor):  # each pixel row of code row 10
        vectors.grad = None
        model.decoder(vectors)[:, :, 10 * factor + pixel].sum().backward()
        assert vectors.grad is not None
        widest = max(widest, _rows_reached(vectors.grad))
    assert widest == reach.decoder_codes


def _banded(
    network: torch.nn.Module, x: Tensor, plan: list[bands.Band], scale: tuple[int, int]
) -> Tensor:
    """`network` over x (B, C, H, W) band by band, the kept rows put together: `scale` is
    (rows of x, rows of the output) per code row."""
    into, out = scale
    parts = []
    for band in plan:
        y = network(x[..., band.outer_start * into : band.outer_stop * into, :])
        skip = (band.start - band.outer_start) * out
        parts.append(y[..., skip : skip + (band.stop - band.start) * out, :])
    return torch.cat(parts, -2)


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("plan", [{}, PLAN])
def test_the_halo_is_just_enough(
    factor: int, plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In float64, with bands over their rows and halo alone: the whole image's latents and
    pixels with the halo, others with one row less."""
    monkeypatch.setattr(bands, "MIN_OUTER", 1)
    monkeypatch.setattr(bands, "ALIGN", 1)
    torch.manual_seed(0)
    cfg = ModelConfig(downsample=factor, num_hiddens=16, num_residual_hiddens=8, **plan)
    model = VQVAE(cfg).double().eval()
    images = torch.rand(2, 3, 30 * factor, 3 * factor, dtype=torch.float64) - 0.5
    vectors = torch.randn(2, cfg.embedding_dim, 30, 3, dtype=torch.float64)
    halo = bands.reach(cfg).halo
    with torch.no_grad():
        whole = model.latents(images), model.decoder(vectors)
        differs = []
        for margin in (halo, halo - 1):
            plan = bands.bands(30, 4, margin)
            banded = (
                _banded(model.latents, images, plan, (factor, 1)),
                _banded(model.decoder, vectors, plan, (1, factor)),
            )
            differs.append(
                [
                    not torch.allclose(a, b, rtol=0, atol=1e-12)
                    for a, b in zip(whole, banded, strict=True)
                ]
            )
    assert differs[0] == [False, False]
    assert any(differs[1])


@pytest.mark.parametrize("rows", [1, 15, 16, 17, 40, 187])
@pytest.mark.parametrize("per_band", [1, 5, 50])
def test_bands_cover_the_rows_once_each_with_its_halo(rows: int, per_band: int) -> None:
    halo = 4
    plan = bands.bands(rows, per_band, halo)
    assert [b.start for b in plan] == [0, *[b.stop for b in plan[:-1]]] and plan[-1].stop == rows
    for band in plan:
        assert 0 < band.stop - band.start <= per_band
        assert band.outer_start <= max(0, band.start - halo)
        assert band.outer_stop >= min(rows, band.stop + halo)
        assert band.outer_start >= 0 and band.outer_stop <= rows
        height = band.outer_stop - band.outer_start
        assert height >= min(rows, bands.MIN_OUTER)
        assert height % bands.ALIGN == rows % bands.ALIGN


def test_small_images_are_coded_whole_and_large_ones_in_bands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = ModelConfig()
    assert bands._plan(cfg, 256, 1024, None) is None  # 1024 x 1024: whole
    plan = bands._plan(cfg, 750, 4000, None)  # 3000 x 4000
    assert plan is not None and len(plan) > 1
    for band in plan:
        assert (band.outer_stop - band.outer_start) * 4 * 4000 <= bands.BAND_PIXELS
    # twice the channels, half the pixels
    wide = ModelConfig(num_hiddens=256)
    assert bands.band_pixels(wide) == bands.BAND_PIXELS // 2
    for factor in FACTORS:  # the seed's plan written out: the seed's bands at every factor
        seed = ModelConfig(downsample=factor)
        assert bands.band_pixels(seed) == bands.band_pixels(replace(seed, channels=(64, 128)))
    # a plan's widest strided output per pixel: 64 / 4 at first, 512 / 16 at the second
    assert bands.band_pixels(ModelConfig(channels=(64, 512))) == bands.BAND_PIXELS // 2
    assert bands.band_pixels(ModelConfig(channels=(32, 64))) == bands.BAND_PIXELS * 2
    assert bands._plan(wide, 256, 1536, None) is not None
    assert bands._plan(cfg, 256, 1536, None) is None
    monkeypatch.setattr(bands, "BAND_PIXELS", 1000)
    assert bands._plan(cfg, 64, 64, None) is not None  # a wide band of the least height


@pytest.fixture
def threads() -> Iterator[None]:
    """Leave torch's thread count as it was."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _photo(size: tuple[int, int]) -> Tensor:
    """A uint8 (1, 3, H, W) image of gradients, a blob and noise."""
    return read_image(make_image_folder(Path("photo"), ["p.png"], size) / "p.png")[None]


# Every kind on one thread, and one on two, where oneDNN's transposed convolution splits its
# rows between the threads (bands.ALIGN).
@pytest.mark.parametrize(("kind", "thread_count"), [*((k, 1) for k in VQ_KINDS), ("ema", 2)])
def test_bands_give_the_whole_images_codes_and_pixels(
    kind_runs: KindRuns, kind: str, thread_count: int, threads: None
) -> None:
    """Codes and pixels identical, bit for bit, in bands of 3 code rows (each computed over
    bands.MIN_OUTER rows at least) and of 20 (over 20 and the halo): 96 code rows at factor 4,
    48 at factor 8."""
    torch.set_num_threads(thread_count)
    model = load_model(kind_runs[kind], torch.device("cpu")).model.folded()
    images = _photo((381, 70))  # neither side a multiple of the factor
    whole = encode_images(model, images)
    pixels = decode_indices(model, whole)
    for per_band in (3, 20):
        codes = encode_images(model, images, band_rows=per_band)
        assert torch.equal(codes, whole)
        assert torch.equal(decode_indices(model, whole, band_rows=per_band), pixels)


# The limits: one line, exit 2, nothing written.

runner = CliRunner()


def _refused(args: list[str | Path], says: str) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert says in one_error_line(result.output)


@pytest.mark.parametrize("command", ["encode", "roundtrip"])
@pytest.mark.parametrize(
    ("width", "height", "says"),
    [
        (4097, 4096, "image too large"),
        (MAX_IMAGE_WIDTH + 1, 8, "image too wide"),
    ],
)
def test_an_image_above_the_limits_is_refused(
    trained_run: Path, tmp_path: Path, command: str, width: int, height: int, says: str
) -> None:
    assert width * height > MAX_IMAGE_PIXELS or width > MAX_IMAGE_WIDTH
    (tmp_path / "big.png").write_bytes(png_declaring(width, height))
    _refused([command, trained_run, "big.png", "-o", "out"], says)
    _refused([command, trained_run, "cifar10:test:2", "-o", "out", "--size",
              f"{height}x{width}"], "too")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_an_image_at_the_width_limit_is_encoded(trained_run: Path, tmp_path: Path) -> None:
    make_image_folder(tmp_path, ["wide.png"], (8, MAX_IMAGE_WIDTH))
    result = runner.invoke(app, ["encode", str(trained_run), "wide.png", "-o", "w.vqc"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["decode", str(trained_run), "w.vqc", "-o", "out"])
    assert result.exit_code == 0, result.output


def test_decode_refuses_a_file_of_images_wider_than_the_limit(
    trained_run: Path, tmp_path: Path
) -> None:
    loaded = load_model(trained_run, torch.device("cpu"))
    factor, config = loaded.model.config.downsample, loaded.model.config
    width = MAX_IMAGE_WIDTH + factor
    write_codes(
        tmp_path / "wide.vqc",
        CodeFile(
            codes=np.zeros((1, 1, width // factor), np.uint16),
            names=("wide",),
            sizes=np.array([[factor, width]], np.int32),
            checkpoint=loaded.fingerprint,
            num_embeddings=config.num_embeddings,
            embedding_dim=config.embedding_dim,
            downsample=factor,
            image_size=(factor, width),
        ),
    )
    _refused(["decode", trained_run, "wide.vqc", "-o", "out"], "pixels wide (padded), wider than")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.vqc"]
