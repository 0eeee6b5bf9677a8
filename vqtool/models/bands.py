"""Large images through the VQ-VAE in horizontal bands, as if whole.

The networks' activations, not the image, are what a large image costs: the encoder's first
layer holds 64 floats for every 4 pixels, so a 12-megapixel photo needs gigabytes. Above
`band_pixels` (2 MP for the default networks) an image is encoded, and its codes decoded, a
band of code rows at a time, so that the activations never cover much more than that.

Each band is computed over its own rows and a halo of `halo` code rows above and below, as
many as any of its outputs looks at through any layer (`reach`), and is cut on code rows
(multiples of model.downsample pixels), so every strided layer samples the same positions
as over the whole image. The rows a band keeps are then computed from exactly the inputs the
whole image gives them; at the image's top and bottom the band ends where the image does and
the layers pad it as they pad the whole image.

The arithmetic must be the same too, and oneDNN's (the CPU's) is not the same for every shape:
its transposed convolution (the decoder's) rounds some columns differently for another width,
so bands span the whole width; its convolutions round differently over very few rows, so a
band covers MIN_OUTER code rows at least; and its transposed convolution splits its rows among
threads by their count, so a band's height is congruent to the image's (ALIGN). Codes are then
the whole image's bit for bit, and so are decoded pixels on 1 and 2 threads
(tests/test_bands.py). On other thread counts the whole image's own pixels change with the
count, and a band's may differ from them by one level (floats a ten-thousandth of a level
apart, rounded apart). On CUDA, where cuDNN picks its algorithm by shape, neither is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch
from torch import Tensor

from vqtool.models.config import ModelConfig
from vqtool.models.vqvae import VQVAE, Layer, decoder_layers, encoder_layers

# Images of more pixels than this are coded in bands of about this many pixels (halo
# included, unless one code row with its halo is wider than that), for networks of
# BAND_HIDDENS channels (model.num_hiddens, the default, with the seed's channel plan); for
# others in proportion, as their activations are.
BAND_PIXELS = 1 << 21
BAND_HIDDENS = 128


def band_pixels(cfg: ModelConfig) -> int:
    """The pixels of a band, and of the largest image coded whole, for `cfg`'s networks: in
    proportion to the floats per pixel of the widest strided layer's output (c channels after
    i halvings hold c / 4^i a pixel; the seed's first layer, num_hiddens / 8)."""
    strided = cfg.stage_channels[: cfg.halvings]
    widest = max(Fraction(c, 4 ** (i + 1)) for i, c in enumerate(strided))
    return max(1, int(BAND_PIXELS * Fraction(BAND_HIDDENS, 8) / widest))


class Reach(NamedTuple):
    """How far the networks look along a side, from a ModelConfig (`reach`)."""

    encoder_pixels: int  # the pixels one code's latent depends on (its receptive field)
    decoder_codes: int  # the codes one pixel depends on
    halo: int  # code rows a band needs above and below the rows it keeps


