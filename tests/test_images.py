"""Image files and pixels: reading, padding, names, PNG output (vqtool.images.read, pixels,
names, png)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtool.codes.names import clean_name, name_problem, unique_names
from vqtool.errors import UsageError
from vqtool.images.pixels import pad_index, pad_to_multiple, parse_size
from vqtool.images.png import png_bytes
from vqtool.images.read import from_pil, read_image, read_resized
from vqtool.models.vqvae import VQVAE, build_model
from vqtool.profiles import load_profile


def test_padding_copies_the_edge() -> None:
    assert pad_index(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert pad_index(3, 4).tolist() == [0, 1, 2, 2]
    assert pad_index(2, 4).tolist() == [0, 1, 1, 1]
    assert pad_index(1, 4).tolist() == [0, 0, 0, 0]
    assert pad_index(8, 8).tolist() == list(range(8))
    image = torch.arange(2 * 5, dtype=torch.uint8).view(1, 2, 5)
    padded = pad_to_multiple(image)
    assert padded.shape == (1, 4, 8)
    assert padded[0, :, 5:].tolist() == [[4, 4, 4], [9, 9, 9], [9, 9, 9], [9, 9, 9]]


def test_sixteen_bit_grey_keeps_its_top_bits() -> None:
    values = np.arange(256, dtype=np.uint16).reshape(16, 16)
    image = Image.fromarray(values * 257)  # 16-bit grey, mode I;16
    assert image.mode == "I;16"
    rgb = from_pil(image)
    assert rgb.shape == (3, 16, 16) and rgb[0].numpy().tolist() == values.tolist()


def test_names_are_cleaned_checked_and_made_unique() -> None:
    assert clean_name("cat/0001") == "cat/0001"
    assert clean_name("../a\\b/./c\x00") == "_/a_b/_/c_"
    assert clean_name("x" * 300) == "x" * 200
    assert name_problem("cat/0001") is None and name_problem("café") is None
    for bad in ("", "/abs", "a/../b", "a//b", "a\\b", "a\x01", "./a", "a/"):
        assert name_problem(bad) is not None, bad
    assert unique_names(["a", "a", "b", "a", "a-2"]) == ["a", "a-2", "b", "a-3", "a-2-2"]
    assert parse_size("64x48") == (64, 48)
    for bad in ("64", "0x4", "axb", "5000x5000"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_png_bytes_store_small_images_and_compress_large_ones() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, 300, dtype=np.uint8)
    large = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :200], 128), axis=-1)
    large = large.astype(np.uint8)
    for image, compressed in ((small, False), (large, True)):
        data = png_bytes(np.ascontiguousarray(image))
        with Image.open(io.BytesIO(data)) as read:
            assert np.array_equal(np.asarray(read), image)
        raw_size = image.size + image.shape[0]  # one filter byte a row
        assert (len(data) < raw_size // 2) is compressed


def test_grey_and_saturated_colours_pass_the_pipeline_exactly(tmp_path: Path) -> None:
    # Issue 11, item 10: grey photos came back tinted and a bright green olive. Measured
    # (benchmarks/colour_check.py) that is the model's doing; everything around the model
    # must pass colours exactly: reading, resizing, padding, the pixel convention, PNG.
    yy, xx = np.mgrid[0:40, 0:44]
    grey = (40 + 170 * (xx + yy) / 82).round().astype(np.uint8)
    saturated = np.zeros((40, 44, 3), np.uint8)
    saturated[:20, :22], saturated[:20, 22:], saturated[20:] = (0, 200, 0), (255, 0, 0), (0, 0, 255)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(saturated).save(tmp_path / "saturated.png")
    read = read_image(tmp_path / "grey.png")
    assert all(np.array_equal(read[c].numpy(), grey) for c in range(3))
    shrunk = read_resized(tmp_path / "grey.png", (24, 20))
    assert torch.equal(shrunk[0], shrunk[1]) and torch.equal(shrunk[0], shrunk[2])
    read = read_image(tmp_path / "saturated.png")
    assert np.array_equal(read.permute(1, 2, 0).numpy(), saturated)
    assert torch.equal(pad_to_multiple(read[:, :39, :43])[:, :39, :43], read[:, :39, :43])
    with Image.open(io.BytesIO(png_bytes(saturated))) as written:
        assert np.array_equal(np.asarray(written), saturated)
    # The decode side's clamping and rounding on known decoder outputs: every 8-bit value
    # through the model's input convention comes back as itself; beyond [0, 1] is clamped.
    model = build_model(load_profile("smoke").model)
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 4, 256)
    outputs = torch.cat([VQVAE.to_input(values, "cpu"), torch.full((1, 3, 4, 4), 0.7)], dim=-1)
    outputs[..., :2] = -0.9
    model.decode = lambda indices, stages=None: outputs  # type: ignore[method-assign]
    images = model.codes_to_images(torch.zeros(1, 1, 65, dtype=torch.long))
    assert torch.equal(images[..., 2:256], values[..., 2:])
    assert (images[..., :2] == 0).all() and (images[..., 256:] == 255).all()
