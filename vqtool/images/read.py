"""Reading image files into uint8 tensors (3, H, W), RGB.

Reading checks an image's declared size (from its header, before any pixel is decoded), so a
file that declares 40000 x 40000 pixels is refused without allocating gigabytes. At its own
size an image may have up to `MAX_IMAGE_PIXELS` and be up to `MAX_IMAGE_WIDTH` wide; one that
is read to be shrunk (`--size`) may be larger, since it is shrunk while it is decoded: a JPEG
decodes at 1/2, 1/4 or 1/8 of its size (Pillow's `draft`), so a 48 MP phone photo read for
64x64 costs 0.75 MP of memory.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, JpegImagePlugin, UnidentifiedImageError
from torch import Tensor

from vqtool.errors import UsageError, WorkError, first_line
from vqtool.images import fit

# The largest image vqtool encodes at its own size: 4096 x 4096 (a 12-megapixel photo fits).
# The networks take a large image in bands of rows (vqtool.models.bands), but the image, its
# decoded pixels and the roundtrip figure are held whole.
MAX_IMAGE_PIXELS = 1 << 24
# The widest: a band spans the image's width, and is at least a few code rows high.
MAX_IMAGE_WIDTH = 1 << 14
# The largest image decoded whole to be shrunk: 8192 x 8192, 200 MB of RGB. Every format but
# JPEG is decoded whole; a JPEG is decoded at the smallest scale that keeps its target size,
# which must fit this too.
MAX_DECODED_PIXELS = 1 << 26
# The largest JPEG read to be shrunk: 16384 x 16384, above what any camera makes (the largest
# phone sensors give 200 MP); anything larger is refused as a decompression bomb.
MAX_JPEG_PIXELS = 1 << 28
# Pillow's own decompression-bomb refusal starts at twice its limit; vqtool's checks follow
# the header, against the bounds above.
_PILLOW_LIMIT = MAX_JPEG_PIXELS // 2
_pillow_limit_lock = threading.Lock()


class DamagedImage(WorkError):
    """An image file whose header or pixel data Pillow cannot read. Encode skips such a file
    when it was found in a folder (unless --strict)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """A Pillow image of any mode -> RGB; grey is repeated, alpha dropped.

    16-bit grey ('I;16', and 'I' or 'F' with values above 255) keeps its top 8 bits; Pillow's
    own conversion would clip it to white.
    """
    wide = image.mode in ("I", "F") and float(np.asarray(image).max(initial=0)) > 255
    if image.mode.startswith("I;16") or wide:
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for; converting P straight warns
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def pil_to_tensor(image: Image.Image) -> Tensor:
    """An RGB Pillow image -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def from_pil(image: Image.Image) -> Tensor:
    """A Pillow image of any mode -> uint8 (3, H, W) RGB (see to_rgb)."""
    return pil_to_tensor(to_rgb(image))


def _too_large(path: Path, pixels: int | str, limit: int) -> UsageError:
    shown = f"{pixels:,}" if isinstance(pixels, int) else pixels
    if limit == MAX_IMAGE_PIXELS:
        return UsageError(
            f"image too large: it declares {shown} pixels, more than vqtool encodes at an "
            f"image's own size ({MAX_IMAGE_PIXELS:,}, 4096x4096)",
            path,
            "pass --size HxW (height x width, e.g. --size 64x64): vqtool then shrinks it while "
            "reading it",
        )
    return UsageError(
        f"image too large: it declares {shown} pixels, more than vqtool reads even to shrink it "
        f"({limit:,})",
        path,
        "shrink it first with another tool",
    )


def _unreadable(path: Path, exc: BaseException) -> WorkError:
    """The error for a file Pillow cannot read: DamagedImage, except for an empty file or a
    system error (permissions, I/O), which a folder's encode must not pass over: an empty
    file is most often one still being copied or downloaded, or one whose copy failed."""
    fix = "the file is damaged or not an image; remove it"
    if isinstance(exc, UnidentifiedImageError):
        if _is_empty(path):
            return WorkError("cannot read the image: empty file", path, fix)
        return DamagedImage("cannot read the image: not an image format Pillow reads", path, fix)
    if isinstance(exc, OSError) and exc.errno is not None:
        return WorkError(f"cannot read the image: {first_line(exc)}", path, "check the file")
    return DamagedImage(f"cannot read the image: {first_line(exc)}", path, fix)


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


@contextlib.contextmanager
def _pillow_bomb_limit() -> Iterator[None]:
    """Pillow's decompression-bomb limit (one setting for the whole process) raised to
    vqtool's largest bound while vqtool opens a file; vqtool checks the size itself."""
    with _pillow_limit_lock:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = _PILLOW_LIMIT
        try:
            with warnings.catch_warnings():
                # Pillow warns between its limit and twice it; vqtool's bounds decide.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _open(
    path: Path, shrink_to: tuple[int, int] | None = None, mode: str = "stretch"
) -> tuple[Image.Image, int, int]:
    """Open an image lazily (header only) and refuse one that declares too many pixels;
    returns it with its declared height and width.

    With `shrink_to` (H, W), a JPEG is set to decode at the smallest scale that keeps twice
    the size that fitting it to H x W as `mode` says needs (vqtool.images.fit), so that the
    final resize still averages neighbours, as Pillow's thumbnail does; the image's `size` is
    then the size it will decode at.
    """
    try:
        with _pillow_bomb_limit():
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(
            path, int(declared[1]) if declared else "too many", MAX_JPEG_PIXELS
        ) from exc
    except FileNotFoundError as exc:
        raise UsageError("no such image file", path, "check the path") from exc
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise _unreadable(path, exc) from exc
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise _unreadable(path, ValueError(f"it declares {height}x{width} (HxW) pixels"))
    jpeg = isinstance(image, JpegImagePlugin.JpegImageFile)
    shrinkable = MAX_JPEG_PIXELS if jpeg else MAX_DECODED_PIXELS
    limit = MAX_IMAGE_PIXELS if shrink_to is None else shrinkable
    if width * height > limit:
        image.close()
        # --size helps only an image that vqtool can shrink.
        raise _too_large(
            path, width * height, limit if width * height <= shrinkable else shrinkable
        )
    if shrink_to is not None:
        need = shrink_to
        if mode in fit.CROP_MODES:  # the part kept must keep the resolution
            need = fit.cover_size((height, width), fit.stored_size(shrink_to, mode))
        elif mode == fit.NATIVE_CROP:  # a window at its own pixels: decoded whole
            need = fit.native_size((height, width), shrink_to)
        image.draft(image.mode, (2 * need[1], 2 * need[0]))  # a no-op but for JPEG
        if image.size[0] * image.size[1] > MAX_DECODED_PIXELS:
            decoded = image.size
            image.close()
            if mode == fit.NATIVE_CROP:  # kept at its own pixels: no size shrinks it
                raise UsageError(
                    f"image too large to crop at its own pixels: it would decode at "
                    f"{decoded[1]}x{decoded[0]} (HxW), more than {MAX_DECODED_PIXELS:,} pixels",
                    path,
                    "shrink it first with another tool, or fit it by another resize mode",
                )
            raise UsageError(
                f"image too large to shrink to {shrink_to[0]}x{shrink_to[1]} (HxW): it would "
                f"decode at {decoded[1]}x{decoded[0]}, more than {MAX_DECODED_PIXELS:,} pixels",
                path,
                "give a smaller --size, or shrink it first with another tool",
            )
    return image, height, width