def _inputs_of(layer: Layer, lo: int, hi: int) -> tuple[int, int]:
    """The first and last input positions that outputs lo..hi of `layer` depend on."""
    k, s, p = layer.kernel, layer.stride, layer.padding
    if not layer.transposed:  # output o reads inputs s o - p .. s o - p + k - 1
        return s * lo - p, s * hi - p + k - 1
    # output o = s i - p + t for each input i and kernel tap 0 <= t < k
    return -((k - 1 - lo - p) // s), (hi + p) // s


def _walk_back(
    layers: Sequence[Layer], lo: int, hi: int, per_code: int
) -> tuple[int, int, int, int]:
    """Outputs lo..hi of `layers` (per_code positions per code row) back to their first
    layer's input: (lo, hi, positions per code row there, the halo in code rows that every
    layer on the way needs around the code rows of lo..hi)."""
    first, last = lo // per_code, hi // per_code  # the code rows the outputs lie in
    halo = 0
    for layer in reversed(layers):
        lo, hi = _inputs_of(layer, lo, hi)
        per_code = per_code * layer.stride if not layer.transposed else per_code // layer.stride
        above = first * per_code - lo
        below = hi - ((last + 1) * per_code - 1)
        halo = max(halo, -(-above // per_code), -(-below // per_code))
    return lo, hi, per_code, halo


def reach(cfg: ModelConfig) -> Reach:
    """The receptive fields and the halo of a model config's networks (vqvae.encoder_layers
    and decoder_layers). The quantizer works on each position alone and adds none."""
    lo, hi, _, encoder_halo = _walk_back(encoder_layers(cfg), 0, 0, 1)
    field, decoder_halo = 0, 0
    for pixel in range(cfg.downsample):  # each pixel of a code's block looks its own way
        first, last, _, halo = _walk_back(decoder_layers(cfg), pixel, pixel, cfg.downsample)
        field, decoder_halo = max(field, last - first + 1), max(decoder_halo, halo)
    return Reach(hi - lo + 1, field, max(encoder_halo, decoder_halo))


class Band(NamedTuple):
    """A band of code rows: it keeps rows start..stop - 1, computed over outer_start..
    outer_stop - 1 (its rows with the halo, within the image, widened as `bands` says)."""

    start: int
    stop: int
    outer_start: int
    outer_stop: int


def band_rows(cfg: ModelConfig, width: int) -> int:
    """Code rows each band keeps for images `width` pixels wide: as many as fit band_pixels
    with the halo, and at least what a band of MIN_OUTER rows keeps (one at least)."""
    halo = reach(cfg).halo
    fit = band_pixels(cfg) // (width * cfg.downsample) - 2 * halo
    return max(1, fit, MIN_OUTER - 2 * halo)


# oneDNN's convolutions round differently over very few rows (bands of up to 8 code rows were
# seen to), so no band is computed over fewer code rows than this.
MIN_OUTER = 16
# oneDNN's transposed convolution splits its rows among threads by their count, and rounds
# some values differently where a split falls at another row: a band whose height is congruent
# to the image's modulo this splits as the whole image does on 2 threads (and 4, for one layer).
ALIGN = 4


def _widened(lo: int, hi: int, rows: int, height: int) -> tuple[int, int]:
    """Code rows lo..hi - 1 grown about evenly to `height` rows within 0..rows - 1 (as they
    are if taller already, or all rows if fewer)."""
    grow = height - (hi - lo)
    if grow <= 0:
        return lo, hi
    lo = max(0, lo - grow // 2)
    hi = min(rows, lo + height)
    return max(0, hi - height), hi


def bands(rows: int, per_band: int, halo: int) -> list[Band]:
    """`rows` code rows cut into bands of at most `per_band` rows, of near equal heights, each
    computed with `halo` rows above and below, all over one height: MIN_OUTER rows at least,
    and congruent to `rows` modulo ALIGN."""
    count = -(-rows // per_band)
    cuts = [rows * i // count for i in range(count + 1)]
    outer = [
        _widened(max(0, start - halo), min(rows, stop + halo), rows, MIN_OUTER)
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    # One height for every band: oneDNN prepares each layer once per shape it meets.
    height = max(hi - lo for lo, hi in outer)
    height += (rows - height) % ALIGN
    return [
        Band(start, stop, *_widened(lo, hi, rows, height))
        for start, stop, (lo, hi) in zip(cuts[:-1], cuts[1:], outer, strict=True)
    ]


def _plan(cfg: ModelConfig, rows: int, width: int, per_band: int | None) -> list[Band] | None:
    """The bands for code rows of images `width` pixels wide, or None to code them whole:
    `per_band` rows a band, or by default as band_rows says when the images have more than
    band_pixels."""
    if per_band is None:
        if rows * cfg.downsample * width <= band_pixels(cfg):
            return None
        per_band = band_rows(cfg, width)
    return bands(rows, per_band, reach(cfg).halo)


@torch.no_grad()
def images_to_codes(model: VQVAE, images: Tensor, per_band: int | None = None) -> Tensor:
    """uint8 (B, 3, H, W), sides multiples of the factor f -> int64 codes on the CPU,
    (B, H/f, W/f) or (B, S, H/f, W/f): model.images_to_codes, in bands of `per_band` code
    rows (by default whole up to band_pixels an image, else in bands of about that)."""
    f = model.config.downsample
    plan = _plan(model.config, images.shape[-2] // f, images.shape[-1], per_band)
    if plan is None:
        return model.images_to_codes(images).cpu()
    parts = []
    for band in plan:
        codes = model.images_to_codes(images[..., band.outer_start * f : band.outer_stop * f, :])
        kept = codes[..., band.start - band.outer_start : band.stop - band.outer_start, :]
        parts.append(kept.cpu())
    return torch.cat(parts, -2)


@torch.no_grad()
def codes_to_images(model: VQVAE, indices: Tensor, per_band: int | None = None) -> Tensor:
    """int64 codes (B, h, w), or (B, n, h, w) of the first n stages -> uint8 images
    (B, 3, f h, f w) on the CPU: model.codes_to_images in bands, as images_to_codes."""
    f = model.config.downsample
    plan = _plan(model.config, indices.shape[-2], indices.shape[-1] * f, per_band)
    if plan is None:
        return model.codes_to_images(indices.to(model.device)).cpu()
    h, w = indices.shape[-2:]
    images = torch.empty((indices.shape[0], 3, h * f, w * f), dtype=torch.uint8)
    for band in plan:
        part = indices[..., band.outer_start : band.outer_stop, :].to(model.device)
        pixels = model.codes_to_images(part)  # (B, 3, f (outer_stop - outer_start), f w)
        skip = (band.start - band.outer_start) * f
        kept = pixels[..., skip : skip + (band.stop - band.start) * f, :]
        images[..., band.start * f : band.stop * f, :] = kept.cpu()
    return images
