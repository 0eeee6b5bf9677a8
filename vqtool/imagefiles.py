"""Reading image files into uint8 tensors (3, H, W), RGB.

Reading checks an image's declared size (from its header, before any pixel is decoded) against
`MAX_IMAGE_PIXELS`, so a file that declares 40000 x 40000 pixels is refused without
allocating gigabytes.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from vqtool.errors import UsageError, WorkError, first_line

# The largest image vqtool reads: 4096 x 4096. Larger ones cost several GB in the model.
MAX_IMAGE_PIXELS = 1 << 24


def from_pil(image: Image.Image) -> Tensor:
    """A Pillow image of any mode -> uint8 (3, H, W) RGB; grey is repeated, alpha dropped.

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
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def _too_large(path: Path, pixels: int | str) -> UsageError:
    shown = f"{pixels:,}" if isinstance(pixels, int) else pixels
    return UsageError(
        f"image too large: it declares {shown} pixels, more than vqtool's limit of "
        f"{MAX_IMAGE_PIXELS:,} (4096x4096)",
        path,
        "shrink it first (vqtool's --size resizes only images it can read)",
    )


def _unreadable(path: Path, exc: BaseException) -> WorkError:
    if isinstance(exc, UnidentifiedImageError):
        reason = "empty file" if _is_empty(path) else "not an image format Pillow reads"
    else:
        reason = first_line(exc)
    return WorkError(
        f"cannot read the image: {reason}", path, "the file is damaged or not an image; remove it"
    )


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _open(path: Path) -> Image.Image:
    """Open an image lazily (header only) and refuse one that declares too many pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between its own limits; ours is lower, so the warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, int(declared[1]) if declared else "too many") from exc
    except FileNotFoundError as exc:
        raise UsageError("no such image file", path, "check the path") from exc
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise _unreadable(path, exc) from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise _too_large(path, width * height)
    if width < 1 or height < 1:
        image.close()
        raise _unreadable(path, ValueError(f"it declares {width}x{height} pixels"))
    return image


def probe_size(path: Path) -> tuple[int, int]:
    """An image file's (height, width) from its header, without decoding its pixels."""
    with _open(path) as image:
        return image.size[1], image.size[0]


def read_image(path: Path) -> Tensor:
    """An image file -> uint8 (3, H, W) RGB (grey repeated, alpha dropped; first frame)."""
    with _open(path) as image:
        try:
            image.load()
            return from_pil(image)
        except Exception as exc:  # truncated or corrupt pixel data: OSError, SyntaxError, ...
            raise _unreadable(path, exc) from exc


def open_image(path: Path) -> Image.Image:
    """An image opened lazily (header only), for a reader that decodes it its own way (e.g.
    shrinking a JPEG while decoding it); one that declares too many pixels is refused first.
    Close it after use (`with open_image(path) as image`)."""
    return _open(path)