def _check_width(path: Path, image: Image.Image) -> None:
    """Refuse (and close) an image wider than MAX_IMAGE_WIDTH, to be encoded at its own size."""
    if image.size[0] > MAX_IMAGE_WIDTH:
        image.close()
        raise UsageError(
            f"image too wide: {image.size[0]:,} pixels, more than vqtool encodes at an "
            f"image's own size ({MAX_IMAGE_WIDTH:,})",
            path,
            "pass --size HxW (height x width, e.g. --size 64x64): vqtool then shrinks it while "
            "reading it",
        )


def probe_size(
    path: Path, shrink_to: tuple[int, int] | None = None, mode: str = "stretch"
) -> tuple[int, int]:
    """An image file's (height, width) from its header, without decoding its pixels.

    Refuses an image too large (or too wide) to read at its own size or, with `shrink_to`
    (and the `mode` that fits it there), to shrink.
    """
    image, height, width = _open(path, shrink_to, mode)
    if shrink_to is None:
        _check_width(path, image)
    image.close()
    return height, width


def declared_size(path: Path) -> tuple[int, int]:
    """An image file's (height, width) from its header, refusing only an image too large to
    be read even to be shrunk (`read_resized` checks the size it decodes at)."""
    return probe_size(path, (1, 1))


def _decode(
    path: Path, image: Image.Image, size: tuple[int, int] | None, mode: str = "stretch"
) -> Tensor:
    """An opened image's pixels as uint8 (3, H, W) RGB, fitted to `size` as `mode` says when
    given."""
    with image:
        try:
            image.load()
            rgb = to_rgb(image)
        except Exception as exc:  # truncated or corrupt pixel data: OSError, SyntaxError, ...
            raise _unreadable(path, exc) from exc
        if size is None:
            return pil_to_tensor(rgb)
        if mode == "stretch":
            return pil_to_tensor(resize_rgb(rgb, size))
        return pil_to_tensor(fit.fit_rgb(rgb, size, mode))


def read_image(path: Path) -> Tensor:
    """An image file -> uint8 (3, H, W) RGB (grey repeated, alpha dropped; first frame); one
    larger than MAX_IMAGE_PIXELS or wider than MAX_IMAGE_WIDTH is refused."""
    image, _, _ = _open(path)
    _check_width(path, image)
    return _decode(path, image, None)


def read_resized(path: Path, size: tuple[int, int], mode: str = "stretch") -> Tensor:
    """An image file -> uint8 (3, H, W) RGB at `size` (H, W), fitted there as `mode` says
    (vqtool.images.fit: "stretch", "centre-crop", "random-crop" or "native-crop"), shrunk
    while it is decoded."""
    image, _, _ = _open(path, size, mode)
    return _decode(path, image, size, mode)


def resize_rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An RGB image at `size` (H, W): Pillow's bicubic (antialiased when shrinking)."""
    if image.size == (size[1], size[0]):
        return image
    return image.resize((size[1], size[0]), Image.Resampling.BICUBIC)


def open_image(path: Path) -> Image.Image:
    """An image opened lazily (header only), for a reader that decodes it its own way (e.g.
    shrinking a JPEG while decoding it); one that declares more than MAX_IMAGE_PIXELS is
    refused first. Close it after use (`with open_image(path) as image`)."""
    return _open(path)[0]
